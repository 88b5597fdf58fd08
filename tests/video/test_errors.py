"""Bad input: every class raises its documented VideoError subclass naming the file."""

from __future__ import annotations

import gc
import time

import numpy as np
import pytest
from video_helpers import decord_installed, open_fds

from videosparse.video import (
    CorruptVideoError,
    EmptyVideoFileError,
    FrameIndexError,
    NoFramesError,
    NotAFileError,
    NotAVideoError,
    NoVideoStreamError,
    ResolutionError,
    SamplingError,
    TruncatedVideoError,
    VideoError,
    VideoNotFoundError,
    iter_chunks,
    load_video,
    probe_video,
)

BACKENDS = ["auto", "pyav"] + (["decord"] if decord_installed() else [])

CASES = [
    ("missing", VideoNotFoundError, "no such file"),
    ("dir", NotAFileError, "directory"),
    ("empty", EmptyVideoFileError, "empty"),
    ("text", NotAVideoError, "not a recognised"),
    ("noise", NotAVideoError, "not a recognised"),
    ("audio", NoVideoStreamError, "no video stream"),
    ("truncated_mp4", TruncatedVideoError, "truncated"),
    ("truncated_webm", TruncatedVideoError, "truncated"),
    ("truncated_moov_end", TruncatedVideoError, "truncated"),
    ("corrupt_mp4", CorruptVideoError, "corrupt"),
    ("huge", ResolutionError, "absurd resolution"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("key,exc,words", CASES)
def test_bad_input_raises(media, key, exc, words, backend):
    path = media[key]
    t0 = time.monotonic()
    with pytest.raises(exc) as info:
        load_video(path, 8, backend=backend)
    assert time.monotonic() - t0 < 20  # no hang / endless loop on broken data
    err = info.value
    assert isinstance(err, VideoError)
    assert path in str(err) and err.path == path
    assert words in str(err).lower()
    with pytest.raises(exc):
        list(iter_chunks(path, 4, backend=backend))


def test_builtin_bases(media):
    with pytest.raises(FileNotFoundError):
        load_video(media["missing"])
    with pytest.raises(IsADirectoryError):
        load_video(media["dir"])
    with pytest.raises(IndexError):
        load_video(media["good"]["h264_mp4"].path, indices=[40])


def test_no_leaked_file_handles(media):
    gc.collect()
    before = open_fds()
    for _ in range(3):
        for key, exc, _words in CASES:
            for backend in BACKENDS:
                with pytest.raises(exc):
                    load_video(media[key], 4, backend=backend)
    gc.collect()
    assert open_fds() <= before


def test_truncated_non_strict_uses_decodable_frames(media):
    clip = load_video(media["truncated_webm"], 4, strict=False)
    assert clip.frames.shape[0] == 4
    assert clip.num_source_frames < 60
    clip = load_video(media["truncated_mp4"], 4, strict=False, backend="pyav")
    assert clip.frames.shape[0] == 4 and clip.num_source_frames <= 30


def test_sampling_errors(media):
    path = media["good"]["h264_mp4"].path
    with pytest.raises(FrameIndexError, match=r"\[40, -1\].*40 frames"):
        load_video(path, indices=[0, 40, -1])
    with pytest.raises(SamplingError, match="unknown sampling strategy"):
        load_video(path, strategy="random")
    with pytest.raises(SamplingError, match="num_frames"):
        load_video(path, num_frames=0)
    with pytest.raises(NoFramesError, match="time window"):
        load_video(path, start=10.0, end=11.0)
    with pytest.raises(SamplingError, match="window"):
        load_video(path, start=1.0, end=0.5)
    with pytest.raises(SamplingError):
        load_video(path, indices=[1], start=0.0)
    with pytest.raises(ValueError, match="backend"):
        load_video(path, backend="opencv")


def test_max_side_is_configurable(media):
    path = media["good"]["h264_mp4"].path
    with pytest.raises(ResolutionError, match="64x48"):
        probe_video(path, max_side=32)
    clip = load_video(media["huge"], 1, max_side=9000, backend="pyav")
    assert clip.frames.shape == (1, 16, 8208, 3)


def test_error_pickles():
    import pickle

    e = pickle.loads(pickle.dumps(TruncatedVideoError("/x.mp4", "truncated: why")))
    assert isinstance(e, TruncatedVideoError) and str(e) == "/x.mp4: truncated: why"


def test_bad_arrays():
    from videosparse.video import Clip

    with pytest.raises(VideoError, match="in-memory"):
        Clip.from_array(np.zeros((2, 4, 4, 2), np.uint8))
    with pytest.raises(VideoError):
        Clip.from_array(np.full((1, 4, 4, 3), 300.0))
