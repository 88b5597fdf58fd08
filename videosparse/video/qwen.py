"""Video input for Qwen2.5-VL and Qwen3-VL, equal to transformers 5.23's processors, without torchvision.

transformers' ``Qwen2VLVideoProcessor`` (used by Qwen2.5-VL) and ``Qwen3VLVideoProcessor`` are torchvision
``BaseVideoProcessor`` subclasses, so they cannot run here; this module is the same algorithm:

1. **sampling** (:func:`sample_indices`): which source frames to keep (each family's ``sample_frames``, and
   the qwen-vl-utils rule the model cards use);
2. **resize size** (:func:`smart_resize`, :func:`qwen3_smart_resize`, :func:`video_resize_hw`): both sides
   multiples of ``factor = patch_size * merge_size`` (28 for Qwen2.5-VL, 32 for Qwen3-VL), pixels within
   ``[min_pixels, max_pixels]`` -- per frame for Qwen2.5-VL, for the whole clip (``t * h * w``) for Qwen3-VL;
3. **pixels** (:func:`preprocess_video`): torchvision's uint8 antialiased bicubic resize (the torch back end
   of :mod:`videosparse.video.preprocess`, bit-identical to what transformers runs on CPU), fused
   rescale + normalise in float32, the clip padded to a multiple of ``temporal_patch_size`` by repeating its
   last frame, then cut into ``(grid_t * grid_h * grid_w, 3 * temporal_patch_size * patch_size ** 2)``
   patches in the processors' order (identical for both families);
4. **prompt / time** (:func:`qwen2_5_video_prompt`, :func:`second_per_grid_ts`, :func:`qwen3_timestamps`,
   :func:`qwen3_video_prompt`, :func:`expand_video_placeholders`): the text each processor substitutes for
   one ``<|video_pad|>`` and the temporal metadata the models take.

    from videosparse.video.qwen import QwenVideoSpec, sample_indices, preprocess_video
    spec = QwenVideoSpec.qwen3_vl()
    idx = sample_indices(clip_len, 30.0, family="qwen3_vl")        # int64 source indices
    out = preprocess_video(frames_uint8[idx], spec)                 # pixel_values_videos, video_grid_thw
    text = qwen3_video_prompt(out["video_grid_thw"][0], qwen3_timestamps(idx, 30.0))

Importing this module imports numpy only; torch is imported when used.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from videosparse.video.clip import Clip
from videosparse.video.preprocess import CLIP_MEAN, CLIP_STD, _torch_rescale_normalize, _torch_resize

__all__ = [
    "FAMILIES",
    "QWEN3_MEAN",
    "QWEN3_STD",
    "QwenVideoSpec",
    "smart_resize",
    "qwen3_smart_resize",
    "video_resize_hw",
    "video_grid_thw",
    "sample_indices",
    "preprocess_video",
    "sampled_fps",
    "second_per_grid_ts",
    "qwen3_timestamps",
    "qwen2_5_video_prompt",
    "qwen3_video_prompt",
    "expand_video_placeholders",
    "VIDEO_TOKEN",
    "VISION_START",
    "VISION_END",
]

FAMILIES = ("qwen2_5_vl", "qwen3_vl")
_FAMILY_ALIASES = {"qwen2_5_vl": "qwen2_5_vl", "qwen2_vl": "qwen2_5_vl", "qwen2.5_vl": "qwen2_5_vl",
                   "qwen3_vl": "qwen3_vl", "qwen3_vl_moe": "qwen3_vl"}
_SAMPLING_RULES = ("qwen2_5_vl", "qwen3_vl", "qwen_vl_utils")

# transformers' IMAGENET_STANDARD_MEAN / _STD (Qwen3VLVideoProcessor's class defaults, and the checkpoints')
QWEN3_MEAN = (0.5, 0.5, 0.5)
QWEN3_STD = (0.5, 0.5, 0.5)

VIDEO_TOKEN = "<|video_pad|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"

MAX_ASPECT_RATIO = 200
_DEFAULT_VIDEO_FPS = 24  # what both processors assume when a video's fps is unknown

# transformers 5.23 class attributes (what a config that leaves a key out gets)
_CLASS_DEFAULTS: dict[str, dict[str, Any]] = {
    # Qwen2VLVideoProcessor (AutoVideoProcessor maps qwen2_5_vl to it)
    "qwen2_5_vl": dict(patch_size=14, temporal_patch_size=2, merge_size=2, min_pixels=128 * 28 * 28,
                       max_pixels=28 * 28 * 768, image_mean=CLIP_MEAN, image_std=CLIP_STD, fps=None,
                       num_frames=None, min_frames=4, max_frames=768, do_sample_frames=False,
                       max_video_tokens=128000),
    # Qwen3VLVideoProcessor
    "qwen3_vl": dict(patch_size=16, temporal_patch_size=2, merge_size=2, min_pixels=128 * 32 * 32,
                     max_pixels=32 * 32 * 768, image_mean=QWEN3_MEAN, image_std=QWEN3_STD, fps=2.0,
                     num_frames=None, min_frames=4, max_frames=768, do_sample_frames=True,
                     max_video_tokens=768),
}

# What transformers loads for the reference checkpoints (no network: the files' contents, written out).
# Qwen/Qwen2.5-VL-7B-Instruct ships no video_preprocessor_config.json; BaseVideoProcessor.from_pretrained
# then falls back to preprocessor_config.json, whose min_pixels / max_pixels override the video size.
_QWEN2_5_VL_7B_PREPROCESSOR = {
    "min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
    "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor",
}
# Qwen/Qwen3-VL-8B-Instruct video_preprocessor_config.json (size is the whole clip's pixel budget)
_QWEN3_VL_8B_VIDEO_PREPROCESSOR = {
    "size": {"longest_edge": 25165824, "shortest_edge": 4096}, "patch_size": 16, "temporal_patch_size": 2,
    "merge_size": 2, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
    "processor_class": "Qwen3VLProcessor", "video_processor_type": "Qwen3VLVideoProcessor",
}
_CONFIG_FILES = ("processor_config.json", "video_preprocessor_config.json", "preprocessor_config.json")


def _family(name: str) -> str:
    fam = _FAMILY_ALIASES.get(str(name).lower())
    if fam is None:
        raise ValueError(f"unknown Qwen family {name!r}; choose one of {FAMILIES}")
    return fam


def _family_from_config(cfg: Mapping[str, Any]) -> str | None:
    for key in ("video_processor_type", "image_processor_type", "processor_class", "model_type"):
        name = cfg.get(key)
        if isinstance(name, str):
            low = name.lower()
            if "qwen3" in low:
                return "qwen3_vl"
            if "qwen2" in low:
                return "qwen2_5_vl"
    return None


@dataclass(frozen=True)
class QwenVideoSpec:
    """What a Qwen2.5-VL / Qwen3-VL video processor does (see :meth:`qwen2_5_vl`, :meth:`qwen3_vl`).

    ``min_pixels`` / ``max_pixels`` are transformers' ``size["shortest_edge"]`` / ``size["longest_edge"]``
    (a pixel count, despite the names): per frame for Qwen2.5-VL, for the whole clip
    (``round(T / temporal_patch_size) * temporal_patch_size * h * w``) for Qwen3-VL.
    """

    family: str = "qwen2_5_vl"
    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    min_pixels: int = 3136
    max_pixels: int = 12845056
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD
    rescale_factor: float = 1 / 255
    resample: str = "bicubic"
    do_resize: bool = True
    do_rescale: bool = True
    do_normalize: bool = True
    fps: float | None = 2.0
    num_frames: int | None = None
    min_frames: int = 4
    max_frames: int = 768
    do_sample_frames: bool = False
    cap_pixels_per_frame: bool = False
    max_video_tokens: int = 128000

    def __post_init__(self):
        object.__setattr__(self, "family", _family(self.family))
        for name in ("patch_size", "temporal_patch_size", "merge_size", "min_pixels", "max_pixels",
                     "min_frames", "max_frames", "max_video_tokens"):
            v = getattr(self, name)
            if isinstance(v, bool) or int(v) != v or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
            object.__setattr__(self, name, int(v))
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels ({self.min_pixels}) must not exceed max_pixels ({self.max_pixels})")
        if self.min_frames > self.max_frames:
            raise ValueError(f"min_frames ({self.min_frames}) must not exceed max_frames ({self.max_frames})")
        for name in ("image_mean", "image_std"):
            v = getattr(self, name)
            v = (float(v),) * 3 if isinstance(v, (int, float)) else tuple(float(x) for x in v)
            if len(v) != 3:
                raise ValueError(f"{name} must have 3 entries, got {getattr(self, name)!r}")
            object.__setattr__(self, name, v)
        if min(self.image_std) <= 0:
            raise ValueError(f"image_std must be > 0, got {self.image_std}")
        if not self.rescale_factor > 0:
            raise ValueError(f"rescale_factor must be > 0, got {self.rescale_factor!r}")
        res = self.resample
        if isinstance(res, (int, np.integer)) and not isinstance(res, bool):
            res = {0: "nearest", 2: "bilinear", 3: "bicubic"}.get(int(res), res)
        res = str(res).lower()
        if res not in ("nearest", "bilinear", "bicubic"):
            raise ValueError(f"resample must be bicubic, bilinear or nearest (torch tensor resize), got {self.resample!r}")
        object.__setattr__(self, "resample", res)
        if self.fps is not None:
            if not float(self.fps) > 0:
                raise ValueError(f"fps must be > 0 or None, got {self.fps!r}")
            object.__setattr__(self, "fps", float(self.fps))
        if self.num_frames is not None:
            if isinstance(self.num_frames, bool) or int(self.num_frames) != self.num_frames or self.num_frames < 1:
                raise ValueError(f"num_frames must be a positive integer or None, got {self.num_frames!r}")
            object.__setattr__(self, "num_frames", int(self.num_frames))

    @property
    def factor(self) -> int:
        """Spatial rounding unit: ``patch_size * merge_size`` (28 for Qwen2.5-VL, 32 for Qwen3-VL)."""
        return self.patch_size * self.merge_size

    @classmethod
    def qwen2_5_vl(cls) -> QwenVideoSpec:
        """``Qwen/Qwen2.5-VL-7B-Instruct`` as transformers 5.23 loads it: ``Qwen2VLVideoProcessor`` with the
        checkpoint's ``preprocessor_config.json`` (there is no video config): patch 14, merge 2, temporal
        patch 2, per-frame pixels in [3136, 12845056], CLIP mean/std. The processor does not sample
        (``do_sample_frames=False``, no ``fps``): ``fps=2.0`` here is the rate :func:`sample_indices` uses
        when asked (qwen-vl-utils' ``FPS``); min/max frames 4/768 are the class defaults."""
        spec = cls.from_dict(_QWEN2_5_VL_7B_PREPROCESSOR, family="qwen2_5_vl")
        return cls(**{**spec.to_dict(), "fps": 2.0})

    @classmethod
    def qwen3_vl(cls) -> QwenVideoSpec:
        """``Qwen/Qwen3-VL-8B-Instruct``'s ``video_preprocessor_config.json`` on ``Qwen3VLVideoProcessor``:
        patch 16, merge 2, temporal patch 2, clip pixels (``t * h * w``) in [4096, 25165824], mean = std =
        0.5, sampling at 2 fps with 4..768 frames."""
        return cls.from_dict(_QWEN3_VL_8B_VIDEO_PREPROCESSOR, family="qwen3_vl")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], family: str | None = None) -> QwenVideoSpec:
        """A transformers (video_)preprocessor config dict -> spec. Keys left out take the transformers
        class defaults of the family (``family`` argument, else read from ``video_processor_type`` /
        ``image_processor_type`` / ``processor_class``, else Qwen2.5-VL). A ``processor_config.json`` dict
        (sub-configs nested under ``video_processor`` / ``image_processor``) is accepted.

        Size: ``size = {"shortest_edge", "longest_edge"}``; for Qwen2.5-VL top-level ``min_pixels`` /
        ``max_pixels`` override it, as ``Qwen2VLVideoProcessor.__init__`` does (``Qwen3VLVideoProcessor``
        has no such keys and ignores them). Unknown keys are ignored.
        """
        cfg = dict(d)
        for key in ("video_processor", "image_processor"):
            if isinstance(cfg.get(key), Mapping):
                cfg = {**{k: v for k, v in cfg.items() if k not in ("video_processor", "image_processor")},
                       **dict(cfg[key])}
                break
        fam = _family(family) if family is not None else (_family_from_config(cfg) or "qwen2_5_vl")
        kw: dict[str, Any] = dict(_CLASS_DEFAULTS[fam])
        kw["family"] = fam
        size = cfg.get("size")
        if isinstance(size, Mapping):
            if size.get("shortest_edge") is not None:
                kw["min_pixels"] = size["shortest_edge"]
            if size.get("longest_edge") is not None:
                kw["max_pixels"] = size["longest_edge"]
        if fam == "qwen2_5_vl":
            for src, dst in (("min_pixels", "min_pixels"), ("max_pixels", "max_pixels")):
                if cfg.get(src) is not None:
                    kw[dst] = cfg[src]
        for key in ("patch_size", "temporal_patch_size", "merge_size", "image_mean", "image_std",
                    "rescale_factor", "resample", "do_resize", "do_rescale", "do_normalize", "fps", "num_frames",
                    "min_frames", "max_frames", "do_sample_frames", "cap_pixels_per_frame", "max_video_tokens"):
            if cfg.get(key) is not None:
                kw[key] = cfg[key]
        return cls(**kw)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, family: str | None = None) -> QwenVideoSpec:
        """Read a JSON config file, or a local checkpoint directory in transformers' order: a
        ``processor_config.json`` with a nested ``video_processor``, else ``video_preprocessor_config.json``,
        else ``preprocessor_config.json``. No network access."""
        p = os.fspath(path)
        if os.path.isdir(p):
            chosen = None
            for name in _CONFIG_FILES:
                fp = os.path.join(p, name)
                if not os.path.isfile(fp):
                    continue
                with open(fp, encoding="utf-8") as fh:
                    cfg = json.load(fh)
                if name == "processor_config.json" and not isinstance(cfg.get("video_processor"), Mapping):
                    continue
                chosen = cfg
                break
            if chosen is None:
                raise FileNotFoundError(f"{p}: none of {', '.join(_CONFIG_FILES)} holds a video processor config")
            return cls.from_dict(chosen, family=family)
        with open(p, encoding="utf-8") as fh:
            return cls.from_dict(json.load(fh), family=family)


