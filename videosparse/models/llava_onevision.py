"""LLaVA-OneVision / LLaVA-Video (``LlavaOnevisionForConditionalGeneration``, Qwen2 decoder): the family file.

What only this family knows: its classes and that images arrive as ``pixel_values`` (AnyRes tiles: not
supported, refused with a clear error). The Qwen2 decoder (grouped-query attention, biases on q/k/v, its
own RoPE base) has Llama-style layers, so the engine's defaults score it exactly. The video block of a
sample is one run of ``config.video_token_id`` placeholders: frames x 14 x 14 pooled SigLIP tokens (7B at
384 px, no CLS) and one ``image_newline`` token closing the block, which is never scored, never pruned
and never counted as visual (the front end's geometry, ``videosparse.frontends.llava_onevision``).
"""

from __future__ import annotations

from videosparse.models.base import ModelAdapter, register_adapter


@register_adapter
class LlavaOnevisionAdapter(ModelAdapter):
    name = "llava_onevision"
    model_types = ("llava_onevision",)
    description = (
        "transformers LlavaOnevisionForConditionalGeneration / LlavaOnevisionModel with a Qwen2 decoder "
        "(e.g. llava-hf/llava-onevision-qwen2-7b-ov-hf, LLaVA-Video checkpoints converted to this class)"
    )
    model_classes = ("LlavaOnevisionForConditionalGeneration", "LlavaOnevisionModel")
    image_inputs = ("pixel_values",)
