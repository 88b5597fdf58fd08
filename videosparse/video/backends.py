"""Decoding backends: decord (first choice) and PyAV (fallback, and the file prober).

Readers expose one interface::

    reader.num_frames, reader.fps, reader.timestamps (float64 (n,), first frame at 0.0),
    reader.width, reader.height (display orientation), reader.rotation, reader.backend
    reader.get_frames(indices)            -> uint8 (T, H, W, 3)
    reader.iter_frames(indices)           -> yields (index, uint8 (H, W, 3)), one frame held at a time
    reader.close()  (also a context manager)

``indices`` for ``get_frames`` may be in any order with repeats; ``iter_frames`` needs them
non-decreasing. Every PyAV or decord exception is translated into a :class:`VideoError`.

**Which answer wins.** PyAV builds the frame index (how many frames, their presentation times,
whether the file is truncated) for every backend, because it sees every packet and the decoder's
real output order. decord is used only to decode pixels, and only when its own index agrees with
PyAV's: same frame count, finite non-decreasing timestamps equal to PyAV's within half a frame,
and a file whose container timestamps PyAV found reliable. Otherwise decord's answer is wrong in a
way decord cannot notice (e.g. DivX AVIs with packed B-frames: decord returns timestamps of
+-3.8e17 s and frames in the wrong order), so :class:`DecordFailure` is raised and
``backend="auto"`` uses PyAV. The timestamps returned by the decord reader are PyAV's, so both
backends give identical timestamps.

**Frame index.** Frames are the non-empty video packets (AVI "repeat the previous frame" index
entries are zero-byte packets: they are not frames; the shown frame simply stays on screen, so
such a file reads as a variable-frame-rate clip). When the container's timestamps identify the
frames (present, unique, and the decoder's first output frames carry them in increasing order),
frames are located by timestamp and seeking is used. When they do not (no timestamps, duplicates,
or decode-order timestamps written as presentation times: AVI with packed B-frames, MP4s without
a composition-offset table), the whole stream is decoded once at open and frame ``i`` is the
decoder's ``i``-th output frame; its time is the ``i``-th smallest container timestamp (or
``i / fps`` without timestamps).

**Seeking** is used only where it lands where the index says. Containers whose format allows
timestamp discontinuities (libav's ``AVFMT_TS_DISCONT``: MPEG program streams ``.mpg``/``.vob``,
transport streams ``.ts``/``.m2ts``, Ogg, ...) have no seek index -- libav bisects byte positions and
lands on arbitrary packets -- so they are decoded sequentially from the start (``seek_reliable`` is
False) and decord, which seeks by timestamp, is refused for them. Every other seek is verified: the
first packet after it must be a keyframe at or before the one asked for, else the reader switches to
sequential decoding for good. A sequential pass converts only the sampled frames to RGB and holds one
frame, and its position is kept between ``iter_frames`` calls (chunks continue one pass), so memory
does not grow with the video's length; long passes show a tqdm bar (``progress``: on a terminal only
by default). Still images (PNG/JPEG/... also under a video name) raise :class:`ImageNotVideoError`.

**libav log lines.** libav's messages never reach stderr. While a file is opened and its packets
are demuxed (the index pass), PyAV's messages are captured and re-emitted through Python
``logging`` on loggers ``libav.<component>`` (e.g. ``libav.mov,mp4,m4a,3gp,3g2,mj2``), prefixed
with the path; libav errors at WARNING, warnings at INFO. They also classify errors (``moov atom
not found`` plus the file's box layout = a truncated MP4 whose index was at the end). This is done
by turning PyAV's Python log callback on for that window only, and only when no PyAV log level was
chosen (``av.logging.get_level() is None``, PyAV's default, which drops all messages); decoding
runs with PyAV's silent default because routing messages from FFmpeg's decoder threads into Python
can deadlock (PyAV issue #751). A ``NullHandler`` is added to the ``libav`` logger, so nothing is
printed unless you configure logging. decord bundles its own FFmpeg, which prints to stderr and
cannot be routed; the first decord reader sets it to QUIET (``decord.logging.set_level``) since
PyAV has already reported on the same file. Both settings are process-wide; nothing happens at
import time.
"""

from __future__ import annotations

import bisect
import logging
import os
import sys
from collections.abc import Iterator
from fractions import Fraction

import numpy as np

