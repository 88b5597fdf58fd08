"""The command line on real-world files: sane timestamps reach the output; truncated files name the
CLI's own escape hatch (--no-strict) and work with it."""

from __future__ import annotations

import json
import math

import pytest

from videosparse import cli
from videosparse.video import probe_video


@pytest.mark.parametrize("name", ["Megamind.avi", "tree.avi"])
def test_cli_timestamps_are_real_on_real_avis(name, corpus, capsys):
    path = corpus[name]
    rc = cli.main(["ask", path, "where is the red object", "--model", "testbed", "--json", "--quiet",
                   "--max-new-tokens", "4"])
    out = capsys.readouterr().out
    assert rc == 0
    ans = json.loads(out)
    info = probe_video(path)
    ts = ans["timestamps"]
    assert len(ts) == 8 and all(math.isfinite(t) and 0.0 <= t <= info.duration for t in ts)
    assert ts == sorted(ts) and ts[-1] > 0.5 * info.duration  # spread over the video, not +-3.8e17


def test_cli_truncated_names_no_strict_and_no_strict_works(media, capsys):
    rc = cli.main(["ask", media["truncated_webm"], "where is the red object", "--model", "testbed", "--quiet",
                   "--frames", "4", "--max-new-tokens", "4"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "truncated" in err[0]
    assert "--no-strict" in err[0] and "strict=False" not in err[0]
    rc = cli.main(["ask", media["truncated_webm"], "where is the red object", "--model", "testbed", "--quiet",
                   "--frames", "4", "--max-new-tokens", "4", "--no-strict"])
    out = capsys.readouterr().out
    assert rc == 0 and "A: " in out


def test_cli_image_renamed_mp4_is_one_line(tmp_path, capsys):
    from PIL import Image

    from videosparse.video.synth import pattern_frame

    path = str(tmp_path / "clip_0001.mp4")  # a PNG saved under a video name, as found in eval datasets
    Image.fromarray(pattern_frame(0, 48, 64)).save(path, format="PNG")
    rc = cli.main(["ask", path, "what happens", "--model", "testbed", "--quiet", "--max-new-tokens", "4"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert path in err[0] and "is a PNG image, not a video" in err[0]
