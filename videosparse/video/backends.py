"""Decoding backends: decord (first choice) and PyAV (fallback, and the file prober).

Readers expose one interface::

    reader.num_frames, reader.fps, reader.timestamps (float64 (n,), first frame at 0.0),
    reader.width, reader.height (display orientation), reader.rotation, reader.backend
    reader.get_frames(indices)            -> uint8 (T, H, W, 3)
    reader.iter_frames(indices)           -> yields (index, uint8 (H, W, 3)), one frame held at a time
    reader.close()  (also a context manager)

``indices`` for ``get_frames`` may be in any order with repeats; ``iter_frames`` needs them
non-decreasing. Every PyAV or decord exception is translated into a :class:`VideoError`.
"""

from __future__ import annotations

import bisect
import logging
import os
from collections.abc import Iterator
from fractions import Fraction

import numpy as np

from videosparse.video.errors import (
    BackendUnavailableError,
    CorruptVideoError,
    EmptyVideoFileError,
    NoFramesError,
    NotAFileError,
    NotAVideoError,
    NoVideoStreamError,
    ResolutionError,
    TruncatedVideoError,
    VideoError,
    VideoNotFoundError,
)

__all__ = [
    "BACKENDS",
    "DEFAULT_MAX_SIDE",
    "check_path",
    "decord_available",
    "open_reader",
    "PyAVReader",
    "DecordReader",
    "DecordFailure",
]

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "decord", "pyav")
DEFAULT_MAX_SIDE = 8192  # DCI 8K width; anything larger is treated as absurd unless raised explicitly
_MAX_DECODE_ERRORS = 64  # non-strict mode: give up after this many bitstream errors


def check_path(path) -> str:
    """Filesystem checks shared by all backends; returns ``os.fspath(path)``."""
    if path is None:
        raise VideoNotFoundError(None, "no path given")
    p = os.fspath(path)
    if not os.path.exists(p):
        raise VideoNotFoundError(p, "no such file")
    if os.path.isdir(p):
        raise NotAFileError(p, "is a directory, not a video file")
    if not os.path.isfile(p):
        raise NotAFileError(p, "is not a regular file")
    if os.path.getsize(p) == 0:
        raise EmptyVideoFileError(p, "file is empty (0 bytes)")
    if not os.access(p, os.R_OK):
        raise VideoError(p, "file is not readable (permission denied)")
    return p


def decord_available() -> bool:
    """True when ``import decord`` works (it is x86-64 only and unmaintained)."""
    try:
        import decord  # noqa: F401
    except Exception:  # ImportError, or a broken binary raising OSError
        return False
    return True


def _import_av(path):
    try:
        import av
    except ImportError as e:  # pragma: no cover - av is a hard requirement of the video extra
        raise BackendUnavailableError(path, f"PyAV is not installed ({e}); pip install 'videosparse[video]'") from e
    return av


def _rotate(frame: np.ndarray, rotation: int) -> np.ndarray:
    """Apply a counter-clockwise display rotation (multiple of 90) to ``(H, W, 3)``."""
    k = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(frame, k=k)) if k else frame