from videosparse.video.errors import (
    BackendUnavailableError,
    CorruptVideoError,
    EmptyVideoFileError,
    ImageNotVideoError,
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
_ORDER_CHECK_FRAMES = 12  # decoder output frames compared against the container timestamps at open
# libavformat's AVFMT_TS_DISCONT: the format allows timestamp discontinuities (MPEG-PS/VOB, MPEG-TS/M2TS, Ogg,
# live FLV, raw MPEG-4 part 2, HLS, ...). Such containers have no seek index: libav seeks by bisecting byte
# positions and reading timestamps, and lands on arbitrary packets (not the keyframe asked for).
_AVFMT_TS_DISCONT = 0x200
# libavformat's still-image demuxers (img2dec.c): "image2", "image2pipe" and "<codec>_pipe" (png_pipe, jpeg_pipe, ...)
_IMAGE_NAMES = {"mjpeg": "JPEG", "jpegls": "JPEG-LS", "jpeg2000": "JPEG 2000", "jpegxl": "JPEG XL", "png": "PNG",
                "bmp": "BMP", "webp": "WebP", "tiff": "TIFF", "gif": "GIF", "qoi": "QOI", "ppm": "PPM", "pgm": "PGM",
                "pbm": "PBM", "pam": "PAM", "exr": "OpenEXR", "dpx": "DPX", "sgi": "SGI", "psd": "PSD",
                "hdr": "Radiance HDR", "svg": "SVG", "xwd": "XWD", "pcx": "PCX", "dds": "DDS"}

_libav_logger = logging.getLogger("libav")
_logging_configured = {"av": False, "decord": False}
# libav level -> Python level used when we re-emit lines captured during open/index. A file-level
# VideoError (or our own warning in non-strict mode) is the user-facing signal; libav's text is detail.
_LIBAV_TO_PY = ((16, logging.WARNING), (24, logging.INFO))  # <= ERROR -> WARNING, WARNING -> INFO, else DEBUG


class _LibavCapture:
    """Collect libav's messages while a file is opened and demuxed, then re-emit them through
    ``logging`` (see :func:`_emit_libav`).

    PyAV's Python log callback is installed only for this window and only when nobody chose a
    PyAV log level (``av.logging.get_level() is None``, PyAV's default, which drops every libav
    message). Outside the window PyAV's silent default is restored: routing messages from FFmpeg's
    *decoder* threads into Python can deadlock when the GIL holder waits for those threads (seek,
    flush, close; PyAV issue #751), so decoding always runs with the silent callback. The window
    covers only ``av.open`` and the demux-only index pass, which log from the calling thread.
    """

    def __init__(self, av, path: str):
        self.av, self.path, self.messages = av, path, []
        self._restore = False

    def __enter__(self):
        av = self.av
        if not any(isinstance(h, logging.NullHandler) for h in _libav_logger.handlers):
            _libav_logger.addHandler(logging.NullHandler())  # nothing printed unless logging is configured
        with _capture_lock:
            if av.logging.get_level() is None:
                av.logging.set_level(av.logging.WARNING)
                self._restore = True
        self._cap = av.logging.Capture(True)
        self._logs = self._cap.__enter__()
        return self

    def flush(self) -> list[str]:
        msgs = _emit_libav(self.path, list(self._logs))
        self._logs.clear()
        self.messages += msgs
        return msgs

    def __exit__(self, *exc):
        self._cap.__exit__(*exc)
        if self._restore:
            with _capture_lock:
                self.av.logging.set_level(None)
        self.flush()
        return False


_capture_lock = __import__("threading").Lock()


def _configure_decord_logging(decord) -> None:
    """decord bundles its own FFmpeg, which prints to stderr; PyAV already reported the same file."""
    if _logging_configured["decord"]:
        return
    _logging_configured["decord"] = True
    try:
        decord.logging.set_level(decord.logging.QUIET)
    except Exception as e:  # pragma: no cover
        logger.debug("could not silence decord's FFmpeg logging: %s", e)


def _emit_libav(path: str, records) -> list[str]:
    """Re-emit libav log records captured with ``av.logging.Capture`` through ``logging``;
    returns the messages (for error classification)."""
    out = []
    for rec in records or ():
        try:
            level, name, message = rec[0], rec[1], rec[2]
        except Exception:  # pragma: no cover
            continue
        message = str(message).strip()
        if not message:
            continue
        out.append(message)
        py_level = next((pl for lim, pl in _LIBAV_TO_PY if level <= lim), logging.DEBUG)
        logging.getLogger(f"libav.{name or 'libav'}").log(py_level, "%s: %s", path, message)
    return out


def check_path(path) -> str:
    """Filesystem checks shared by all backends; returns ``os.fspath(path)``."""
    if path is None:
        raise VideoNotFoundError(None, "no path given")
    p = os.fspath(path)
    if not os.path.exists(p):
        raise VideoNotFoundError(p, "no such file")
    if os.path.isdir(p):
        raise NotAFileError(p, "is a directory, not a video file (a folder of frames is read with frame_rate=)")
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
    _end: float | None = None

    @property
    def duration(self) -> float:
        """End of the last frame: its timestamp plus its own display time when the container gives
        one (GIF delays, VFR), else plus one frame interval (``1 / fps``)."""
        if self._end is not None and self._end > float(self.timestamps[-1]):
            return float(self._end)
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
                 index: bool = True, progress: bool | None = None):
        if mode not in ("seek", "sequential"):
            raise ValueError(f"mode must be 'seek' or 'sequential', got {mode!r}")
        self.path = check_path(path)
        self.strict = strict
        self.mode = mode
        self.progress = progress
        self.seek_problem: str | None = None  # why seeking is not used (set when it is unreliable)
        self._cursor: _Cursor | None = None  # a decode in progress, resumed by the next iter_frames call
        self._first_packet = None  # (pts or dts, size) of the stream's first packet, to verify rewinds
        self.decode_errors = 0
        self.index_mode = "unindexed"  # "pts" | "decode-order" once indexed
        self.libav_messages: list[str] = []
        av = self._av = _import_av(self.path)
        self._container = None
        try:
            with _LibavCapture(av, self.path) as cap:
                try:
                    self._container = av.open(self.path, metadata_errors="ignore")
                except av.error.FFmpegError as e:
                    raise _open_error(self.path, e, cap.flush() + _exc_log(e)) from e
                except (OSError, UnicodeDecodeError) as e:
                    raise NotAVideoError(self.path, f"cannot be opened as media ({e})") from e
            self.libav_messages += cap.messages
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
        fmt = c.format
        self.format_name = str(fmt.name or "")
        self._check_not_an_image(cc)
        if int(getattr(fmt, "flags", 0) or 0) & _AVFMT_TS_DISCONT:
            self.seek_problem = (f"{fmt.long_name or self.format_name} ({self.format_name}) has no seek index: seeks "
                                 f"land on arbitrary packets, not on the keyframe asked for")
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

    @property
    def seek_reliable(self) -> bool:
        """False for containers without a seek index (MPEG-PS/TS, ...) and after a seek that missed:
        frames are then decoded sequentially from the start, never by seeking."""
        return self.seek_problem is None

    def _check_not_an_image(self, cc) -> None:
        """A still image is not a video, whatever the file is called: FFmpeg opens PNG/JPEG/... files (also
        renamed ``.mp4``/``.avi``) with an image demuxer that yields the picture as a one-frame stream,
        which would be sampled as copies of one frame. Decided by content (the demuxer FFmpeg's probe
        chose from the bytes, and one picture in it); a pipe of several images is a video."""
        name = self.format_name
        if not (name in ("image2", "image2pipe") or name.endswith("_pipe")):
            return
        pictures = 0
        try:
            for pkt in self._container.demux(self._stream):
                if pkt.size:
                    pictures += 1
                    if pictures > 1:
                        break
        except self._av.error.FFmpegError:
            pass
        if pictures > 1:
            return  # the next decode rewinds
        kind = _IMAGE_NAMES.get(str(cc.name or ""), str(cc.name or name.replace("_pipe", "")).upper())
        raise ImageNotVideoError(self.path, f"is a {kind} image, not a video (a single still picture; detected from "
                                            f"the file's content, not its name)")

    def _build_index(self) -> None:
        """Demux every packet (no decoding) and decide how frames are identified (see module doc)."""
        av = self._av
        times, durs, keys, demux_error = [], [], [], None
        self._rewind()  # flushes the decoder: done before libav messages are routed
        with _LibavCapture(av, self.path) as cap:  # demuxing only: no decoder thread runs here
            try:
                for pkt in self._container.demux(self._stream):
                    if pkt.size == 0:  # flush packet, or an AVI "repeat the previous frame" index entry
                        continue
                    if not times:
                        self._first_packet = _packet_id(pkt)
                    times.append(pkt.pts if pkt.pts is not None else pkt.dts)
                    durs.append(int(pkt.duration or 0))
                    keys.append(bool(pkt.is_keyframe))
            except av.error.FFmpegError as e:
                demux_error = e
        self.libav_messages += cap.messages
        n = len(times)
        if n == 0:
            raise NoFramesError(self.path, "the video stream holds zero frames (no packets)")
        tb = float(self.time_base)
        have_times = all(t is not None for t in times)
        t = np.asarray(times, dtype=np.int64) if have_times else None
        sorted_t = np.sort(t, kind="stable") if have_times else None
        unique = have_times and bool(np.all(np.diff(sorted_t) > 0))
        # where the data ends (for truncation): latest packet end, using each packet's own duration
        frame_ticks = (1.0 / self._declared_fps / tb) if self._declared_fps > 0 else 0.0
        if have_times:
            ends = t + np.where(np.asarray(durs) > 0, np.asarray(durs), frame_ticks)
            self._covered = float(ends.max() - sorted_t[0]) * tb
        else:
            self._covered = None
        why_not_pts = None
        if not have_times:
            why_not_pts = "packets carry no timestamps"
        elif not unique:
            why_not_pts = "duplicate packet timestamps"
        else:
            why_not_pts = self._decoder_order_problem(sorted_t)
        if why_not_pts is None:
            self.index_mode = "pts"
            self._pts = sorted_t
            self._pts_to_index = {int(v): i for i, v in enumerate(sorted_t)}
            self._key_pts = sorted(int(v) for v, k in zip(t, keys) if k) or [int(sorted_t[0])]
            self.timestamps = (sorted_t - sorted_t[0]).astype(np.float64) * tb
            self.num_frames = n
        else:
            self._index_by_decoding(why_not_pts, n, sorted_t if have_times else None)
        n = self.num_frames
        span = float(self.timestamps[-1])
        if self._declared_fps > 0:
            self.fps = self._declared_fps
        elif span > 0:
            self.fps = (n - 1) / span
        else:
            self.fps = 1.0
        if self._covered is not None and self._covered > span:
            self._end = self._covered  # the last frame stays on screen for its own duration (GIF, VFR)
        if self.declared_frames > n:
            logger.debug("%s: %d frames in %d declared frame slots (the others repeat the previous frame)",
                         self.path, n, self.declared_frames)
        problems = []
        if demux_error is not None:
            problems.append(f"demuxing stopped with an error after {len(times)} packets ({_av_msg(demux_error)})")
        problems += _truncation_problems(len(times), self._covered, self.declared_frames, self.declared_duration,
                                         self.fps)
        if problems:
            self._report(TruncatedVideoError, "; ".join(problems))
            self._trim_to_decodable()

    def _decoder_order_problem(self, sorted_t: np.ndarray) -> str | None:
        """Decode the first frames; their timestamps must be the smallest container timestamps in
        increasing order. A decoder emits frames in presentation order, so anything else means the
        container's timestamps are not presentation times (or not attached to the right frames)."""
        want = min(_ORDER_CHECK_FRAMES, sorted_t.size)
        got = []
        saved, self.strict = self.strict, False
        try:
            for frame in self._decode_from(None, limit_packets=4 * want + 16):
                got.append(frame.pts)
                if len(got) >= want:
                    break
        finally:
            self.strict = saved
            self.decode_errors = 0
        if any(p is None for p in got):
            return "decoded frames carry no timestamps"
        if not got:
            return "no frame decoded from the first packets"
        g = np.asarray(got, dtype=np.int64)
        if np.any(np.diff(g) <= 0):
            return (f"decoder output timestamps are out of order ({g[:8].tolist()}...): the container stores "
                    f"decode-order timestamps (e.g. packed B-frames in AVI)")
        if not np.array_equal(g, sorted_t[: g.size]):
            return "decoded frame timestamps do not match the container's packet timestamps"
        return None

    def _index_by_decoding(self, why: str, packets: int, sorted_t: np.ndarray | None) -> None:
        """Index by the decoder's output order: decode the whole stream once (no RGB conversion)."""
        self.index_mode = "decode-order"
        logger.info("%s: %s; indexing frames in decoder output order (one decoding pass)", self.path, why)
        count = 0
        saved, self.strict = self.strict, False
        try:
            for _ in self._decode_from(None, progress=("indexing", packets)):
                count += 1
        finally:
            self.strict = saved
            errors, self.decode_errors = self.decode_errors, 0
        if count == 0:
            raise CorruptVideoError(self.path, f"zero decodable frames ({errors} bitstream errors)")
        if errors:
            self._report(CorruptVideoError, f"corrupt video stream: {errors} bitstream errors while indexing")
        if count != packets:
            logger.info("%s: %d packets decode to %d frames", self.path, packets, count)
        self._pts = None
        self.num_frames = count
        if sorted_t is not None and sorted_t.size >= count:
            self.timestamps = (sorted_t[:count] - sorted_t[0]).astype(np.float64) * float(self.time_base)
        else:
            self.timestamps = np.arange(count, dtype=np.float64) / (self._declared_fps or 25.0)

    def _trim_to_decodable(self) -> None:
        """Non-strict truncated file: drop trailing frames whose packets exist but do not decode
        (decodes the last GOP or two, not the whole file)."""
        if self._pts is None:
            return
        saved, self.strict = self.strict, False
        try:
            keys = [k for k in self._key_pts if k <= int(self._pts[-1])]
            # without reliable seeking: one sequential pass over the whole stream
            starts = reversed(keys[-4:]) if self.seek_reliable else [None]
            for key in starts:
                last = -1
                try:
                    for frame in self._decode_from(key, progress=None if key is not None else ("checking", None)):
                        if frame.pts is not None and int(frame.pts) in self._pts_to_index:
                            last = max(last, self._pts_to_index[int(frame.pts)])
                except _SeekMissed as e:
                    self._seek_missed(e)
                    return self._trim_to_decodable()
                if last >= 0:
                    n = last + 1
                    if n < self.num_frames:
                        logger.warning("%s: only the first %d of %d frames decode", self.path, n, self.num_frames)
                        self._pts = self._pts[:n]
                        self.timestamps = self.timestamps[:n]
                        self.num_frames = n
                        self._end = None
                    return
        finally:
            self.strict = saved
            self.decode_errors = 0

    def _report(self, cls, reason: str) -> None:
        if self.strict:
            raise cls(self.path, reason + " (pass strict=False to use the decodable frames)")
        logger.warning("%s: %s; using the decodable frames", self.path, reason)

    # ------------------------------------------------------------------ decoding
    def _rewind(self) -> None:
        """Back to the first packet. Raw elementary streams (``.h264``, ``.m4v``) cannot seek at
        all (libav: "Operation not permitted"), and containers without a seek index (MPEG-PS/TS)
        may not land on the first packet: reopen the file instead."""
        av = self._av
        if self.seek_reliable:
            try:
                self._container.seek(0)
                return
            except av.error.FFmpegError as e:
                logger.debug("%s: cannot seek to the start (%s); reopening", self.path, _av_msg(e))
        self._reopen()

    def _reopen(self) -> None:
        av = self._av
        index = self._stream.index
        self._container.close()
        self._container = av.open(self.path, metadata_errors="ignore")
        self._stream = self._container.streams[index]
        self._stream.thread_type = "AUTO"

    def _decode_from(self, seek_pts: int | None, limit_packets: int | None = None, progress=None):
        """Decoded frames (a generator) starting at the keyframe at or before ``seek_pts`` (None: start).
        The container is repositioned now, not when the generator is first advanced.

        Where the demuxer landed is verified before anything is decoded: after a seek, the first packet
        must be a keyframe at or before ``seek_pts`` (else :class:`_SeekMissed` is raised: the caller
        decodes sequentially instead); after a rewind, it must be the stream's first packet (else the
        file is reopened). ``progress=(label, total)`` shows a progress bar over the frames decoded
        (long sequential passes; see :func:`_progress_bar`)."""
        av = self._av
        self._cursor = None  # the container is repositioned: any decode in progress is invalid
        c, s = self._container, self._stream
        try:
            if seek_pts is None:
                self._rewind()
            else:
                c.seek(int(seek_pts), stream=s, backward=True, any_frame=False)
        except av.error.FFmpegError as e:
            raise CorruptVideoError(self.path, f"seek failed ({_av_msg(e)})") from e
        it = self._container.demux(self._stream)
        return self._decode_packets(it, seek_pts, limit_packets, progress)

    def _decode_packets(self, it, seek_pts, limit_packets, progress):
        bar = None
        if progress is not None:
            bar = _progress_bar(self.progress, progress[1], f"{progress[0]} {os.path.basename(self.path)}")
        try:
            yield from self._decode_packets_inner(it, seek_pts, limit_packets, bar)
        finally:
            if bar is not None:
                bar.close()

    def _decode_packets_inner(self, it, seek_pts, limit_packets, bar):
        av = self._av
        s = self._stream
        k = 0
        verify = True
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
            if verify and pkt is not None and pkt.size:
                verify = False
                if seek_pts is not None:
                    where = pkt.pts if pkt.pts is not None else pkt.dts
                    if not (pkt.is_keyframe and where is not None and where <= seek_pts):
                        raise _SeekMissed(f"a seek to the keyframe at pts {seek_pts} landed on "
                                          f"{'a keyframe' if pkt.is_keyframe else 'a non-keyframe packet'} at pts "
                                          f"{where}")
                elif self._first_packet is not None and _packet_id(pkt) != self._first_packet:
                    logger.debug("%s: rewinding did not reach the first packet; reopening", self.path)
                    self._reopen()
                    it, s = self._container.demux(self._stream), self._stream
                    continue
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
            if bar is not None and frames:
                bar.update(len(frames))
            yield from frames
            if pkt is None:
                return

    def _seek_missed(self, e: "_SeekMissed") -> None:
        self.seek_problem = f"seeking is unreliable in this file ({e})"
        logger.info("%s: %s; decoding sequentially from the start instead", self.path, self.seek_problem)

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
        """Yield ``(index, RGB frame)`` for non-decreasing ``indices``. Only the wanted frames are
        converted to RGB and only the last one is held, so memory does not grow with the video's length.
        The decode position is kept between calls: consecutive calls with increasing indices (the
        chunked reader) continue one pass instead of restarting it, which matters for files that are
        decoded sequentially (no reliable seeking, decoder-order index)."""
        if self._pts is None and not hasattr(self, "timestamps"):
            self._build_index()
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size == 0:
            return
        if np.any(np.diff(idx) < 0):
            raise ValueError("iter_frames needs non-decreasing indices")
        st = self._cursor if self._cursor is not None else _Cursor()
        pos = 0
        while pos < idx.size:
            seekable = self.mode == "seek" and self._pts is not None and self.seek_reliable
            target = int(idx[pos])
            if target == st.last_i:  # repeated index: reuse the frame we hold
                yield target, st.last_frame
                pos += 1
                continue
            need_seek = st.gen is None or st.cur >= target
            if seekable and not need_seek and self._keyframe_before(target) > int(self._pts[max(st.cur, 0)]):
                need_seek = True
            if need_seek:
                st = _Cursor()
                st.seek_pts = self._keyframe_before(target) if seekable else None
                st.gen = self._decode_from(st.seek_pts, progress=None if seekable else ("decoding", self.num_frames))
                self._cursor = st  # after _decode_from, which resets it
            found = False
            try:
                for frame in st.gen:
                    st.counter += 1
                    i = self._frame_index(frame, st.counter)
                    st.cur = i
                    if i == target:
                        found = True
                        break
                    if i > target:
                        break
            except _SeekMissed as e:  # the demuxer did not land on the keyframe: never seek again here
                self._seek_missed(e)
                st.gen = None
                continue
            if not found:
                if st.cur > target and seekable and st.seek_pts is not None and st.seek_pts > int(self._pts[0]):
                    # the seek landed past the target (bad index in the file): decode from the start
                    self._seek_missed(_SeekMissed(f"a seek for frame {target} landed past it"))
                    st.gen = None
                    continue
                self._cursor = None
                raise CorruptVideoError(
                    self.path,
                    f"frame {target} could not be decoded (stream ended or broke near frame {max(st.cur, 0)} "
                    f"of {self.num_frames}; truncated or corrupt)",
                )
            st.last_frame, st.last_i = self._to_rgb(frame), target
            del frame
            yield target, st.last_frame
            pos += 1

    def close(self) -> None:
        cur, self._cursor = getattr(self, "_cursor", None), None
        if cur is not None and cur.gen is not None:
            cur.gen.close()  # closes its progress bar
        c = getattr(self, "_container", None)
        if c is not None:
            try:
                c.close()
            finally:
                self._container = None


