"""Helpers shared by tests/video (a unique module name: tests/conftest.py also exists)."""

from __future__ import annotations

import importlib.util
import os

import numpy as np

H, W, N, FPS = 48, 64, 40, 25
VFR_PTS_MS = [0, 40, 80, 200, 240, 400, 410, 420, 600, 1000, 1040, 1300]
GIF_DELAYS_MS = [100, 200, 50, 300, 100, 250]

# MPEG program/transport streams, written by PyAV's own muxers; B-frames and GOP > 1 so seeking matters.
# name -> (file name, muxer, codec, encoder options, muxer options)
MPEG_STREAMS = {
    "mpeg1_ps": ("mpeg1.mpg", "mpeg", "mpeg1video", {"bf": "2", "g": "12", "qscale": "2"}, None),
    "mpeg2_ps": ("mpeg2.mpg", "mpeg", "mpeg2video", {"bf": "2", "g": "15", "qscale": "2"}, None),
    "mpeg2_vob": ("dvd.vob", "vob", "mpeg2video", {"bf": "2", "g": "15", "qscale": "2"}, None),
    "mpeg2_ts": ("mpeg2.ts", "mpegts", "mpeg2video", {"bf": "2", "g": "15", "qscale": "2"}, None),
    "h264_ts": ("h264.ts", "mpegts", "libx264", {"bf": "2", "g": "30"}, None),
    "h264_m2ts": ("h264.m2ts", "mpegts", "libx264", {"bf": "2", "g": "30"}, {"mpegts_m2ts_mode": "1"}),
}
MPEG_FRAMES = 190


def decord_installed() -> bool:
    """Without importing it: importing decord loads its bundled FFmpeg 4.1 libraries, after which
    PyAV's libvpx-vp9 *encoder* fails to open in the same process, so the media must be written
    first (decoding is unaffected)."""
    return importlib.util.find_spec("decord") is not None


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 0


def psnr(a, b) -> float:
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)