class _ReaderBase:
    backend = "?"
    path: str
    num_frames: int
    fps: float
    timestamps: np.ndarray
    width: int
    height: int
    rotation: int = 0

    @property
    def duration(self) -> float:
        """Last timestamp plus one frame interval."""
        return float(self.timestamps[-1]) + 1.0 / self.fps

    def get_frames(self, indices) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64)
        uniq = np.unique(idx)
        out = np.empty((uniq.size, self.height, self.width, 3), dtype=np.uint8)
        for j, (i, frame) in enumerate(self.iter_frames(uniq)):
            assert i == uniq[j]
            out[j] = frame
        if idx.shape == uniq.shape and np.array_equal(idx, uniq):
            return out  # no gather copy for sorted unique indices (halves the peak for load-all)
        return out[np.searchsorted(uniq, idx)]

    def iter_frames(self, indices) -> Iterator[tuple[int, np.ndarray]]:  # pragma: no cover
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class PyAVReader(_ReaderBase):
    """PyAV reader. Opening it probes the file: container, video stream, resolution, rotation,
    the packet index (presentation timestamps of every frame, found by demuxing without
    decoding) and whether the data is shorter than the container declares.

    Args:
        path: video file.
        max_side: largest accepted width or height.
        strict: raise :class:`TruncatedVideoError` / :class:`CorruptVideoError` on truncation or
            bitstream errors; when False they are logged and the decodable frames are used.
        mode: ``"seek"`` (seek to the keyframe before each wanted frame when that skips work,
            otherwise keep decoding) or ``"sequential"`` (decode from the start, never seek).
        index: build the packet index now (``False`` gives a light probe used before decord).
    """

    backend = "pyav"

    def __init__(self, path, *, max_side: int = DEFAULT_MAX_SIDE, strict: bool = True, mode: str = "seek",
                 index: bool = True):
        if mode not in ("seek", "sequential"):
            raise ValueError(f"mode must be 'seek' or 'sequential', got {mode!r}")
        self.path = check_path(path)
        self.strict = strict
        self.mode = mode
        self.decode_errors = 0
        av = self._av = _import_av(self.path)
        try:
            self._container = av.open(self.path, metadata_errors="ignore")
        except av.error.FFmpegError as e:
            raise NotAVideoError(self.path, f"not a recognised video/container format ({_av_msg(e)})") from e
        except (OSError, UnicodeDecodeError) as e:
            raise NotAVideoError(self.path, f"cannot be opened as media ({e})") from e
        try:
            self._probe(max_side)
            self._pts: np.ndarray | None = None
            if index:
                self._build_index()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ probing
    def _probe(self, max_side: int) -> None:
        c = self._container
        streams = list(c.streams.video)
        if not streams:
            kinds = sorted({s.type for s in c.streams}) or ["none"]
            raise NoVideoStreamError(self.path, f"no video stream (streams present: {', '.join(kinds)})")
        s = self._stream = streams[0]
        s.thread_type = "AUTO"
        cc = s.codec_context
        w, h = int(cc.width or 0), int(cc.height or 0)
        if w <= 0 or h <= 0:
            raise ResolutionError(self.path, f"invalid frame size {w}x{h} (stream header unreadable)")
        if w > max_side or h > max_side:
            raise ResolutionError(
                self.path, f"absurd resolution {w}x{h}: a side exceeds max_side={max_side} (pass max_side to allow it)"
            )
        self.coded_width, self.coded_height = w, h
        self.time_base: Fraction = s.time_base or Fraction(1, 1000)
        rate = s.average_rate or s.guessed_rate or s.base_rate
        self._declared_fps = float(rate) if rate else 0.0
        self.declared_frames = int(s.frames or 0)
        dur = None
        if s.duration is not None:
            dur = float(s.duration * self.time_base)
        elif c.duration is not None and len(c.streams) == 1:
            dur = c.duration / 1_000_000
        self.declared_duration = dur
        # rotation lives in per-frame side data: decode the first frame (also proves decodability)
        first = None
        for frame in self._decode_from(None, limit_packets=256):
            first = frame
            break
        if first is None:
            if self.decode_errors:
                raise CorruptVideoError(self.path, f"zero decodable frames ({self.decode_errors} bitstream errors)")
            raise NoFramesError(self.path, "the video stream holds zero decodable frames")
        rot = int(round(getattr(first, "rotation", 0) or 0)) % 360
        if rot % 90:
            logger.warning("%s: rotation %d is not a multiple of 90 degrees; ignored", self.path, rot)
            rot = 0
        self.rotation = rot
        self.width, self.height = (h, w) if rot in (90, 270) else (w, h)
        self.decode_errors = 0

    def _build_index(self) -> None:
        av = self._av
        pts, keys, demux_error = [], [], None
        try:
            self._container.seek(0)
            for pkt in self._container.demux(self._stream):
                if pkt.size == 0:
                    continue
                t = pkt.pts if pkt.pts is not None else pkt.dts
                pts.append(t)
                keys.append(bool(pkt.is_keyframe))
        except av.error.FFmpegError as e:
            demux_error = e
        n = len(pts)
        if n == 0:
            raise NoFramesError(self.path, "the video stream holds zero frames (no packets)")
        self.has_pts = all(t is not None for t in pts)
        if self.has_pts:
            order = np.argsort(np.asarray(pts, dtype=np.int64), kind="stable")
            p = np.asarray(pts, dtype=np.int64)[order]
            self.has_pts = bool(np.all(np.diff(p) > 0))
        if self.has_pts:
            self._pts = p
            self._pts_to_index = {int(v): i for i, v in enumerate(p)}
            self._key_pts = sorted(int(v) for v, k in zip(np.asarray(pts, dtype=np.int64), keys) if k) or [int(p[0])]
            self.timestamps = (p - p[0]).astype(np.float64) * float(self.time_base)
        else:  # no usable timestamps (some raw/avi streams): count frames, assume constant rate
            self._pts = None
            fps = self._declared_fps or 25.0
            self.timestamps = np.arange(n, dtype=np.float64) / fps
        self.num_frames = n
        span = float(self.timestamps[-1])
        if self._declared_fps > 0:
            self.fps = self._declared_fps
        elif span > 0:
            self.fps = (n - 1) / span
        else:
            self.fps = 1.0
        problems = []
        if demux_error is not None:
            problems.append(f"demuxing stopped with an error after {n} packets ({_av_msg(demux_error)})")
        problems += _truncation_problems(n, self.duration, self.declared_frames, self.declared_duration, self.fps)
        if problems:
            self._report(TruncatedVideoError, "; ".join(problems))
            self._trim_to_decodable()

    def _trim_to_decodable(self) -> None:
        """Non-strict truncated file: drop trailing frames whose packets exist but do not decode
        (decodes the last GOP or two, not the whole file)."""
        if self._pts is None:
            return
        saved, self.strict = self.strict, False
        try:
            keys = [k for k in self._key_pts if k <= int(self._pts[-1])]
            for key in reversed(keys[-4:]):
                last = -1
                for frame in self._decode_from(key):
                    if frame.pts is not None and int(frame.pts) in self._pts_to_index:
                        last = max(last, self._pts_to_index[int(frame.pts)])
                if last >= 0:
                    n = last + 1
                    if n < self.num_frames:
                        logger.warning("%s: only the first %d of %d frames decode", self.path, n, self.num_frames)
                        self._pts = self._pts[:n]
                        self.timestamps = self.timestamps[:n]
                        self.num_frames = n
                    return
        finally:
            self.strict = saved
            self.decode_errors = 0

    def _report(self, cls, reason: str) -> None:
        if self.strict:
            raise cls(self.path, reason + " (pass strict=False to use the decodable frames)")
        logger.warning("%s: %s; using the decodable frames", self.path, reason)

    # ------------------------------------------------------------------ decoding
    def _decode_from(self, seek_pts: int | None, limit_packets: int | None = None):
        """Yield decoded frames starting at the keyframe at or before ``seek_pts`` (None: start)."""
        av = self._av
        c, s = self._container, self._stream
        try:
            if seek_pts is None:
                c.seek(0)
            else:
                c.seek(int(seek_pts), stream=s, backward=True, any_frame=False)
        except av.error.FFmpegError as e:
            raise CorruptVideoError(self.path, f"seek failed ({_av_msg(e)})") from e
        it = c.demux(s)
        k = 0
        while True:
            try:
                pkt = next(it)
            except StopIteration:
                return
            except av.error.FFmpegError as e:  # truncated data: the demuxer cannot go on
                self.decode_errors += 1
                if self.strict:
                    raise CorruptVideoError(self.path, f"demuxing failed ({_av_msg(e)})") from e
                logger.warning("%s: demuxing stopped (%s)", self.path, _av_msg(e))
                pkt = None
            k += 1
            if limit_packets is not None and k > limit_packets:
                return
            try:
                frames = s.decode(pkt)
            except av.error.FFmpegError as e:
                self.decode_errors += 1
                if self.strict and limit_packets is None:
                    raise CorruptVideoError(self.path, f"corrupt video stream: decoding failed ({_av_msg(e)})") from e
                if self.decode_errors > _MAX_DECODE_ERRORS:
                    raise CorruptVideoError(self.path, f"too many bitstream errors ({self.decode_errors})") from e
                continue
            yield from frames
            if pkt is None:
                return

    def _to_rgb(self, frame) -> np.ndarray:
        arr = frame.to_ndarray(format="rgb24")
        return _rotate(arr, self.rotation)

    def _frame_index(self, frame, counter: int) -> int:
        if self._pts is None or frame.pts is None:
            return counter
        i = self._pts_to_index.get(int(frame.pts))
        if i is None:  # pts not in the packet index (should not happen): nearest
            i = int(min(max(np.searchsorted(self._pts, frame.pts), 0), self.num_frames - 1))
        return i

    def _keyframe_before(self, i: int) -> int:
        j = bisect.bisect_right(self._key_pts, int(self._pts[i])) - 1
        return self._key_pts[max(j, 0)]

    def iter_frames(self, indices) -> Iterator[tuple[int, np.ndarray]]:
        if self._pts is None and not hasattr(self, "timestamps"):
            self._build_index()
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size == 0:
            return
        if np.any(np.diff(idx) < 0):
            raise ValueError("iter_frames needs non-decreasing indices")
        seekable = self.mode == "seek" and self._pts is not None
        gen, cur, counter = None, -1, -1
        last_frame, last_i = None, -1
        pos = 0
        while pos < idx.size:
            target = int(idx[pos])
            if target == last_i:  # repeated index: reuse the frame we hold
                yield target, last_frame
                pos += 1
                continue
            need_seek = gen is None or cur >= target
            if seekable and not need_seek and self._keyframe_before(target) > int(self._pts[max(cur, 0)]):
                need_seek = True
            if need_seek:
                seek_pts = self._keyframe_before(target) if seekable else None
                gen, cur, counter = self._decode_from(seek_pts), -1, -1
                if not seekable:
                    counter = -1
            found = False
            for frame in gen:
                counter += 1
                i = self._frame_index(frame, counter)
                cur = i
                if i == target:
                    found = True
                    break
                if i > target:
                    break
            if not found:
                if cur > target and seekable and seek_pts is not None and seek_pts > int(self._pts[0]):
                    # the seek landed past the target (bad index in the file): decode from the start
                    seekable = False
                    gen = None
                    continue
                raise CorruptVideoError(
                    self.path,
                    f"frame {target} could not be decoded (stream ended or broke near frame {max(cur, 0)} "
                    f"of {self.num_frames}; truncated or corrupt)",
                )
            last_frame, last_i = self._to_rgb(frame), target
            yield target, last_frame
            pos += 1

    def close(self) -> None:
        c = getattr(self, "_container", None)
        if c is not None:
            try:
                c.close()
            finally:
                self._container = None


