"""MPEG program streams (.mpg, DVD .vob) and transport streams (.ts, .m2ts): containers without a seek
index. ``auto`` and ``pyav`` must return exactly what a plain sequential PyAV decode returns at the
sampled indices, with the right frame count; decord (which misseeks in them) is never used; unseekable
files are streamed once, converting only the sampled frames."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from video_helpers import MPEG_FRAMES, MPEG_STREAMS, decord_installed, psnr

from videosparse.video import DecordFailure, iter_chunks, load_video, probe_video
from videosparse.video import backends as B
from videosparse.video.synth import pattern_frame, write_video

HAS_DECORD = decord_installed()
SAME = 40.0  # dB: same decoded frame (identical here: PSNR = inf); a neighbouring frame scores < 20 dB
CONTENT = 24.0  # decoded frame vs the pattern it was encoded from
NAMES = sorted(MPEG_STREAMS) + ["h264_ts_cut"]


def sequential_decode(path):
    """The reference: PyAV's plain demux+decode loop, no seeking, frame i = i-th output frame."""
    import av

    with av.open(path) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


@pytest.fixture(scope="module")
def reference(mpeg_media):
    return {name: sequential_decode(path) for name, path in mpeg_media.items()}


@pytest.mark.parametrize("backend", ["auto", "pyav"])
@pytest.mark.parametrize("name", NAMES)
def test_mpeg_frames_equal_sequential_decode(mpeg_media, reference, name, backend):
    path, ref = mpeg_media[name], reference[name]
    n = len(ref)
    if name != "h264_ts_cut":
        assert n == MPEG_FRAMES
    clip = load_video(path, 8, backend=backend)
    assert clip.backend == "pyav"  # decord misseeks in these containers: never used
    assert clip.num_source_frames == n
    np.testing.assert_array_equal(clip.indices, np.linspace(0, n - 1, 8, dtype=int))
    assert np.all(np.diff(clip.timestamps) > 0) and clip.timestamps[0] == 0.0
    worst = min(psnr(f, ref[i]) for f, i in zip(clip.frames, clip.indices))
    assert worst > SAME, f"{name}/{backend}: frames differ from a sequential decode ({worst:.1f} dB)"
    # denser, keyframe-crossing explicit indices, in any order with repeats
    idx = [n - 1, 0, 13, 14, 15, 16, 29, 30, 31, 13, n // 2, n - 2]
    ex = load_video(path, indices=idx, backend=backend)
    worst = min(psnr(f, ref[i]) for f, i in zip(ex.frames, idx))
    assert worst > SAME, f"{name}/{backend}: explicit indices differ ({worst:.1f} dB)"
    if name != "h264_ts_cut":  # the reference itself is the right frame (pattern encodes the index)
        for f, i in zip(clip.frames, clip.indices):
            assert psnr(f, pattern_frame(int(i), 48, 64)) > CONTENT, (name, i)
    assert probe_video(path, backend=backend).num_frames == n


@pytest.mark.parametrize("name", NAMES)
def test_mpeg_readers_never_seek_and_decord_is_refused(mpeg_media, name):
    with B.PyAVReader(mpeg_media[name]) as r:
        assert not r.seek_reliable and "seek index" in r.seek_problem
    if HAS_DECORD:
        with pytest.raises(DecordFailure, match="seeks by timestamp"):
            load_video(mpeg_media[name], 8, backend="decord")


@pytest.mark.parametrize("name", ["mpeg1_ps", "mpeg2_vob", "h264_ts"])
def test_seek_verification_alone_gives_right_frames(mpeg_media, reference, name, monkeypatch):
    """Second line of defence, independent of the container routing: every seek is checked (the first
    packet must be the keyframe asked for); a missed seek switches the reader to sequential decoding."""
    monkeypatch.setattr(B, "_AVFMT_TS_DISCONT", 0)  # pretend these containers had a seek index
    ref = reference[name]
    idx = np.linspace(0, len(ref) - 1, 8, dtype=int)
    with B.PyAVReader(mpeg_media[name]) as r:
        assert r.seek_reliable
        frames = r.get_frames(idx)
        assert not r.seek_reliable and "landed" in r.seek_problem
    assert min(psnr(f, ref[i]) for f, i in zip(frames, idx)) > SAME


def test_seekable_containers_keep_seeking(media):
    """No false alarms: files with a seek index keep seeking after reading every 5th frame."""
    for path in [media["long"], media["good"]["vp9_webm"].path, media["good"]["mpeg4_avi"].path,
                 media["good"]["gray_mkv"].path, media["good"]["mjpeg_avi"].path]:
        with B.PyAVReader(path) as r:
            r.get_frames(np.arange(0, r.num_frames, 5))
            assert r.seek_reliable, (path, r.seek_problem)


def test_chunked_read_of_unseekable_file_is_one_pass(mpeg_media, reference, monkeypatch):
    """Chunks continue one sequential pass; before, every chunk re-decoded the file from the start."""
    path, ref = mpeg_media["h264_ts"], reference["h264_ts"]
    decoded = {"n": 0}
    real = B.PyAVReader._decode_packets

    def counting(self, *a, **k):
        for frame in real(self, *a, **k):
            decoded["n"] += 1
            yield frame

    monkeypatch.setattr(B.PyAVReader, "_decode_packets", counting)
    with B.PyAVReader(path) as r:
        opened = decoded["n"]
        assert opened <= 16  # pts index: demuxed, only the first frames decoded
        chunks = list(iter_chunks(path, chunk_size=16, backend="pyav"))
    frames = np.concatenate([c.frames for c in chunks])
    assert frames.shape[0] == MPEG_FRAMES
    assert min(psnr(a, b) for a, b in zip(frames, ref)) > SAME
    per_chunked_read = decoded["n"] - opened
    assert per_chunked_read <= 2 * opened + MPEG_FRAMES, per_chunked_read  # ~one pass, not 12 restarts


def _long_ts(path, n, h=120, w=160):
    write_video(path, (pattern_frame(i, h, w) for i in range(n)), codec="mpeg2video", container_format="mpegts",
                options={"bf": "2", "g": "15", "qscale": "4"})
    return path


@pytest.mark.parametrize("how", ["load_video", "iter_chunks"])
def test_unseekable_memory_does_not_grow_with_length(tmp_path, monkeypatch, how):
    """A file decoded in full (no seeking) keeps only the sampled frames, for a 4x longer file too:
    RGB conversions equal the sampled count, decoded frames alive (PyAV ``VideoFrame`` objects, which
    also own the pixels of ``to_ndarray`` views) stay at a handful whenever a sampled frame is
    converted, and numpy's peak is a few frames (all frames would be ~27 MB at 480 frames of 160x120)."""
    import gc

    import av

    stats = {"converted": 0, "alive": 0, "scan": False, "before": 0}
    real = B.PyAVReader._to_rgb

    def live_frames():  # decoded frames alive in this process (other tests' references included)
        return sum(type(o) is av.VideoFrame for o in gc.get_objects())

    def counted(self, frame):
        stats["converted"] += 1
        if stats["scan"]:  # a separate run: the scan's own list would count in tracemalloc's peak
            stats["alive"] = max(stats["alive"], live_frames() - stats["before"])
        return real(self, frame)

    def run(path, n):
        if how == "load_video":
            clip = load_video(path, 8, backend="pyav")
            assert clip.num_source_frames == n and clip.frames.shape[0] == 8
        else:
            seen = 0
            for c in iter_chunks(path, chunk_size=4, num_frames=16, backend="pyav"):
                seen += c.num_frames
                del c
            assert seen == 16

    monkeypatch.setattr(B.PyAVReader, "_to_rgb", counted)
    frame_bytes = 120 * 160 * 3
    peaks = {}
    for n in (120, 480):
        path = _long_ts(str(tmp_path / f"long{n}.ts"), n)
        stats.update(converted=0, alive=0, scan=False)
        tracemalloc.start()
        try:
            run(path, n)
            _, peaks[n] = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert stats["converted"] == (8 if how == "load_video" else 16), stats
        stats.update(scan=True, before=live_frames())
        run(path, n)
        assert 1 <= stats["alive"] <= 4, stats  # the frame being converted (and the decoder's), not n
    assert peaks[480] < 12 * frame_bytes + 1_000_000, peaks  # not 480 frames (27.6 MB)
    assert peaks[480] < peaks[120] + 2 * frame_bytes + 200_000, peaks  # no growth with length


def test_progress_bar_only_when_asked(mpeg_media, capsys):
    path = mpeg_media["h264_ts"]
    load_video(path, 8, backend="pyav")  # default: stderr is not a terminal under pytest -> no bar
    assert capsys.readouterr().err == ""
    load_video(path, 8, backend="pyav", progress=False)
    assert capsys.readouterr().err == ""
    load_video(path, 8, backend="pyav", progress=True)
    err = capsys.readouterr().err
    assert "decoding h264.ts" in err and "frame" in err
    probe_video(mpeg_media["h264_ts_cut"], progress=True)  # decoder-order index: counted by decoding
    assert "indexing h264_cut.ts" in capsys.readouterr().err
