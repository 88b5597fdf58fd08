"""One exception family for everything that can go wrong with a video file.

Every error is a :class:`VideoError`; its message always names the file and the reason, and the
attributes ``path`` and ``reason`` carry them separately for evaluation runs that record the
failure and go on. Subclasses also derive from the matching built-in exception where one exists
(``FileNotFoundError``, ``IsADirectoryError``, ``IndexError``, ``ValueError``) so generic
handlers keep working.
"""

from __future__ import annotations

import os

__all__ = [
    "VideoError",
    "VideoNotFoundError",
    "NotAFileError",
    "EmptyVideoFileError",
    "NotAVideoError",
    "ImageNotVideoError",
    "NoVideoStreamError",
    "CorruptVideoError",
    "TruncatedVideoError",
    "NoFramesError",
    "FrameIndexError",
    "ResolutionError",
    "SamplingError",
    "BackendUnavailableError",
]


class VideoError(Exception):
    """Base class: ``str(err)`` is ``"<path>: <reason>"``."""

    def __init__(self, path: str | os.PathLike | None, reason: str):
        self.path = None if path is None else os.fspath(path)
        self.reason = reason
        where = self.path if self.path is not None else "<in-memory frames>"
        super().__init__(f"{where}: {reason}")

    def __str__(self) -> str:  # OSError subclasses would otherwise format errno/strerror
        where = self.path if self.path is not None else "<in-memory frames>"
        return f"{where}: {self.reason}"

    def __reduce__(self):  # picklable across worker processes
        return (self.__class__, (self.path, self.reason))


class VideoNotFoundError(VideoError, FileNotFoundError):
    """The path does not exist."""


class NotAFileError(VideoError, IsADirectoryError):
    """The path exists but is a directory (or another non-regular file)."""


class EmptyVideoFileError(VideoError):
    """The file has zero bytes."""


class NotAVideoError(VideoError):
    """No demuxer recognises the file (text, image, random bytes, ...)."""


class ImageNotVideoError(NotAVideoError):
    """The file is a still image (PNG, JPEG, BMP, WebP, ...), whatever its name says (a PNG renamed
    ``.mp4`` included): one picture is not a video, so it is refused rather than answered as copies
    of one frame. Detected by content (FFmpeg's image demuxers, one picture), never by extension."""


class NoVideoStreamError(VideoError):
    """A valid media container without a video stream (e.g. audio only)."""


class CorruptVideoError(VideoError):
    """The video stream cannot be decoded (bitstream errors)."""


class TruncatedVideoError(CorruptVideoError):
    """The container declares more frames / a longer duration than the data holds."""


class NoFramesError(VideoError):
    """The stream holds zero decodable frames (or the time window contains none)."""


class FrameIndexError(VideoError, IndexError):
    """Explicit frame indices outside ``[0, num_source_frames)``."""


class ResolutionError(VideoError, ValueError):
    """Width or height is zero, negative, or above the configured ``max_side``."""


class SamplingError(VideoError, ValueError):
    """Invalid sampling arguments (unknown strategy, bad window, bad counts)."""


class BackendUnavailableError(VideoError):
    """The requested decoding backend is not installed or not usable."""
