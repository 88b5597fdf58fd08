"""Small videos generated once per session (all < 100 KB, ~2 s to make in total)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from video_helpers import FPS, GIF_DELAYS_MS, H, MPEG_FRAMES, MPEG_STREAMS, N, VFR_PTS_MS, W  # noqa: F401

from videosparse.video.synth import pattern_frame, write_video



@dataclass
class Sample:
    path: str
    num_frames: int
    height: int
    width: int
    fps: float


def _write_vpx(path, frames, **kw):
    """PyAV's libvpx encoder fails to open once decord is imported in the process (earlier tests in
    the same session may have imported it): then write the file from a clean subprocess."""
    import json
    import subprocess
    import sys

    if "decord" not in sys.modules:
        return write_video(path, frames, codec="libvpx-vp9", **kw)
    arr = np.stack([np.asarray(f) for f in frames])
    np.save(path + ".npy", arr)
    code = ("import sys, json, numpy as np\n"
            "from videosparse.video.synth import write_video\n"
            "write_video(sys.argv[2], iter(np.load(sys.argv[1])), codec='libvpx-vp9', **json.loads(sys.argv[3]))")
    subprocess.run([sys.executable, "-c", code, path + ".npy", path, json.dumps(kw)], check=True)
    return path


def _frames(n, h=H, w=W):
    return (pattern_frame(i, h, w) for i in range(n))


@pytest.fixture(scope="session")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    p = lambda name: str(d / name)  # noqa: E731
    good = {
        "h264_mp4": Sample(write_video(p("h264.mp4"), _frames(N)), N, H, W, FPS),
        "mpeg4_avi": Sample(write_video(p("mpeg4.avi"), _frames(N), codec="mpeg4", options={"qscale": "2"}), N, H, W, FPS),
        "vp9_webm": Sample(_write_vpx(p("vp9.webm"), _frames(N), options={"crf": "10", "b:v": "0"}), N, H, W, FPS),
        "mjpeg_avi": Sample(write_video(p("mjpeg.avi"), _frames(N), codec="mjpeg", pix_fmt="yuvj420p", options={"qscale": "2"}), N, H, W, FPS),
        "odd_mp4": Sample(write_video(p("odd.mp4"), _frames(N, 35, 63), pix_fmt="yuv444p", fps=30), N, 35, 63, 30),
        "one_frame_mp4": Sample(write_video(p("one.mp4"), _frames(1)), 1, H, W, FPS),
    }
    gray = [pattern_frame(i, H, W)[..., 1] for i in range(20)]
    good["gray_mkv"] = Sample(write_video(p("gray.mkv"), gray, codec="ffv1", pix_fmt="gray", input_format="gray"), 20, H, W, FPS)
    vfr = write_video(p("vfr.mp4"), _frames(len(VFR_PTS_MS)), pts_ms=VFR_PTS_MS)
    rot = write_video(p("rot90.mp4"), _frames(10), rotation=90)
    long = write_video(p("long.mp4"), _frames(150), options={"g": "12"})

    # ---- bad input
    bad_dir = d / "a_directory.mp4"
    bad_dir.mkdir()
    empty = d / "empty.mp4"
    empty.write_bytes(b"")
    text = d / "notes.mp4"
    text.write_text("this is not a video\n" * 100)
    rng = np.random.default_rng(0)
    noise = d / "noise.mkv"
    noise.write_bytes(rng.integers(0, 256, 20000, dtype=np.uint8).tobytes())
    audio = p("audio_only.m4a")
    _write_audio(audio)
    big = write_video(p("faststart.mp4"), (rng.integers(0, 255, (H, W, 3), dtype=np.uint8) for _ in range(60)),
                      container_options={"movflags": "+faststart"})
    data = open(big, "rb").read()
    trunc_mp4 = d / "truncated.mp4"
    trunc_mp4.write_bytes(data[: len(data) // 2])
    webm = _write_vpx(p("noise.webm"), (rng.integers(0, 255, (H, W, 3), dtype=np.uint8) for _ in range(60)))
    wd = open(webm, "rb").read()
    trunc_webm = d / "truncated.webm"
    trunc_webm.write_bytes(wd[: len(wd) // 2])
    corrupt = bytearray(data)
    corrupt[4000:len(corrupt) - 500] = rng.integers(0, 256, len(corrupt) - 4500, dtype=np.uint8).tobytes()
    corrupt_mp4 = d / "corrupt.mp4"
    corrupt_mp4.write_bytes(bytes(corrupt))
    huge = write_video(p("huge.avi"), [np.zeros((16, 8208, 3), np.uint8)], codec="mjpeg", pix_fmt="yuvj420p")
    # index (moov) at the end, cut in half: no moov at all -> truncated, not "unknown format"
    moov_end = open(write_video(p("moov_end.mp4"), (rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
                                                    for _ in range(60))), "rb").read()
    trunc_moov_end = d / "truncated_moov_end.mp4"
    trunc_moov_end.write_bytes(moov_end[: len(moov_end) // 2])
    # real-world-style inputs: PIL GIF with per-frame delays, raw H.264 (no timestamps, no seeking),
    # MPEG-4 AVI with B-frames (decode-order timestamps in the container)
    from PIL import Image

    gif = p("pil_vfr.gif")
    imgs = [Image.fromarray(pattern_frame(i, H, W)) for i in range(len(GIF_DELAYS_MS))]
    imgs[0].save(gif, save_all=True, append_images=imgs[1:], duration=GIF_DELAYS_MS, loop=0)
    raw_h264 = write_video(p("raw.h264"), _frames(30), options={"bf": "0"})
    bframes_avi = write_video(p("bframes.avi"), _frames(N), codec="mpeg4", options={"qscale": "2", "bf": "2"})
    return {
        "good": good,
        "vfr": vfr,
        "rot90": rot,
        "long": long,
        "dir": str(bad_dir),
        "missing": str(d / "does_not_exist.mp4"),
        "empty": str(empty),
        "text": str(text),
        "noise": str(noise),
        "audio": audio,
        "truncated_mp4": str(trunc_mp4),
        "truncated_webm": str(trunc_webm),
        "corrupt_mp4": str(corrupt_mp4),
        "huge": huge,
        "truncated_moov_end": str(trunc_moov_end),
        "pil_gif": gif,
        "raw_h264": raw_h264,
        "bframes_avi": bframes_avi,
        "dir_path": str(d),
    }




@pytest.fixture(scope="session")
def mpeg_media(tmp_path_factory):
    """The MPEG-PS/TS files above (190 frames, 64x48, 25 fps) plus ``h264_ts_cut``: the second half of
    ``h264.ts`` cut at a 188-byte packet boundary, as a broadcast recording or an HLS segment starts
    mid-GOP (the frames before the first keyframe do not decode)."""
    d = tmp_path_factory.mktemp("mpeg")
    out = {}
    for name, (fname, fmt, codec, opts, mux_opts) in MPEG_STREAMS.items():
        out[name] = write_video(str(d / fname), _frames(MPEG_FRAMES), codec=codec, options=opts,
                                container_format=fmt, container_options=mux_opts)
    data = open(out["h264_ts"], "rb").read()
    cut = d / "h264_cut.ts"
    cut.write_bytes(data[(len(data) // 2) // 188 * 188:])
    out["h264_ts_cut"] = str(cut)
    return out


def _write_audio(path):
    import av

    with av.open(path, "w") as c:
        s = c.add_stream("aac", rate=16000)
        for i in range(10):
            fr = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            fr.sample_rate = 16000
            fr.pts = i * 1024
            for pkt in s.encode(fr):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)


@pytest.fixture(scope="session")
def corpus():
    """Real-world files: the committed ones (tests/data/videos) plus the pinned, sha256-checked
    downloads of scripts/fetch_test_videos.py (cached in ~/.cache/videosparse/test-videos). A failed fetch fails the tests with instructions; it never skips."""
    import importlib.util
    import os

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    spec = importlib.util.spec_from_file_location("fetch_test_videos", os.path.join(root, "scripts", "fetch_test_videos.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    try:
        paths = mod.fetch()
    except Exception as e:  # noqa: BLE001 - any failure must say how to fix it
        pytest.fail(f"the real-video corpus could not be fetched ({e}); {mod.HOW_TO}", pytrace=False)
    data = os.path.join(root, "tests", "data", "videos")
    for name in sorted(os.listdir(data)):
        if not name.endswith(".md"):
            paths[name] = os.path.join(data, name)
    return paths
