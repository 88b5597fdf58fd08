"""Frame sampling: which source frames to decode. Pure numpy, no decoding.

All functions return ``int64`` indices into the source stream, in non-decreasing order.

When more frames are requested than the source (or the time window) holds:

* ``uniform`` and ``segments`` repeat indices so ``T`` stays as requested (this is what
  Video-LLaVA's ``np.linspace(0, n - 1, k, dtype=int)`` does; the model expects a fixed ``T``);
* ``fps`` never repeats a frame: it returns at most one frame per source frame (and at most
  ``num_frames`` if given);
* explicit ``indices`` outside ``[0, n)`` raise :class:`FrameIndexError`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from videosparse.video.errors import FrameIndexError, NoFramesError, SamplingError

_EPS = 1e-4  # seconds: decord reports float32 timestamps (0.2 -> 0.20000000298)

__all__ = ["STRATEGIES", "uniform_indices", "segment_indices", "fps_indices", "sample_indices"]

STRATEGIES = ("uniform", "fps", "segments", "all")


def uniform_indices(n: int, k: int) -> np.ndarray:
    """Video-LLaVA's sampling: ``np.linspace(0, n - 1, k, dtype=int)`` (truncation toward 0).

    First and last frame are always included (for k >= 2); ``k > n`` repeats frames.
    """
    return np.linspace(0, n - 1, k, dtype=np.int64) if k > 0 else np.zeros(0, np.int64)


def segment_indices(n: int, k: int) -> np.ndarray:
    """Middle frame of each of ``k`` equal segments: ``floor((i + 0.5) * n / k)``."""
    i = np.arange(k, dtype=np.float64)
    return np.minimum(np.floor((i + 0.5) * n / k).astype(np.int64), n - 1)


def fps_indices(timestamps: np.ndarray, sample_fps: float, t0: float, t1: float) -> np.ndarray:
    """One frame every ``1 / sample_fps`` seconds of presentation time in ``[t0, t1)``.

    For each target time ``t0 + j / sample_fps`` the frame shown at that time (last frame with
    timestamp <= target) is taken; duplicates (source slower than ``sample_fps``) are dropped, so
    variable-frame-rate sources are sampled by time, not by index.
    """
    ts = np.asarray(timestamps, dtype=np.float64)
    count = int(np.floor((t1 - t0) * sample_fps - 1e-9)) + 1
    targets = t0 + np.arange(max(count, 0), dtype=np.float64) / sample_fps
    targets = targets[targets < t1]
    idx = np.searchsorted(ts, targets + _EPS, side="right") - 1
    idx = idx[idx >= 0]
    return np.unique(idx).astype(np.int64)


def sample_indices(
    timestamps: np.ndarray,
    num_frames: int | None = 8,
    strategy: str = "uniform",
    *,
    indices: Sequence[int] | np.ndarray | None = None,
    start: float | None = None,
    end: float | None = None,
    sample_fps: float = 1.0,
    path: str | None = None,
) -> np.ndarray:
    """Choose source frame indices.

    Args:
        timestamps: ``float64 (n,)`` presentation time of every source frame, non-decreasing.
        num_frames: frames to return (``uniform``/``segments``), or the cap for ``fps``;
            ``None`` means every frame in the window (``uniform``/``all``) or no cap (``fps``).
        strategy: ``"uniform"``, ``"fps"``, ``"segments"`` or ``"all"``. Ignored when
            ``indices`` is given.
        indices: explicit source indices (any order, repeats allowed, returned as given).
        start, end: time window in seconds; only frames with ``start <= t < end`` are candidates.
        sample_fps: frames per second for ``strategy="fps"``.
        path: only used in error messages.

    Returns:
        ``int64 (T,)`` indices.
    """
    ts = np.asarray(timestamps, dtype=np.float64)
    n = int(ts.shape[0])
    if n == 0:
        raise NoFramesError(path, "the video has zero frames")
    if indices is not None:
        if start is not None or end is not None:
            raise SamplingError(path, "pass either explicit indices or a time window (start/end), not both")
        idx = np.asarray(indices)
        if idx.ndim != 1 or idx.size == 0 or not np.issubdtype(idx.dtype, np.integer):
            raise SamplingError(path, f"indices must be a non-empty 1-D integer sequence, got {indices!r}")
        bad = idx[(idx < 0) | (idx >= n)]
        if bad.size:
            raise FrameIndexError(
                path, f"frame indices {bad[:8].tolist()} out of range: the video has {n} frames (valid 0..{n - 1})"
            )
        return idx.astype(np.int64)

    if strategy not in STRATEGIES:
        raise SamplingError(path, f"unknown sampling strategy {strategy!r}; choose one of {STRATEGIES}")
    if num_frames is not None and (int(num_frames) != num_frames or num_frames < 1):
        raise SamplingError(path, f"num_frames must be a positive integer or None, got {num_frames!r}")

    lo, hi = 0, n
    if start is not None or end is not None:
        t0 = 0.0 if start is None else float(start)
        t1 = np.inf if end is None else float(end)
        if not (np.isfinite(t0) and t0 >= 0 and t1 > t0):
            raise SamplingError(path, f"invalid time window start={start!r} end={end!r} (need 0 <= start < end)")
        lo = int(np.searchsorted(ts, t0 - _EPS, side="left"))
        hi = int(np.searchsorted(ts, t1 - _EPS, side="left"))
        if hi <= lo:
            raise NoFramesError(
                path, f"no frame in the time window [{t0:.3f}, {t1:.3f}) s (video timestamps {ts[0]:.3f}..{ts[-1]:.3f} s)"
            )
    m = hi - lo

    if strategy == "all" or (strategy == "uniform" and num_frames is None):
        return np.arange(lo, hi, dtype=np.int64)
    if strategy == "uniform":
        return lo + uniform_indices(m, int(num_frames))
    if strategy == "segments":
        if num_frames is None:
            raise SamplingError(path, "strategy='segments' needs num_frames")
        return lo + segment_indices(m, int(num_frames))
    # fps
    if not sample_fps > 0:
        raise SamplingError(path, f"sample_fps must be > 0, got {sample_fps!r}")
    t0 = float(ts[lo])
    t1 = float(ts[hi - 1]) + _EPS if end is None else float(end)
    t1 = max(t1, t0 + _EPS)
    idx = fps_indices(ts[lo:hi], sample_fps, t0, t1) + lo
    if num_frames is not None and idx.size > num_frames:
        idx = idx[uniform_indices(idx.size, int(num_frames))]
    return idx