# ---------------------------------------------------------------------------------------------------------
# resize size


def _check_side(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return int(v)


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56,
                 max_pixels: int = 14 * 14 * 4 * 1280) -> tuple[int, int]:
    """Qwen2-VL / Qwen2.5-VL resize rule (transformers' ``qwen2_vl`` ``smart_resize``), per frame.

    ``h, w = round(height / factor) * factor, round(width / factor) * factor`` (Python's round: half to
    even); if ``h * w > max_pixels``: ``beta = sqrt(height * width / max_pixels)``, each side
    ``max(factor, floor(side / beta / factor) * factor)``; elif ``h * w < min_pixels``:
    ``beta = sqrt(min_pixels / (height * width))``, each side ``ceil(side * beta / factor) * factor``.

    Raises:
        ValueError: a side or argument < 1, or aspect ratio ``max / min > 200`` (transformers' message).
            Sides shorter than ``factor`` are *not* an error in transformers 5.x (they round to 0 and the
            ``min_pixels`` branch scales them up); older releases raised there.
    """
    height, width = _check_side("height", height), _check_side("width", width)
    factor = _check_side("factor", factor)
    min_pixels, max_pixels = _check_side("min_pixels", min_pixels), _check_side("max_pixels", max_pixels)
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ValueError(f"absolute aspect ratio must be smaller than {MAX_ASPECT_RATIO}, "
                         f"got {max(height, width) / min(height, width)} ({height}x{width})")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def qwen3_smart_resize(num_frames: int, height: int, width: int, temporal_factor: int = 2, factor: int = 32,
                       min_pixels: int = 128 * 32 * 32, max_pixels: int = 32 * 32 * 768) -> tuple[int, int]:
    """Qwen3-VL's *video* resize rule (``video_processing_qwen3_vl.smart_resize``): the pixel budget is for
    the whole clip.

    Differences from :func:`smart_resize`: needs ``num_frames >= temporal_factor``; a side shorter than
    ``factor`` first scales both sides by ``max(factor / height, factor / width)`` (truncated to int); the
    test is on ``t * h * w`` with ``t = round(num_frames / temporal_factor) * temporal_factor`` and
    ``beta`` uses the *unrounded* ``num_frames``: ``sqrt(num_frames * height * width / max_pixels)`` resp.
    ``sqrt(min_pixels / (num_frames * height * width))``.

    Raises:
        ValueError: fewer frames than ``temporal_factor``, a side < 1, or aspect ratio > 200.
    """
    num_frames = _check_side("num_frames", num_frames)
    temporal_factor = _check_side("temporal_factor", temporal_factor)
    height, width = _check_side("height", height), _check_side("width", width)
    factor = _check_side("factor", factor)
    min_pixels, max_pixels = _check_side("min_pixels", min_pixels), _check_side("max_pixels", max_pixels)
    if num_frames < temporal_factor:
        raise ValueError(f"Qwen3-VL video needs at least temporal_patch_size={temporal_factor} frames, "
                         f"got {num_frames} (transformers: 't:{num_frames} must be larger than "
                         f"temporal_factor:{temporal_factor}')")
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height, width = int(height * scale), int(width * scale)
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ValueError(f"absolute aspect ratio must be smaller than {MAX_ASPECT_RATIO}, "
                         f"got {max(height, width) / min(height, width)} ({height}x{width})")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    t_bar = round(num_frames / temporal_factor) * temporal_factor
    if t_bar * h_bar * w_bar > max_pixels:
        beta = math.sqrt((num_frames * height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif t_bar * h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (num_frames * height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def video_resize_hw(num_frames: int, height: int, width: int, spec: QwenVideoSpec) -> tuple[int, int]:
    """The ``(height, width)`` every frame of a ``num_frames``-frame clip is resized to (the processor's
    ``resize``; ``num_frames`` is the clip length *before* temporal padding).

    With ``spec.cap_pixels_per_frame`` (transformers' opt-in qwen-vl-utils cap; off by default in 5.23),
    ``max_pixels`` is first lowered: Qwen2.5-VL ``max(min(max_pixels, int(max_video_tokens * factor**2 * 0.9)
    * temporal_patch_size // num_frames), int(min_pixels * 1.05))``; Qwen3-VL
    ``max(min(max_video_tokens * factor**2, max_pixels // num_frames), int(min_pixels * 1.05)) * num_frames``.
    """
    num_frames = _check_side("num_frames", num_frames)
    if not spec.do_resize:
        return int(height), int(width)
    factor, max_pixels = spec.factor, spec.max_pixels
    if spec.family == "qwen3_vl":
        if spec.cap_pixels_per_frame:
            frame_cap = spec.max_video_tokens * factor * factor
            per_frame = max(min(frame_cap, spec.max_pixels // num_frames), int(spec.min_pixels * 1.05))
            max_pixels = per_frame * num_frames
        return qwen3_smart_resize(num_frames, height, width, temporal_factor=spec.temporal_patch_size,
                                  factor=factor, min_pixels=spec.min_pixels, max_pixels=max_pixels)
    if spec.cap_pixels_per_frame:
        total_pixels = int(spec.max_video_tokens * factor * factor * 0.9)
        max_pixels = max(min(max_pixels, total_pixels * spec.temporal_patch_size // num_frames),
                         int(spec.min_pixels * 1.05))
    return smart_resize(height, width, factor=factor, min_pixels=spec.min_pixels, max_pixels=max_pixels)


def video_grid_thw(num_frames: int, height: int, width: int, spec: QwenVideoSpec) -> tuple[int, int, int]:
    """``(grid_t, grid_h, grid_w)`` of a ``num_frames x height x width`` clip, without touching pixels
    (``get_num_of_video_patches``); placeholder tokens = ``grid_t * grid_h * grid_w // merge_size ** 2``."""
    h, w = video_resize_hw(num_frames, height, width, spec)
    t = -(-int(num_frames) // spec.temporal_patch_size)
    return t, h // spec.patch_size, w // spec.patch_size


# ---------------------------------------------------------------------------------------------------------
# sampling


def sample_indices(total_frames: int, video_fps: float | None, *, fps: float | None = 2.0, min_frames: int = 4,
                   max_frames: int = 768, num_frames: int | None = None, family: str = "qwen2_5_vl",
                   temporal_patch_size: int = 2) -> np.ndarray:
    """Source frame indices a Qwen processor keeps from a ``total_frames``-frame video at ``video_fps``.

    ``num_frames`` (a fixed count) replaces fps sampling when given, whatever ``fps`` says (transformers
    refuses both only when both are passed to the call; the processors' default fps yields to ``num_frames``).
    ``family`` picks the rule:

    ``"qwen2_5_vl"`` -- transformers' ``Qwen2VLVideoProcessor.sample_frames`` (the class Qwen2.5-VL's
    processor uses when sampling is on): ``n = total / video_fps * fps``, clamped to
    ``[min_frames, floor(min(max_frames, total) / tp) * tp]`` and ``total``, floored to a multiple of
    ``temporal_patch_size``; ``num_frames`` is rounded to that multiple instead. Indices are
    ``torch.arange(0, total, total / n).int()``: ``int(i * total / n)`` up to float32 rounding, which moves
    some indices by one on long videos (from roughly 17k frames); the torch call itself is made, so those
    match transformers too.
    For some ``(total, n)`` (e.g. 17, 14) that arange returns ``n + 1`` values, the last == ``total``, and
    transformers' indexing then fails; only the first ``n`` are returned here. ``fps=None`` and
    ``num_frames=None``: every frame. Raises where transformers raises (no fps; ``n > total``) and where it
    would divide by zero (``n == 0``: fewer than ``temporal_patch_size`` frames to sample).

    ``"qwen3_vl"`` -- ``Qwen3VLVideoProcessor.sample_frames``: ``n = int(total / video_fps * fps)`` clamped to
    ``min(max(n, min_frames), max_frames, total)`` -- *not* rounded to the temporal patch (an odd ``n`` is
    padded later by repeating the last frame); ``num_frames`` is used as given; both ``None``:
    ``min(max(total, min_frames), max_frames)``. Indices ``np.linspace(0, total - 1, n).round()`` (may
    repeat when ``n > total``). An unknown ``video_fps`` (None) is taken as 24, as transformers does.

    ``"qwen_vl_utils"`` -- qwen-vl-utils 0.0.14 ``smart_nframes`` (FPS=2, FRAME_FACTOR=2, FPS_MIN_FRAMES=4,
    FPS_MAX_FRAMES=768), what the Qwen2.5-VL / Qwen3-VL model cards feed the processors with:
    ``min_frames`` ceiled and ``max_frames`` (default ``min(768, total)``) floored to a multiple of 2,
    ``n = floor(min(max(total / video_fps * fps, min_frames), max_frames, total) / 2) * 2``; ``num_frames``
    rounded to a multiple of 2; ``n`` must lie in ``[2, total]``. Indices
    ``torch.linspace(0, total - 1, n).round()`` (float32, half to even).

    The two transformers rules differ in three ways: Qwen2.5-VL keeps ``n`` even and spaces indices by
    ``floor(i * total / n)`` (first frame, never the last), Qwen3-VL rounds along ``linspace`` (first and last
    frame) and allows odd ``n``; qwen-vl-utils counts like Qwen2.5-VL but places like Qwen3-VL.

    Which to use: the rule of whatever samples the frames in the pipeline being matched. The family's
    transformers rule when the transformers processor samples (Qwen3-VL does by default; Qwen2.5-VL's
    processor only when given ``fps``/``num_frames``, otherwise it keeps every frame it is handed);
    ``"qwen_vl_utils"`` for the model cards' reference pipeline, where qwen-vl-utils samples (and resizes)
    and the processor is called with ``do_sample_frames=False``. The default ``"qwen2_5_vl"`` at ``fps=2``
    is transformers' Qwen2.5-VL rule at qwen-vl-utils' rate.

    Returns:
        ``int64 (n,)`` indices in ``[0, total_frames)``, non-decreasing.
    """
    rule = str(family).lower()
    rule = _FAMILY_ALIASES.get(rule, rule)
    if rule not in _SAMPLING_RULES:
        raise ValueError(f"unknown sampling family {family!r}; choose one of {_SAMPLING_RULES}")
    total = _check_side("total_frames", total_frames)
    tps = _check_side("temporal_patch_size", temporal_patch_size)
    min_frames, max_frames = _check_side("min_frames", min_frames), _check_side("max_frames", max_frames)
    if num_frames is not None:  # a fixed count replaces fps sampling (as a call-time num_frames does)
        num_frames = _check_side("num_frames", num_frames)
        fps = None
    if fps is not None and not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps!r}")
    if video_fps is not None and not video_fps > 0:
        raise ValueError(f"video_fps must be > 0 or None, got {video_fps!r}")

    if rule == "qwen3_vl":
        if num_frames is None and fps is not None:
            vfps = _DEFAULT_VIDEO_FPS if video_fps is None else video_fps
            n = int(total / vfps * fps)
            n = min(max(n, min_frames), max_frames, total)
        elif num_frames is None:
            n = min(max(total, min_frames), max_frames)
        else:
            n = num_frames
        return np.linspace(0, total - 1, n).round().astype(np.int64)

    import torch

    if rule == "qwen_vl_utils":
        if num_frames is not None:
            n = round(num_frames / 2) * 2
        else:
            if video_fps is None:
                raise ValueError("qwen-vl-utils sampling needs the video's fps (video_fps)")
            f = 2.0 if fps is None else fps
            lo = math.ceil(min_frames / 2) * 2
            hi = math.floor(min(max_frames, total) / 2) * 2
            n = total / video_fps * f
            n = min(min(max(n, lo), hi), total)
            n = math.floor(n / 2) * 2
        if not 2 <= n <= total:
            raise ValueError(f"nframes should in interval [2, {total}], but got {n} "
                             f"(a {total}-frame video cannot give {n} frames)")
        return torch.linspace(0, total - 1, n).round().long().numpy().astype(np.int64)

    # qwen2_5_vl
    if num_frames is not None:
        n = round(num_frames / tps) * tps
    elif fps is not None:
        if video_fps is None:
            raise ValueError("Asked to sample `fps` frames per second but the video's fps (video_fps) is unknown; "
                             "pass video_fps or a fixed num_frames")
        hi = math.floor(min(max_frames, total) / tps) * tps
        n = total / video_fps * fps
        n = min(max(n, min_frames), hi, total)
        n = math.floor(n / tps) * tps
    else:
        return np.arange(total, dtype=np.int64)
    if n > total:
        raise ValueError(f"Video can't be sampled. The inferred `num_frames={n}` exceeds `total_num_frames={total}`. "
                         "Decrease `num_frames` or `fps` for sampling.")
    if n < 1:
        raise ValueError(f"a {total}-frame video gives 0 frames after rounding to temporal_patch_size={tps} "
                         f"(transformers would divide by zero here); it needs at least {tps} frames")
    idx = torch.arange(0, total, total / n)[:n].int()
    return idx.numpy().astype(np.int64)


# ---------------------------------------------------------------------------------------------------------
# pixels


def _video_array(frames) -> np.ndarray:
    if isinstance(frames, Clip):
        frames = frames.frames
    if not isinstance(frames, np.ndarray):
        raise ValueError(f"frames must be a numpy array (T, H, W, 3) of uint8, got {type(frames).__name__}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must have dtype uint8 (RGB 0..255), got {frames.dtype}")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must have shape (T, H, W, 3) (RGB, channels last), got {frames.shape}")
    if frames.shape[0] == 0:
        raise ValueError("frames is empty: the video has no frames (T == 0)")
    if frames.shape[1] == 0 or frames.shape[2] == 0:
        raise ValueError(f"frames have zero height or width: shape {frames.shape}")
    return frames


_CHUNK = 16  # frames per resize call: bounds memory only, results do not depend on it


def preprocess_video(frames, spec: QwenVideoSpec | None = None, size: tuple[int, int] | None = None) -> dict[str, Any]:
    """One video's frames -> the processor's ``pixel_values_videos`` and ``video_grid_thw``.

    Args:
        frames: ``uint8 (T, H, W, 3)`` RGB numpy array (or a :class:`Clip`), already sampled.
        spec: default :meth:`QwenVideoSpec.qwen2_5_vl`.
        size: ``(height, width)`` to resize to instead of :func:`video_resize_hw` of these frames: a chunk of a
            longer clip gets the whole clip's size (Qwen3-VL's pixel budget is per clip).

    Steps (``Qwen2VLVideoProcessor`` / ``Qwen3VLVideoProcessor._preprocess`` on CPU): resize every frame to
    :func:`video_resize_hw` with torchvision's uint8 antialiased resize (skipped when the size is unchanged);
    ``(float32(x) - mean / rescale_factor) / (std / rescale_factor)`` in float32; repeat the last frame until
    ``T`` is a multiple of ``temporal_patch_size``; then, with ``p = patch_size``, ``m = merge_size``,
    ``tp = temporal_patch_size``: row order ``(t, h // m, w // m, h % m, w % m)`` over the patch grid
    (``grid_t, grid_h, grid_w``; each ``m x m`` group of neighbouring patches is consecutive), each row
    ``(channel, frame-in-group, y-in-patch, x-in-patch)`` flattened.

    Returns:
        ``{"pixel_values_videos": float32 (grid_t * grid_h * grid_w, 3 * tp * p * p),
        "video_grid_thw": int64 (1, 3)}`` (torch tensors).

    Raises:
        ValueError: not a non-empty uint8 ``(T, H, W, 3)`` array; a Qwen3-VL clip of one frame; aspect ratio
            > 200; with ``do_resize=False``, a side that is not a multiple of ``patch_size * merge_size``.
    """
    import torch

    spec = spec or QwenVideoSpec.qwen2_5_vl()
    arr = _video_array(frames)
    t, h, w = (int(s) for s in arr.shape[:3])
    oh, ow = video_resize_hw(t, h, w, spec) if size is None else (int(size[0]), int(size[1]))
    if oh % spec.factor or ow % spec.factor:
        raise ValueError(f"frames of {oh}x{ow} cannot be cut into {spec.patch_size}-pixel patches merged "
                         f"{spec.merge_size}x{spec.merge_size}: both sides must be multiples of {spec.factor} "
                         "(enable do_resize)")
    chunks = []
    for i in range(0, t, _CHUNK):
        x = torch.from_numpy(np.ascontiguousarray(arr[i : i + _CHUNK])).permute(0, 3, 1, 2).contiguous()
        if spec.do_resize:
            x = _torch_resize(x, oh, ow, spec.resample)
        chunks.append(_torch_rescale_normalize(x, spec).to(torch.float32))
    video = torch.cat(chunks) if len(chunks) > 1 else chunks[0]  # (T, 3, oh, ow) float32
    tp, p, m = spec.temporal_patch_size, spec.patch_size, spec.merge_size
    pad = -t % tp
    if pad:
        video = torch.cat([video, video[-1:].expand(pad, -1, -1, -1)])
    gt, gh, gw = (t + pad) // tp, oh // p, ow // p
    c = video.shape[1]
    # (gt, tp, c, gh/m, m, p, gw/m, m, p) -> (gt, gh/m, gw/m, m, m, c, tp, p, p)
    x = video.reshape(gt, tp, c, gh // m, m, p, gw // m, m, p).permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    pixel_values = x.reshape(gt * gh * gw, c * tp * p * p).contiguous()
    return {"pixel_values_videos": pixel_values,
            "video_grid_thw": torch.tensor([[gt, gh, gw]], dtype=torch.long)}


# ---------------------------------------------------------------------------------------------------------
# temporal metadata and prompt text


def sampled_fps(num_sampled_frames: int, total_frames: int, video_fps: float | None) -> float:
    """transformers' ``VideoMetadata.sampled_fps``: ``num_sampled / total * video_fps``; 24 when the fps is
    unknown (``video_fps=None``: frames passed without ``video_metadata``)."""
    if video_fps is None:
        return float(_DEFAULT_VIDEO_FPS)
    n, total = _check_side("num_sampled_frames", num_sampled_frames), _check_side("total_frames", total_frames)
    return n / total * video_fps


def second_per_grid_ts(num_sampled_frames: int, total_frames: int, video_fps: float | None,
                       temporal_patch_size: int = 2) -> float:
    """Qwen2.5-VL's ``second_per_grid_ts`` for one video: ``temporal_patch_size / sampled_fps`` (seconds one
    temporal patch spans; ``Qwen2_5_VLProcessor._process_videos``). transformers 5.23 takes the fps from
    the video metadata only: frames passed without metadata give ``2 / 24`` whatever ``fps`` kwarg is passed."""
    return temporal_patch_size / sampled_fps(num_sampled_frames, total_frames, video_fps)


def qwen3_timestamps(frame_indices: Sequence[int] | np.ndarray, video_fps: float | None,
                     temporal_patch_size: int = 2) -> list[float]:
    """Qwen3-VL's time of each temporal group (``Qwen3VLProcessor._calculate_timestamps``): the indices are
    padded with the last one to a multiple of ``temporal_patch_size``, turned into seconds ``idx / video_fps``
    (``video_fps=None`` -> 24), and each group gets the mean of its first and last frame's time."""
    idx = [int(i) for i in np.asarray(frame_indices).reshape(-1)]
    if not idx:
        raise ValueError("frame_indices is empty")
    tps = _check_side("temporal_patch_size", temporal_patch_size)
    fps = _DEFAULT_VIDEO_FPS if video_fps is None else video_fps
    if not fps > 0:
        raise ValueError(f"video_fps must be > 0, got {video_fps!r}")
    idx += [idx[-1]] * (-len(idx) % tps)
    ts = [i / fps for i in idx]
    return [(ts[i] + ts[i + tps - 1]) / 2 for i in range(0, len(ts), tps)]


def _grid(grid_thw) -> tuple[int, int, int]:
    g = [int(v) for v in np.asarray(grid_thw).reshape(-1)]
    if len(g) != 3 or min(g) < 1:
        raise ValueError(f"grid_thw must be 3 positive integers (t, h, w), got {grid_thw!r}")
    return g[0], g[1], g[2]


def qwen2_5_video_prompt(grid_thw, merge_size: int = 2, video_token: str = VIDEO_TOKEN) -> str:
    """What ``Qwen2_5_VLProcessor`` puts in place of one ``<|video_pad|>``: the token repeated
    ``t * h * w // merge_size ** 2`` times. The chat template already wraps the placeholder as
    ``<|vision_start|><|video_pad|><|vision_end|>``; that wrapper stays."""
    t, h, w = _grid(grid_thw)
    return video_token * (t * h * w // merge_size**2)


def qwen3_video_prompt(grid_thw, timestamps: Sequence[float], merge_size: int = 2, *,
                       video_token: str = VIDEO_TOKEN, vision_start: str = VISION_START,
                       vision_end: str = VISION_END) -> str:
    """What ``Qwen3VLProcessor`` (transformers 5.23) puts in place of one ``<|video_pad|>``: per temporal
    group ``g`` (``grid_t`` of them) ``f"<{timestamps[g]:.1f} seconds>"`` + ``<|vision_start|>`` +
    ``h * w // merge_size ** 2`` video tokens + ``<|vision_end|>``.

    Only the bare token is replaced: the chat template's own ``<|vision_start|><|video_pad|><|vision_end|>``
    wrapper stays around the whole expansion, so a rendered chat reads
    ``<|vision_start|><0.5 seconds><|vision_start|>...<|vision_end|><1.5 seconds>...<|vision_end|><|vision_end|>``
    (transformers >= 5.10; 4.x replaced the wrapper too)."""
    t, h, w = _grid(grid_thw)
    ts = list(timestamps)
    if len(ts) < t:
        raise ValueError(f"need one timestamp per temporal group: grid_t={t}, got {len(ts)} timestamps")
    per_frame = video_token * (h * w // merge_size**2)
    return "".join(f"<{ts[g]:.1f} seconds>{vision_start}{per_frame}{vision_end}" for g in range(t))


def expand_video_placeholders(prompt: str, replacements: Sequence[str], video_token: str = VIDEO_TOKEN) -> str:
    """Replace the ``i``-th ``video_token`` of ``prompt`` with ``replacements[i]`` (one per video, in order),
    as ``ProcessorMixin.get_text_with_replacements`` does.

    Raises:
        ValueError: the number of placeholders differs from the number of replacements.
    """
    parts = prompt.split(video_token)
    if len(parts) - 1 != len(replacements):
        raise ValueError(f"prompt has {len(parts) - 1} {video_token!r} placeholder(s) but {len(replacements)} "
                         "video(s) were given")
    out = [parts[0]]
    for rep, rest in zip(replacements, parts[1:]):
        out.append(rep)
        out.append(rest)
    return "".join(out)
