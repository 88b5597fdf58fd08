"""Video input for Video-LLaVA and LLaVA-OneVision: decoding (decord first, PyAV fallback), frame
sampling, preprocessing equal to transformers' processors (CLIP / PIL for Video-LLaVA,
``VideoProcessorSpec.llava_onevision()`` / torch for OneVision), and one error family for bad input.

    from videosparse.video import load_video, preprocess_frames, expand_video_prompt
    clip = load_video("v.mp4", num_frames=8)            # Clip: frames uint8 (8, H, W, 3) RGB
    pixel_values_videos = preprocess_frames(clip)[None]  # (1, 8, 3, 224, 224) float32
    prompt = expand_video_prompt("USER: <video>\\nWhat happens? ASSISTANT:", 8, 257)

Importing this package imports numpy only; PyAV, decord, PIL and torch are imported when used.
"""

from videosparse.video.backends import BACKENDS, DEFAULT_MAX_SIDE, DecordFailure, decord_available
from videosparse.video.clip import Clip
from videosparse.video.errors import (
    BackendUnavailableError,
    CorruptVideoError,
    EmptyVideoFileError,
    FrameIndexError,
    ImageNotVideoError,
    NoFramesError,
    NotAFileError,
    NotAVideoError,
    NoVideoStreamError,
    ResolutionError,
    SamplingError,
    TruncatedVideoError,
    VideoError,
    VideoNotFoundError,
)
from videosparse.video.loader import ChunkedVideo, VideoInfo, iter_chunks, load_video, probe_video
from videosparse.video.preprocess import (
    CLIP_MEAN,
    CLIP_STD,
    ONEVISION_MEAN,
    ONEVISION_STD,
    RESIZE_BACKENDS,
    VideoProcessorSpec,
    expand_video_prompt,
    preprocess_frames,
    preprocess_videos,
    video_tokens_per_frame,
)
from videosparse.video.sampling import STRATEGIES, sample_indices

__all__ = [
    "BACKENDS",
    "CLIP_MEAN",
    "CLIP_STD",
    "DEFAULT_MAX_SIDE",
    "ONEVISION_MEAN",
    "ONEVISION_STD",
    "RESIZE_BACKENDS",
    "STRATEGIES",
    "BackendUnavailableError",
    "Clip",
    "CorruptVideoError",
    "DecordFailure",
    "EmptyVideoFileError",
    "FrameIndexError",
    "ImageNotVideoError",
    "NoFramesError",
    "NotAFileError",
    "NotAVideoError",
    "NoVideoStreamError",
    "ResolutionError",
    "SamplingError",
    "TruncatedVideoError",
    "VideoError",
    "VideoInfo",
    "VideoNotFoundError",
    "VideoProcessorSpec",
    "decord_available",
    "expand_video_prompt",
    "iter_chunks",
    "ChunkedVideo",
    "load_video",
    "preprocess_frames",
    "preprocess_videos",
    "probe_video",
    "sample_indices",
    "video_tokens_per_frame",
]
