"""Output files (videosparse and video_eval): atomic writes, permissions from the umask, and one-line
errors that name the path.

* :func:`atomic_write` / :func:`atomic_write_text`: a reader sees the old file or the new one, never a
  half-written one (temporary file next to the target, fsync, ``os.replace``).
* New files get the mode ``open()`` would give them (``0o666`` minus the umask); a file that is replaced
  keeps its mode.
* :func:`writing`: turns an ``OSError`` (read-only directory, full disk, a directory where a file should
  be, ...) into an :class:`OutputError` whose message is one line naming the path that could not be
  written, never a temporary file.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from typing import Callable, Iterator


class OutputError(OSError):
    """An output file or directory cannot be written. ``str()`` is one line naming the path."""

    def __init__(self, message: str, path: str | None = None, errno_: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.errno_ = errno_

    def __str__(self) -> str:
        return str(self.args[0])


def output_error(path: str | os.PathLike, exc: OSError, action: str = "write", hint: str = "") -> OutputError:
    """An :class:`OutputError` for ``exc`` raised while doing ``action`` on ``path``."""
    if isinstance(exc, OutputError):
        return exc
    reason = exc.strerror or str(exc) or type(exc).__name__
    msg = f"cannot {action} {os.fspath(path)}: {reason}"
    if hint:
        msg += f" ({hint})"
    return OutputError(" ".join(msg.split()), os.fspath(path), exc.errno)


@contextlib.contextmanager
def writing(path: str | os.PathLike, action: str = "write", hint: str = "") -> Iterator[None]:
    """Re-raise any ``OSError`` of the block as an :class:`OutputError` naming ``path``."""
    try:
        yield
    except OSError as e:
        if isinstance(e, OutputError):
            raise
        raise output_error(path, e, action, hint) from e


def _create_temp(directory: str, name: str, suffix: str) -> str:
    """A new empty file in ``directory``, created with mode 0o666 so that the umask applies (unlike
    ``tempfile.mkstemp``, which always makes 0o600 files)."""
    for _ in range(100):
        tmp = os.path.join(directory, f".{name}.{secrets.token_hex(4)}.tmp{suffix}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"no free temporary file name in {directory}")


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> str:
    """Call ``write(tmp_path)`` on a temporary file next to ``path``, fsync it, then ``os.replace``
    it over ``path``. On any failure the temporary file is removed and ``path`` is left as it was; an
    ``OSError`` becomes an :class:`OutputError` naming ``path``."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    suffix = os.path.splitext(path)[1]
    with writing(path):
        tmp = _create_temp(directory, os.path.basename(path), suffix)
        try:
            try:
                mode = stat.S_IMODE(os.stat(path).st_mode)
            except FileNotFoundError:
                mode = None
            write(tmp)
            if mode is not None:
                os.chmod(tmp, mode)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> str:
    """Write ``text`` (UTF-8) to ``path`` atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return atomic_write(path, write)
