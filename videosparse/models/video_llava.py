"""Video-LLaVA (``VideoLlavaForConditionalGeneration``, Llama decoder): the family file.

What only this family knows: its classes and that images arrive as ``pixel_values_images``. The video
tokens are one contiguous run of ``config.video_token_id`` per sample, frame-major, CLS first in each
frame (the front end's geometry, ``videosparse.frontends.video_llava``: 257 tokens per frame for the 7B);
everything else is the engine's (``videosparse.engine``) and the defaults of ``ModelAdapter``.
"""

from __future__ import annotations

from videosparse.models.base import ModelAdapter, register_adapter


@register_adapter
class VideoLlavaAdapter(ModelAdapter):
    name = "video_llava"
    model_types = ("video_llava",)  # config.json model_type values (videosparse.loading checks before loading)
    description = (
        "transformers VideoLlavaForConditionalGeneration / VideoLlavaModel with a Llama-style decoder "
        "(e.g. LanguageBind/Video-LLaVA-7B-hf)"
    )
    model_classes = ("VideoLlavaForConditionalGeneration", "VideoLlavaModel")
    image_inputs = ("pixel_values", "pixel_values_images")