class DecordReader(_ReaderBase):
    """decord ``VideoReader`` behind the common interface.

    decord errors are raised as :class:`DecordFailure` (a :class:`CorruptVideoError`) so that
    ``backend="auto"`` can fall back to PyAV. ``probe`` is a light :class:`PyAVReader` used for
    rotation and declared length; decord itself ignores (and mangles) rotated videos, so rotated
    files are refused here.
    """

    backend = "decord"

    def __init__(self, path, probe: PyAVReader, *, strict: bool = True, num_threads: int = 0):
        self.path = check_path(path)
        try:
            import decord
        except Exception as e:
            raise BackendUnavailableError(self.path, f"decord cannot be imported ({e})") from e
        self._decord = decord
        if probe.rotation:
            raise DecordFailure(self.path, f"decord does not handle rotation metadata ({probe.rotation} degrees)")
        self.rotation = 0
        try:
            self._vr = decord.VideoReader(self.path, ctx=decord.cpu(0), num_threads=num_threads)
            n = len(self._vr)
            if n == 0:
                raise NoFramesError(self.path, "the video stream holds zero frames")
            fps = float(self._vr.get_avg_fps())
            ts = np.asarray(self._vr.get_frame_timestamp(np.arange(n)), dtype=np.float64)[:, 0]
        except VideoError:
            self.close()
            raise
        except Exception as e:
            self.close()
            raise DecordFailure(self.path, f"decord cannot read the file ({_first_line(e)})") from e
        self.num_frames = n
        self.fps = fps if fps > 0 else probe._declared_fps or 1.0
        self.timestamps = ts - ts[0]
        self.width, self.height = probe.width, probe.height
        problems = _truncation_problems(n, self.duration, probe.declared_frames, probe.declared_duration, self.fps)
        if problems:
            reason = "; ".join(problems)
            if strict:
                self.close()
                raise TruncatedVideoError(self.path, reason + " (pass strict=False to use the decodable frames)")
            logger.warning("%s: %s; using the decodable frames", self.path, reason)

    def _batch(self, uniq: np.ndarray) -> np.ndarray:
        try:
            arr = self._vr.get_batch(uniq.tolist()).asnumpy()
        except Exception as e:
            raise DecordFailure(self.path, f"decord failed to decode frames ({_first_line(e)})") from e
        if arr.shape[1:] != (self.height, self.width, 3):
            raise DecordFailure(self.path, f"decord returned frames of shape {arr.shape[1:]}, "
                                           f"expected {(self.height, self.width, 3)}")
        return arr

    def get_frames(self, indices) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64)
        uniq = np.unique(idx)
        out = self._batch(uniq)
        if idx.shape == uniq.shape and np.array_equal(idx, uniq):
            return out
        return out[np.searchsorted(uniq, idx)]

    def iter_frames(self, indices, batch: int = 8) -> Iterator[tuple[int, np.ndarray]]:
        idx = np.asarray(indices, dtype=np.int64)
        for s in range(0, idx.size, batch):
            part = idx[s : s + batch]
            frames = self.get_frames(part)
            for i, f in zip(part.tolist(), frames):
                yield i, f
            del frames

    def close(self) -> None:
        vr = self.__dict__.pop("_vr", None)
        if vr is not None:
            del vr  # decord releases the file in its destructor


