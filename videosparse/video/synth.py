"""Write small synthetic videos with PyAV (tests, benchmarks, procedurally generated data).

``pattern_frame`` makes frames whose content encodes the frame index, so a decoded frame can be
checked against the index it claims to be.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from fractions import Fraction

import numpy as np

__all__ = ["pattern_frame", "write_video"]


def pattern_frame(i: int, height: int, width: int) -> np.ndarray:
    """``uint8 (H, W, 3)``: smooth gradients plus a moving bar; frame ``i`` is unlike ``i +- 1``.

    The mean brightness ramps with ``i`` (mod 200) and a bright bar moves one eighth of the
    width per frame, so neighbouring frames differ by far more than codec noise.
    """
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    base = 25 + (i * 7) % 200
    r = base + 30 * x + 0 * y
    g = 40 + 150 * y + 0 * x
    b = 200 - 120 * x * y
    img = np.stack(np.broadcast_arrays(r, g, b), axis=-1)
    bar_w = max(1, width // 8)
    x0 = (i * bar_w) % max(1, width)
    img[:, x0 : x0 + bar_w, :] = 250
    return np.clip(img, 0, 255).astype(np.uint8)


def write_video(
    path: str | os.PathLike,
    frames: Iterable[np.ndarray],
    *,
    fps: float = 25,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    pts_ms: Sequence[int] | None = None,
    rotation: int | None = None,
    options: dict[str, str] | None = None,
    container_options: dict[str, str] | None = None,
    input_format: str = "rgb24",
    container_format: str | None = None,
) -> str:
    """Encode ``frames`` (``(H, W, 3)`` RGB uint8, or ``(H, W)`` with ``input_format="gray"``).

    ``pts_ms`` gives per-frame presentation times in milliseconds (variable frame rate);
    ``rotation`` writes a display-matrix rotation (counter-clockwise degrees); ``container_format``
    names the muxer (``"mpeg"``, ``"vob"``, ``"mpegts"``, ...) when the extension does not.
    Returns the path.
    """
    import av

    path = os.fspath(path)
    it = iter(frames)
    first = next(it)
    h, w = first.shape[:2]
    rate = Fraction(fps).limit_denominator(1001) if pts_ms is None else None
    with av.open(path, "w", format=container_format, options=container_options or {}) as c:
        s = c.add_stream(codec, rate=rate) if rate is not None else c.add_stream(codec)
        s.width, s.height, s.pix_fmt = w, h, pix_fmt
        if options:
            s.options = dict(options)
        if pts_ms is not None:
            s.time_base = Fraction(1, 1000)
            s.codec_context.time_base = Fraction(1, 1000)
        if rotation:
            s.set_display_rotation(rotation)

        def emit(k, arr):
            fr = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format=input_format)
            if pts_ms is not None:
                fr.pts = int(pts_ms[k])
                fr.time_base = Fraction(1, 1000)
            for p in s.encode(fr):
                c.mux(p)

        emit(0, first)
        for k, arr in enumerate(it, start=1):
            emit(k, arr)
        for p in s.encode():
            c.mux(p)
    return path
