"""Video-LLaVA (``VideoLlavaForConditionalGeneration``, Llama decoder): the family file.

What only this family knows: its classes, where the video tokens are (``config.video_token_id``, one
contiguous run per sample, frame-major), and the frame geometry (CLIP grid + CLS = 257 tokens per frame
for the 7B). Everything else is the engine's (``videosparse.engine``) and the Llama-style defaults of
``ModelAdapter``.
"""

from __future__ import annotations

from typing import Any

import torch

from videosparse.config import SparseConfig
from videosparse.engine.state import VisualLayout
from videosparse.models.base import ModelAdapter, SparseHandle, register_adapter
from videosparse.compat import check_transformers_version


def _inner(model: Any) -> Any:
    return model.model if type(model).__name__ == "VideoLlavaForConditionalGeneration" else model


@register_adapter
class VideoLlavaAdapter(ModelAdapter):
    name = "video_llava"
    model_types = ("video_llava",)  # config.json model_type values (videosparse.loading checks before loading)
    description = (
        "transformers VideoLlavaForConditionalGeneration / VideoLlavaModel with a Llama-style decoder "
        "(e.g. LanguageBind/Video-LLaVA-7B-hf)"
    )
    has_cls = True  # Video-LLaVA keeps each frame's CLS token

    @classmethod
    def matches(cls, model: Any) -> bool:
        return type(model).__name__ in ("VideoLlavaForConditionalGeneration", "VideoLlavaModel")

    @staticmethod
    def decoder_layers(model: Any) -> Any:
        return _inner(model).get_decoder().layers

    def __init__(self, model: Any, config: SparseConfig) -> None:
        check_transformers_version()
        self.model = model
        self.config = config
        self.inner = _inner(model)
        decoder = self.inner.get_decoder()
        for attr in ("layers", "rotary_emb", "norm", "embed_tokens"):
            if not hasattr(decoder, attr):
                raise ValueError(
                    f"videosparse: the decoder {type(decoder).__name__} has no '{attr}'; only Llama-style "
                    f"decoders are supported ({self.description})"
                )
        self.decoder = decoder
        tcfg = decoder.config
        if getattr(tcfg, "sliding_window", None) or getattr(tcfg, "layer_types", None) and any(
            t != "full_attention" for t in tcfg.layer_types
        ):
            raise ValueError("videosparse: decoders with sliding-window/hybrid attention layers are not supported")
        self.num_layers = len(decoder.layers)
        config.check_layers(self.num_layers)
        if config.budget == "rank" and config.method != "sparsevlm":
            raise ValueError("SparseConfig.budget: 'rank' needs method='sparsevlm' (rater attention)")
        vcfg = self.inner.config.vision_config
        self.grid = (vcfg.image_size // vcfg.patch_size, vcfg.image_size // vcfg.patch_size)
        self.tokens_per_frame = self.grid[0] * self.grid[1] + 1  # CLS + patches
        self.video_token_id = self.inner.config.video_token_id

    def locate(self, args: tuple, kwargs: dict, handle: SparseHandle) -> VisualLayout:
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if kwargs.get("pixel_values") is not None or kwargs.get("pixel_values_images") is not None:
            raise ValueError(
                "videosparse: image inputs (pixel_values) are not supported; pass videos as "
                "pixel_values_videos, or run inside `with handle.disabled():`"
            )
        if input_ids is None:
            raise ValueError("videosparse: input_ids are required to locate the video tokens (got inputs_embeds only)")
        vm = input_ids == self.video_token_id
        if not bool(vm.any()):
            raise ValueError(
                f"videosparse: the input has no video tokens (video_token_id={self.video_token_id}); "
                "videosparse prunes video tokens only - run text-only prompts inside `with handle.disabled():`"
            )
        counts = vm.sum(dim=1)
        if bool((counts != counts[0]).any()):
            raise ValueError(
                f"videosparse: every sample must hold the same number of video tokens, got {counts.tolist()}"
            )
        nv = int(counts[0])
        P = self.tokens_per_frame
        if handle._pool is not None:
            ids, frames = handle._pool
            ids = torch.as_tensor(ids, dtype=torch.long)
            if ids.ndim != 2 or ids.shape[1] != nv or vm.shape[0] % ids.shape[0]:
                raise ValueError(f"videosparse: the pooled layout {tuple(ids.shape)} does not match the input: "
                                 f"{vm.shape[0]} sample(s) with {nv} video tokens each")
            if bool((ids[:, 1:] <= ids[:, :-1]).any()) or int(ids.min()) < 0 or int(ids.max()) >= frames * P:
                raise ValueError(f"videosparse: pooled token ids must be ascending and inside {frames} frames x {P}")
            ids = ids.repeat_interleave(vm.shape[0] // ids.shape[0], dim=0)  # beams/returned sequences
            return VisualLayout(vm, frames, P, ids.to(vm.device))
        if nv % P:
            raise ValueError(f"videosparse: {nv} video tokens is not a whole number of frames of {P} tokens")
        return VisualLayout(vm, nv // P, P)