class _Cursor:
    """Where a decode in progress is: its frame generator, the last decoded index and the last frame
    handed out (kept for a repeated index)."""

    __slots__ = ("gen", "cur", "counter", "seek_pts", "last_i", "last_frame")

    def __init__(self):
        self.gen, self.cur, self.counter, self.seek_pts, self.last_i, self.last_frame = None, -1, -1, None, -1, None


class _SeekMissed(Exception):
    """A seek did not land where the index says the keyframe is (internal: the reader then decodes
    sequentially)."""


def _packet_id(pkt) -> tuple:
    return (pkt.pts if pkt.pts is not None else pkt.dts, int(pkt.size))


def _progress_bar(enabled: bool | None, total: int | None, desc: str):
    """A tqdm bar on stderr for a long decoding pass, or None. ``enabled``: ``False`` never, ``True``
    always, ``None`` (default) only on a terminal and only once the pass has run for 2 s."""
    if enabled is False:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with transformers
        return None
    kw = {} if enabled else {"disable": None, "delay": 2.0}
    return tqdm(total=total, desc=desc, unit="frame", file=sys.stderr, leave=False, dynamic_ncols=True,
                mininterval=0.5, **kw)


class DecordReader(_ReaderBase):
    """decord ``VideoReader`` behind the common interface, checked against PyAV's index.

    ``probe`` is an indexed :class:`PyAVReader` of the same file. decord's own index is accepted
    only when it agrees with PyAV's (see the module docstring: PyAV wins): the container's
    timestamps must identify the frames (``probe.index_mode == "pts"``), the frame counts must be
    equal, and decord's timestamps must be finite, non-decreasing and within half a frame of
    PyAV's. The reader then reports PyAV's timestamps, fps and duration, so both backends agree
    exactly. Any disagreement raises :class:`DecordFailure` (a :class:`CorruptVideoError`) naming
    it, and ``backend="auto"`` falls back to PyAV. decord also ignores (and mangles) rotated videos,
    so rotated files are refused here.
    """

    backend = "decord"

    def __init__(self, path, probe: PyAVReader, *, strict: bool = True, num_threads: int = 0):
        self.path = check_path(path)
        try:
            import decord
        except Exception as e:
            raise BackendUnavailableError(self.path, f"decord cannot be imported ({e})") from e
        self._decord = decord
        _configure_decord_logging(decord)
        if probe.rotation:
            raise DecordFailure(self.path, f"decord does not handle rotation metadata ({probe.rotation} degrees)")
        if not probe.seek_reliable:
            raise DecordFailure(
                self.path, f"decord seeks by timestamp, and {probe.seek_problem}; decord's frames would be wrong "
                           f"(PyAV decodes this file sequentially)")
        if probe.index_mode != "pts":
            raise DecordFailure(
                self.path, "decord locates frames by container timestamps, which do not identify the frames in this "
                           "file (PyAV indexes it in decoder output order); decord's frames and timestamps would be "
                           "wrong")
        self.rotation = 0
        try:
            self._vr = decord.VideoReader(self.path, ctx=decord.cpu(0), num_threads=num_threads)
            n = len(self._vr)
            if n == 0:
                raise NoFramesError(self.path, "the video stream holds zero frames")
            ts = np.asarray(self._vr.get_frame_timestamp(np.arange(n)), dtype=np.float64)[:, 0]
        except VideoError:
            self.close()
            raise
        except Exception as e:
            self.close()
            raise DecordFailure(self.path, f"decord cannot read the file ({_first_line(e)})") from e
        problem = _decord_disagreement(n, ts, probe)
        if problem:
            self.close()
            raise DecordFailure(self.path, f"decord's frame index disagrees with the container's ({problem})")
        self.num_frames = n
        self.fps = probe.fps
        self.timestamps = probe.timestamps.copy()
        self._end = probe._end
        self.width, self.height = probe.width, probe.height

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


