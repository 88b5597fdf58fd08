"""`Clip`: decoded frames plus where they came from."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from videosparse.video.errors import VideoError

__all__ = ["Clip", "as_rgb_frames"]


def as_rgb_frames(frames, path: str | None = None) -> np.ndarray:
    """Validate and normalise frames to ``uint8 (T, H, W, 3)`` RGB, C-contiguous.

    Accepts ``(T, H, W, 3)``, ``(T, H, W, 1)`` or ``(T, H, W)`` (grayscale, replicated to RGB),
    and ``(T, H, W, 4)`` (alpha dropped). Non-uint8 input must already be in ``[0, 255]``.
    """
    arr = np.asarray(frames)
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4:
        raise VideoError(path, f"frames must have shape (T, H, W, 3), got {arr.shape}")
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    elif arr.shape[-1] == 4:
        arr = arr[..., :3]
    elif arr.shape[-1] != 3:
        raise VideoError(path, f"frames must have 1, 3 or 4 channels, got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0 or arr.shape[2] == 0:
        raise VideoError(path, f"frames must be non-empty, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
            raise VideoError(path, "frames contain NaN or inf")
        if arr.min() < 0 or arr.max() > 255:
            raise VideoError(path, f"non-uint8 frames must lie in [0, 255], got [{arr.min()}, {arr.max()}]")
        arr = np.rint(arr).astype(np.uint8)
    return np.ascontiguousarray(arr)


@dataclass(repr=False, eq=False)
class Clip:
    """Sampled frames of one video.

    Attributes:
        frames: ``uint8 (T, H, W, 3)`` RGB, display orientation (rotation metadata applied).
        indices: ``int64 (T,)`` source frame index of each frame (may repeat, see sampling).
        timestamps: ``float64 (T,)`` presentation time in seconds, first source frame = 0.0.
        fps: average frame rate of the source (frames per second).
        num_source_frames: number of frames in the source stream.
        duration: source duration in seconds (last timestamp + one frame).
        backend: ``"decord"``, ``"pyav"`` or ``"array"``.
        path: source file, or ``None`` for in-memory frames.
        rotation: counter-clockwise degrees applied from the container's display matrix.
    """

    frames: np.ndarray
    indices: np.ndarray
    timestamps: np.ndarray
    fps: float
    num_source_frames: int
    duration: float
    backend: str
    path: str | None = None
    rotation: int = 0

    @classmethod
    def from_array(cls, frames, fps: float = 1.0, indices=None) -> Clip:
        """Wrap in-memory frames (``(T, H, W, 3)``, ``(T, H, W)`` grayscale or float in [0, 255]).

        ``indices`` defaults to ``arange(T)``; timestamps are ``indices / fps``.
        """
        if not fps > 0:
            raise VideoError(None, f"fps must be > 0, got {fps}")
        arr = as_rgb_frames(frames)
        t = arr.shape[0]
        idx = np.arange(t, dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64)
        if idx.shape != (t,):
            raise VideoError(None, f"indices must have shape ({t},), got {idx.shape}")
        n = int(idx.max()) + 1
        return cls(
            frames=arr,
            indices=idx,
            timestamps=idx.astype(np.float64) / fps,
            fps=float(fps),
            num_source_frames=n,
            duration=n / fps,
            backend="array",
            path=None,
        )

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def height(self) -> int:
        return int(self.frames.shape[1])

    @property
    def width(self) -> int:
        return int(self.frames.shape[2])

    def __len__(self) -> int:
        return self.num_frames

    def __repr__(self) -> str:
        return (
            f"Clip(path={self.path!r}, frames={tuple(self.frames.shape)}, indices={self.indices.tolist()}, "
            f"fps={self.fps:.3f}, num_source_frames={self.num_source_frames}, "
            f"duration={self.duration:.3f}s, backend={self.backend!r}, rotation={self.rotation})"
        )
