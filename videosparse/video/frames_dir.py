"""A folder of image frames read as a video (MVBench's TVQA frames: ``tvqa/frames_fps3_hq/<clip>/00001.jpg ...``).

The frames are the folder's image files (``.jpg``, ``.jpeg``, ``.png``, ``.bmp``, ``.webp``) in natural order
(``2.jpg`` before ``10.jpg``); frame ``i`` is shown at ``i / frame_rate`` seconds: a folder carries no timing,
so the rate is an argument (MVBench: 3 frames per second). Every frame must have the first one's size.
"""

from __future__ import annotations

import os
import re
from typing import Iterator

import numpy as np

from videosparse.video.backends import _ReaderBase
from videosparse.video.errors import CorruptVideoError, NoFramesError, ResolutionError, VideoError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def _natural_key(name: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name))


def frame_files(path: str) -> list:
    """The image files of a frame folder, in natural order."""
    names = [n for n in os.listdir(path) if n.lower().endswith(IMAGE_EXTS) and not n.startswith(".")]
    return sorted(names, key=_natural_key)


class FrameFolderReader(_ReaderBase):
    """A folder of frames behind the reader interface of the video backends (``backend == "frames"``)."""

    backend = "frames"

    def __init__(self, path, frame_rate: float, *, max_side: int, strict: bool = True) -> None:
        """``strict`` is accepted for the readers' common signature: an unreadable or odd-sized frame always
        raises (a folder has no partial stream to fall back on)."""
        from PIL import Image

        self.path = os.fspath(path)
        if not (isinstance(frame_rate, (int, float)) and not isinstance(frame_rate, bool) and frame_rate > 0):
            raise VideoError(self.path, f"frame_rate must be a number > 0 for a folder of frames, got {frame_rate!r}")
        self.fps = float(frame_rate)
        self.files = frame_files(self.path)
        if not self.files:
            raise NoFramesError(self.path, f"the folder holds no image frames ({', '.join(IMAGE_EXTS)})")
        first = os.path.join(self.path, self.files[0])
        try:
            with Image.open(first) as im:
                self.width, self.height = im.size
        except (OSError, ValueError) as e:
            raise CorruptVideoError(self.path, f"frame {self.files[0]} is not a readable image ({e})") from None
        if max(self.width, self.height) > max_side:
            raise ResolutionError(self.path, f"frames of {self.width}x{self.height} exceed max_side={max_side}")
        self.num_frames = len(self.files)
        self.timestamps = np.arange(self.num_frames, dtype=np.float64) / self.fps

    def iter_frames(self, indices) -> Iterator[tuple[int, np.ndarray]]:
        from PIL import Image

        for i in np.asarray(indices, dtype=np.int64).tolist():
            name = self.files[i]
            try:
                with Image.open(os.path.join(self.path, name)) as im:
                    frame = np.asarray(im.convert("RGB"))
            except (OSError, ValueError) as e:
                raise CorruptVideoError(self.path, f"frame {name} is not a readable image ({e})") from None
            if frame.shape[:2] != (self.height, self.width):
                raise CorruptVideoError(self.path, f"frame {name} is {frame.shape[1]}x{frame.shape[0]}, the folder's "
                                                   f"first frame {self.width}x{self.height}")
            yield i, frame

    def close(self) -> None:
        pass