def _decord_disagreement(n: int, ts: np.ndarray, probe: PyAVReader) -> str | None:
    """Why decord's index (``n`` frames at times ``ts``) cannot be trusted, or None."""
    if n != probe.num_frames:
        return f"decord counts {n} frames, the stream has {probe.num_frames}"
    if not np.all(np.isfinite(ts)):
        return "decord reports non-finite timestamps"
    rel = ts - ts[0]
    if np.any(np.diff(rel) < -1e-6):
        return "decord's timestamps are not in increasing order"
    tol = 0.5 / probe.fps if probe.fps > 0 else 0.02
    err = float(np.max(np.abs(rel - probe.timestamps)))
    if err > tol:
        return f"decord's timestamps differ from the stream's by up to {err:.3g} s"
    return None


def _truncation_problems(packets, covered, declared_frames, declared_duration, fps) -> list[str]:
    """Is the data shorter than the container declares?

    Time coverage decides when packet times are known: ``covered`` is the end of the latest packet
    (its time plus its own duration) relative to the first. Declared frame counts are only used
    without times, because AVI counts zero-byte "repeat the previous frame" entries as frames
    (tree.avi declares 444 frames, holds 68 and covers all 29.6 s of its 444 frame slots).
    """
    out = []
    if declared_duration and fps > 0 and covered is not None:
        tol = max(3.0 / fps, 0.02 * declared_duration)
        if covered + tol < declared_duration:
            out.append(f"truncated: the container declares {declared_duration:.3f} s but frames cover only "
                       f"{covered:.3f} s")
    elif declared_frames and packets < declared_frames:
        out.append(f"truncated: the container declares {declared_frames} frames but only {packets} are present")
    return out


