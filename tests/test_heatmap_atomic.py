"""Heatmap outputs are written atomically and fail with one line naming the file (hardening round 3)."""

from __future__ import annotations

import errno
import json
import os
import stat

import numpy as np
import pytest

from test_heatmap import T, make_trace
from videosparse import heatmap
from videosparse.fileio import OutputError
from videosparse.video import VideoProcessorSpec

SPEC = VideoProcessorSpec(shortest_edge=32, crop_size=32)
FRAMES = np.full((T, 32, 32, 3), 180, dtype=np.uint8)


def _write(out):
    return heatmap.write_all(FRAMES, make_trace(1), str(out), spec=SPEC, timestamps=[0.5 * t for t in range(T)])


def _no_temporaries(d):
    return [n for n in os.listdir(d) if ".tmp" in n] == []


def test_full_disk_keeps_the_previous_json_whole_and_names_the_file(tmp_path, monkeypatch):
    paths = _write(tmp_path)
    before = open(paths["json"]).read()

    def full(doc, f):  # the disk fills up half-way through the JSON
        f.write(json.dumps(doc)[:100])
        f.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(heatmap.json, "dump", full)
    with pytest.raises(OutputError) as err:
        _write(tmp_path)
    assert str(err.value) == f"cannot write {paths['json']}: No space left on device"
    assert open(paths["json"]).read() == before  # the old file, whole: never a truncated JSON
    json.loads(before)
    assert _no_temporaries(tmp_path)


def test_a_failing_mp4_leaves_no_json_pointing_at_it(tmp_path, monkeypatch):
    def enospc(*a, **k):
        with open(a[0], "wb") as f:  # a partial file, then the disk is full
            f.write(b"\0" * 10)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(heatmap, "_encode_mp4", enospc)
    with pytest.raises(OutputError, match=r"cannot write .*retention\.mp4: No space left on device"):
        _write(tmp_path)
    names = os.listdir(tmp_path)
    assert "retention.json" not in names and "retention.mp4" not in names and _no_temporaries(tmp_path)


def test_target_that_is_a_directory_is_one_line(tmp_path):
    os.makedirs(tmp_path / "retention.npz")
    with pytest.raises(OutputError) as err:
        _write(tmp_path)
    assert str(err.value).startswith(f"cannot write {tmp_path / 'retention.npz'}: ") and "\n" not in str(err.value)


def test_out_dir_under_a_file_is_one_line(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match=r"cannot create the directory .*f/sub: "):
        _write(tmp_path / "f" / "sub")


def test_modes_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        paths = _write(tmp_path)
    finally:
        os.umask(old)
    for p in paths.values():
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o640, p
    assert heatmap.trace_from_json(paths["json"])[0].counts == make_trace(1).counts
