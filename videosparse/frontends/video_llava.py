"""Video-LLaVA's front end (``VideoLlavaForConditionalGeneration``): prompt, preprocessing, frame geometry.

The frame geometry: a CLIP ViT grid of ``image_size // patch_size`` squared patches plus the CLS token
(257 tokens per frame for the 7B: 224 px, 14 px patches). transformers counts the CLS token for videos
whatever ``vision_feature_select_strategy`` says (``get_video_features`` keeps it).
"""

from __future__ import annotations

import logging
from typing import Any

from videosparse.frontends.base import FrontEnd, preprocessor_file, register_frontend

logger = logging.getLogger(__name__)

TEMPLATE = "USER: <video>\n{question} ASSISTANT:"


@register_frontend
class VideoLlavaFrontEnd(FrontEnd):
    name = "video_llava"
    model_types = ("video_llava",)
    description = ("Video-LLaVA (transformers VideoLlavaForConditionalGeneration with a Llama-style decoder, "
                   "e.g. LanguageBind/Video-LLaVA-7B-hf)")
    prompt_template = TEMPLATE
    video_placeholder = "<video>"
    has_cls = True
    default_num_frames = 8

    def model_class(self) -> type:
        from transformers import VideoLlavaForConditionalGeneration

        return VideoLlavaForConditionalGeneration

    def preprocessor_spec(self, source: str, local_files_only: bool = False) -> Any:
        from videosparse.video import VideoProcessorSpec

        found = preprocessor_file(source, local_files_only)
        if found is None:
            logger.warning("no preprocessor config found for %s; using CLIP defaults (224)", source)
            return VideoProcessorSpec()
        return VideoProcessorSpec.from_pretrained(found)

    def check_spec(self, config: Any, spec: Any) -> None:
        size = config.vision_config.image_size
        crop = spec.crop_hw
        if tuple(crop) != (size, size):
            raise ValueError(f"preprocessing crops {tuple(crop)} but the vision tower expects {size}x{size}")

    def frame_grid(self, config: Any) -> tuple:
        v = config.vision_config
        side = v.image_size // v.patch_size
        return (side, side)

    def video_token_id(self, config: Any) -> int:
        return config.video_token_id

    def video_features(self, model: Any, pixel_values: Any) -> Any:
        return model.model.get_video_features(pixel_values_videos=pixel_values[None]).pooler_output

    def feature_inputs(self, model: Any, features: Any) -> dict:
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        return {"mm_encoder_outputs": {"video": BaseModelOutputWithPooling(pooler_output=features)}}

    def pixel_inputs(self, pixels: Any) -> dict:
        return {"pixel_values_videos": pixels}
