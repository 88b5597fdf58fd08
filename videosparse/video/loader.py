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

__all__ = ["load_video", "iter_chunks", "ChunkedVideo", "probe_video", "VideoInfo"]

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
    progress: bool | None = None,
    frame_rate: float | None = None,
) -> Clip:
    """Decode sampled frames of a video file (or of a folder of image frames, with ``frame_rate``).

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
        progress: tqdm bar on stderr for long sequential decoding passes (files without reliable
            seeking, decoder-order indexing): ``None`` (default) only on a terminal, ``False`` never.
        frame_rate: ``path`` may be a folder of image frames shown at this many frames per second
            (MVBench's TVQA frames: 3); ignored for files.

    Returns:
        :class:`Clip` with ``frames`` ``uint8 (T, H, W, 3)`` RGB.

    Raises:
        VideoError: a subclass naming the file and the reason (see ``videosparse.video.errors``).
    """
    reader = open_reader(path, backend, max_side=max_side, strict=strict, progress=progress, frame_rate=frame_rate)
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
            reader = open_reader(path, "pyav", max_side=max_side, strict=strict, progress=progress)
            idx = sample_indices(reader.timestamps, num_frames, strategy, indices=indices, start=start, end=end,
                                 sample_fps=sample_fps, path=reader.path)
            frames = reader.get_frames(idx)
        return _clip(reader, idx, frames)
    finally:
        reader.close()


class ChunkedVideo:
    """A video file opened once for chunked reading (the long-video path).

    ``indices`` (``int64 (T,)``, the sampled source frames in source order) are known as soon as the
    file is open, before any frame is decoded; iterating yields :class:`Clip` chunks of
    ``<= chunk_size`` frames, at most one chunk of decoded frames alive at a time. Sampling arguments
    are those of :func:`load_video` (default ``num_frames=None``: every frame); ``distinct=True``
    drops repeated indices (each source frame at most once). The decord -> PyAV fallback happens only
    before the first chunk. Use as a context manager (or call ``close()``).
    """

    def __init__(self, path, chunk_size: int = 32, *, num_frames: int | None = None, strategy: str = "uniform",
                 indices: Sequence[int] | np.ndarray | None = None, start: float | None = None,
                 end: float | None = None, sample_fps: float = 1.0, backend: str = "auto",
                 max_side: int = DEFAULT_MAX_SIDE, strict: bool = True, distinct: bool = False,
                 progress: bool | None = None, frame_rate: float | None = None) -> None:
        if int(chunk_size) != chunk_size or chunk_size < 1:
            raise SamplingError(None if path is None else str(path),
                                f"chunk_size must be a positive integer, got {chunk_size!r}")
        self.chunk_size = int(chunk_size)
        self._path, self._backend, self._max_side, self._strict = path, backend, max_side, strict
        self._sampling = dict(num_frames=num_frames, strategy=strategy, indices=indices, start=start, end=end,
                              sample_fps=sample_fps)
        self._distinct = distinct
        self._progress = progress
        self._reader = open_reader(path, backend, max_side=max_side, strict=strict, progress=progress,
                                   frame_rate=frame_rate)
        try:
            self.indices = self._sample()
        except BaseException:
            self._reader.close()
            raise

    def _sample(self) -> np.ndarray:
        idx = sample_indices(self._reader.timestamps, path=self._reader.path, **self._sampling)
        return np.unique(idx) if self._distinct else np.sort(idx, kind="stable")

    def __iter__(self) -> Iterator[Clip]:
        reader, idx = self._reader, self.indices
        emitted = 0
        while True:
            try:
                for s in range(emitted, idx.size, self.chunk_size):
                    part = idx[s : s + self.chunk_size]
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
                if self._backend != "auto" or emitted > 0:
                    raise
                logger.info("%s; falling back to PyAV", e)
                reader.close()
                self._reader = reader = open_reader(self._path, "pyav", max_side=self._max_side, strict=self._strict,
                                                      progress=self._progress)
                self.indices = idx = self._sample()

    def metadata(self) -> Clip:
        """The sampled frames' metadata as a Clip without pixels (``frames`` of shape (T, H, W, 3) with no data:
        a broadcast view of one zero pixel): indices, timestamps, fps, source frame count, size after rotation
        and ``max_side``; nothing is decoded."""
        r = self._reader
        empty = np.broadcast_to(np.zeros((1, 1, 1, 3), dtype=np.uint8), (self.indices.size, r.height, r.width, 3))
        return _clip(r, self.indices, empty)

    def close(self) -> None:
        self._reader.close()

    def __enter__(self) -> "ChunkedVideo":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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
    progress: bool | None = None,
) -> Iterator[Clip]:
    """Yield the sampled frames of a (long) video as :class:`Clip` chunks of ``<= chunk_size``.

    Sampling arguments are those of :func:`load_video`; the default (``num_frames=None``) is
    every frame. Frames are decoded in source order (explicit ``indices`` are sorted), and at
    most one chunk of decoded frames is alive inside the generator at a time, so memory is
    ``O(chunk_size * H * W * 3)`` whatever the video length. Each chunk's ``indices`` and
    ``timestamps`` locate it in the source. The file is closed when the generator finishes or
    is closed/garbage-collected. (:class:`ChunkedVideo` is the same with the indices known up front.)

    The fallback from decord to PyAV happens only before the first chunk is yielded.
    """
    with ChunkedVideo(path, chunk_size, num_frames=num_frames, strategy=strategy, indices=indices, start=start,
                      end=end, sample_fps=sample_fps, backend=backend, max_side=max_side, strict=strict,
                      progress=progress) as video:
        yield from video


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


def probe_video(path, backend: str = "auto", *, max_side: int = DEFAULT_MAX_SIDE, strict: bool = True,
                progress: bool | None = None, frame_rate: float | None = None) -> VideoInfo:
    """Validate a file and return its metadata, decoding the first frame only -- except files whose
    container timestamps do not identify the frames, which are counted by decoding them once
    (``progress`` as in :func:`load_video`).
    """
    with open_reader(path, backend, max_side=max_side, strict=strict, progress=progress, frame_rate=frame_rate) as r:
        return VideoInfo(path=r.path, backend=r.backend, num_frames=int(r.num_frames), fps=float(r.fps),
                         duration=float(r.duration), width=int(r.width), height=int(r.height),
                         rotation=int(r.rotation))
