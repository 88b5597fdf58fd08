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