def _exc_log(e: BaseException) -> list[str]:
    """libav's own message attached to a PyAV exception (``e.log``: (level, name, message))."""
    log = getattr(e, "log", None)
    if isinstance(log, tuple) and len(log) >= 3 and log[2]:
        return [str(log[2]).strip()]
    return []


_TRUNCATED_OPEN_MARKERS = ("moov atom not found", "partial file")
_MP4_TOP_BOXES = {b"ftyp", b"styp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"uuid", b"moof", b"mfra",
                  b"meta", b"sidx", b"pdin"}


def _mp4_layout(path: str) -> tuple[bool, bool, bool]:
    """Walk the top-level ISO-BMFF boxes: ``(is_mp4, has_moov, cut_inside_a_box)``.

    Cheap (reads 8-16 bytes per box, a handful of boxes) and structural: an MP4/MOV whose boxes
    are valid up to the end of the data, that has ``ftyp``/``mdat`` but no ``moov`` and whose last
    box runs past the end of the file was cut short before its index (written last) was stored.
    """
    size = os.path.getsize(path)
    seen, cut, pos = [], False, 0
    try:
        with open(path, "rb") as f:
            while pos + 8 <= size and len(seen) < 64:
                f.seek(pos)
                head = f.read(16)
                box_len, kind = int.from_bytes(head[:4], "big"), head[4:8]
                if kind not in _MP4_TOP_BOXES:
                    break
                if box_len == 1 and len(head) >= 16:
                    box_len = int.from_bytes(head[8:16], "big")
                elif box_len == 0:
                    box_len = size - pos
                if box_len < 8:
                    break
                seen.append(kind)
                if pos + box_len > size:
                    cut = True
                    break
                pos += box_len
    except OSError:
        return False, False, False
    is_mp4 = bool(seen) and seen[0] in (b"ftyp", b"styp", b"wide", b"free", b"skip", b"mdat", b"pnot")
    return is_mp4, b"moov" in seen, cut


