"""Frame preprocessing equal to transformers' processors, without torchvision.

Two resize back ends, chosen by ``VideoProcessorSpec.resize_backend``:

``"pil"`` (default; Video-LLaVA's CLIP processor, ``VideoLlavaImageProcessor``): per frame, resize so the
shortest edge is ``shortest_edge`` (long edge ``int(shortest_edge * long / short)``) with PIL bicubic on
uint8, center crop ``crop_size`` (zero padding if the frame is smaller, as transformers does), ``x / 255``
computed in float64 and cast to float32, then ``(x - mean) / std`` in float32. The result is
bit-identical to the pillow-based transformers image processor (see tests/video/test_preprocess.py).

``"torch"`` (LLaVA-OneVision / LLaVA-Video: ``LlavaOnevisionVideoProcessor``, a torchvision
``BaseVideoProcessor``; ``VideoProcessorSpec.llava_onevision()``): what transformers' torchvision back end
does on CPU. The uint8 ``(T, 3, H, W)`` video goes to ``torch.nn.functional.interpolate(mode="bicubic",
antialias=True, align_corners=False)`` *as uint8* (torchvision's ``resize_image`` takes its native uint8
path for bicubic on CPU: separable, horizontal pass first, fixed-point int16 weights, each pass rounded and
clamped to uint8); the resize is skipped when the size does not change; OneVision resizes to exactly
384 x 384 (aspect not kept) and does not crop. Rescale and normalise are fused as transformers fuses them:
``(float32(x) - mean / rescale_factor) / (std / rescale_factor)`` with the fused mean/std computed in float32.
The torch call is the one torchvision makes, so the result is what transformers computes on CPU;
tests/video/test_preprocess_onevision.py checks it bit for bit against a numpy re-implementation of the
algorithm (transformers' own processor needs torchvision, which is not installable here). On CUDA
torchvision resizes in float32 instead (clamp + round to uint8), which differs by a few uint8 levels.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from videosparse.video.clip import Clip, as_rgb_frames

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "ONEVISION_MEAN",
    "ONEVISION_STD",
    "RESIZE_BACKENDS",
    "VideoProcessorSpec",
    "preprocess_frames",
    "preprocess_videos",
    "expand_video_prompt",
    "video_tokens_per_frame",
]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# llava-hf/llava-onevision-qwen2-*-hf video_preprocessor_config.json (SigLIP): mean = std = 0.5
ONEVISION_MEAN = (0.5, 0.5, 0.5)
ONEVISION_STD = (0.5, 0.5, 0.5)
ONEVISION_SIZE = 384

RESIZE_BACKENDS = ("pil", "torch")
# filters torchvision's tensor resize supports (transformers maps PIL's resample ids onto them)
_TORCH_RESAMPLE = ("nearest", "bilinear", "bicubic")
# composite processors of the supported families whose video path is a torchvision video processor
_TORCH_PROCESSOR_CLASSES = ("LlavaOnevisionProcessor",)

_RESAMPLE_NAMES = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}
_RESAMPLE_BY_ID = {v: k for k, v in _RESAMPLE_NAMES.items()}
_CONFIG_FILES = ("video_preprocessor_config.json", "preprocessor_config.json", "processor_config.json")


@dataclass(frozen=True)
class VideoProcessorSpec:
    """What the model's processor does to each frame (defaults: Video-LLaVA-7B-hf / CLIP; see
    :meth:`llava_onevision` for LLaVA-OneVision / LLaVA-Video)."""

    shortest_edge: int | None = field(default=224, metadata={"help": "resize so the shorter side has this length"})
    resize_to: tuple[int, int] | None = field(
        default=None, metadata={"help": "(height, width) exact resize instead of shortest_edge"})
    crop_size: int | tuple[int, int] = field(default=224, metadata={"help": "center crop (int or (height, width))"})
    image_mean: tuple[float, float, float] = field(default=CLIP_MEAN, metadata={"help": "per-channel mean"})
    image_std: tuple[float, float, float] = field(default=CLIP_STD, metadata={"help": "per-channel std"})
    rescale_factor: float = field(default=1 / 255, metadata={"help": "multiplier applied before normalising"})
    resample: str = field(default="bicubic", metadata={"help": "PIL filter: bicubic, bilinear, nearest, ..."})
    do_resize: bool = True
    do_center_crop: bool = True
    do_rescale: bool = True
    do_normalize: bool = True
    num_frames: int | None = field(default=None, metadata={
        "help": "frames the checkpoint samples per video (its processor's num_frames), when it says; "
                "None: the model family's default"})
    resize_backend: str = field(default="pil", metadata={
        "help": "pil: PIL resize per frame (Video-LLaVA's image processor); torch: torchvision's tensor resize "
                "as transformers' torchvision processors run it (uint8 interpolate, antialias; LLaVA-OneVision)"})

    def __post_init__(self):
        crop = self.crop_size
        crop = (int(crop), int(crop)) if isinstance(crop, (int, np.integer)) else tuple(int(c) for c in crop)
        if len(crop) != 2 or min(crop) < 1:
            raise ValueError(f"crop_size must be a positive int or (height, width), got {self.crop_size!r}")
        object.__setattr__(self, "crop_size", crop[0] if crop[0] == crop[1] else crop)
        if self.resize_to is not None:
            object.__setattr__(self, "resize_to", tuple(int(v) for v in self.resize_to))
        if self.do_resize and self.resize_to is None and (self.shortest_edge is None or self.shortest_edge < 1):
            raise ValueError("do_resize needs shortest_edge >= 1 or resize_to")
        object.__setattr__(self, "image_mean", tuple(float(v) for v in self.image_mean))
        object.__setattr__(self, "image_std", tuple(float(v) for v in self.image_std))
        if len(self.image_mean) != 3 or len(self.image_std) != 3 or min(self.image_std) <= 0:
            raise ValueError("image_mean/image_std must have 3 entries, std > 0")
        res = self.resample
        if isinstance(res, (int, np.integer)) or (hasattr(res, "value") and not isinstance(res, str)):
            res = _RESAMPLE_BY_ID.get(int(getattr(res, "value", res)))
        res = str(res).lower() if res is not None else None
        if res not in _RESAMPLE_NAMES:
            raise ValueError(f"unknown resample {self.resample!r}; choose one of {sorted(_RESAMPLE_NAMES)}")
        object.__setattr__(self, "resample", res)
        backend = str(self.resize_backend).lower()
        if backend not in RESIZE_BACKENDS:
            raise ValueError(f"resize_backend must be one of {RESIZE_BACKENDS}, got {self.resize_backend!r}")
        if backend == "torch" and res not in _TORCH_RESAMPLE:
            raise ValueError(f"resample {res!r} has no torch tensor resize; the torch backend supports "
                             f"{_TORCH_RESAMPLE}")
        object.__setattr__(self, "resize_backend", backend)

    @classmethod
    def llava_onevision(cls, size: int = ONEVISION_SIZE) -> VideoProcessorSpec:
        """LLaVA-OneVision / LLaVA-Video (``llava-hf/llava-onevision-qwen2-*-ov-hf``): exact resize to
        ``size x size`` (aspect not kept) with torch's antialiased bicubic on uint8, no crop, /255,
        mean = std = 0.5 -- what transformers' ``LlavaOnevisionVideoProcessor`` does with the checkpoints'
        ``video_preprocessor_config.json``."""
        return cls(shortest_edge=None, resize_to=(size, size), crop_size=size, image_mean=ONEVISION_MEAN,
                   image_std=ONEVISION_STD, rescale_factor=1 / 255, resample="bicubic", do_resize=True,
                   do_center_crop=False, do_rescale=True, do_normalize=True, resize_backend="torch")

    @property
    def crop_hw(self) -> tuple[int, int]:
        c = self.crop_size
        return (c, c) if isinstance(c, int) else c

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_pretrained(cls, path_or_dict: str | os.PathLike | Mapping[str, Any]) -> VideoProcessorSpec:
        """Read a transformers-style (video_)preprocessor config: a dict, a JSON file, or a local
        model directory holding ``video_preprocessor_config.json`` / ``preprocessor_config.json``.
        Unknown keys are ignored; missing keys keep the defaults. No network access.

        The resize back end is ``"torch"`` when ``video_processor_type`` or ``image_processor_type`` names a
        torchvision processor (ends with ``VideoProcessor`` or ``Fast``: every transformers 5 video processor
        is a torchvision ``BaseVideoProcessor``) or ``processor_class`` is LLaVA-OneVision's; an explicit
        ``resize_backend`` key wins. For the torch back end only: a ``{"height", "width"}`` size clears
        ``shortest_edge``, an absent/null ``do_center_crop`` means "crop only if a ``crop_size`` is given"
        (LlavaOnevisionVideoProcessor's ``do_center_crop = None``), and without a crop ``crop_size`` is the
        resize size. Configs for the pil back end (Video-LLaVA) load exactly as before.
        """
        if isinstance(path_or_dict, Mapping):
            cfg = dict(path_or_dict)
        else:
            p = os.fspath(path_or_dict)
            if os.path.isdir(p):
                found = [os.path.join(p, n) for n in _CONFIG_FILES if os.path.isfile(os.path.join(p, n))]
                if not found:
                    raise FileNotFoundError(f"{p}: none of {', '.join(_CONFIG_FILES)} found")
                p = found[0]
            with open(p, encoding="utf-8") as fh:
                cfg = json.load(fh)
        for key in ("video_processor", "image_processor"):  # processor_config.json nests sub-configs
            if isinstance(cfg.get(key), Mapping):
                cfg = dict(cfg[key])
                break
        kw: dict[str, Any] = {}
        backend = cfg.get("resize_backend") or _backend_for_config(cfg)
        kw["resize_backend"] = backend
        nf = cfg.get("num_frames")
        if isinstance(nf, int) and not isinstance(nf, bool) and nf >= 1:
            kw["num_frames"] = nf
        size = cfg.get("size")
        if isinstance(size, Mapping):
            if "shortest_edge" in size:
                kw["shortest_edge"] = int(size["shortest_edge"])
            elif "height" in size and "width" in size:
                kw["resize_to"] = (int(size["height"]), int(size["width"]))
        elif isinstance(size, (int, float)):
            kw["shortest_edge"] = int(size)
        crop = cfg.get("crop_size")
        if isinstance(crop, Mapping):
            kw["crop_size"] = (int(crop["height"]), int(crop["width"]))
        elif isinstance(crop, (int, float)):
            kw["crop_size"] = int(crop)
        for k in ("image_mean", "image_std"):
            if cfg.get(k) is not None:
                v = cfg[k]
                kw[k] = tuple(v) if isinstance(v, (list, tuple)) else (float(v),) * 3
        for k in ("rescale_factor", "resample", "do_resize", "do_center_crop", "do_rescale", "do_normalize"):
            if cfg.get(k) is not None:
                kw[k] = cfg[k]
        if str(backend).lower() == "torch":
            if "resize_to" in kw:
                kw["shortest_edge"] = None
            if cfg.get("do_center_crop") is None:
                kw["do_center_crop"] = cfg.get("crop_size") is not None
            if not kw["do_center_crop"] and cfg.get("crop_size") is None and "resize_to" in kw:
                h, w = kw["resize_to"]
                kw["crop_size"] = (h, w)
        return cls(**kw)


def _backend_for_config(cfg: Mapping[str, Any]) -> str:
    """"torch" for a config written by (or for) a torchvision-based transformers processor, else "pil"."""
    for key in ("video_processor_type", "image_processor_type"):
        name = cfg.get(key)
        if isinstance(name, str) and (name.endswith("VideoProcessor") or name.endswith("Fast")):
            return "torch"
    if cfg.get("processor_class") in _TORCH_PROCESSOR_CLASSES:
        return "torch"
    return "pil"


def _output_size(h: int, w: int, spec: VideoProcessorSpec) -> tuple[int, int]:
    if spec.resize_to is not None:
        return spec.resize_to
    s = int(spec.shortest_edge)
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = s, int(s * long / short)
    return (new_long, new_short) if w <= h else (new_short, new_long)


def _center_crop(img: np.ndarray, ch: int, cw: int) -> np.ndarray:
    h, w = img.shape[:2]
    top, left = (h - ch) // 2, (w - cw) // 2
    if top >= 0 and left >= 0 and top + ch <= h and left + cw <= w:
        return img[top : top + ch, left : left + cw]
    nh, nw = max(ch, h), max(cw, w)
    padded = np.zeros((nh, nw) + img.shape[2:], dtype=img.dtype)
    tp, lp = math.ceil((nh - h) / 2), math.ceil((nw - w) / 2)
    padded[tp : tp + h, lp : lp + w] = img
    top, left = top + tp, left + lp
    return padded[top : top + ch, left : left + cw]


def _frames_array(frames) -> np.ndarray:
    if isinstance(frames, Clip):
        return frames.frames
    return as_rgb_frames(frames)


def preprocess_frames(frames, spec: VideoProcessorSpec | None = None, return_tensors: str = "pt"):
    """Frames -> normalised pixel values.

    Args:
        frames: ``uint8 (T, H, W, 3)`` RGB (or a :class:`Clip`; grayscale ``(T, H, W)`` / ``(T, H, W, 1)``
            is replicated to RGB, RGBA drops alpha).
        spec: preprocessing parameters (default: Video-LLaVA / CLIP 224;
            ``VideoProcessorSpec.llava_onevision()`` for LLaVA-OneVision).
        return_tensors: ``"pt"`` (torch, imported lazily) or ``"np"``.

    Returns:
        ``float32 (T, 3, h, w)``: the crop size with a center crop, else the resized size.
    """
    spec = spec or VideoProcessorSpec()
    if return_tensors not in ("pt", "np"):
        raise ValueError(f"return_tensors must be 'pt' or 'np', got {return_tensors!r}")
    arr = _frames_array(frames)
    if spec.resize_backend == "torch":
        x = _preprocess_torch(arr, spec)
    else:
        x = _preprocess_pil(arr, spec)
    if return_tensors == "np":
        return x
    import torch

    return torch.from_numpy(x)


def _preprocess_pil(arr: np.ndarray, spec: VideoProcessorSpec) -> np.ndarray:
    from PIL import Image

    ch, cw = spec.crop_hw
    out_frames = []
    for frame in arr:
        img = frame
        if spec.do_resize:
            oh, ow = _output_size(img.shape[0], img.shape[1], spec)
            # PIL resizes even at the same size, exactly as transformers does
            img = np.asarray(Image.fromarray(img).resize((ow, oh), resample=_RESAMPLE_NAMES[spec.resample]),
                             dtype=np.uint8)
        if spec.do_center_crop:
            img = _center_crop(img, ch, cw)
        out_frames.append(img)
    x = np.stack(out_frames)  # (T, h, w, 3) uint8
    if spec.do_rescale:
        x = (x.astype(np.float64) * spec.rescale_factor).astype(np.float32)
    else:
        x = x.astype(np.float32)
    if spec.do_normalize:
        mean = np.asarray(spec.image_mean, dtype=np.float32)
        std = np.asarray(spec.image_std, dtype=np.float32)
        x = (x - mean) / std
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


# frames per interpolate call: results do not depend on it (every frame is resized on its own), it only
# bounds the memory of the channels-first copy
_TORCH_CHUNK = 16


def _torch_resize(x, oh: int, ow: int, mode: str):
    """torchvision ``resize_image`` on a uint8 ``(N, C, H, W)`` CPU tensor, as transformers calls it
    (antialias=True): same size -> unchanged; bicubic (and nearest, and bilinear on AVX2/AVX512 CPUs) run
    natively on uint8; otherwise float32 interpolate, clamp (bicubic), round, back to uint8."""
    import torch
    import torch.nn.functional as F

    if (x.shape[-2], x.shape[-1]) == (oh, ow):
        return x
    if mode == "nearest":
        return F.interpolate(x, size=(oh, ow), mode="nearest")
    native = mode == "bicubic" or torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
    y = x if native else x.to(torch.float32)
    y = F.interpolate(y, size=(oh, ow), mode=mode, align_corners=False, antialias=True)
    if not native:
        if mode == "bicubic":
            y = y.clamp_(0, 255)
        y = y.round_().to(torch.uint8)
    return y


def _torch_center_crop(x, ch: int, cw: int):
    """transformers' TorchvisionBackend.center_crop: zero padding (left/top get the smaller half) when the
    crop is larger, then the crop at ``int((size - crop) / 2)``."""
    import torch.nn.functional as F

    h, w = x.shape[-2:]
    if cw > w or ch > h:
        left, right = ((cw - w) // 2, (cw - w + 1) // 2) if cw > w else (0, 0)
        top, bottom = ((ch - h) // 2, (ch - h + 1) // 2) if ch > h else (0, 0)
        x = F.pad(x, (left, right, top, bottom), mode="constant", value=0)
        h, w = x.shape[-2:]
        if (h, w) == (ch, cw):
            return x
    top, left = int((h - ch) / 2.0), int((w - cw) / 2.0)
    return x[..., top : top + ch, left : left + cw]


def _torch_rescale_normalize(x, spec: VideoProcessorSpec):
    """transformers' TorchvisionBackend.rescale_and_normalize on a uint8 tensor (fused when both)."""
    import torch

    if spec.do_normalize:
        mean = torch.tensor(spec.image_mean, dtype=torch.float32)
        std = torch.tensor(spec.image_std, dtype=torch.float32)
        if spec.do_rescale:  # fused: mean and std divided by the rescale factor, in float32
            mean, std = mean * (1.0 / spec.rescale_factor), std * (1.0 / spec.rescale_factor)
        return (x.to(torch.float32) - mean.view(-1, 1, 1)) / std.view(-1, 1, 1)
    if spec.do_rescale:
        return x * spec.rescale_factor  # uint8 * python float -> float32
    return x.to(torch.float32)  # transformers would keep uint8; the package always returns float32


def _preprocess_torch(arr: np.ndarray, spec: VideoProcessorSpec) -> np.ndarray:
    import torch

    ch, cw = spec.crop_hw
    h, w = arr.shape[1:3]
    oh, ow = _output_size(h, w, spec) if spec.do_resize else (h, w)
    chunks = []
    for i in range(0, arr.shape[0], _TORCH_CHUNK):
        x = torch.from_numpy(arr[i : i + _TORCH_CHUNK]).permute(0, 3, 1, 2).contiguous()  # uint8 (n, 3, H, W)
        if spec.do_resize:
            x = _torch_resize(x, oh, ow, spec.resample)
        if spec.do_center_crop:
            x = _torch_center_crop(x, ch, cw)
        chunks.append(_torch_rescale_normalize(x, spec).contiguous().numpy())
    return np.ascontiguousarray(np.concatenate(chunks) if len(chunks) > 1 else chunks[0], dtype=np.float32)


def preprocess_videos(videos: Sequence, spec: VideoProcessorSpec | None = None, return_tensors: str = "pt"):
    """A batch of videos (frame arrays or :class:`Clip`) -> ``float32 (B, T, 3, h, w)`` (see
    :func:`preprocess_frames`; frames of different videos may differ in size when the spec maps them to
    one output size, e.g. a center crop or OneVision's exact 384 x 384 resize).

    Every video must have the same number of frames ``T`` (Video-LLaVA stacks them); sample with
    a fixed ``num_frames`` to guarantee it.
    """
    if isinstance(videos, (np.ndarray, Clip)) or len(videos) == 0:
        raise ValueError("preprocess_videos expects a non-empty list of videos; use preprocess_frames for one")
    arrays = [_frames_array(v) for v in videos]
    lengths = [a.shape[0] for a in arrays]
    if len(set(lengths)) != 1:
        raise ValueError(
            f"all videos in a batch must have the same number of frames, got {lengths}; "
            "load them with the same num_frames (uniform sampling repeats frames of short videos)"
        )
    out = np.stack([preprocess_frames(a, spec, return_tensors="np") for a in arrays])
    if return_tensors == "np":
        return out
    import torch

    return torch.from_numpy(out)


def video_tokens_per_frame(crop_size: int | tuple[int, int] = 224, patch_size: int = 14,
                           num_additional_image_tokens: int = 1) -> int:
    """Placeholder tokens one frame takes in Video-LLaVA: ``(h // p) * (w // p) + 1`` (= 257).

    For *videos*, transformers (5.x) counts the CLS token whatever
    ``vision_feature_select_strategy`` says (``get_video_features`` keeps CLS; only the image
    path drops it under ``"default"``), so no strategy argument here.
    """
    h, w = (crop_size, crop_size) if isinstance(crop_size, int) else crop_size
    return (h // patch_size) * (w // patch_size) + num_additional_image_tokens


def expand_video_prompt(prompt: str, num_frames: int, tokens_per_frame: int, video_token: str = "<video>") -> str:
    """Repeat every ``video_token`` ``num_frames * tokens_per_frame`` times, as
    ``VideoLlavaProcessor`` does (one video per placeholder, same geometry).

    Raises:
        ValueError: the prompt has no ``video_token``, or counts are not positive.
    """
    if num_frames < 1 or tokens_per_frame < 1:
        raise ValueError(f"num_frames and tokens_per_frame must be >= 1, got {num_frames}, {tokens_per_frame}")
    if video_token not in prompt:
        raise ValueError(f"prompt has no {video_token!r} placeholder: {prompt[:80]!r}")
    return prompt.replace(video_token, video_token * (num_frames * tokens_per_frame))
