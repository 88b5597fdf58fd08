"""Decoding: every format x backend returns the right frames, indices and timestamps."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from video_helpers import VFR_PTS_MS, decord_installed, open_fds, psnr

from videosparse.video import Clip, iter_chunks, load_video, probe_video
from videosparse.video import backends as B
from videosparse.video.synth import pattern_frame

HAS_DECORD = decord_installed()
BACKENDS = ["pyav", pytest.param("decord", marks=pytest.mark.skipif(not HAS_DECORD, reason="decord not importable"))]
FORMATS = ["h264_mp4", "mpeg4_avi", "vp9_webm", "mjpeg_avi", "odd_mp4", "gray_mkv", "one_frame_mp4"]

# Content check: a decoded frame vs the pattern it was encoded from. Lossy coding of these tiny
# clips stays above 24 dB (MPEG-4 at default bitrate is the worst, ~26 dB); the pattern of a
# neighbouring frame scores ~15 dB (the bar moves 1/8 of the width), so "the claimed index is the
# best match among i-2..i+2 and above 24 dB" pins the exact frame.
CONTENT_PSNR = 24.0
# decord vs PyAV: both run FFmpeg's decoder, so the YUV planes are identical; only the YUV->RGB
# conversion (swscale rounding/flags) may differ by a level or two -> > 40 dB. A one-frame offset
# gives < 20 dB, so the threshold separates "same frame" from "wrong frame" by a wide margin.
BACKEND_PSNR = 40.0


def expected(sample, i):
    img = pattern_frame(int(i), sample.height, sample.width)
    if "gray" in sample.path:
        img = np.repeat(img[..., 1:2], 3, axis=-1)
    return img


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_formats_uniform(media, fmt, backend):
    s = media["good"][fmt]
    clip = load_video(s.path, num_frames=8, backend=backend)
    assert isinstance(clip, Clip) and clip.backend == backend and clip.path == s.path
    assert clip.frames.dtype == np.uint8 and clip.frames.shape == (8, s.height, s.width, 3)
    assert clip.indices.dtype == np.int64 and clip.timestamps.dtype == np.float64
    assert clip.num_source_frames == s.num_frames
    np.testing.assert_array_equal(clip.indices, np.linspace(0, s.num_frames - 1, 8, dtype=int))
    assert clip.fps == pytest.approx(s.fps, rel=1e-3)
    np.testing.assert_allclose(clip.timestamps, clip.indices / s.fps, atol=0.5 / s.fps)
    assert clip.duration == pytest.approx(s.num_frames / s.fps, abs=1.0 / s.fps)
    for frame, i in zip(clip.frames, clip.indices):
        assert psnr(frame, expected(s, i)) > CONTENT_PSNR, (fmt, i)
        near = [j for j in range(i - 2, i + 3) if 0 <= j < s.num_frames]
        assert max(near, key=lambda j: psnr(frame, expected(s, j))) == i, (fmt, i)
    if "gray" in fmt:
        assert np.abs(clip.frames[..., 0].astype(int) - clip.frames[..., 2]).max() <= 1


@pytest.mark.skipif(not HAS_DECORD, reason="decord not importable")
@pytest.mark.parametrize("fmt", FORMATS)
def test_decord_matches_pyav(media, fmt):
    s = media["good"][fmt]
    idx = np.unique(np.r_[0, np.arange(0, s.num_frames, 3), s.num_frames - 1])
    a = load_video(s.path, indices=idx, backend="decord")
    b = load_video(s.path, indices=idx, backend="pyav")
    assert a.num_source_frames == b.num_source_frames
    np.testing.assert_allclose(a.timestamps, b.timestamps, atol=1e-4)
    worst = min(psnr(x, y) for x, y in zip(a.frames, b.frames))
    assert worst > BACKEND_PSNR, worst


@pytest.mark.parametrize("backend", BACKENDS)
def test_variable_frame_rate_timestamps(media, backend):
    clip = load_video(media["vfr"], num_frames=None, backend=backend)
    assert clip.num_source_frames == len(VFR_PTS_MS)
    np.testing.assert_allclose(clip.timestamps, np.array(VFR_PTS_MS) / 1000, atol=1e-3)
    # fps sampling is by time: 2 frames/s -> targets 0, .5, 1.0 s -> frames shown then (pts 0, 420, 1000 ms)
    f = load_video(media["vfr"], num_frames=None, strategy="fps", sample_fps=2, backend=backend)
    np.testing.assert_array_equal(f.indices, [0, 7, 9])


def test_rotation_metadata_applied(media):
    clip = load_video(media["rot90"], num_frames=3)  # auto: decord refuses rotated files -> PyAV
    assert clip.backend == "pyav" and clip.rotation == 90
    assert clip.frames.shape == (3, 64, 48, 3)  # displayed portrait
    raw = pattern_frame(int(clip.indices[1]), 48, 64)
    assert psnr(clip.frames[1], np.rot90(raw)) > CONTENT_PSNR
    info = probe_video(media["rot90"])
    assert (info.width, info.height, info.rotation) == (48, 64, 90)


@pytest.mark.parametrize("backend", BACKENDS)
def test_strategies(media, backend):
    path = media["good"]["h264_mp4"].path  # 40 frames @ 25 fps = 1.6 s
    seg = load_video(path, 4, "segments", backend)
    np.testing.assert_array_equal(seg.indices, [5, 15, 25, 35])
    f = load_video(path, 100, "fps", backend, sample_fps=5)
    np.testing.assert_array_equal(f.indices, [0, 5, 10, 15, 20, 25, 30, 35])
    capped = load_video(path, 3, "fps", backend, sample_fps=5)
    np.testing.assert_array_equal(capped.indices, [0, 15, 35])
    win = load_video(path, 4, backend=backend, start=0.4, end=0.8)
    np.testing.assert_array_equal(win.indices, np.linspace(10, 19, 4, dtype=int))
    assert win.timestamps.min() >= 0.4 - 1e-6 and win.timestamps.max() < 0.8
    ex = load_video(path, backend=backend, indices=[7, 3, 3, 39])
    np.testing.assert_array_equal(ex.indices, [7, 3, 3, 39])
    np.testing.assert_array_equal(ex.frames[1], ex.frames[2])
    ref = load_video(path, backend=backend, indices=[3, 7, 39])
    np.testing.assert_array_equal(ex.frames[[1, 0, 3]], ref.frames[[0, 1, 2]])


@pytest.mark.parametrize("backend", BACKENDS)
def test_more_frames_than_exist_repeat(media, backend):
    one = load_video(media["good"]["one_frame_mp4"].path, 8, backend=backend)
    assert one.frames.shape[0] == 8 and (one.indices == 0).all()
    assert (one.frames == one.frames[0]).all()
    s = media["good"]["h264_mp4"]
    many = load_video(s.path, 64, backend=backend)
    np.testing.assert_array_equal(many.indices, np.linspace(0, 39, 64, dtype=int))
    assert len(np.unique(many.indices)) == 40


def test_pyav_seek_equals_sequential(media):
    path = media["long"]  # 150 frames, keyframe every 12
    idx = np.array([0, 5, 11, 12, 13, 60, 61, 100, 149])
    with B.PyAVReader(path, mode="seek") as r:
        a = r.get_frames(idx)
    with B.PyAVReader(path, mode="sequential") as r:
        b = r.get_frames(idx)
    np.testing.assert_array_equal(a, b)
    for frame, i in zip(a, idx):
        assert psnr(frame, pattern_frame(int(i), 48, 64)) > CONTENT_PSNR


@pytest.mark.parametrize("backend", BACKENDS)
def test_iter_chunks_equals_load_and_is_bounded(media, backend):
    path = media["long"]
    full = load_video(path, num_frames=None, backend=backend)
    assert full.frames.shape[0] == 150
    chunks = list(iter_chunks(path, chunk_size=16, backend=backend))
    assert [c.num_frames for c in chunks] == [16] * 9 + [6]
    np.testing.assert_array_equal(np.concatenate([c.indices for c in chunks]), np.arange(150))
    np.testing.assert_array_equal(np.concatenate([c.frames for c in chunks]), full.frames)
    sub = list(iter_chunks(path, chunk_size=3, num_frames=8, backend=backend))
    np.testing.assert_array_equal(np.concatenate([c.indices for c in sub]), np.linspace(0, 149, 8, dtype=int))

    frame_bytes = 48 * 64 * 3
    tracemalloc.start()
    try:
        seen = 0
        for c in iter_chunks(path, chunk_size=8, backend=backend):
            seen += c.num_frames
            del c
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen == 150
    assert peak < 4 * 8 * frame_bytes + 300_000, peak  # a few chunks, not 150 frames (1.4 MB)


def test_auto_falls_back_to_pyav_without_decord(media, monkeypatch):
    monkeypatch.setattr(B, "decord_available", lambda: False)
    clip = load_video(media["good"]["h264_mp4"].path, 4)
    assert clip.backend == "pyav"
    assert [c.backend for c in iter_chunks(media["good"]["h264_mp4"].path, 20)] == ["pyav", "pyav"]


@pytest.mark.skipif(not HAS_DECORD, reason="decord not importable")
def test_auto_prefers_decord(media):
    assert load_video(media["good"]["vp9_webm"].path, 2).backend == "decord"


def test_no_leaked_file_handles_on_success(media):
    before = open_fds()
    for s in media["good"].values():
        load_video(s.path, 4)
        for _ in iter_chunks(s.path, 4):
            break  # abandoned generator
        probe_video(s.path, backend="pyav")
    import gc

    gc.collect()
    assert open_fds() <= before


def test_clip_from_array():
    frames = np.random.default_rng(0).integers(0, 255, (5, 10, 12), dtype=np.uint8)
    c = Clip.from_array(frames, fps=10)
    assert c.frames.shape == (5, 10, 12, 3) and c.backend == "array" and c.path is None
    np.testing.assert_allclose(c.timestamps, np.arange(5) / 10)
    assert c.duration == pytest.approx(0.5) and "Clip(" in repr(c)