class DecordFailure(CorruptVideoError):
    """decord could not read or decode the file (``backend='auto'`` falls back to PyAV)."""


def _truncation_problems(n, duration, declared_frames, declared_duration, fps) -> list[str]:
    out = []
    if declared_frames and n < declared_frames:
        out.append(f"truncated: the container declares {declared_frames} frames but only {n} are present")
    elif declared_duration and fps > 0:
        tol = max(3.0 / fps, 0.02 * declared_duration)
        if duration + tol < declared_duration:
            out.append(f"truncated: the container declares {declared_duration:.3f} s but frames cover only "
                       f"{duration:.3f} s")
    return out


def _av_msg(e: BaseException) -> str:
    msg = getattr(e, "strerror", None) or str(e)
    return _first_line(msg)


def _first_line(e) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return (lines[0] if lines else type(e).__name__)[:300]


def open_reader(path, backend: str = "auto", *, max_side: int = DEFAULT_MAX_SIDE, strict: bool = True,
                pyav_mode: str = "seek") -> _ReaderBase:
    """Open ``path`` with the requested backend (``"auto"``: decord, else PyAV)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "pyav" or (backend == "auto" and not decord_available()):
        return PyAVReader(path, max_side=max_side, strict=strict, mode=pyav_mode)
    # decord path: light PyAV probe first (classifies bad input the same way for every backend)
    with PyAVReader(path, max_side=max_side, strict=strict, index=False) as probe:
        try:
            return DecordReader(path, probe, strict=strict)
        except (DecordFailure, BackendUnavailableError) as e:
            if backend == "decord":
                if isinstance(e, DecordFailure) and strict and not probe.rotation:
                    probe._build_index()  # classify: raises TruncatedVideoError when PyAV sees truncation
                raise
            logger.info("%s; falling back to PyAV", e)
    return PyAVReader(path, max_side=max_side, strict=strict, mode=pyav_mode)
