"""Helpers shared by tests/video (a unique module name: tests/conftest.py also exists)."""

from __future__ import annotations

import importlib.util
import os

import numpy as np

H, W, N, FPS = 48, 64, 40, 25
VFR_PTS_MS = [0, 40, 80, 200, 240, 400, 410, 420, 600, 1000, 1040, 1300]
GIF_DELAYS_MS = [100, 200, 50, 300, 100, 250]


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
