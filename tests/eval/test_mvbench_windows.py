"""MVBench's bounded tasks: whole source videos (STA) and TVQA's folders of frames (3 frames/s) whose questions
cover a time window (the entries' start / end seconds). The window is applied when the release's whole source is
there and not to the renamed copies that are cut already; a folder of frames reads as a video."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.eval.fixtures import write_clip
from video_eval.benchmarks import check_mc, load_mc
from video_eval.cli import main
from videosparse.video import load_video, probe_video


def _frames(n, seed=0, h=48, w=64):
    rng = np.random.default_rng(seed)
    return (rng.random((n, h, w, 3)) * 255).astype(np.uint8)


def _write_frame_folder(d: Path, frames) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(frames, start=1):  # 00001.jpg ... (the TVQA frames' naming)
        Image.fromarray(f).save(d / f"{i:05d}.png")
    return d


def _entry(video, start=None, end=None):
    e = {"video": video, "question": "what is the man doing", "candidates": ["running", "sitting", "eating"],
         "answer": "sitting"}
    if start is not None:
        e.update(start=start, end=end)
    return e


@pytest.fixture
def release(tmp_path):
    root = tmp_path / "MVBench"
    (root / "json").mkdir(parents=True)
    # TVQA: a folder of 30 frames = 10 s at 3 frames/s; STA: a whole 40-frame video (FPS frames/s)
    _write_frame_folder(root / "video" / "tvqa" / "frames_fps3_hq" / "clip_a", _frames(30, 1))
    for d in ("sta_video", "sta_video_segment"):
        (root / "video" / "sta" / d).mkdir(parents=True)
    write_clip(root / "video" / "sta" / "sta_video" / "sta_b.mp4", _frames(40, 2))
    # a copy already cut to its window (lmms-eval's "_segment" folder): no window on it
    write_clip(root / "video" / "sta" / "sta_video_segment" / "sta_c.mp4", _frames(12, 3))
    (root / "json" / "episodic_reasoning.json").write_text(json.dumps([_entry("clip_a", 2.0, 6.0),
                                                                      _entry("clip_a", 5.0, 9.5)]))
    (root / "json" / "action_localization.json").write_text(json.dumps([_entry("sta_b.mp4", 1.0, 3.0),
                                                                       _entry("sta_c.mp4", 1.0, 3.0),
                                                                       _entry("sta_b.mp4", 4.0, 2.0)]))
    return root


def test_windows_and_frame_folders_are_read_as_the_benchmark_crops_them(release):
    ds = load_mc("mvbench", release, strict=False)
    names = [it.video_name for it in ds.items]
    assert names == ["sta/sta_video/sta_b.mp4#t=1,3", "sta/sta_video/sta_c.mp4#t=1,3",
                     "tvqa/frames_fps3_hq/clip_a#t=2,6", "tvqa/frames_fps3_hq/clip_a#t=5,9.5"]
    assert any("entry 2: the window start=4 .. end=2 is empty" in p.message for p in ds.problems)
    assert ds.video_options(ds.items[0]) == {"start": 1.0, "end": 3.0}
    assert ds.video_options(ds.items[1]) == {}  # found in the cut copy: already its window
    assert ds.paths[names[1]].parent.name == "sta_video_segment"
    assert ds.video_options(ds.items[2]) == {"start": 2.0, "end": 6.0, "frame_rate": 3.0}
    assert ds.paths[names[2]].is_dir()
    clip = load_video(ds.video_path(ds.items[3]), num_frames=4, **ds.video_options(ds.items[3]))
    assert clip.backend == "frames" and clip.timestamps.min() >= 5.0 and clip.timestamps.max() < 9.5
    assert clip.indices.min() >= 15  # 5 s at 3 frames/s
    clip = load_video(ds.video_path(ds.items[0]), num_frames=4, **ds.video_options(ds.items[0]))
    assert clip.timestamps.min() >= 1.0 and clip.timestamps.max() < 3.0
    rep = check_mc("mvbench", release)
    assert rep.probed == 4 and not rep.unreadable_videos and not rep.missing_videos


def test_a_run_reads_the_windows(release, tmp_path):
    (release / "json" / "action_localization.json").write_text(json.dumps([_entry("sta_b.mp4", 1.0, 3.0)]))
    out = tmp_path / "run"
    assert main(["run", "--dataset", "mvbench", "--root", str(release), "--model", "testbed", "--configs", "video@0.5",
                 "--out", str(out), "--quiet", "--max-new-tokens", "4", "--frames", "4"]) == 0
    recs = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(recs) == 3 and not any(r["error"] for r in recs)


def test_frame_folder_reader(tmp_path):
    d = _write_frame_folder(tmp_path / "f", _frames(12, 4))
    (d / "notes.txt").write_text("not a frame")
    (d / "00002.png").rename(d / "2.png")  # natural order: 2 before 00003 ... and after 00001
    info = probe_video(d, frame_rate=4)
    assert (info.num_frames, info.fps, info.width, info.height, info.backend) == (12, 4.0, 64, 48, "frames")
    clip = load_video(d, num_frames=None, frame_rate=4)
    assert np.array_equal(clip.frames, _frames(12, 4)) and clip.duration == pytest.approx(3.0)
    from videosparse.video import VideoError

    with pytest.raises(VideoError, match="folder of frames is read with frame_rate="):
        load_video(d, num_frames=4)
    Image.fromarray(_frames(1, 5, h=20, w=20)[0]).save(d / "99999.png")
    with pytest.raises(VideoError, match="99999.png is 20x20, the folder's first frame 64x48"):
        load_video(d, num_frames=None, frame_rate=4)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(VideoError, match="holds no image frames"):
        load_video(empty, frame_rate=3)