def _open_error(path: str, e: BaseException, messages: list[str]) -> VideoError:
    """Classify a failed ``av.open`` from libav's log lines and the file's structure, not from
    the exception text: an MP4/MOV whose index (moov atom) is missing and whose data stops inside
    a box was cut short before the index (written at the end) was stored -- a truncated video, not
    an unknown format. A text file named ``.mp4`` also makes libav say "moov atom not found", so
    the box walk decides."""
    hits = [m for m in dict.fromkeys(messages) if any(k in m.lower() for k in _TRUNCATED_OPEN_MARKERS)]
    is_mp4, has_moov, cut = _mp4_layout(path)
    if is_mp4 and not has_moov and (cut or hits):
        detail = "; ".join(hits) or "no moov box"
        return TruncatedVideoError(
            path, f"truncated: the MP4 index (moov atom) is missing ({detail}); the file was cut before its index "
                  f"was written")
    return NotAVideoError(path, f"not a recognised video/container format ({_av_msg(e)})")


def _av_msg(e: BaseException) -> str:
    msg = getattr(e, "strerror", None) or str(e)
    return _first_line(msg)


def _first_line(e) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return (lines[0] if lines else type(e).__name__)[:300]


def open_reader(path, backend: str = "auto", *, max_side: int = DEFAULT_MAX_SIDE, strict: bool = True,
                pyav_mode: str = "seek", progress: bool | None = None, frame_rate: float | None = None) -> _ReaderBase:
    """Open ``path`` with the requested backend (``"auto"``: decord when it agrees with PyAV's
    index, else PyAV).

    PyAV always opens and indexes the file first (it classifies bad input the same way for every
    backend and provides the reference index); for decord that reader is then closed, for a
    fallback it is returned as is (no second open). ``progress``: tqdm bar for long sequential
    decoding passes (``None``: only on a terminal; ``False``: never). ``frame_rate``: a folder of image frames
    is read as a video at this rate (``videosparse.video.frames_dir``); without it a folder is refused.
    """
    if frame_rate is not None and path is not None and os.path.isdir(os.fspath(path)):
        from videosparse.video.frames_dir import FrameFolderReader

        return FrameFolderReader(path, frame_rate, max_side=max_side, strict=strict)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "pyav" or (backend == "auto" and not decord_available()):
        return PyAVReader(path, max_side=max_side, strict=strict, mode=pyav_mode, progress=progress)
    pyav = PyAVReader(path, max_side=max_side, strict=strict, mode=pyav_mode, progress=progress)
    try:
        reader = DecordReader(path, pyav, strict=strict)
    except (DecordFailure, BackendUnavailableError) as e:
        if backend == "decord":
            pyav.close()
            raise
        logger.info("%s; falling back to PyAV", e)
        return pyav
    except BaseException:
        pyav.close()
        raise
    pyav.close()
    return reader
