"""LLaVA-OneVision / LLaVA-Video's front end (``LlavaOnevisionForConditionalGeneration``).

Frame geometry: a SigLIP grid of ``image_size // patch_size`` patches per side (27 at 384 px / 14 px),
no CLS token, pooled by transformers (bilinear, stride 2) to ``ceil(27 / 2) = 14`` per side, so 196
tokens per frame; the video block ends with one ``image_newline`` token (``tail_tokens = 1``), which is
part of the placeholder run but not a visual token. Frames are squashed to the tower's square input
(384 x 384) and normalised with the checkpoint's mean/std (0.5) by the package's own preprocessing
(``VideoProcessorSpec.llava_onevision()``): transformers' video processor for this family needs
torchvision.
"""

from __future__ import annotations

import math
from typing import Any

from videosparse.frontends.base import FrontEnd, preprocessor_file, register_frontend

# the checkpoints' chat template rendered for one video and one text turn (add_generation_prompt=True)
TEMPLATE = "<|im_start|>user <video>\n{question}<|im_end|>\n<|im_start|>assistant\n"


@register_frontend
class LlavaOnevisionFrontEnd(FrontEnd):
    name = "llava_onevision"
    model_types = ("llava_onevision",)
    description = ("LLaVA-OneVision / LLaVA-Video (transformers LlavaOnevisionForConditionalGeneration with a "
                   "Qwen2 decoder, e.g. llava-hf/llava-onevision-qwen2-7b-ov-hf)")
    prompt_template = TEMPLATE
    video_placeholder = "<video>"
    has_cls = False
    tail_tokens = 1  # image_newline closes the video block
    default_num_frames = 32

    def model_class(self) -> type:
        from transformers import LlavaOnevisionForConditionalGeneration

        return LlavaOnevisionForConditionalGeneration

    def preprocessor_spec(self, source: str, local_files_only: bool = False) -> Any:
        from videosparse.video import VideoProcessorSpec

        found = preprocessor_file(source, local_files_only)
        if found is None:
            return VideoProcessorSpec.llava_onevision()
        return VideoProcessorSpec.from_pretrained(found)

    def default_spec(self) -> Any:
        from videosparse.video import VideoProcessorSpec

        return VideoProcessorSpec.llava_onevision()

    def check_spec(self, config: Any, spec: Any) -> None:
        size = config.vision_config.image_size
        out = tuple(spec.crop_hw) if spec.do_center_crop else tuple(spec.resize_to or ())
        if out != (size, size):
            raise ValueError(f"preprocessing gives {out or 'frames of their own size'} but the vision tower "
                             f"expects {size}x{size}")

    def frame_grid(self, config: Any) -> tuple:
        v = config.vision_config
        side = math.ceil((v.image_size // v.patch_size) / 2)  # transformers' apply_pooling (bilinear, stride 2)
        return (side, side)

    def video_token_id(self, config: Any) -> int:
        return config.video_token_id

    def video_features(self, model: Any, pixel_values: Any) -> Any:
        inner = model.model
        cfg = inner.config
        out = inner.get_video_features(pixel_values_videos=pixel_values[None],
                                       vision_feature_layer=cfg.vision_feature_layer,
                                       vision_feature_select_strategy=cfg.vision_feature_select_strategy).pooler_output
        T = pixel_values.shape[0]
        return out[0, :-1].reshape(T, -1, out.shape[-1])  # the frames' tokens, without the closing newline

    def feature_inputs(self, model: Any, features: Any) -> dict:
        import torch
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        newline = model.model.image_newline.to(features.device, features.dtype)
        block = torch.cat([features, newline[None, None].expand(features.shape[0], 1, -1)], dim=1)
        return {"mm_encoder_outputs": {"video": BaseModelOutputWithPooling(pooler_output=block)}}

    def pixel_inputs(self, pixels: Any) -> dict:
        return {"pixel_values_videos": pixels}
