"""`load_video` and the chunked long-video reader `iter_chunks`."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from collections.abc import Iterator, Sequence

import numpy as np

from videosparse.video.backends import DEFAULT_MAX_SIDE, DecordFailure, _ReaderBase, open_reader
from videosparse.video.clip import Clip
from videosparse.video.errors import SamplingError
from videosparse.video.sampling import sample_indices

__all__ = ["load_video", "iter_chunks", "probe_video", "VideoInfo"]

logger = logging.getLogger(__name__)


def _clip(reader: _ReaderBase, idx: np.ndarray, frames: np.ndarray) -> Clip:
    return Clip(
        frames=frames,
        indices=idx.astype(np.int64),
        timestamps=reader.timestamps[idx].astype(np.float64),
        fps=float(reader.fps),
        num_source_frames=int(reader.num_frames),
        duration=float(reader.duration),
        backend=reader.backend,
        path=reader.path,
        rotation=int(reader.rotation),
    )


def load_video(
    path,
    num_frames: int | None = 8,
    strategy: str = "uniform",
    backend: str = "auto",
    *,
    indices: Sequence[int] | np.ndarray | None = None,
    start: float | None = None,
    end: float | None = None,
    sample_fps: float = 1.0,
    max_side: int = DEFAULT_MAX_SIDE,
    strict: bool = True,
) -> Clip:
    """Decode sampled frames of a video file.

    Args:
        path: video file (anything FFmpeg demuxes: mp4, mkv/webm, avi, mov, ...).
        num_frames: frames to return (``uniform``/``segments``; repeated when the video is
            shorter), the cap for ``fps``; ``None`` = every frame in the window.
        strategy: ``"uniform"`` (Video-LLaVA's ``linspace(0, n-1, k, dtype=int)``), ``"fps"``
            (``sample_fps`` frames per second of presentation time), ``"segments"`` (middle frame
            of ``num_frames`` equal segments) or ``"all"``.
        backend: ``"auto"`` (decord, falling back to PyAV when decord is missing or fails on the
            file), ``"decord"`` or ``"pyav"``.
        indices: explicit source frame indices (overrides ``strategy``; out of range raises
            :class:`FrameIndexError`).
        start, end: time window in seconds applied before sampling.
        sample_fps: rate for ``strategy="fps"``.
        max_side: largest accepted width/height (:class:`ResolutionError` above it).
        strict: raise on truncated or corrupt streams; ``False`` logs and uses what decodes.

    Returns:
        :class:`Clip` with ``frames`` ``uint8 (T, H, W, 3)`` RGB.

    Raises:
        VideoError: a subclass naming the file and the reason (see ``videosparse.video.errors``).
    """
    reader = open_reader(path, backend, max_side=max_side, strict=strict)
    try:
        idx = sample_indices(reader.timestamps, num_frames, strategy, indices=indices, start=start, end=end,
                             sample_fps=sample_fps, path=reader.path)
        try:
            frames = reader.get_frames(idx)
        except DecordFailure as e:
            if backend != "auto":
                raise
            logger.info("%s; falling back to PyAV", e)
            reader.close()
            reader = open_reader(path, "pyav", max_side=max_side, strict=strict)
            idx = sample_indices(reader.timestamps, num_frames, strategy, indices=indices, start=start, end=end,
                                 sample_fps=sample_fps, path=reader.path)
            frames = reader.get_frames(idx)
        return _clip(reader, idx, frames)
    finally:
        reader.close()


def iter_chunks(
    path,
    chunk_size: int = 32,
    *,
    num_frames: int | None = None,
    strategy: str = "uniform",
    indices: Sequence[int] | np.ndarray | None = None,
    start: float | None = None,
    end: float | None = None,
    sample_fps: float = 1.0,
    backend: str = "auto",
    max_side: int = DEFAULT_MAX_SIDE,
    strict: bool = True,
) -> Iterator[Clip]:
    """Yield the sampled frames of a (long) video as :class:`Clip` chunks of ``<= chunk_size``.

    Sampling arguments are those of :func:`load_video`; the default (``num_frames=None``) is
    every frame. Frames are decoded in source order (explicit ``indices`` are sorted), and at
    most one chunk of decoded frames is alive inside the generator at a time, so memory is
    ``O(chunk_size * H * W * 3)`` whatever the video length. Each chunk's ``indices`` and
    ``timestamps`` locate it in the source. The file is closed when the generator finishes or
    is closed/garbage-collected.

    The fallback from decord to PyAV happens only before the first chunk is yielded.
    """
    if int(chunk_size) != chunk_size or chunk_size < 1:
        raise SamplingError(None if path is None else str(path), f"chunk_size must be a positive integer, got {chunk_size!r}")
    chunk_size = int(chunk_size)
    reader = open_reader(path, backend, max_side=max_side, strict=strict)
    try:
        idx = np.sort(sample_indices(reader.timestamps, num_frames, strategy, indices=indices, start=start, end=end,
                                     sample_fps=sample_fps, path=reader.path), kind="stable")
        emitted = 0
        while True:
            try:
                for s in range(emitted, idx.size, chunk_size):
                    part = idx[s : s + chunk_size]
                    buf = np.empty((part.size, reader.height, reader.width, 3), dtype=np.uint8)
                    for j, (_, frame) in enumerate(reader.iter_frames(part)):
                        buf[j] = frame
                    chunk = _clip(reader, part, buf)
                    del buf
                    emitted = s + part.size
                    yield chunk
                    del chunk
                return
            except DecordFailure as e:
                if backend != "auto" or emitted > 0:
                    raise
                logger.info("%s; falling back to PyAV", e)
                reader.close()
                reader = open_reader(path, "pyav", max_side=max_side, strict=strict)
                idx = np.sort(sample_indices(reader.timestamps, num_frames, strategy, indices=indices, start=start,
                                             end=end, sample_fps=sample_fps, path=reader.path), kind="stable")
    finally:
        reader.close()


@dataclass(frozen=True)
class VideoInfo:
    """Metadata of a video file, from :func:`probe_video`."""

    path: str
    backend: str
    num_frames: int
    fps: float
    duration: float
    width: int
    height: int
    rotation: int


def probe_video(path, backend: str = "auto", *, max_side: int = DEFAULT_MAX_SIDE, strict: bool = True) -> VideoInfo:
    """Validate a file and return its metadata without decoding frames (beyond the first).

    """
    with open_reader(path, backend, max_side=max_side, strict=strict) as r:
        return VideoInfo(path=r.path, backend=r.backend, num_frames=int(r.num_frames), fps=float(r.fps),
                         duration=float(r.duration), width=int(r.width), height=int(r.height),
                         rotation=int(r.rotation))
