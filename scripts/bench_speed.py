#!/usr/bin/env python
"""Performance harness: prefill, decode, FLOPs and memory of videosparse vs the full model and peers.

One run measures, on a random-weight Video-LLaVA-architecture model with the real token geometry
(8 frames x 257 = 2056 visual tokens, ~60 text tokens, 32 decoder layers; the hidden size is reduced
to fit a 2-core CPU and stated in the output):

* prefill time (median and spread over --repeats, configurations interleaved round-robin so machine
  load hits all of them alike) of the full model, videosparse presets, FastV, the seed-reference way
  of scoring (full N x N attention map of the stage layer, eager attention) and the lower bound
  (uniform selection: the kept tokens only, no scoring work at all);
* decode time per token for --new-tokens greedy steps on the pruned vs full KV cache;
* analytic FLOPs per configuration (formula in ``flops_doc()``) and the FLOPs-ideal speedup;
* selection overhead (raters + queries/keys + scores + temporal + top-k + recycling) measured by
  wall-clock wrappers around those functions (runtime instrumentation, no library change);
* peak prefill memory, each configuration in a fresh child process (VmHWM reset right before the
  prefill via /proc/self/clear_refs, so model building does not count);
* rows at equal *equivalent tokens* (the SparseVLM paper's unit: mean over the decoder layers of the
  visual tokens each layer sees, merged/recycled tokens included) for the presets video,
  sparsevlm-video, sparsevlm-v1, sparsevlm-v1.5, sparsevlm-v2 and fastv, named ``<preset>@194eq``:
  at the paper's 194 (``--eq-budget``) and at ``--eq-budget2`` (default 225 = the equivalent tokens
  of one stage keeping 5 % = 103 tokens after layer 1: 2 x 2056 / 32 + 30 x 103 / 32).
  5 % of 2056 = 103 *equivalent* tokens is below what any stage after layer 1 can reach (layers 0
  and 1 see all 2056 tokens: 128.5 + 30 x kept / 32). A preset that cannot reach a setting (on
  8 x 257 / 32 layers sparsevlm-v1 and sparsevlm-v1.5 need >= 202.5 for 194: layers 0-2
  see every token and the seed's recycled tokens come on top) runs at the lowest equivalent tokens it
  can reach (``SparseConfig.equivalent_range``), labelled e.g. ``sparsevlm-v1.5@202.5eq(min)``.
  Their FLOPs count the tokens each stage leaves (selected + merged on top, from the trace) and the
  DPC-KNN cost with the candidate count of the config's recycling rule.

What is timed: the multimodal model forward ``model(input_ids, attention_mask, mm_encoder_outputs=...,
use_cache=True, logits_to_keep=1)`` with the video features computed once beforehand (the vision
tower is identical for every configuration; its time is reported separately). So the prefill figure is
embedding + video-feature scatter + the 32 decoder layers (+ selection) + the last-token LM head.

Output: a markdown table of ratios on stdout and in ``<out>.md``, raw figures + config + versions +
machine + load in ``<out>.json``.

``--family llava_onevision``: the same measurements on a random-weight LLaVA-OneVision / LLaVA-Video model
(``LlavaOnevisionForConditionalGeneration``: SigLIP tower, Qwen2 decoder with GQA and q/k/v biases) with the 7B's
token geometry: 32 frames x 196 = 6272 visual tokens + the image_newline closing the video block, 28 layers, real
vocab 152064; width scaled down to hidden 224 = 7 query heads x 32 sharing 1 KV head (the 7B's 28:4 = 7:1 ratio),
MLP 1184 (the 7B's 18944 / 3584 ratio). Tokens per frame, the closing token, the video features and the model
inputs come from the family's front end (``videosparse.frontends.llava_onevision``). Configurations: full; at 10 %
and 25 % kept, ``video``, ``sparsevlm-video``, ``sparsevlm-v1``, ``sparsevlm-v1.5``, ``sparsevlm-v2``, ``fastv``,
a pre-LLM baseline (``pre-llm@K``: the prompt holds K placeholders + the newline and only the K question-blind
selected tokens' features enter the decoder; ``--pre-select uniform`` (default) every (N/K)-th token, ``norm``
per-frame top-k feature norm) and the lower bound; and all of them at the paper's 194/2056 equivalent tokens
scaled to 6272 (592). Peak memory of every configuration in a child process; ``check_targets`` per family.

``--family qwen2_5_vl`` / ``--family qwen3_vl``: the same configurations and measurements on random-weight
``Qwen2_5_VLForConditionalGeneration`` / ``Qwen3VLForConditionalGeneration`` models with the real checkpoints'
decoder depth, GQA ratio, MLP ratio and vocab (Qwen2.5-VL-7B: 28 layers, 28:4 heads, q/k/v biases, vocab 152064;
Qwen3-VL-8B: 36 layers, 32:8 heads, q/k RMS norms, deepstack after decoder layers 0-2, vocab 151936), width scaled
down (head dim 32), and a 64-frame clip giving 32 temporal groups x 12 x 16 = 6144 visual tokens (Qwen2.5-VL: 336 x
448 px, patch 14; Qwen3-VL: 384 x 512 px, patch 16; merge 2, temporal patch 2). Qwen3-VL's prompt holds each
temporal group's timestamp text ("<12.2 seconds>") + vision_start/end around its run of video tokens. There is no
front end for these families here: the prompt, ``video_grid_thw``, ``mm_token_type_ids`` and the patch tensor are
built by this script, the features by ``model.model.get_video_features`` (timed apart) and handed to the timed
forward as ``mm_encoder_outputs`` (Qwen3-VL: with its deepstack features). Multi-axis rotary positions (mrope): the
seed presets run with ``positions="original", gravity=None`` (renumbering and 1-D RoPE gravity are refused for
mrope); ``video``, ``fastv`` and the lower bound run as they are. The pre-LLM baseline keeps the kept tokens'
original 3-axis positions.

Usage:
    python scripts/bench_speed.py                 # full run (~10 min on 2 cores)
    python scripts/bench_speed.py --quick         # < 1.5 min: fewer repeats/configs, smaller hidden size
    python scripts/bench_speed.py --family llava_onevision [--threads 1]   # ~8 min: 24 configs x 3 repeats
    python scripts/bench_speed.py --family llava_onevision --quick         # < 1 min: 8 frames, 1 repeat
    python scripts/bench_speed.py --family qwen2_5_vl --threads 1          # 24 configs x 3 repeats
    python scripts/bench_speed.py --family qwen3_vl --threads 1            # 24 configs x 3 repeats
    python scripts/bench_speed.py --family qwen3_vl --quick                # 16 frames, 1 repeat
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

VIDEO_TOKEN = 32001  # Video-LLaVA-7B-hf's <video> id (vocab 32064)
IMAGE_TOKEN = 32000
OV_VIDEO_TOKEN = 151647  # llava-onevision-qwen2-7b-ov-hf's <video> id (vocab 152064)
OV_IMAGE_TOKEN = 151646

# Per family: the report's name, the front end / config.json model_type, and the 7B's decoder dimensions (the
# analytic "same token flow with the 7B's dimensions" FLOPs-ideal speedup).
FAMILIES = {
    "video_llava": {"label": "Video-LLaVA", "model_type": "video_llava",
                    "dims_7b": dict(hidden=4096, heads=32, kv_heads=32, intermediate=11008, vocab=32064)},
    "llava_onevision": {"label": "LLaVA-OneVision", "model_type": "llava_onevision",
                        "dims_7b": dict(hidden=3584, heads=28, kv_heads=4, intermediate=18944, vocab=152064)},
    # Qwen2.5-VL-7B-Instruct's decoder (config.json): 28 layers, hidden 3584, 28 heads x 128 : 4 KV heads, MLP 18944,
    # q/k/v biases, vocab 152064, rope theta 1e6, mrope_section [16, 24, 24]
    "qwen2_5_vl": {"label": "Qwen2.5-VL", "size": "7B", "model_type": "qwen2_5_vl",
                   "dims_7b": dict(hidden=3584, heads=28, kv_heads=4, intermediate=18944, vocab=152064)},
    # Qwen3-VL-8B-Instruct's decoder: 36 layers, hidden 4096, 32 heads x 128 : 8 KV heads, MLP 12288, no biases,
    # per-head q/k RMS norms, vocab 151936, rope theta 5e6, interleaved mrope_section [24, 20, 20]; deepstack:
    # vision layers 8, 16, 24's features added to the visual rows after decoder layers 0, 1, 2
    "qwen3_vl": {"label": "Qwen3-VL", "size": "8B", "model_type": "qwen3_vl",
                 "dims_7b": dict(hidden=4096, heads=32, kv_heads=8, intermediate=12288, vocab=151936)},
}
QWEN_FAMILIES = ("qwen2_5_vl", "qwen3_vl")
# The real checkpoints' special tokens (both families): <|vision_start|>, <|vision_end|>, <|image_pad|>, <|video_pad|>
QWEN_VISION_START, QWEN_VISION_END, QWEN_IMAGE_TOKEN, QWEN_VIDEO_TOKEN = 151652, 151653, 151655, 151656
# mrope sections of the real head dim 128 (64 rotary frequencies: time, height, width), scaled to the bench's head dim
QWEN_MROPE = {"qwen2_5_vl": (16, 24, 24), "qwen3_vl": (24, 20, 20)}
QWEN_ROPE_THETA = {"qwen2_5_vl": 1000000.0, "qwen3_vl": 5000000.0}
QWEN_GQA = {"qwen2_5_vl": 7, "qwen3_vl": 4}  # query heads per KV head (28:4, 32:8)
QWEN_MLP_RATIO = {"qwen2_5_vl": 18944 / 3584, "qwen3_vl": 12288 / 4096}


# ----------------------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class Geometry:
    frames: int = 8
    image_size: int = 224
    patch_size: int = 14
    layers: int = 32
    hidden: int = 256
    heads: int = 4
    kv_heads: int = 4
    intermediate: int = 688  # Llama-7B ratio 11008 / 4096 = 2.6875
    vocab: int = 32064
    prefix_tokens: int = 35
    question_tokens: int = 25
    vision_hidden: int = 32
    vision_layers: int = 1
    family: str = "video_llava"  # "video_llava" | "llava_onevision" | "qwen2_5_vl" | "qwen3_vl"
    # Qwen families only: frame width (image_size is the height), temporal patch, spatial merge, sampling rate
    image_width: int = 0  # 0: square frames
    temporal_patch: int = 1
    merge: int = 1
    fps: float = 2.0

    @property
    def qwen(self) -> bool:
        return self.family in QWEN_FAMILIES

    @property
    def groups(self) -> int:
        """The engine's frames: video frames, or (Qwen) temporal groups of ``temporal_patch`` frames."""
        return self.frames // self.temporal_patch

    @property
    def grid_thw(self) -> tuple:
        """Qwen: the video's patch grid (temporal groups, height patches, width patches) = ``video_grid_thw``."""
        return (self.groups, self.image_size // self.patch_size, (self.image_width or self.image_size) // self.patch_size)

    @property
    def tokens_per_frame(self) -> int:
        """From the family's front end, asked about this geometry's transformers config (no formula here); Qwen
        (no front end here): the merged patch grid of one temporal group, (h / merge) x (w / merge)."""
        if self.qwen:
            _, h, w = self.grid_thw
            return (h // self.merge) * (w // self.merge)
        return _frontend_geometry(self)[0]

    @property
    def tail_tokens(self) -> int:
        """Placeholder tokens closing the video block (LLaVA-OneVision's image_newline: 1), not visual; Qwen: the text
        tokens inside the video block (vision_start / vision_end; Qwen3-VL also each group's timestamp text)."""
        if self.qwen:
            return len(qwen_video_block(self)) - self.num_visual
        return _frontend_geometry(self)[1]

    @property
    def num_visual(self) -> int:
        return self.groups * self.tokens_per_frame

    @property
    def seq_len(self) -> int:
        return self.prefix_tokens + self.num_visual + self.tail_tokens + self.question_tokens

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def qkv_bias(self) -> bool:
        """Qwen2 (LLaVA-OneVision's and Qwen2.5-VL's decoder) has biases on q/k/v; Llama (Video-LLaVA's) and Qwen3
        have none."""
        return self.family in ("llava_onevision", "qwen2_5_vl")

    @property
    def qk_norm(self) -> bool:
        """Qwen3's per-head RMS norms on q and k (before rotary)."""
        return self.family == "qwen3_vl"

    @property
    def deepstack(self) -> int:
        """Qwen3-VL: decoder layers (0 .. n-1) after which deepstack features are added to the visual rows."""
        return min(3, self.vision_layers) if self.family == "qwen3_vl" else 0


TOY = Geometry(frames=2, image_size=84, patch_size=14, layers=6, hidden=64, heads=2, kv_heads=2, intermediate=128,
               vocab=128, prefix_tokens=4, question_tokens=5, vision_hidden=16)

# LLaVA-OneVision-7B's token geometry: 32 frames of 384 px / 14 px SigLIP patches (27 x 27, no CLS) pooled to
# 14 x 14 = 196 tokens, 6272 visual tokens + the image_newline; 28 Qwen2 layers. The width is scaled down
# (hidden 224) keeping the 7B's GQA ratio exactly (28 query heads : 4 KV heads = 7 : 1 -> 7 heads x 32 sharing
# 1 KV head) and its MLP ratio (18944 / 3584 = 5.286 -> 1184); the real vocab (152064) as for Video-LLaVA.
OV_GEOMETRY = Geometry(frames=32, image_size=384, patch_size=14, layers=28, hidden=224, heads=7, kv_heads=1,
                       intermediate=1184, vocab=152064, prefix_tokens=35, question_tokens=25, vision_hidden=32,
                       vision_layers=1, family="llava_onevision")
OV_QUICK_FRAMES = 8
OV_TOY = Geometry(frames=4, image_size=112, patch_size=14, layers=8, hidden=56, heads=7, kv_heads=1,
                  intermediate=296, vocab=160, prefix_tokens=4, question_tokens=5, vision_hidden=16, vision_layers=1,
                  family="llava_onevision")


# Qwen2.5-VL-7B / Qwen3-VL-8B decoders, width scaled down to head dim 32 keeping the GQA ratio (28:4 = 7:1 -> 7 heads
# sharing 1 KV head; 32:8 = 4:1 -> 8 heads : 2 KV heads), the MLP ratio (18944 / 3584 -> 1184; 12288 / 4096 = 3 ->
# 768), the depth (28; 36) and the vocab (152064; 151936). Clip: 64 frames sampled at 2 fps (32 s) -> 32 temporal
# groups of 2 frames; Qwen2.5-VL 336 x 448 px / 14 px patches = 24 x 32 patches, merged 2 x 2 -> 12 x 16 = 192 tokens
# per group; Qwen3-VL 384 x 512 px / 16 px patches -> the same 24 x 32 and 192: 6144 visual tokens for both (the sizes
# are multiples of patch x merge, so the processors' smart_resize keeps them). Vision towers: tiny (hidden 32; Qwen2.5
# 1 block, Qwen3 3 blocks so that its 3 deepstack features exist).
QWEN25_GEOMETRY = Geometry(frames=64, image_size=336, image_width=448, patch_size=14, temporal_patch=2, merge=2,
                           layers=28, hidden=224, heads=7, kv_heads=1, intermediate=1184, vocab=152064,
                           prefix_tokens=35, question_tokens=25, vision_hidden=32, vision_layers=1, family="qwen2_5_vl")
QWEN3_GEOMETRY = Geometry(frames=64, image_size=384, image_width=512, patch_size=16, temporal_patch=2, merge=2,
                          layers=36, hidden=256, heads=8, kv_heads=2, intermediate=768, vocab=151936,
                          prefix_tokens=35, question_tokens=25, vision_hidden=32, vision_layers=3, family="qwen3_vl")
QWEN_QUICK_FRAMES = 16
# toys: 8 frames of 32 x 48 px, 4 px patches -> 4 groups x (4 x 6) = 96 visual tokens; 8 layers
QWEN25_TOY = Geometry(frames=8, image_size=32, image_width=48, patch_size=4, temporal_patch=2, merge=2, layers=8,
                      hidden=56, heads=7, kv_heads=1, intermediate=296, vocab=160, prefix_tokens=4, question_tokens=5,
                      vision_hidden=16, vision_layers=1, family="qwen2_5_vl")
QWEN3_TOY = Geometry(frames=8, image_size=32, image_width=48, patch_size=4, temporal_patch=2, merge=2, layers=8,
                     hidden=64, heads=4, kv_heads=1, intermediate=192, vocab=160, prefix_tokens=4, question_tokens=5,
                     vision_hidden=16, vision_layers=3, family="qwen3_vl")
QWEN_GEOMETRIES = {"qwen2_5_vl": (QWEN25_GEOMETRY, QWEN25_TOY), "qwen3_vl": (QWEN3_GEOMETRY, QWEN3_TOY)}


def qwen_mrope_section(family: str, head_dim: int) -> list:
    """The real mrope_section (for 64 rotary frequencies) scaled to ``head_dim / 2``: height and width rounded down,
    time takes the rest (Qwen2.5 [16, 24, 24] -> [4, 6, 6] at head dim 32; Qwen3 [24, 20, 20] -> [6, 5, 5])."""
    t, h, w = QWEN_MROPE[family]
    half = head_dim // 2
    hh, ww = h * half // 64, w * half // 64
    return [half - hh - ww, hh, ww]


def _qwen_ids(geo: Geometry) -> tuple:
    """(video, image, vision_start, vision_end) ids: the real checkpoints' where the vocab holds them, else the
    top ids of a toy vocab."""
    if geo.vocab > QWEN_VIDEO_TOKEN:
        return QWEN_VIDEO_TOKEN, QWEN_IMAGE_TOKEN, QWEN_VISION_START, QWEN_VISION_END
    v = geo.vocab
    return v - 1, v - 2, v - 3, v - 4


def qwen_timestamp_tokens(seconds: float) -> int:
    """Tokens of Qwen3-VL's ``f"<{seconds:.1f} seconds>"`` in the Qwen2 tokenizer: its pre-tokenizer splits every
    digit apart, so '<', each digit, '.', ' seconds', '>' (e.g. '<12.2 seconds>' -> 7 tokens)."""
    text = f"{seconds:.1f}"
    return 1 + sum(ch.isdigit() for ch in text) + text.count(".") + 1 + 1


@functools.lru_cache(maxsize=64)
def qwen_timestamps(geo: Geometry) -> tuple:
    """Qwen3-VL's time of each temporal group: ``frames`` sampled at ``fps`` from the clip's start (frame i at
    i / fps s), through ``videosparse.video.qwen.qwen3_timestamps``."""
    from videosparse.video.qwen import qwen3_timestamps

    return tuple(qwen3_timestamps(list(range(geo.frames)), geo.fps, geo.temporal_patch))


@functools.lru_cache(maxsize=64)
def qwen_video_block(geo: Geometry) -> tuple:
    """The video block of the prompt as token kinds: 'v' video token, 's' vision_start, 'e' vision_end, 't' text.

    Qwen2.5-VL: the chat template's ``<|vision_start|><|video_pad|><|vision_end|>`` with the pad expanded to
    t x h x w / 4 tokens (``qwen2_5_video_prompt``). Qwen3-VL (transformers 5.23's processor,
    ``qwen3_video_prompt``): the template's wrapper stays around the expansion, which is per temporal group the
    timestamp text + vision_start + its h x w / 4 tokens + vision_end."""
    P = geo.tokens_per_frame
    if geo.family == "qwen2_5_vl":
        return ("s",) + ("v",) * (geo.groups * P) + ("e",)
    out = ["s"]
    for ts in qwen_timestamps(geo):
        out += ["t"] * qwen_timestamp_tokens(ts) + ["s"] + ["v"] * P + ["e"]
    return tuple(out + ["e"])


def model_config(geo: Geometry):
    """The transformers config of the family's random-weight model with this geometry (a fresh object)."""
    if geo.family not in FAMILIES:
        raise ValueError(f"unknown family {geo.family!r}; known: {sorted(FAMILIES)}")
    if geo.qwen:
        return _qwen_config(geo)
    if geo.family == "llava_onevision":
        from transformers import LlavaOnevisionConfig, Qwen2Config, SiglipVisionConfig

        vcfg = SiglipVisionConfig(hidden_size=geo.vision_hidden, intermediate_size=2 * geo.vision_hidden,
                                  num_hidden_layers=geo.vision_layers, num_attention_heads=2,
                                  image_size=geo.image_size, patch_size=geo.patch_size)
        tcfg = Qwen2Config(vocab_size=geo.vocab, hidden_size=geo.hidden, intermediate_size=geo.intermediate,
                           num_hidden_layers=geo.layers, num_attention_heads=geo.heads,
                           num_key_value_heads=geo.kv_heads, max_position_embeddings=32768, rope_theta=1000000.0,
                           tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2)
        return LlavaOnevisionConfig(vision_config=vcfg, text_config=tcfg,
                                    video_token_id=min(OV_VIDEO_TOKEN, geo.vocab - 1),
                                    image_token_id=min(OV_IMAGE_TOKEN, geo.vocab - 2), vision_feature_layer=-1,
                                    vision_feature_select_strategy="full")
    from transformers import CLIPVisionConfig, LlamaConfig, VideoLlavaConfig

    vcfg = CLIPVisionConfig(hidden_size=geo.vision_hidden, intermediate_size=2 * geo.vision_hidden,
                            num_hidden_layers=geo.vision_layers, num_attention_heads=2, image_size=geo.image_size,
                            patch_size=geo.patch_size, projection_dim=geo.vision_hidden)
    tcfg = LlamaConfig(vocab_size=geo.vocab, hidden_size=geo.hidden, intermediate_size=geo.intermediate,
                       num_hidden_layers=geo.layers, num_attention_heads=geo.heads, num_key_value_heads=geo.kv_heads,
                       max_position_embeddings=4096, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    video_token = min(VIDEO_TOKEN, geo.vocab - 1)
    image_token = min(IMAGE_TOKEN, geo.vocab - 2)
    return VideoLlavaConfig(vision_config=vcfg, text_config=tcfg, video_token_id=video_token,
                            image_token_id=image_token, vision_feature_layer=-1, vision_feature_select_strategy="full")


def _qwen_config(geo: Geometry):
    hd = geo.hidden // geo.heads
    video, image, vs, ve = _qwen_ids(geo)
    rope = {"rope_type": "default", "rope_theta": QWEN_ROPE_THETA[geo.family],
            "mrope_section": qwen_mrope_section(geo.family, hd)}
    text = dict(vocab_size=geo.vocab, hidden_size=geo.hidden, intermediate_size=geo.intermediate,
                num_hidden_layers=geo.layers, num_attention_heads=geo.heads, num_key_value_heads=geo.kv_heads,
                max_position_embeddings=32768, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    vision = dict(depth=geo.vision_layers, hidden_size=geo.vision_hidden, intermediate_size=2 * geo.vision_hidden,
                  num_heads=2, out_hidden_size=geo.hidden, patch_size=geo.patch_size, spatial_merge_size=geo.merge,
                  temporal_patch_size=geo.temporal_patch)
    ids = dict(video_token_id=video, image_token_id=image, vision_start_token_id=vs, vision_end_token_id=ve)
    if geo.family == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig as Config

        # window attention in every block but the last (the 7B: full attention in blocks 7, 15, 23, 31 of 32)
        vision.update(window_size=112, fullatt_block_indexes=[geo.vision_layers - 1], tokens_per_second=2)
    else:
        from transformers import Qwen3VLConfig as Config

        rope["mrope_interleaved"] = True
        text.update(head_dim=hd, attention_bias=False)
        vision.update(num_position_embeddings=2304, deepstack_visual_indexes=list(range(geo.deepstack)))
    text["rope_parameters"] = rope
    cfg = Config(text_config=text, vision_config=vision, tie_word_embeddings=False, **ids)
    cfg.text_config.bos_token_id, cfg.text_config.eos_token_id, cfg.text_config.pad_token_id = 1, 2, 0
    return cfg


def frontend(geo: Geometry):
    from videosparse.frontends import get_frontend

    return get_frontend(FAMILIES[geo.family]["model_type"])


@functools.lru_cache(maxsize=64)
def _frontend_geometry(geo: Geometry) -> tuple:
    """(tokens per frame, tokens closing the video block) as the family's front end reads them off the config."""
    fe = frontend(geo)
    return int(fe.tokens_per_frame(model_config(geo))), int(fe.tail_tokens)


def build_model(geo: Geometry, seed: int = 0):
    import torch
    import transformers

    torch.manual_seed(seed)
    cfg = model_config(geo)
    cfg._attn_implementation = "sdpa"
    cls = getattr(transformers, {"video_llava": "VideoLlavaForConditionalGeneration",
                                 "llava_onevision": "LlavaOnevisionForConditionalGeneration",
                                 "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
                                 "qwen3_vl": "Qwen3VLForConditionalGeneration"}[geo.family])
    model = cls(cfg).eval()
    model.set_attn_implementation("sdpa")
    with torch.no_grad():  # larger init so attention is not uniform (random models otherwise score near-ties)
        for p in model.model.language_model.parameters():
            if p.ndim == 2:
                p.mul_(3.0)
        if geo.family == "llava_onevision":  # Qwen2's q/k biases and the newline, as tests/conftest.py does
            for layer in model.model.language_model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj):
                    proj.bias.normal_(0.0, 0.5)
            model.model.image_newline.normal_(0.0, 1.0)
        if geo.family == "qwen2_5_vl":  # the same q/k biases
            for layer in model.model.language_model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj):
                    proj.bias.normal_(0.0, 0.5)
        if geo.qk_norm:  # Qwen3's q/k RMS norms would undo the larger q/k init: their weights away from 1 instead
            for layer in model.model.language_model.layers:
                layer.self_attn.q_norm.weight.uniform_(1.0, 2.0)
                layer.self_attn.k_norm.weight.uniform_(1.0, 2.0)
    model.requires_grad_(False)
    return model


def make_inputs(model, geo: Geometry, seed: int = 1) -> dict:
    """prefix + the video block (frames x tokens per frame placeholders + the family's closing tokens) + question."""
    import torch

    if geo.qwen:
        return make_qwen_inputs(model, geo, seed)
    g = torch.Generator().manual_seed(seed)
    vt, it = model.config.video_token_id, model.config.image_token_id
    lo, hi = 3, min(it, geo.vocab) - 1

    def words(n):
        return torch.randint(lo, hi, (n,), generator=g)

    ids = torch.cat([torch.tensor([1]), words(geo.prefix_tokens - 1),
                     torch.full((geo.num_visual + geo.tail_tokens,), vt), words(geo.question_tokens)])[None]
    pix = torch.randn(1, geo.frames, 3, geo.image_size, geo.image_size, generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values_videos": pix}


def make_qwen_inputs(model, geo: Geometry, seed: int = 1) -> dict:
    """Qwen: [bos] + prefix words + the video block (``qwen_video_block``: vision_start / end, Qwen3-VL's timestamp
    text as random words) + question words; ``mm_token_type_ids`` 2 at the video tokens (transformers computes the
    3-axis positions from it), ``video_grid_thw``, Qwen2.5-VL's ``second_per_grid_ts`` (temporal patch / fps) and
    ``pixel_values_videos`` (t*h*w patches x 3*temporal_patch*patch^2, random). ``_last_position`` (not a model
    input): the 3-axis position of the prompt's last token, which the decode steps continue from."""
    import torch

    g = torch.Generator().manual_seed(seed)
    video, image, vs, ve = _qwen_ids(geo)
    lo, hi = 3, min(image, ve, geo.vocab) - 1

    def words(n):
        return torch.randint(lo, hi, (n,), generator=g)

    kinds = qwen_video_block(geo)
    block = words(len(kinds))
    for kind, tok in (("v", video), ("s", vs), ("e", ve)):
        block[torch.tensor([k == kind for k in kinds])] = tok
    ids = torch.cat([torch.tensor([1]), words(geo.prefix_tokens - 1), block, words(geo.question_tokens)])[None]
    t, h, w = geo.grid_thw
    dim = 3 * geo.temporal_patch * geo.patch_size ** 2
    out = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "mm_token_type_ids": (ids == video).long() * 2,
           "video_grid_thw": torch.tensor([[t, h, w]]),
           "pixel_values_videos": torch.randn(t * h * w, dim, generator=g)}
    if geo.family == "qwen2_5_vl":
        out["second_per_grid_ts"] = torch.tensor([geo.temporal_patch / geo.fps])
    out["_last_position"] = qwen_positions(model, out)[:, 0, -1].clone()
    return out


def qwen_positions(model, inputs: dict):
    """The stock model's (3, 1, n) rotary positions of a Qwen prompt (``get_rope_index``)."""
    kw = {k: inputs[k] for k in ("video_grid_thw", "second_per_grid_ts", "attention_mask") if k in inputs}
    return model.model.get_rope_index(inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"], **kw)[0]


def qwen_encode(model, inputs: dict) -> tuple:
    """(features (T, P, D), deepstack features [(T*P, D)] or None, seconds): Qwen's vision tower + merger through
    ``model.model.get_video_features(pixel_values_videos, video_grid_thw, return_dict=True)``."""
    import torch

    geo_t, geo_h, geo_w = (int(x) for x in inputs["video_grid_thw"][0])
    with torch.no_grad():
        t = time.perf_counter()
        out = model.model.get_video_features(inputs["pixel_values_videos"], inputs["video_grid_thw"], return_dict=True)
        dt = time.perf_counter() - t
    feats = torch.cat(out.pooler_output, dim=0)
    merge = model.config.vision_config.spatial_merge_size
    feats = feats.reshape(geo_t, (geo_h // merge) * (geo_w // merge), feats.shape[-1])
    deep = getattr(out, "deepstack_features", None)
    deep = [torch.cat(f, dim=0) for f in deep] if deep else None
    return feats, deep, dt


def encode(model, inputs: dict) -> tuple:
    """The video features once (identical for every configuration), popping the pixels off ``inputs``:
    (features (T, P, D), Qwen3-VL's deepstack features or None, seconds)."""
    if _is_qwen(model):
        out = qwen_encode(model, inputs)
        inputs.pop("pixel_values_videos")
        return out
    feats, dt = video_features(model, inputs.pop("pixel_values_videos"))
    return feats, None, dt


def _is_qwen(model) -> bool:
    return model.config.model_type in QWEN_FAMILIES


def video_features(model, pix) -> tuple:
    """((T, P, D) projected video tokens from the family's front end, seconds); the vision tower + projector."""
    import torch

    from videosparse.frontends import frontend_for

    with torch.no_grad():
        t = time.perf_counter()
        feats = frontend_for(model.config).video_features(model, pix[0])
        dt = time.perf_counter() - t
    return feats, dt


def feature_kwargs(model, feats, deep=None) -> dict:
    """The mm_encoder_outputs of precomputed visual tokens ``feats`` (1, n, D), via the front end's
    ``feature_inputs`` (which adds what closes the video block: LLaVA-OneVision's image_newline). Qwen: what
    ``get_video_features`` returns, rebuilt (one video: a 1-tuple of (n, D)), with ``deep`` (Qwen3-VL's deepstack
    features of the same n tokens) as its ``deepstack_features``."""
    if _is_qwen(model):
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        flat = feats.reshape(-1, feats.shape[-1])
        if deep is None:
            return {"video": BaseModelOutputWithPooling(pooler_output=(flat,))}
        from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures

        return {"video": BaseModelOutputWithDeepstackFeatures(pooler_output=(flat,),
                                                              deepstack_features=[(d,) for d in deep])}
    from videosparse.frontends import frontend_for

    return frontend_for(model.config).feature_inputs(model, feats)["mm_encoder_outputs"]


def encode_video(model, pix):
    """Video features once (the vision tower + projector; identical for every configuration), as the timed forward
    takes them: (mm_encoder_outputs, seconds)."""
    feats, dt = video_features(model, pix)
    return feature_kwargs(model, feats.reshape(1, -1, feats.shape[-1])), dt


# ----------------------------------------------------------------------------------------- pre-LLM baseline
PRE_SELECT = ("uniform", "norm")


def pre_llm_indices(feats, k: int, method: str = "uniform"):
    """Question-blind selection of ``k`` of the T x P visual tokens before the decoder, ascending frame-major ids.

    'uniform': every (T x P / k)-th token of the frame-major sequence (round(linspace(0, N - 1, k))): even over
    the frames and, within a frame, over its raster positions; no data read. 'norm': per frame the top-k feature
    L2 norms, k split evenly over the frames (the first k mod T frames one more)."""
    import torch

    T, P, _ = feats.shape
    n = T * P
    k = max(1, min(int(k), n))
    if method == "uniform":
        return torch.linspace(0, n - 1, k).round().long()
    if method != "norm":
        raise ValueError(f"pre-LLM selection: unknown method {method!r}; known: {PRE_SELECT}")
    norms = feats.float().norm(dim=-1)  # (T, P)
    out = []
    for t in range(T):
        q = min(P, k // T + (1 if t < k % T else 0))
        if q:
            out.append(norms[t].topk(q).indices.sort().values + t * P)
    return torch.cat(out)


def pre_llm_select(feats, k: int, method: str = "uniform"):
    """(1, k, D) features of the kept tokens, in frame-major order."""
    return feats.reshape(-1, feats.shape[-1]).index_select(0, pre_llm_indices(feats, k, method))[None]


def pre_llm_inputs(model, inputs: dict, k: int) -> dict:
    """The same prompt with the video block shrunk to ``k`` placeholders (+ the family's closing tokens): the
    decoder sees only the kept tokens, at consecutive positions."""
    import torch

    from videosparse.frontends import frontend_for

    tail = int(frontend_for(model.config).tail_tokens)
    ids = inputs["input_ids"][0]
    vt = model.config.video_token_id
    where = (ids == vt).nonzero().flatten()
    first, last = int(where[0]), int(where[-1])
    new = torch.cat([ids[:first], torch.full((k + tail,), vt, dtype=ids.dtype), ids[last + 1:]])[None]
    return {"input_ids": new, "attention_mask": torch.ones_like(new)}


# ----------------------------------------------------------------------------------------- configurations
@dataclass
class Bench:
    name: str
    attn: str  # "sdpa" | "eager"
    cfg: Any  # SparseConfig or None (full model)
    note: str
    ratio_row: bool = True  # show in the ratio table
    eq: dict | None = None  # equal-equivalent-token row: setting, target, reachable range, bound, plan
    pre_llm: int | None = None  # pre-LLM baseline: the decoder is fed only these many selected tokens' features
    pre_select: str = "uniform"  # its question-blind selection (PRE_SELECT)


EQ_PRESETS = ("video", "sparsevlm-video", "sparsevlm-v1", "sparsevlm-v1.5", "sparsevlm-v2", "fastv")


def _g(x: float) -> str:
    return f"{x:g}"


MROPE_NOTE = "positions='original', gravity=None (mrope)"


def preset_for(geo: Geometry, name: str, **kw):
    """``SparseConfig.preset(name, **kw)``; for the Qwen families (multi-axis rotary positions) the presets that
    renumber positions or use 1-D RoPE gravity (the seed presets, ``sparsevlm-*``) with ``positions="original",
    gravity=None``, which the Qwen adapter requires; ``video``, ``fastv``, ``random``, ``uniform`` as they are."""
    from videosparse import SparseConfig

    cfg = SparseConfig.preset(name, **kw)
    if geo.qwen and (cfg.positions != "original" or cfg.gravity is not None):
        cfg = cfg.replace(positions="original", gravity=None)
    return cfg


def _mrope_note(geo: Geometry, preset: str) -> str:
    """' [positions='original', gravity=None (mrope)]' for a Qwen row of a seed preset (changed by preset_for)."""
    return f" [{MROPE_NOTE}]" if geo.qwen and preset.startswith("sparsevlm") else ""


def eq_bench(preset: str, target: float, geo: Geometry):
    """``preset`` at ``target`` equivalent tokens (``<= 1``: a fraction of the visual tokens).

    A setting outside the preset's reachable range runs at the nearest end of it (the lowest, in practice),
    named ``<preset>@<lo>eq(min)``. Returns None only if even that cannot be built (never raises). Qwen families:
    the preset through ``preset_for`` (mrope)."""
    L, nv = geo.layers, geo.num_visual
    setting = f"{_g(target)}eq"
    target_abs = target * nv if target <= 1 else float(target)
    alias = f"{preset}@{setting}"
    try:
        cfg = preset_for(geo, preset, budget=setting, num_layers=L)
        lo, hi = cfg.equivalent_range(nv, L)
    except ValueError as e:  # e.g. no stage layer fits this decoder
        print(f"skipping {alias}: {e}", flush=True)
        return None
    bound, name = None, alias
    try:
        cfg.stage_plan(nv, L)
    except ValueError:
        bound = "min" if target_abs < lo else "max"
        edge = lo if bound == "min" else hi
        b = f"{edge!r}eq" if edge > 1 else f"{edge / nv!r}eq"
        try:
            cfg = preset_for(geo, preset, budget=b, num_layers=L)
            cfg.stage_plan(nv, L)
        except ValueError as e:
            print(f"skipping {alias}: {e}", flush=True)
            return None
        name = f"{preset}@{edge:.1f}eq({bound})"
    plan = [list(x) for x in cfg.stage_plan(nv, L)]
    planned = cfg.equivalent_tokens(nv, L)
    info = {"preset": preset, "setting": setting, "target": target_abs, "range": [lo, hi], "bound": bound,
            "alias": alias, "plan": plan, "planned_equivalent_tokens": planned}
    if bound:
        note = (f"{preset} cannot reach {_g(target_abs)} equivalent tokens (reachable [{lo:.1f}, {hi:.1f}]): "
                f"run at its {'lowest' if bound == 'min' else 'highest'}, {planned:.1f}")
    else:
        note = f"{preset} at {setting} ({planned:.1f} planned)"
    return Bench(name, "sdpa", cfg, note + _mrope_note(geo, preset), eq=info)


def default_eq_budgets(geo: Geometry, budget5: int) -> tuple:
    """(paper's 194 scaled to the visual tokens, equivalent tokens of one stage after layer 1 keeping budget5:
    the 5 % setting read in the paper's unit; 225 on 8 x 257 tokens / 32 layers)."""
    from videosparse.config import equivalent_tokens

    nv, L = geo.num_visual, geo.layers
    eq1 = max(2, round(194 / 2056 * nv))
    eq2 = round(equivalent_tokens(nv, L, (1,), [budget5]))
    return eq1, eq2


def _lower_bound(budget: int, num_layers: int):
    """Uniform selection with the video preset's token flow (its stage layers and counts): no scoring work."""
    from videosparse import SparseConfig

    return SparseConfig.preset("video", budget=budget, num_layers=num_layers).replace(
        method="uniform", name="lower-bound", recycle=False, temporal_tau=None, frame_floor=0)


def pre_llm_bench(k: int, method: str, name: str | None = None) -> Bench:
    what = ("every (N/K)-th token of the frame-major sequence" if method == "uniform" else
            "per frame the top-k feature norms")
    return Bench(name or f"pre-llm@{k}", "sdpa", None,
                 f"pre-LLM baseline: only {k} question-blind selected tokens' features enter the decoder ({what})",
                 pre_llm=int(k), pre_select=method)


def pre_llm_eq_bench(target: float, geo: Geometry, method: str) -> Bench:
    """The pre-LLM baseline at ``target`` equivalent tokens: every layer sees K tokens, so K = round(target)."""
    nv = geo.num_visual
    setting = f"{_g(target)}eq"
    target_abs = target * nv if target <= 1 else float(target)
    k = max(1, min(nv, int(round(target_abs))))
    b = pre_llm_bench(k, method, name=f"pre-llm@{setting}")
    b.eq = {"preset": "pre-llm", "setting": setting, "target": target_abs, "range": [1.0, float(nv)], "bound": None,
            "alias": b.name, "plan": [["pre", k, 0]], "planned_equivalent_tokens": float(k)}
    return b


def seed_kept_schedule(preset: str, kept: int, geo: Geometry) -> tuple:
    """sparsevlm-v1.5 / v2 keeping ``kept`` tokens after the last stage: the seed's 192-entry per-stage shape
    (v1.5 300:200:110, v2 300:200:118) scaled so its last count is ``kept``, at the preset's stage layers."""
    from videosparse import SparseConfig
    from videosparse.config import SEED_TABLES, _fit

    layers = SparseConfig.preset(preset, num_layers=geo.layers).layers
    table = _fit(SEED_TABLES[preset][192], len(layers))
    return tuple((int(layer), min(geo.num_visual, max(kept, int(round(kept * c / table[-1])))))
                 for layer, c in zip(layers, table))


def ov_configurations(geo: Geometry, budgets: tuple, eq_budgets: tuple = (), pre_select: str = "uniform") -> list:
    """LLaVA-OneVision (and the Qwen families): full; per kept budget (10 %, 25 %) video, the seed presets, FastV,
    the pre-LLM baseline and the lower bound; the equal-equivalent rows of EQ_PRESETS + the pre-LLM baseline at each
    of ``eq_budgets``. Qwen: the seed presets with ``positions="original", gravity=None`` (``preset_for``)."""
    L, nv = geo.layers, geo.num_visual
    out = [Bench("full", "sdpa", None, "unpruned, sdpa")]
    m = functools.partial(_mrope_note, geo)
    for b in budgets:
        pct = f"{b / nv:.0%} of {nv}"
        out += [
            Bench(f"video@{b}", "sdpa", preset_for(geo, "video", budget=b, num_layers=L),
                  f"videosparse default ({pct} after the last stage)"),
            Bench(f"sparsevlm-video@{b}", "sdpa", preset_for(geo, "sparsevlm-video", budget=b, num_layers=L),
                  f"seed video branch selecting {b}; its recycled tokens come on top" + m("sparsevlm-video")),
            Bench(f"sparsevlm-v1@{b}", "sdpa", preset_for(geo, "sparsevlm-v1", budget=b, num_layers=L),
                  f"v1 stages with fixed counts stepping down to {b}; recycled tokens on top" + m("sparsevlm-v1")),
            Bench(f"sparsevlm-v1.5@{b}", "sdpa",
                  preset_for(geo, "sparsevlm-v1.5", budget=seed_kept_schedule("sparsevlm-v1.5", b, geo),
                             num_layers=L),
                  f"seed 192-entry stage shape scaled to keep {b}; recycled tokens on top" + m("sparsevlm-v1.5")),
            Bench(f"sparsevlm-v2@{b}", "sdpa",
                  preset_for(geo, "sparsevlm-v2", budget=seed_kept_schedule("sparsevlm-v2", b, geo),
                             num_layers=L),
                  f"seed 192-entry stage shape scaled to keep {b}" + m("sparsevlm-v2")),
            Bench(f"fastv@{b}", "sdpa", preset_for(geo, "fastv", budget=b, num_layers=L),
                  "FastV-style: attention received from every query row"),
            pre_llm_bench(b, pre_select),
            Bench(f"lower-bound@{b}", "sdpa", _lower_bound(b, L),
                  "uniform selection with the video preset's stage layers and counts: no scoring work"),
        ]
    for target in eq_budgets:
        _add_eq_rows(out, [eq_bench(p, target, geo) for p in EQ_PRESETS] + [pre_llm_eq_bench(target, geo, pre_select)])
    return out


def _add_eq_rows(out: list, rows: list) -> None:
    """Append equal-equivalent rows to ``out``; a row already there (the same config serving two settings, e.g.
    both below the preset's lowest reachable) records the extra setting instead. None rows are skipped."""
    by_name = {b.name: b for b in out}
    for b in rows:
        if b is None:
            continue
        s = {"setting": b.eq["setting"], "target": b.eq["target"]}
        if b.name in by_name:
            if by_name[b.name].eq is not None and s not in by_name[b.name].eq["settings"]:
                by_name[b.name].eq["settings"].append(s)
            continue
        b.eq["settings"] = [s]
        by_name[b.name] = b
        out.append(b)


def configurations(geo: Geometry, budget: int, budget5: int, quick: bool = False,
                   eq_budgets: tuple = (), budget_high: int | None = None, pre_select: str = "uniform") -> list:
    """The benchmarked configurations; equal-equivalent rows for every preset of EQ_PRESETS at each of
    ``eq_budgets``. LLaVA-OneVision: ``ov_configurations`` at the kept budgets (budget, budget_high)."""
    from videosparse import SparseConfig

    if geo.family != "video_llava":  # LLaVA-OneVision, Qwen2.5-VL, Qwen3-VL
        return ov_configurations(geo, tuple(x for x in (budget, budget_high) if x), eq_budgets, pre_select)
    L = geo.layers
    nv = geo.num_visual
    frac = budget / nv
    out = [
        Bench("full", "sdpa", None, "unpruned, sdpa"),
        Bench(f"video@{budget}", "sdpa", SparseConfig.preset("video", budget=budget, num_layers=L),
              "videosparse default: rater rows, temporal discount, floor, recycling"),
        Bench(f"video@{budget5}", "sdpa", SparseConfig.preset("video", budget=budget5, num_layers=L), "same, ~5%"),
        Bench(f"lower-bound@{budget}", "sdpa",
              _lower_bound(budget, L),
              "uniform selection with the video preset's stage layers and counts: kept tokens only, no scoring work"),
        Bench(f"fastv@{budget}", "sdpa", SparseConfig.preset("fastv", budget=budget, num_layers=L),
              "FastV-style: attention received from every query row (chunked, recomputed queries)"),
        Bench(f"seed-ref@{budget}", "eager",
              SparseConfig.preset("video", budget=budget, num_layers=L, score_impl="full"),
              "video preset scored the seed's way: full N x N map of the stage layer, eager attention"),
    ]
    if not quick:
        out.append(Bench(f"seed-ref-sdpa@{budget}", "sdpa",
                         SparseConfig.preset("video", budget=budget, num_layers=L, score_impl="full"),
                         "full N x N map at the stage layer but sdpa elsewhere (separates scoring from backend)"))
    if not quick:
        out[3:3] = [Bench(f"video-norecycle@{budget}", "sdpa",
                          SparseConfig.preset("video", budget=budget, num_layers=L, recycle=False),
                          "video preset without recycling (isolates the DPC-KNN cost)")]
        out[4:4] = [Bench(f"lower-bound@{budget5}", "sdpa",
                          _lower_bound(budget5, L), "same, ~5%")]
        out += [
            Bench("sparsevlm-v1", "sdpa", SparseConfig.preset("sparsevlm-v1", num_layers=L),
                  "rank-adaptive counts at layers 2,6,15,19 (data-dependent)"),
            Bench(f"sparsevlm-v1.5@{frac:.4f}", "sdpa",
                  SparseConfig.preset("sparsevlm-v1.5", budget=frac, num_layers=L),
                  f"seed 192-schedule fractions scaled to {budget}/{nv}"),
            Bench(f"sparsevlm-v2@{frac:.4f}", "sdpa", SparseConfig.preset("sparsevlm-v2", budget=frac, num_layers=L),
                  f"seed 192-schedule fractions scaled to {budget}/{nv}"),
            Bench("full-eager", "eager", None, "unpruned, eager (context for seed-ref)", ratio_row=True),
        ]
    for target in eq_budgets:
        _add_eq_rows(out, [eq_bench(preset, target, geo) for preset in EQ_PRESETS])
    return out


# ----------------------------------------------------------------------------------------- selection timer
class SelectionTimer:
    """Wall time spent inside the selection functions during a prefill (top-level calls only).

    Patches the names the adapter / stage code look up at call time, restores them on exit.
    Groups: raters, queries+keys, scores, temporal, topk, recycle, stage-other (rest of run_stage).
    """

    TARGETS = [
        ("videosparse.engine.engine", "select_raters", "raters"),
        ("videosparse.engine.engine", "_Prefill.stage_queries", "queries+keys"),
        ("videosparse.engine.engine", "_Prefill.stage_keys", "queries+keys"),
        ("videosparse.engine.engine", "_Prefill.all_queries", "queries+keys"),
        ("videosparse.engine.engine", "rater_attention", "scores"),
        ("videosparse.engine.engine", "received_attention", "scores"),
        ("videosparse.engine.engine", "visual_scores", "scores"),
        ("videosparse.engine.engine", "relevance_rank", "scores"),
        ("videosparse.engine.engine", "random_scores", "scores"),
        ("videosparse.engine.engine", "uniform_scores", "scores"),
        ("videosparse.engine.engine", "run_stage", "stage"),
        ("videosparse.core.select", "temporal_redundancy", "temporal"),
        ("videosparse.core.select", "apply_temporal", "temporal"),
        ("videosparse.core.select", "select_tokens", "topk"),
        ("videosparse.core.select", "recycle", "recycle"),
    ]

    def __init__(self) -> None:
        self.times: dict = {}
        self._saved: list = []
        self._stack: list = []

    def reset(self) -> None:
        self.times = {}

    def _wrap(self, fn, group):
        timer = self

        def wrapped(*a, **k):
            t0 = time.perf_counter()
            timer._stack.append([group, 0.0])
            try:
                return fn(*a, **k)
            finally:
                g, child = timer._stack.pop()
                dt = time.perf_counter() - t0
                # exclusive time per group; the parent subtracts its children
                timer.times[g] = timer.times.get(g, 0.0) + dt - child
                if timer._stack:
                    timer._stack[-1][1] += dt

        return wrapped

    def __enter__(self) -> "SelectionTimer":
        import importlib

        for mod_name, path, group in self.TARGETS:
            owner = importlib.import_module(mod_name)
            *outer, attr = path.split(".")  # "Class.method" patches the class attribute
            for name in outer:
                owner = getattr(owner, name)
            fn = owner.__dict__[attr] if isinstance(owner, type) else getattr(owner, attr)
            self._saved.append((owner, attr, fn))
            setattr(owner, attr, self._wrap(fn, group))
        return self

    def __exit__(self, *exc) -> None:
        for owner, attr, fn in reversed(self._saved):
            setattr(owner, attr, fn)
        self._saved = []

    @property
    def total(self) -> float:
        return sum(self.times.values())


# ----------------------------------------------------------------------------------------- running
def _ctx(model, bench: Bench):
    import contextlib

    from videosparse import sparsify

    model.set_attn_implementation(bench.attn)
    if bench.cfg is None:
        return contextlib.nullcontext(None)
    return sparsify(model, bench.cfg)


def bench_inputs(model, bench: Bench, inputs: dict, enc: dict, feats, deep=None) -> tuple:
    """(inputs, enc, pre) a configuration's prefill_and_decode takes: the pre-LLM baseline gets the prompt with K
    placeholders and selects its K tokens' features inside the timed prefill; the others the full prompt.
    Qwen: the pre-LLM baseline gets the full prompt and drops the unselected video tokens inside the timed prefill
    (Qwen3-VL's runs keep their timestamp text), keeping the kept tokens' original 3-axis positions."""
    if bench.pre_llm is None:
        return inputs, enc, None
    pre = {"features": feats, "k": bench.pre_llm, "method": bench.pre_select}
    if _is_qwen(model):
        return inputs, None, {**pre, "deep": deep}
    return pre_llm_inputs(model, inputs, bench.pre_llm), None, pre


def qwen_pre_llm(model, inputs: dict, pre: dict) -> tuple:
    """Qwen's pre-LLM baseline: (input_ids, position_ids (4, 1, n), mm_encoder_outputs) of the prompt without the
    unselected video tokens: the K selected tokens' features (and deepstack features) at their original 3-axis
    positions (the stock ``get_rope_index`` of the full prompt, gathered), text rows as they were."""
    import torch

    idx = pre_llm_indices(pre["features"], pre["k"], pre["method"])
    ids = inputs["input_ids"]
    video = ids[0] == model.config.video_token_id
    keep = ~video
    keep[video.nonzero().flatten()[idx]] = True
    pos = qwen_positions(model, inputs)[:, :, keep]
    ids = ids[:, keep]
    flat = pre["features"].reshape(-1, pre["features"].shape[-1]).index_select(0, idx)
    deep = None if pre.get("deep") is None else [d.index_select(0, idx) for d in pre["deep"]]
    text = torch.arange(ids.shape[1])[None, None]
    return ids, torch.cat([text, pos]), feature_kwargs(model, flat, deep)


def prefill_and_decode(model, inputs: dict, enc: dict, new_tokens: int, pre: dict | None = None) -> tuple:
    """One prefill (timed) and `new_tokens` greedy decode steps (each timed).

    ``pre`` (the pre-LLM baseline): {"features": (T, P, D), "k", "method"}; the selection and the hand-over of the
    kept tokens' features (front end's feature_inputs) are inside the timed prefill, their time is also written
    to ``pre["select_s"]``; ``inputs`` is then the prompt with K placeholders (``pre_llm_inputs``).

    Qwen: the prompt's other model inputs (``mm_token_type_ids``, ``video_grid_thw``, ``second_per_grid_ts``) go
    to the prefill; each decode step gets the 3-axis position generate would give it (text row: the sequence length;
    the three rotary rows: the prompt's last position + 1 + step, ``inputs["_last_position"]``); the pre-LLM
    baseline's prompt, positions and features are built inside the timed prefill (``qwen_pre_llm``).

    Returns (t_prefill, [t_step], cache, cache length per layer right after the prefill)."""
    import torch

    from videosparse.compat import cache_keyword, output_cache

    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask") and not k.startswith("_")}
    last = inputs.get("_last_position")
    ckw = cache_keyword(model)  # 'cache' (transformers 5.24+) or 'past_key_values'
    with torch.no_grad():
        t0 = time.perf_counter()
        if pre is not None and last is not None:  # Qwen
            ids, pos, enc = qwen_pre_llm(model, inputs, pre)
            mask = torch.ones_like(ids)
            extra = {"position_ids": pos}
            pre["select_s"] = time.perf_counter() - t0
        elif pre is not None:
            enc = feature_kwargs(model, pre_llm_select(pre["features"], pre["k"], pre["method"]))
            pre["select_s"] = time.perf_counter() - t0
        out = model(input_ids=ids, attention_mask=mask, mm_encoder_outputs=dict(enc), use_cache=True,
                    logits_to_keep=1, **extra)
        t_prefill = time.perf_counter() - t0
        cache = output_cache(out)
        lens = cache_lengths(cache)
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        steps = []
        for step in range(new_tokens):
            mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)
            kw = {}
            if last is not None:
                kw["position_ids"] = torch.cat([torch.tensor([mask.shape[1] - 1]), last + 1 + step]).view(4, 1, 1)
            t0 = time.perf_counter()
            out = model(input_ids=nxt, attention_mask=mask, use_cache=True, **{ckw: cache}, **kw)
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            steps.append(time.perf_counter() - t0)
    return t_prefill, steps, cache, lens


def cache_lengths(cache) -> list:
    return [int(layer.keys.shape[2]) for layer in cache.layers]


# ----------------------------------------------------------------------------------------- FLOPs
def flops_doc(geo: Geometry | None = None) -> str:
    """The FLOPs model in words; for LLaVA-OneVision (``geo.family``) with its GQA / q-k-v bias / pre-LLM terms."""
    doc = _FLOPS_DOC
    if geo is not None and geo.family == "llava_onevision":
        doc += (
            " LLaVA-OneVision (Qwen2 decoder): Dkv = KV heads x head dim (grouped-query attention: the k and v "
            f"projections are D x Dkv, here {geo.hidden} x {geo.kv_dim}; the 7B's 3584 x 512), and the q/k/v biases "
            "are counted exactly: n(D + 2*Dkv) additions per layer (1 + 2*Dkv/D per token in decode). n includes the "
            "image_newline token closing the video block (never visual, never pruned). The pre-LLM baseline feeds K "
            "tokens to the decoder: every layer sees K visual tokens; its selection costs 0 FLOPs ('uniform') or "
            "2*N*D (per-token feature norms, 'norm')."
        )
        doc = doc.replace("Video-LLaVA-7B's decoder dimensions (D 4096, Dff 11008)",
                          "LLaVA-OneVision-7B's decoder dimensions (D 3584, Dkv 512, Dff 18944, V 152064)")
    elif geo is not None and geo.qwen:
        hd = geo.hidden // geo.heads
        qk = 4 * (geo.hidden + geo.kv_dim) / (2 * (2 * geo.hidden ** 2 + 2 * geo.hidden * geo.kv_dim))
        doc += (
            f" {FAMILIES[geo.family]['label']}: Dkv = KV heads x head dim (grouped-query attention "
            f"{geo.heads // geo.kv_heads}:1; k and v projections D x Dkv, here {geo.hidden} x {geo.kv_dim})."
            + (" The q/k/v biases are counted exactly: n(D + 2*Dkv) additions per layer (1 + 2*Dkv/D per token in "
               "decode)." if geo.qkv_bias else " No q/k/v biases.")
            + (f" Per-head q/k RMS norms (before rotary, {hd}-dim heads): about 4n(D + Dkv) FLOPs per layer, "
               f"{qk:.2%} of the layer's projection FLOPs, NOT counted (like the other norms). Deepstack: the vision "
               f"tower's {geo.deepstack} extra feature sets are added to the visual rows still alive after decoder "
               f"layers 0-{geo.deepstack - 1}, at most {geo.deepstack} x Nv x D additions per prefill "
               "(< 0.01 % of it), NOT counted." if geo.qk_norm else "")
            + " n includes the video block's text tokens (vision_start / vision_end"
            + (", each temporal group's timestamp text" if geo.family == "qwen3_vl" else "") + "; never visual, "
            "never pruned). Multi-axis rotary positions (mrope) cost what 1-D RoPE does (ignored). The pre-LLM "
            "baseline feeds K tokens to the decoder: every layer sees K visual tokens; its selection costs 0 FLOPs "
            "('uniform') or 2*N*D (per-token feature norms, 'norm')."
        )
        dims = FAMILIES[geo.family]["dims_7b"]
        doc = doc.replace("Video-LLaVA-7B's decoder dimensions (D 4096, Dff 11008)",
                          f"{FAMILIES[geo.family]['label']}-{FAMILIES[geo.family]['size']}'s decoder dimensions "
                          f"(D {dims['hidden']}, Dkv {dims['kv_heads'] * dims['hidden'] // dims['heads']}, "
                          f"Dff {dims['intermediate']}, V {dims['vocab']})")
    return doc


_FLOPS_DOC = (
    "Per decoder layer with n query tokens attending causally to n keys (prefill): projections "
    "2n(D*D + 2*D*Dkv + D*D) + attention 2*2*D*n(n+1)/2 (QK^T and AV over the causal pairs only) + MLP "
    "2*3*n*D*Dff; n = text tokens + the visual tokens that layer sees (per-stage counts from the trace). "
    "Plus the LM head on the last token 2*D*V. Decode step (1 query, cache length c per layer): "
    "2(2D^2+2D*Dkv) + 2*2*D*(c+1) + 2*3*D*Dff per layer + 2*D*V. Norms, RoPE, softmax, residuals ignored. "
    "Scoring work, counted as implemented: raters 2*Nv*Nt*D; rater rows per stage 2*R*D^2 (queries) + "
    "2*R*n*D (logits); FastV and the seed-reference 'full' map per stage 2*n*D^2 + 2*n*n*D (all rows, "
    "full square); recycling (DPC-KNN) 3*m^2*D for m candidate tokens (the recycling rule's count: 'seed' "
    "int(0.3 x pruned) + 1, merged tokens added on top and seen by the later layers; 'share' the top "
    "ceil(0.3 x pruned) capped at 10 x clusters); temporal 3*(T-1)*P*D. "
    "FLOPs-ideal speedup = decoder FLOPs(full) / decoder FLOPs(config) WITHOUT scoring work, so the "
    "measured/ideal fraction exposes every overhead (scoring, bookkeeping). The JSON also gives the FLOPs-ideal "
    "speedup of the same token flow with Video-LLaVA-7B's decoder dimensions (D 4096, Dff 11008)."
)


def layer_flops(n: int, geo: Geometry) -> float:
    D, Dkv, Dff = geo.hidden, geo.kv_dim, geo.intermediate
    bias = n * (D + 2 * Dkv) if geo.qkv_bias else 0  # Qwen2's q/k/v biases (exact; 0 for Llama)
    return 2 * n * (2 * D * D + 2 * D * Dkv) + bias + 2 * 2 * D * n * (n + 1) / 2 + 2 * 3 * n * D * Dff


def seen_per_layer(geo: Geometry, stage_layers: list, counts: list) -> list:
    """Visual tokens each decoder layer sees (a stage at L shrinks after L), from the tokens left after each stage
    (the trace's counts): ``videosparse.config.Schedule.tokens_per_layer``, the package's one implementation."""
    from videosparse.config import Schedule, Stage

    stages = tuple(Stage(layer, int(c), 0) for layer, c in zip(stage_layers, counts))
    return Schedule(geo.num_visual, geo.layers, stages).tokens_per_layer()


def stage_recycling(cfg, geo: Geometry, prev_vis: int, total: int, planned: tuple | None = None) -> dict:
    """How a stage that went from ``prev_vis`` to ``total`` visual tokens (merged ones included) split them, and
    the DPC-KNN candidates it clustered, following the config's recycling rule as ``run_stage`` implements it.

    'seed': ``selected`` tokens + ``merged`` added on top (``total = selected + merged``); candidates =
    int(recycle_ratio x pruned) + 1 of the pruned = prev_vis - selected (``seed_recycle_counts``).
    'share': the merged tokens are part of ``total`` (at most recycle_share of it, room left for the frame floor);
    candidates = the top ceil(ratio x pruned) pruned tokens, capped at clusters / cluster_ratio.
    ``planned``: (selected, merged) from ``cfg.stage_plan`` when it has fixed counts (used if it matches ``total``).
    """
    import math

    from videosparse.config import seed_recycle_counts
    from videosparse.core.budget import effective_floor
    from videosparse.core.recycle import recycle_count

    out = {"selected": total, "merged": 0, "merged_on_top": False, "candidates": 0, "clusters": 0}
    if cfg is None or not cfg.recycle:
        return out
    if cfg.recycle_rule == "seed":
        # (total may equal prev_vis: e.g. 2 -> 1 selected + 1 merged; the stage still clusters its pruned token)
        if planned is not None and planned[0] is not None and planned[0] + planned[1] == total:
            sel = planned[0]
        else:  # rank-adaptive count: invert total = selected + merged_on_top(selected) (largest such selected)
            sel = next((k for k in range(min(total, prev_vis), -1, -1) if k + cfg.merged_on_top(prev_vis, k) == total),
                       total)
        cand, c = seed_recycle_counts(prev_vis - sel, cfg.recycle_ratio, cfg.recycle_cluster_ratio)
        out.update(selected=sel, merged=total - sel, merged_on_top=True)
        if c > 0:
            out.update(candidates=max(c, min(prev_vis - sel, cand)), clusters=c)
        return out
    if prev_vis <= total:
        return out  # nothing pruned: nothing recycled
    count = total
    c = recycle_count(prev_vis, count, cfg.recycle_ratio, cfg.recycle_cluster_ratio)
    c = min(c, int(cfg.recycle_share * count + 1e-9))
    f = effective_floor(cfg.frame_floor, count, geo.groups, cfg.floor_share)
    c = min(c, max(0, count - f * geo.groups))
    if c <= 0:
        return out
    pruned = prev_vis - (count - c)
    m = min(pruned, max(c, int(math.ceil(cfg.recycle_ratio * pruned))))
    if cfg.recycle_cluster_ratio > 0:
        m = min(m, max(c, int(math.ceil(c / cfg.recycle_cluster_ratio))))
    out.update(selected=count - c, merged=c, candidates=m, clusters=c)
    return out


def prefill_flops(geo: Geometry, bench: Bench, stage_layers: list, counts: list, raters: int,
                  merged: list | None = None) -> dict:
    """Decoder FLOPs from the visual tokens each layer sees (``counts``: tokens left after each stage, merged
    tokens included, as the trace records them) and the scoring work (see ``flops_doc``).

    ``merged``: recycled tokens each stage created (from the trace's clusters); it settles the selected / merged
    split of rank-adaptive seed-rule stages, which ``counts`` alone leave ambiguous (default: the config's
    stage_plan)."""
    text = geo.seq_len - geo.num_visual
    D = geo.hidden
    if bench.pre_llm is not None:  # pre-LLM baseline: every layer sees the K tokens fed in
        k = int(counts[0]) if counts else bench.pre_llm
        seen = [k] * geo.layers
        decoder = sum(layer_flops(text + v, geo) for v in seen) + 2 * D * geo.vocab
        scoring = 2.0 * geo.num_visual * D if bench.pre_select == "norm" else 0.0
        st = {"layer": "pre", "before": geo.num_visual, "after": k, "selected": k, "merged": 0,
              "merged_on_top": False, "candidates": 0, "clusters": 0}
        return {"decoder": decoder, "scoring": scoring, "total": decoder + scoring, "seen_per_layer": seen,
                "stages": [st]}
    seen = seen_per_layer(geo, stage_layers, counts)
    decoder = sum(layer_flops(text + v, geo) for v in seen) + 2 * D * geo.vocab
    scoring = 0.0
    stages = []
    cfg = bench.cfg
    if cfg is not None:
        plan = None
        if bench.eq is not None:
            plan = bench.eq["plan"]
        elif cfg.budget != "rank":
            try:
                plan = cfg.stage_plan(geo.num_visual, geo.layers)
            except ValueError:
                plan = None
        n_before = {layer: text + seen[layer] for layer in stage_layers}
        prev_vis = geo.num_visual
        if cfg.method == "sparsevlm":
            scoring += 2 * geo.num_visual * geo.question_tokens * D
        for i, (layer, count) in enumerate(zip(stage_layers, counts)):
            n = n_before[layer]
            if cfg.method == "fastv" or (cfg.method == "sparsevlm" and cfg.score_impl == "full"):
                scoring += 2 * n * D * D + 2 * n * n * D
            elif cfg.method == "sparsevlm":
                scoring += 2 * raters * D * D + 2 * raters * n * D
            planned = tuple(plan[i][1:3]) if plan is not None and i < len(plan) else None
            if merged is not None and i < len(merged) and merged[i] is not None:
                planned = (count - merged[i], merged[i])
            rec = stage_recycling(cfg, geo, prev_vis, count, planned)
            scoring += 3 * rec["candidates"] ** 2 * D
            if cfg.temporal_tau is not None and prev_vis == geo.num_visual:
                scoring += 3 * (geo.groups - 1) * geo.tokens_per_frame * D
            stages.append({"layer": layer, "before": prev_vis, "after": count, **rec})
            prev_vis = count
    return {"decoder": decoder, "scoring": scoring, "total": decoder + scoring, "seen_per_layer": seen,
            "stages": stages}


def decode_flops(geo: Geometry, cache_lens: list) -> float:
    D, Dkv, Dff = geo.hidden, geo.kv_dim, geo.intermediate
    bias = (D + 2 * Dkv) if geo.qkv_bias else 0
    per = sum(2 * (2 * D * D + 2 * D * Dkv) + bias + 2 * 2 * D * (c + 1) + 2 * 3 * D * Dff for c in cache_lens)
    return per + 2 * D * geo.vocab


# ----------------------------------------------------------------------------------------- memory (child)
def _status_kb(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key):
                return int(line.split()[1])
    return -1


# glibc's mmap threshold fixed (no dynamic raise up to 32 MB): every allocation >= 256 KiB is mapped and unmapped,
# so RSS follows the live tensors. With the dynamic threshold, blocks of up to 32 MB (an MLP activation at 6333
# tokens is 30 MB) land in the heap and fragment it: the same full prefill measured +175 MB to +415 MB; with this
# setting +156 MB in repeated children (video@627: +118 MB both times).
CHILD_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "262144"}


def _malloc_trim() -> bool:
    """Return the heap that model building and video encoding freed to the OS (glibc), so the prefill's peak is not
    hidden by reusing it: without this the RSS before the prefill varied by ~70 MB between children at 6272 tokens
    and small configurations measured less than their own KV cache."""
    import ctypes

    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


def memory_child(spec: dict) -> dict:
    """Runs in a fresh process: build model, encode video, reset the RSS high-water mark, one prefill."""
    import gc
    import resource

    import torch

    torch.set_num_threads(spec["threads"])
    geo = Geometry(**spec["geometry"])
    model = build_model(geo, seed=spec["seed"])
    inputs = make_inputs(model, geo)
    feats, deep, _ = encode(model, inputs)
    enc = feature_kwargs(model, feats.reshape(1, -1, feats.shape[-1]), deep)
    budget, budget5 = spec["budget"], spec["budget5"]
    bench = {b.name: b for b in configurations(geo, budget, budget5, quick=False,
                                               eq_budgets=tuple(x for x in spec.get("eq_budgets", ()) if x),
                                               budget_high=spec.get("budget_high"),
                                               pre_select=spec.get("pre_select", "uniform"))}[spec["config"]]
    inputs, enc, pre = bench_inputs(model, bench, inputs, enc, feats, deep)
    ctx = _ctx(model, bench)
    gc.collect()
    if geo.family != "video_llava":  # (Video-LLaVA's figures stay measured as before)
        _malloc_trim()
    reset = True
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        reset = False
    base_kb = _status_kb("VmRSS:")
    hwm_after_reset = _status_kb("VmHWM:")
    with ctx:
        t, _, cache, _ = prefill_and_decode(model, inputs, enc, 0, pre=pre)
    peak_kb = _status_kb("VmHWM:")
    kv_bytes = sum(layer.keys.numel() * layer.keys.element_size() * 2 for layer in cache.layers)
    return {"config": bench.name, "base_mb": base_kb / 1024, "peak_mb": peak_kb / 1024,
            "delta_mb": (peak_kb - base_kb) / 1024, "hwm_reset": reset, "hwm_after_reset_mb": hwm_after_reset / 1024,
            "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "kv_cache_mb": kv_bytes / 2**20, "prefill_s": t}


def measure_memory(name: str, geo: Geometry, args) -> dict:
    spec = {"config": name, "geometry": dataclasses.asdict(geo), "threads": args.threads, "seed": args.seed,
            "budget": args.budget, "budget5": args.budget5, "eq_budgets": [args.eq_budget, args.eq_budget2]}
    if geo.family != "video_llava":
        spec.update(budget_high=args.budget_high, pre_select=args.pre_select)
    env = None
    if geo.family != "video_llava":  # (Video-LLaVA's figures stay measured as before)
        env = {**os.environ, **CHILD_MALLOC_ENV}
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--_memory-child", json.dumps(spec)],
                          capture_output=True, text=True, timeout=1800, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"memory child for {name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------- machine / load
def _cpu_ticks() -> tuple:
    with open("/proc/stat") as fh:
        vals = [int(x) for x in fh.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    return sum(vals), idle


class LoadMeter:
    """Average CPU use of *other* processes while the benchmark runs (machine busy minus ours)."""

    def __enter__(self) -> "LoadMeter":
        self.t0 = time.time()
        self.ticks0 = _cpu_ticks()
        self.own0 = os.times()
        self.loadavg0 = os.getloadavg()
        return self

    def __exit__(self, *exc) -> None:
        total1, idle1 = _cpu_ticks()
        own1 = os.times()
        wall = time.time() - self.t0
        hz = os.sysconf("SC_CLK_TCK")
        busy = ((total1 - self.ticks0[0]) - (idle1 - self.ticks0[1])) / hz
        own = (own1.user - self.own0.user) + (own1.system - self.own0.system)
        own += (own1.children_user - self.own0.children_user) + (own1.children_system - self.own0.children_system)
        self.result = {
            "wall_s": wall,
            "machine_busy_cores": busy / wall if wall else 0.0,
            "own_cores": own / wall if wall else 0.0,
            "other_processes_cores": max(0.0, (busy - own) / wall) if wall else 0.0,
            "loadavg_start": self.loadavg0,
            "loadavg_end": os.getloadavg(),
        }


def _git_commit(root: str) -> str:
    """The short HEAD commit, read from the .git files (no git process: the harness never touches the repository's
    state or locks); "" when it cannot be read."""
    try:
        git = os.path.join(root, ".git")
        if os.path.isfile(git):  # a worktree: "gitdir: <path>"
            with open(git) as fh:
                git = os.path.join(root, fh.read().split(":", 1)[1].strip())
        common = git
        if os.path.isfile(os.path.join(git, "commondir")):
            with open(os.path.join(git, "commondir")) as fh:
                common = os.path.join(git, fh.read().strip())
        with open(os.path.join(git, "HEAD")) as fh:
            head = fh.read().strip()
        if not head.startswith("ref:"):
            return head[:7]
        ref = head.split(":", 1)[1].strip()
        for base in (git, common):
            if os.path.isfile(os.path.join(base, ref)):
                with open(os.path.join(base, ref)) as fh:
                    return fh.read().strip()[:7]
        with open(os.path.join(common, "packed-refs")) as fh:
            for line in fh:
                parts = line.split()
                if len(parts) == 2 and parts[1] == ref:
                    return parts[0][:7]
    except (OSError, IndexError):
        pass
    return ""


def machine_info(threads: int) -> dict:
    import torch
    import transformers

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    commit = _git_commit(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    import videosparse

    return {
        "cpu": cpu, "logical_cpus": os.cpu_count(), "torch_threads": threads,
        "torch_interop_threads": torch.get_num_interop_threads(),
        "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
        "videosparse": videosparse.__version__, "git_commit": commit, "platform": platform.platform(),
        "mem_total_gb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
    }


# ----------------------------------------------------------------------------------------- statistics / table
def summarize(xs: list) -> dict:
    xs = sorted(xs)
    n = len(xs)
    def q(p):
        return xs[min(n - 1, max(0, int(round(p * (n - 1)))))]

    return {"median": statistics.median(xs), "min": xs[0], "max": xs[-1], "q25": q(0.25), "q75": q(0.75), "n": n,
            "all": xs}


def _fmt_ms(s: dict) -> str:
    d = 0 if s["median"] >= 0.1 else 1
    return f"{s['median'] * 1e3:.{d}f} [{s['min'] * 1e3:.{d}f}-{s['max'] * 1e3:.{d}f}]"


def render_table(res: dict) -> str:
    rows = res["results"]
    full = rows["full"]
    lines = [
        "| config | attn | visual tokens after stages (layers) | equiv. tokens | prefill ms median [min-max] | "
        "GFLOPs decoder + scoring | speedup vs full | FLOPs-ideal speedup | achieved / ideal | "
        "selection ms (share of prefill) | "
        "peak prefill mem vs full | decode ms/token | decode speedup |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        if r.get("eq") is not None:
            continue  # equal-equivalent rows: their own table (render_eq_table)
        sp = full["prefill"]["median"] / r["prefill"]["median"]
        ideal = full["flops"]["decoder"] / r["flops"]["decoder"]
        stages = ", ".join(f"{c}" for c in r["counts"]) or "-"
        layers = ",".join(str(x) for x in r["stage_layers"])
        stages = f"{stages} ({layers})" if layers else "-"
        sel = r["selection"]["median"]
        sel_s = f"{sel * 1e3:.1f} ({100 * sel / r['prefill']['median']:.1f}%)" if r["counts"] else "-"
        mem = r.get("memory")
        fm = full.get("memory")
        mem_s = f"{mem['delta_mb'] / fm['delta_mb']:.2f}x ({mem['delta_mb']:.0f} MB)" if mem and fm else "n/a"
        dec = r["decode_step"]
        dsp = full["decode_step"]["median"] / dec["median"] if dec["n"] else float("nan")
        dec_s = f"{dec['median'] * 1e3:.1f}" if dec["n"] else "n/a"
        lines.append(
            f"| {name} | {r['attn']} | {stages} | {r['equivalent_tokens']:.0f} | {_fmt_ms(r['prefill'])} | "
            f"{r['flops']['decoder'] / 1e9:.2f} + {r['flops']['scoring'] / 1e9:.2f} | {sp:.2f}x | {ideal:.2f}x | "
            f"{sp / ideal:.0%} | {sel_s} | {mem_s} | {dec_s} | {dsp:.2f}x |"
        )
    return "\n".join(lines)


def trace_recycling(stage) -> tuple | None:
    """(merged tokens created, DPC-KNN candidates clustered) by one traced stage (sample 0), or None."""
    if stage.clusters is None:
        return None
    c = stage.clusters[0]
    c = c[c >= 0]
    return int(c.unique().numel()), int(c.numel())


def stage_counts_str(r: dict) -> str:
    """'8+62 (1)': tokens after each stage (selected+merged when recycled tokens come on top), stage layers."""
    parts = [f"{st['selected']}+{st['merged']}" if st.get("merged_on_top") and st["merged"] else str(st["after"])
             for st in r.get("stages") or []]
    if not parts:
        return "-"
    return f"{', '.join(parts)} ({','.join(str(x) for x in r['stage_layers'])})"


def eq_rows(res: dict, setting: str) -> list:
    """(name, row) of the equal-equivalent rows that serve ``setting`` (e.g. '194eq'), in preset order."""
    return [(n, r) for n, r in res["results"].items()
            if r.get("eq") is not None and any(x["setting"] == setting for x in r["eq"]["settings"])]


def seed_line(res: dict) -> str | None:
    """'FLOPs-ideal at the seed's 194-equivalent setting: X.XXx (measured sparsevlm-video@194eq: Y.YYx)'."""
    if not res.get("eq_budgets"):
        return None
    setting = f"{_g(res['eq_budgets'][0])}eq"
    hit = [(n, r) for n, r in eq_rows(res, setting) if r["eq"]["preset"] == "sparsevlm-video"]
    if not hit:
        return None
    n, r = hit[0]
    line = (f"FLOPs-ideal at the seed's {setting[:-2]}-equivalent setting: {r['ratios']['flops_ideal_speedup']:.2f}x "
            f"(measured {n}: {r['ratios']['prefill_speedup']:.2f}x)")
    if "flops_ideal_speedup_7b_dims" in r["ratios"]:
        fam = FAMILIES[res.get("family", "video_llava")]
        dims = fam["dims_7b"]
        line += (f"; with {fam['label']}-{fam.get('size', '7B')}'s decoder dimensions (hidden {dims['hidden']}, MLP {dims['intermediate']}) "
                 f"the same token flow is {r['ratios']['flops_ideal_speedup_7b_dims']:.2f}x FLOPs-ideal")
    return line


def render_eq_table(res: dict) -> str:
    rows, nv, L = res["results"], res["num_visual"], res["geometry"]["layers"]
    full = rows["full"]
    out = ["Equal equivalent tokens (SparseVLM's unit: mean over the decoder layers of the visual tokens each layer "
           "sees, merged tokens included). Tokens after stages: a+b = a selected + b recycled (merged) tokens added "
           "on top (seed rule); with this package's rule the merged tokens are inside the count. A preset that cannot "
           "reach a setting runs at its lowest reachable equivalent tokens, marked (min). Equal equivalent tokens are "
           "not equal FLOPs: the unit averages tokens linearly, attention is quadratic in them, so the same mean with "
           "more unpruned early layers costs more (lower FLOPs-ideal speedup)."]
    notes = []
    for setting in dict.fromkeys(f"{_g(x)}eq" for x in res.get("eq_budgets", [])):
        sel = eq_rows(res, setting)
        if not sel:
            continue
        target = next(x["target"] for x in sel[0][1]["eq"]["settings"] if x["setting"] == setting)
        out += ["", f"At {setting}: {target:.1f} equivalent tokens ({target / nv:.1%} of {nv}).", "",
                "| config | achieved equiv. tokens | tokens after stages (layers) | prefill ms median [min-max] | "
                "speedup vs full | FLOPs-ideal speedup | measured / ideal | selection ms (% of prefill) | "
                "GFLOPs decoder + scoring | peak prefill mem vs full | decode speedup |",
                "|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, r in sel:
            e, ra = r["eq"], r["ratios"]
            ach = f"{r['equivalent_tokens']:.1f}"
            if e["bound"]:
                ach += f" ({e['bound']}: target {target:.1f} outside [{e['range'][0]:.1f}, {e['range'][1]:.1f}])"
            sel_ms = r["selection"]["median"]
            mem, fm = r.get("memory"), full.get("memory")
            mem_s = f"{mem['delta_mb'] / fm['delta_mb']:.2f}x" if mem and fm else "n/a"
            dsp = f"{ra['decode_speedup']:.2f}x" if ra.get("decode_speedup") else "n/a"
            out.append(
                f"| {name} | {ach} | {stage_counts_str(r)} | {_fmt_ms(r['prefill'])} | {ra['prefill_speedup']:.2f}x | "
                f"{ra['flops_ideal_speedup']:.2f}x | {ra['achieved_fraction_of_ideal']:.0%} | "
                f"{sel_ms * 1e3:.1f} ({ra['selection_share_of_prefill']:.1%}) | "
                f"{r['flops']['decoder'] / 1e9:.2f} + {r['flops']['scoring'] / 1e9:.2f} | {mem_s} | {dsp} |")
            if e["bound"] == "min":
                first = r["stage_layers"][0] if r["stage_layers"] else 0
                seed = (r["config"] or {}).get("recycle") and (r["config"] or {}).get("recycle_rule") == "seed"
                notes.append(
                    f"{e['preset']} cannot reach {setting} ({target:.1f}): layers 0-{first} see all {nv} visual tokens "
                    f"({first + 1} x {nv} / {L} = {(first + 1) * nv / L:.1f} equivalent before any pruning)"
                    + (", and its recycled tokens come on top of the selected ones" if seed else "")
                    + f"; lowest reachable {e['range'][0]:.1f}: run there ({name}).")
            elif not e["bound"] and abs(r["equivalent_tokens"] - target) > 2:
                notes.append(f"NOTE: {name} achieved {r['equivalent_tokens']:.1f} equivalent tokens, "
                             f"{r['equivalent_tokens'] - target:+.1f} from the {target:.1f} target.")
            if not e.get("plan_matches_trace", True):
                plan = [k + m for _, k, m in e["plan"]]
                notes.append(f"WARNING: {name}: the run left {r['counts']} tokens "
                             f"({r['equivalent_tokens']:.1f} equivalent) but the config's stage_plan says {plan} "
                             f"({e['planned_equivalent_tokens']:.1f}).")
    if len(out) == 1:
        return ""
    line = seed_line(res)
    if line:
        out += ["", line]
    b5 = res.get("budget5")
    if b5 and L > 2:
        notes.append(f"5 % of {nv} = {0.05 * nv:.1f} equivalent tokens is below what any stage after layer 1 can "
                     f"reach: layers 0 and 1 see all {nv} tokens (2 x {nv} / {L} = {2 * nv / L:.1f}) + {L - 2} x "
                     f"kept / {L}; the video preset keeping {b5} tokens after layer 1 (~5 %) is "
                     f"{(2 * nv + (L - 2) * b5) / L:.1f} equivalent tokens.")
    return "\n".join(out + [""] + notes if notes else out)


def ov_video_rows(res: dict) -> list:
    """LLaVA-OneVision: the video preset's rows at each kept budget and each equal-equivalent setting."""
    rows = res["results"]
    out = [f"video@{b}" for b in (res["budget"], res.get("budget_high")) if b and f"video@{b}" in rows]
    for setting in dict.fromkeys(f"{_g(x)}eq" for x in res.get("eq_budgets", [])):
        out += [n for n, r in eq_rows(res, setting) if r["eq"]["preset"] == "video" and n not in out]
    return out


def check_ov_targets(res: dict) -> list:
    """LLaVA-OneVision's targets (the issue): for the video preset at 10 %, 25 % and equal equivalent tokens,
    prefill >= 90 % of the FLOPs-ideal speedup, selection < 3 % of the prefill, peak memory not above the unpruned
    model's; and no configuration's peak memory above the unpruned model's."""
    rows, out = res["results"], []
    fm = rows["full"].get("memory")
    for name in ov_video_rows(res):
        r = rows[name]["ratios"]
        out.append((f"{name} prefill speedup >= 90% of the FLOPs-ideal speedup",
                    f"{r['prefill_speedup']:.2f}x of {r['flops_ideal_speedup']:.2f}x = "
                    f"{r['achieved_fraction_of_ideal']:.0%}", r["achieved_fraction_of_ideal"] >= 0.9))
        out.append((f"{name} selection overhead < 3% of the pruned prefill",
                    f"{r['selection_share_of_prefill']:.1%}", r["selection_share_of_prefill"] < 0.03))
        m = rows[name].get("memory")
        if m and fm:
            out.append((f"{name} peak prefill memory not above full",
                        f"+{m['delta_mb']:.0f} MB vs +{fm['delta_mb']:.0f} MB ({m['delta_mb'] / fm['delta_mb']:.2f}x)",
                        m["delta_mb"] <= fm["delta_mb"]))
    measured = [(n, r["memory"]["delta_mb"]) for n, r in rows.items() if n != "full" and r.get("memory")]
    if measured and fm:
        over = [(n, d) for n, d in measured if d > fm["delta_mb"]]
        top = max(measured, key=lambda x: x[1])
        val = (", ".join(f"{n} {d / fm['delta_mb']:.2f}x" for n, d in over) if over else
               f"all {len(measured)} measured <= full; highest {top[0]} {top[1] / fm['delta_mb']:.2f}x")
        out.append(("every configuration's peak prefill memory not above full", val, not over))
    return out


def check_targets(res: dict) -> list:
    """The issue's targets, evaluated on this run: [(target, value, met)]. LLaVA-OneVision and the Qwen families:
    ``check_ov_targets``."""
    if res.get("family", "video_llava") != "video_llava":
        return check_ov_targets(res)
    rows, b = res["results"], res["budget"]
    v, out = rows.get(f"video@{b}"), []
    if v is None:
        return out
    r = v["ratios"]
    out.append((f"video@{b} prefill speedup >= 90% of the FLOPs-ideal speedup",
                f"{r['prefill_speedup']:.2f}x of {r['flops_ideal_speedup']:.2f}x = "
                f"{r['achieved_fraction_of_ideal']:.0%}",
                r["achieved_fraction_of_ideal"] >= 0.9))
    out.append((f"video@{b} selection overhead < 3% of the pruned prefill",
                f"{r['selection_share_of_prefill']:.1%}", r["selection_share_of_prefill"] < 0.03))
    for peer in (f"fastv@{b}", f"seed-ref@{b}"):
        if peer in rows:
            t, tp = v["prefill"]["median"], rows[peer]["prefill"]["median"]
            out.append((f"video@{b} prefill faster than {peer}",
                        f"{t * 1e3:.0f} ms vs {tp * 1e3:.0f} ms ({tp / t:.2f}x)", t < tp))
    if v["decode_step"]["n"]:
        d, df = v["decode_step"]["median"], rows["full"]["decode_step"]["median"]
        out.append((f"video@{b} decode step shorter than full", f"{d * 1e3:.1f} ms vs {df * 1e3:.1f} ms", d < df))
    if v.get("memory") and rows["full"].get("memory"):
        m, mf = v["memory"]["peak_mb"] - v["memory"]["base_mb"], rows["full"]["memory"]["delta_mb"]
        out.append((f"video@{b} peak prefill memory not above full", f"+{m:.0f} MB vs +{mf:.0f} MB", m <= mf))
    return out


def _ov_header(res: dict) -> list:
    geo = res["geometry"]
    hd = geo["hidden"] // geo["heads"]
    text = res["seq_len"] - res["num_visual"] - res["tail_tokens"]
    lines = [
        f"Random-weight LLaVA-OneVision architecture (LlavaOnevisionForConditionalGeneration: SigLIP tower without "
        f"CLS, {geo['image_size']} px / {geo['patch_size']} px patches pooled bilinear stride 2; Qwen2 decoder with "
        f"q/k/v biases): {geo['frames']} frames x {res['tokens_per_frame']} = {res['num_visual']} visual tokens + "
        f"{res['tail_tokens']} image_newline closing the video block, {text} text tokens (sequence {res['seq_len']}), "
        f"{geo['layers']} decoder layers, hidden {geo['hidden']} ({geo['heads']} heads x {hd}, "
        f"{geo['kv_heads']} KV head{'s' if geo['kv_heads'] > 1 else ''}: grouped-query attention "
        f"{geo['heads'] // geo['kv_heads']}:1 like the 7B's 28:4, head dim {hd} instead of 128), MLP "
        f"{geo['intermediate']} (the 7B's 18944 / 3584 ratio), vocab {geo['vocab']}, rope theta 1e6; fp32, batch 1. "
        f"Tokens per frame and the closing token are the front end's (videosparse.frontends.llava_onevision).",
    ]
    if geo["frames"] != res.get("full_frames", geo["frames"]):
        why = "QUICK MODE" if res.get("quick") else "NOT THE 7B's FRAME COUNT (--frames / --toy)"
        lines.append(f"{why}: {geo['frames']} frames instead of the 7B's {res['full_frames']} "
                     f"({res['num_visual']} instead of {res['full_frames'] * res['tokens_per_frame']} visual tokens "
                     f"at this frame size).")
    sel = ("uniform: every (N/K)-th token of the frame-major sequence, even over frames and raster positions"
           if res.get("pre_select", "uniform") == "uniform" else "per frame the top-k feature L2 norms")
    lines.append(
        f"Kept budgets: {res['budget']} ({res['budget'] / res['num_visual']:.0%}) and {res['budget_high']} "
        f"({res['budget_high'] / res['num_visual']:.0%}) visual tokens after the last stage; sparsevlm-video / v1 / "
        f"v1.5 select that many and add their recycled tokens on top (a+b); v1.5 / v2 use the seed's 192-entry "
        f"stage shape scaled to end at the budget, v1 fixed counts stepping down to it. pre-llm@K: question-blind "
        f"pre-LLM baseline, the prompt holds K placeholders (+ the newline) and only the K selected tokens' "
        f"features enter the decoder ({sel}; selection and feature hand-over inside the timed prefill).")
    return lines


def _qwen_header(res: dict) -> list:
    geo = res["geometry"]
    fam = FAMILIES[res["family"]]
    hd = geo["hidden"] // geo["heads"]
    nv, T = res["num_visual"], res["groups"]
    t, h, w = res["grid_thw"]
    text = res["seq_len"] - nv
    block = res["tail_tokens"]
    q3 = res["family"] == "qwen3_vl"
    real = ("Qwen2.5-VL-7B: 28 layers, 28 heads x 128 : 4 KV heads, MLP 18944, q/k/v biases, vocab 152064" if not q3
            else "Qwen3-VL-8B: 36 layers, 32 heads x 128 : 8 KV heads, MLP 12288, q/k RMS norms, no biases, "
            "deepstack after layers 0-2, vocab 151936")
    cls = "Qwen3VLForConditionalGeneration" if q3 else "Qwen2_5_VLForConditionalGeneration"
    lines = [
        f"Random-weight {fam['label']} architecture ({cls}; decoder geometry of {real}): {geo['frames']} frames of "
        f"{geo['image_size']} x {geo['image_width'] or geo['image_size']} px, {geo['patch_size']} px patches, "
        f"temporal patch {geo['temporal_patch']}, merge {geo['merge']} x {geo['merge']} -> video_grid_thw "
        f"({t}, {h}, {w}) = {T} temporal groups x {res['tokens_per_frame']} = {nv} visual tokens; {text} text tokens "
        f"(sequence {res['seq_len']}), of them {block} in the video block (vision_start / vision_end"
        + (f"; each group's timestamp text '<t seconds>', frames at {geo['fps']:g} fps" if q3 else "") + "). "
        f"{geo['layers']} decoder layers, hidden {geo['hidden']} ({geo['heads']} heads x {hd}, {geo['kv_heads']} KV "
        f"head{'s' if geo['kv_heads'] > 1 else ''}: grouped-query attention {geo['heads'] // geo['kv_heads']}:1, head "
        f"dim {hd} instead of 128), MLP {geo['intermediate']} (the {fam['size']}'s ratio), vocab {geo['vocab']}, "
        f"mrope_section {res['mrope_section']}" + (" interleaved" if q3 else "")
        + (f", q/k RMS norms, deepstack features after decoder layers 0-{min(3, geo['vision_layers']) - 1}" if q3
           else ", q/k/v biases")
        + f"; vision tower {geo['vision_layers']} block{'s' if geo['vision_layers'] > 1 else ''} of hidden "
        f"{geo['vision_hidden']}; fp32, batch 1. No front end: prompt, grid, mm_token_type_ids and patches built by "
        "this script; features from model.model.get_video_features, handed over as mm_encoder_outputs.",
        f"mrope: the seed presets (sparsevlm-*) run with {res['mrope_note']}: renumbered positions and 1-D RoPE "
        "gravity are refused for multi-axis rotary positions; video, fastv and the lower bound run as they are. "
        "Decode steps get the positions generate gives them (the prompt's last 3-axis position + 1 per step).",
    ]
    if nv != res.get("full_num_visual", nv):
        why = "QUICK MODE" if res.get("quick") else "NOT THE BENCH's CLIP (--frames / --toy)"
        lines.append(f"{why}: {geo['frames']} frames instead of {res['full_frames']} ({nv} instead of "
                     f"{res['full_num_visual']} visual tokens).")
    sel = ("uniform: every (N/K)-th token of the frame-major sequence, even over groups and raster positions"
           if res.get("pre_select", "uniform") == "uniform" else "per group the top-k feature L2 norms")
    lines.append(
        f"Kept budgets: {res['budget']} ({res['budget'] / nv:.0%}) and {res['budget_high']} "
        f"({res['budget_high'] / nv:.0%}) visual tokens after the last stage; sparsevlm-video / v1 / v1.5 select that "
        f"many and add their recycled tokens on top (a+b); v1.5 / v2 use the seed's 192-entry stage shape scaled to "
        f"end at the budget, v1 fixed counts stepping down to it. pre-llm@K: question-blind pre-LLM baseline, the "
        f"unselected video tokens are dropped from the prompt (text and timestamps stay) and only the K selected "
        f"tokens' features{' (and deepstack features)' if q3 else ''} enter the decoder at their original 3-axis "
        f"positions ({sel}; selection, prompt and positions inside the timed prefill).")
    return lines


def render_ov_summary(res: dict) -> str:
    """Configurations side by side: per budget measured speedup / FLOPs-ideal (achieved %), selection share,
    peak memory vs full."""
    rows = res["results"]
    fm = rows["full"].get("memory")
    cols = [(f"{res['budget']} kept", lambda k, b=res["budget"]: f"{k}@{b}"),
            (f"{res['budget_high']} kept", lambda k, b=res["budget_high"]: f"{k}@{b}")]
    for setting in dict.fromkeys(f"{_g(x)}eq" for x in res.get("eq_budgets", [])):
        hits = {r["eq"]["preset"]: n for n, r in eq_rows(res, setting)}
        cols.append((f"{setting[:-2]} equivalent", lambda k, h=hits: h.get(k)))
    kinds = ["video", "sparsevlm-video", "sparsevlm-v1", "sparsevlm-v1.5", "sparsevlm-v2", "fastv", "pre-llm",
             "lower-bound"]
    head = "| config | " + " | ".join(f"{c}: speedup / ideal (%) | sel. | mem" for c, _ in cols) + " |"
    out = ["Side by side (speedup = full prefill / prefill, measured; ideal = FLOPs-ideal; sel. = selection share of "
           "the prefill; mem = peak prefill memory vs full):", "", head,
           "|---|" + "---|---|---|" * len(cols)]
    for kind in kinds:
        cells = []
        for _, name_of in cols:
            name = name_of(kind)
            r = rows.get(name) if name else None
            if r is None:
                cells += ["-", "-", "-"]
                continue
            q = r["ratios"]
            tag = " (min)" if r.get("eq") and r["eq"]["bound"] == "min" else ""
            cells.append(f"{q['prefill_speedup']:.2f}x / {q['flops_ideal_speedup']:.2f}x "
                         f"({q['achieved_fraction_of_ideal']:.0%}){tag}")
            cells.append(f"{q['selection_share_of_prefill']:.1%}")
            m = r.get("memory")
            cells.append(f"{m['delta_mb'] / fm['delta_mb']:.2f}x" if m and fm else "n/a")
        if any(c != "-" for c in cells):
            out.append(f"| {kind} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def render_report(res: dict) -> str:
    geo = res["geometry"]
    m, ld = res["machine"], res["load"]
    family = res.get("family", "video_llava")
    ov = family != "video_llava"
    head = (_qwen_header(res) if family in QWEN_FAMILIES else _ov_header(res)) if ov else [
        f"Random-weight Video-LLaVA architecture: {geo['frames']} frames x {res['tokens_per_frame']} = "
        f"{res['num_visual']} visual tokens, {res['seq_len'] - res['num_visual']} text tokens "
        f"(sequence {res['seq_len']}), {geo['layers']} decoder layers, hidden {geo['hidden']} "
        f"({geo['heads']} heads x {geo['hidden'] // geo['heads']}, kv heads {geo['kv_heads']}), MLP "
        f"{geo['intermediate']}, vocab {geo['vocab']}; fp32, batch 1.",
    ]
    head += [
        f"Timed: multimodal forward with precomputed video features (vision tower "
        f"{res['vision_tower_s'] * 1e3:.0f} ms, excluded), use_cache, logits_to_keep=1; "
        f"{res['repeats']} repeats after {res['warmup']} warm-up, configs interleaved; decode: "
        f"{res['new_tokens']} greedy steps per repeat, median over all steps.",
        f"Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, torch threads {m['torch_threads']}; "
        f"torch {m['torch']}, transformers {m['transformers']}, git {m['git_commit']}.",
        f"Load: other processes used {ld['other_processes_cores']:.2f} cores on average during the timing "
        f"(machine busy {ld['machine_busy_cores']:.2f}, ours {ld['own_cores']:.2f}); load average "
        f"{ld['loadavg_start'][0]:.2f} at start, {ld['loadavg_end'][0]:.2f} at end.",
        f"Memory: {res['memory_method']}",
    ]
    if m["torch_threads"] > 1 and ld["other_processes_cores"] > 0.3:
        head.append(f"WARNING: {m['torch_threads']} torch threads while other processes used "
                    f"{ld['other_processes_cores']:.2f} cores: thread oversubscription makes small ops very slow; "
                    "rerun on a quiet machine or with --threads 1.")
    if ov:
        head += ["", render_ov_summary(res)]
        vids = [n for n in ov_video_rows(res) if "flops_ideal_speedup_7b_dims" in res["results"][n]["ratios"]]
        fam = FAMILIES[family]
        d7 = fam["dims_7b"]
        if vids:
            head += ["", f"With {fam['label']}-{fam.get('size', '7B')}'s decoder dimensions (hidden {d7['hidden']}, "
                     f"{d7['heads']} heads / {d7['kv_heads']} KV heads, MLP {d7['intermediate']}) "
                     "the same token flows are " + ", ".join(
                         f"{n} {res['results'][n]['ratios']['flops_ideal_speedup_7b_dims']:.2f}x" for n in vids)
                     + " FLOPs-ideal (the scaled width makes attention, which shrinks quadratically, a larger share)."]
    head += ["", render_table(res), ""]
    v = res["results"].get(f"video@{res['budget']}")
    if v and v["selection_groups_median_s"]:
        parts = ", ".join(f"{k} {t * 1e3:.2f}" for k, t in sorted(v["selection_groups_median_s"].items(),
                                                                    key=lambda kv: -kv[1]))
        head.append(f"Selection time of video@{res['budget']} by part (ms, median): {parts}.")
    lb = res["results"].get(f"lower-bound@{res['budget']}")
    if v and lb:
        gap = v["prefill"]["median"] - lb["prefill"]["median"]
        head.append(f"video@{res['budget']} - lower-bound@{res['budget']} prefill: {gap * 1e3:.1f} ms "
                    f"({gap / v['prefill']['median']:.1%} of the pruned prefill).")
    for name, r in res["results"].items():
        bad = [st for st in r.get("stages", []) if st.get("trace_candidates") is not None
               and (st["trace_candidates"], st["trace_merged"]) != (st["candidates"], st["merged"] if
                                                                     st["merged_on_top"] else st["clusters"])]
        if bad:
            head.append(f"WARNING: {name}: the FLOPs model's recycling (candidates, merged) "
                        f"{[(st['candidates'], st['merged'] if st['merged_on_top'] else st['clusters']) for st in bad]} "
                        f"differs from the run's {[(st['trace_candidates'], st['trace_merged']) for st in bad]}.")
    eqt = render_eq_table(res)
    if eqt:
        head += ["", eqt]
    tg = check_targets(res)
    if tg:
        head += ["", "| target | this run | met |", "|---|---|---|"]
        head += [f"| {t} | {val} | {'yes' if ok else 'NO'} |" for t, val, ok in tg]
    return "\n".join(head)


# ----------------------------------------------------------------------------------------- main
def _threads(text: str) -> int:
    if text == "auto":
        from videosparse.runtime import default_threads

        return default_threads()
    return int(text)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", choices=sorted(FAMILIES), default="video_llava",
                   help="model family: video_llava (default; 8 x 257 tokens, 32 layers), llava_onevision "
                        "(32 x 196 tokens + the newline, 28 Qwen2 layers, GQA 7:1), qwen2_5_vl (64 frames of "
                        "336 x 448 -> 32 groups x 192 tokens, 28 layers, GQA 7:1) or qwen3_vl (64 frames of 384 x 512 "
                        "-> 32 groups x 192 tokens + timestamps, 36 layers, GQA 4:1, q/k norms, deepstack)")
    p.add_argument("--quick", action="store_true",
                   help="< 1.5 min: hidden 128, 1 repeat, 8 new tokens, fewer configs (all eq rows); "
                        f"llava_onevision: {OV_QUICK_FRAMES} frames, qwen families: {QWEN_QUICK_FRAMES} frames; 1 "
                        "repeat, 8 new tokens, every configuration")
    p.add_argument("--toy", action="store_true", help="toy geometry (smoke test only)")
    p.add_argument("--hidden", type=int, default=None,
                   help="decoder hidden size (default 256, quick 128; llava_onevision and qwen2_5_vl 224 = 7 heads "
                        "x 32, qwen3_vl 256 = 8 heads x 32)")
    p.add_argument("--heads", type=int, default=None,
                   help="attention heads (default hidden / 64; llava_onevision, qwen2_5_vl hidden / 32, KV heads "
                        "heads / 7; qwen3_vl hidden / 32, KV heads heads / 4)")
    p.add_argument("--layers", type=int, default=None)
    p.add_argument("--frames", type=int, default=None,
                   help="frames (default 8; llava_onevision 32, quick 8; qwen families: video frames, 2 per "
                        f"temporal group, 64, quick {QWEN_QUICK_FRAMES})")
    p.add_argument("--budget", type=int, default=None,
                   help="~10%% budget in tokens (default 194; llava_onevision round(0.10 x Nv) = 627)")
    p.add_argument("--budget5", type=int, default=None, help="~5%% budget in tokens (default round(0.05 * Nv))")
    p.add_argument("--budget-high", type=int, default=None,
                   help="llava_onevision: the second kept budget (default round(0.25 x Nv) = 1568)")
    p.add_argument("--pre-select", choices=PRE_SELECT, default="uniform",
                   help="llava_onevision's pre-LLM baseline: 'uniform' (every N/K-th token, default) or 'norm' "
                        "(per-frame top-k feature norm)")
    p.add_argument("--eq-budget", type=float, default=None,
                   help="equal-equivalent-token rows: the paper's setting (default 194 = round(194/2056 x Nv); "
                        "<= 1: a fraction of the visual tokens)")
    p.add_argument("--eq-budget2", type=float, default=None,
                   help="second equal-equivalent setting (default: the video preset's equivalent tokens keeping "
                        "--budget5 after layer 1 = 225; llava_onevision: none unless given)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed repeats per config (default 5, quick 1; llava_onevision, qwen families 3)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--new-tokens", type=int, default=None, help="decode steps (default 32, quick 8)")
    p.add_argument("--threads", type=_threads, default=2,
                   help="torch threads (default 2); 'auto': videosparse.runtime.default_threads() (1 on a busy "
                        "2-core machine)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--configs", default=None, help="comma-separated subset of configuration names")
    p.add_argument("--memory", choices=["subprocess", "none"], default="subprocess")
    p.add_argument("--memory-configs", default=None,
                   help="subset for memory (default: all but the --eq-budget2 rows; quick: full + video; "
                        "llava_onevision: all, quick: full + the video rows)")
    p.add_argument("--profile", default=None, help="write a torch.profiler table of this config's prefill")
    p.add_argument("--out", default=None, help="output prefix (.json and .md are written; default out/bench_speed, "
                                                "qwen families out/bench_speed_<family>)")
    p.add_argument("--_memory-child", dest="memory_child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.out is None:
        args.out = f"out/bench_speed_{args.family}" if args.family in QWEN_FAMILIES else "out/bench_speed"
    return args


def _ov_heads(hidden: int, heads: int | None) -> dict:
    """LLaVA-OneVision at a scaled width: head dim 32 unless --heads, KV heads in the 7B's 28:4 = 7:1 ratio as far
    as the head count allows (the largest divisor of heads <= heads / 7, at least 1), MLP in the 7B's ratio."""
    heads = heads or max(1, hidden // 32)
    kv = max(1, heads // 7)
    while heads % kv:
        kv -= 1
    return {"hidden": hidden, "heads": heads, "kv_heads": kv, "intermediate": int(round(hidden * 18944 / 3584 / 8)) * 8}


def _qwen_heads(family: str, hidden: int, heads: int | None) -> dict:
    """A Qwen family at a scaled width: head dim 32 unless --heads, KV heads in the real ratio (Qwen2.5-VL-7B 7:1,
    Qwen3-VL-8B 4:1) as far as the head count allows (the largest divisor of heads <= heads / ratio, at least 1), MLP
    in the real ratio, rounded to a multiple of 8."""
    heads = heads or max(1, hidden // 32)
    kv = max(1, heads // QWEN_GQA[family])
    while heads % kv:
        kv -= 1
    return {"hidden": hidden, "heads": heads, "kv_heads": kv,
            "intermediate": int(round(hidden * QWEN_MLP_RATIO[family] / 8)) * 8}


def _resolve_qwen(args) -> Geometry:
    """Qwen2.5-VL / Qwen3-VL: the real decoder's depth and ratios, 64 frames -> 6144 visual tokens (quick:
    QWEN_QUICK_FRAMES frames); kept budgets 10 % and 25 %, one equal-equivalent setting (194 / 2056 scaled)."""
    full, toy = QWEN_GEOMETRIES[args.family]
    geo = toy if args.toy else full
    changes = {}
    if args.hidden or args.heads:
        changes.update(_qwen_heads(args.family, args.hidden or geo.hidden, args.heads))
    if args.layers:
        changes["layers"] = args.layers
    frames = args.frames or (QWEN_QUICK_FRAMES if args.quick and not args.toy else None)
    if frames:
        if frames % geo.temporal_patch:
            raise SystemExit(f"--frames ({frames}) must be a multiple of the temporal patch ({geo.temporal_patch})")
        changes["frames"] = frames
    geo = dataclasses.replace(geo, **changes)
    hd = geo.hidden // geo.heads
    if geo.hidden % geo.heads or hd % 2 or min(qwen_mrope_section(geo.family, hd)) < 1:
        raise SystemExit(f"hidden {geo.hidden} / {geo.heads} heads: need an even head dim >= 8 for mrope")
    return _ov_budgets(args, geo)


def resolve(args) -> Geometry:
    family = getattr(args, "family", "video_llava")
    if family == "llava_onevision":
        return _resolve_ov(args)
    if family in QWEN_FAMILIES:
        return _resolve_qwen(args)
    args.budget_high = None
    geo = TOY if args.toy else Geometry()
    changes = {}
    hidden = args.hidden or (128 if args.quick and not args.toy else None)
    if hidden:
        changes["hidden"] = hidden
        heads = args.heads or max(1, hidden // 64)
        changes.update(heads=heads, kv_heads=heads, intermediate=int(round(hidden * 2.6875 / 8)) * 8)
    elif args.heads:
        changes.update(heads=args.heads, kv_heads=args.heads)
    if args.layers:
        changes["layers"] = args.layers
    if args.frames:
        changes["frames"] = args.frames
    geo = dataclasses.replace(geo, **changes)
    nv = geo.num_visual
    args.budget = args.budget or max(2, round(194 / 2056 * nv))
    args.budget5 = args.budget5 or max(1, min(round(0.05 * nv), args.budget - 1))
    if args.budget5 >= args.budget:
        raise SystemExit(f"--budget5 ({args.budget5}) must be below --budget ({args.budget})")
    d1, d2 = default_eq_budgets(geo, args.budget5)
    args.eq_budget = args.eq_budget or d1
    args.eq_budget2 = args.eq_budget2 or d2
    for flag, v in (("--eq-budget", args.eq_budget), ("--eq-budget2", args.eq_budget2)):
        if not 0 < v <= nv:
            raise SystemExit(f"{flag} ({v:g}) must be in (0, {nv}] equivalent tokens (<= 1: a fraction)")
    args.repeats = args.repeats or (1 if args.quick or args.toy else 5)
    args.new_tokens = args.new_tokens if args.new_tokens is not None else (8 if args.quick or args.toy else 32)
    return geo


def _resolve_ov(args) -> Geometry:
    """LLaVA-OneVision: the 7B's geometry (quick: OV_QUICK_FRAMES frames), kept budgets 10 % and 25 %, one
    equal-equivalent setting (the paper's 194 / 2056 scaled to the visual tokens; a second with --eq-budget2)."""
    geo = OV_TOY if args.toy else OV_GEOMETRY
    changes = {}
    if args.hidden or args.heads:
        changes.update(_ov_heads(args.hidden or geo.hidden, args.heads))
    if args.layers:
        changes["layers"] = args.layers
    frames = args.frames or (OV_QUICK_FRAMES if args.quick and not args.toy else None)
    if frames:
        changes["frames"] = frames
    geo = dataclasses.replace(geo, **changes)
    return _ov_budgets(args, geo)


def _ov_budgets(args, geo: Geometry) -> Geometry:
    """Kept budgets 10 % and 25 %, the paper's 194 / 2056 equivalent tokens scaled, repeats / decode steps."""
    nv = geo.num_visual
    args.budget = args.budget or max(2, round(0.10 * nv))
    args.budget_high = args.budget_high or max(args.budget + 1, round(0.25 * nv))
    args.budget5 = args.budget5 or max(1, min(round(0.05 * nv), args.budget - 1))  # only for the memory spec
    if not 0 < args.budget < args.budget_high <= nv:
        raise SystemExit(f"need 0 < --budget ({args.budget}) < --budget-high ({args.budget_high}) <= {nv}")
    args.eq_budget = args.eq_budget or max(2, round(194 / 2056 * nv))
    for flag, v in (("--eq-budget", args.eq_budget), ("--eq-budget2", args.eq_budget2)):
        if v is not None and not 0 < v <= nv:
            raise SystemExit(f"{flag} ({v:g}) must be in (0, {nv}] equivalent tokens (<= 1: a fraction)")
    args.repeats = args.repeats or (1 if args.quick or args.toy else 3)
    args.new_tokens = args.new_tokens if args.new_tokens is not None else (8 if args.quick or args.toy else 32)
    return geo


def run(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    geo = resolve(args)
    model = build_model(geo, seed=args.seed)
    inputs = make_inputs(model, geo)
    feats, deep, t_vis = encode(model, inputs)
    enc = feature_kwargs(model, feats.reshape(1, -1, feats.shape[-1]), deep)
    benches = configurations(geo, args.budget, args.budget5, quick=args.quick,
                             eq_budgets=tuple(x for x in (args.eq_budget, args.eq_budget2) if x),
                             budget_high=args.budget_high, pre_select=args.pre_select)
    if args.configs:
        wanted = args.configs.split(",")
        benches = [b for b in benches if b.name in wanted or b.name == "full"
                   or (b.eq is not None and b.eq["alias"] in wanted)]
    prep = {b.name: bench_inputs(model, b, inputs, enc, feats, deep) for b in benches}
    raw = {b.name: {"prefill": [], "decode": [], "selection": [], "selection_groups": []} for b in benches}
    info: dict = {}
    timer = SelectionTimer()
    print(f"geometry: {geo_repr(geo)}", flush=True)
    with LoadMeter() as load, timer:
        for rep in range(args.warmup + args.repeats):
            for b in benches:
                timer.reset()
                b_inputs, b_enc, pre = prep[b.name]
                with _ctx(model, b) as h:
                    tp, steps, cache, lens = prefill_and_decode(model, b_inputs, b_enc, args.new_tokens, pre=pre)
                    trace = h.trace if h is not None else None
                if pre is not None:
                    timer.times["pre-llm select"] = pre["select_s"]
                if rep < args.warmup:
                    if b.name not in info and pre is not None:
                        # what the decoder saw: every layer's cache = text (incl. the newline) + the K kept tokens
                        seen = sorted(set(lens))
                        k = seen[0] - (geo.seq_len - geo.num_visual)
                        if seen != [lens[0]] or k != b.pre_llm:
                            raise RuntimeError(f"{b.name}: cache lengths {seen} != text + {b.pre_llm}")
                        info[b.name] = {"counts": [k], "stage_layers": ["pre"], "raters": 0,
                                        "trace_recycling": [None], "cache_lengths": lens,
                                        "equivalent_tokens": float(k)}
                    elif b.name not in info:
                        counts = trace.counts if trace is not None else []
                        layers = [s.layer for s in trace.stages] if trace is not None else []
                        raters = int(trace.stages[0].raters.sum()) if trace is not None and trace.stages[0].raters \
                            is not None else 0
                        rec = [trace_recycling(s) for s in trace.stages] if trace is not None else []
                        info[b.name] = {"counts": counts, "stage_layers": layers, "raters": raters,
                                        "trace_recycling": rec,
                                        "cache_lengths": lens,
                                        "equivalent_tokens": trace.equivalent_tokens if trace else
                                        float(geo.num_visual)}
                    continue
                r = raw[b.name]
                r["prefill"].append(tp)
                r["decode"].extend(steps)
                r["selection"].append(timer.total)
                r["selection_groups"].append(dict(timer.times))
            print(f"repeat {rep + 1}/{args.warmup + args.repeats} done "
                  f"(full {raw['full']['prefill'][-1] * 1e3 if raw['full']['prefill'] else float('nan'):.0f} ms)",
                  flush=True)
    model.set_attn_implementation("sdpa")

    results = {}
    geo7b = dataclasses.replace(geo, **FAMILIES[geo.family]["dims_7b"])
    for b in benches:
        r, i = raw[b.name], info[b.name]
        fl = prefill_flops(geo, b, i["stage_layers"], i["counts"], i["raters"],
                           merged=[None if x is None else x[0] for x in i["trace_recycling"]])
        for st, x in zip(fl["stages"], i["trace_recycling"]):  # the run's own clustering, as a check of the model
            st["trace_merged"], st["trace_candidates"] = (None, None) if x is None else x
        dec_cache = [c + args.new_tokens // 2 for c in i["cache_lengths"]]  # mid-decode cache lengths
        groups = {}
        for g in r["selection_groups"]:
            for k, v in g.items():
                groups.setdefault(k, []).append(v)
        results[b.name] = {
            "attn": b.attn, "note": b.note, "config": b.cfg.to_dict() if b.cfg is not None else None,
            "counts": i["counts"], "stage_layers": i["stage_layers"], "raters": i["raters"],
            "equivalent_tokens": i["equivalent_tokens"], "cache_lengths_after_prefill": i["cache_lengths"],
            "prefill": summarize(r["prefill"]), "decode_step": summarize(r["decode"]) if r["decode"] else
            {"n": 0, "median": float("nan")},
            "selection": summarize(r["selection"]),
            "selection_groups_median_s": {k: statistics.median(v) for k, v in groups.items()},
            "flops": {k: v for k, v in fl.items() if k not in ("seen_per_layer", "stages")},
            # the same token flow with Video-LLaVA-7B's decoder dimensions (analytic only)
            "decoder_flops_7b_dims": prefill_flops(geo7b, b, i["stage_layers"], i["counts"], i["raters"])["decoder"],
            "stages": fl["stages"],
            "visual_tokens_seen_per_layer": fl["seen_per_layer"],
            "decode_flops_per_token": decode_flops(geo, dec_cache),
        }
        if b.pre_llm is not None:
            results[b.name]["pre_llm"] = {"kept": b.pre_llm, "select": b.pre_select,
                                          "decoder_visual_tokens": i["counts"][0],
                                          "decoder_sequence": i["cache_lengths"][0]}
        if b.eq is not None:
            eq = dict(b.eq)
            planned_after = [k + m for _, k, m in eq["plan"]]
            eq["plan_matches_trace"] = (planned_after == list(i["counts"])
                                        and abs(eq["planned_equivalent_tokens"] - i["equivalent_tokens"]) < 1e-6)
            eq["achieved_minus_target"] = i["equivalent_tokens"] - eq["target"]
            results[b.name]["eq"] = eq
    full = results["full"]
    for name, r in results.items():
        r["ratios"] = {
            "prefill_speedup": full["prefill"]["median"] / r["prefill"]["median"],
            "flops_ideal_speedup": full["flops"]["decoder"] / r["flops"]["decoder"],
            "flops_ideal_speedup_incl_scoring": full["flops"]["decoder"] / r["flops"]["total"],
            "flops_ideal_speedup_7b_dims": full["decoder_flops_7b_dims"] / r["decoder_flops_7b_dims"],
            "selection_share_of_prefill": r["selection"]["median"] / r["prefill"]["median"],
            "decode_speedup": (full["decode_step"]["median"] / r["decode_step"]["median"]
                               if r["decode_step"]["n"] else None),
            "decode_flops_ideal_speedup": full["decode_flops_per_token"] / r["decode_flops_per_token"],
        }
        r["ratios"]["achieved_fraction_of_ideal"] = r["ratios"]["prefill_speedup"] / r["ratios"]["flops_ideal_speedup"]

    memory_method = "not measured"
    if args.memory == "subprocess":
        memory_method = ("fresh child process per configuration; VmHWM reset (/proc/self/clear_refs = 5) after "
                         "model build and video encoding, then one prefill; figure = VmHWM - VmRSS before the "
                         "prefill (activations + KV cache + allocator), ratio vs the full model's.")
        if geo.family != "video_llava":
            memory_method = memory_method.replace(
                "fresh child process per configuration;", "fresh child process per configuration, glibc's mmap "
                "threshold fixed at 256 KiB (MALLOC_MMAP_THRESHOLD_: tensors are mapped and unmapped, so RSS follows "
                "the live memory instead of heap fragmentation);").replace(
                "video encoding, then", "video encoding and glibc malloc_trim(0) (the heap freed so far returned to "
                "the OS, so the prefill cannot hide its peak in it), then")
        ov_video = [b.name for b in benches if b.name.startswith("video@")]
        mem_names = (args.memory_configs.split(",") if args.memory_configs else
                     (["full"] + ov_video if args.quick else [b.name for b in benches])
                     if geo.family != "video_llava" else
                     (["full", f"video@{args.budget}"] if args.quick else
                      [b.name for b in benches
                       if b.eq is None or any(x["setting"] == f"{_g(args.eq_budget)}eq" for x in b.eq["settings"])]))
        for name in mem_names:
            if name in results:
                results[name]["memory"] = measure_memory(name, geo, args)
                print(f"memory {name}: +{results[name]['memory']['delta_mb']:.0f} MB", flush=True)
        fm = results["full"].get("memory")
        for r in results.values():
            if r.get("memory") and fm:
                r["ratios"]["memory_ratio"] = r["memory"]["delta_mb"] / fm["delta_mb"]

    ov = geo.family != "video_llava"  # LLaVA-OneVision and the Qwen families
    res = {
        "geometry": dataclasses.asdict(geo), "tokens_per_frame": geo.tokens_per_frame, "num_visual": geo.num_visual,
        "seq_len": geo.seq_len, "budget": args.budget, "budget5": None if ov else args.budget5,
        "eq_budgets": [x for x in (args.eq_budget, args.eq_budget2) if x], "repeats": args.repeats,
        "warmup": args.warmup, "new_tokens": args.new_tokens, "quick": args.quick, "seed": args.seed,
        "vision_tower_s": t_vis, "machine": machine_info(args.threads), "load": load.result,
        "flops_formula": flops_doc(geo), "memory_method": memory_method,
        "command": " ".join([os.path.basename(sys.executable), "scripts/bench_speed.py"] + sys.argv[1:]),
        "timestamp": time.strftime("%Y-%m-%d %H:%M:%S"),
        "results": results,
    }
    if ov:
        full_geo = QWEN_GEOMETRIES[geo.family][0] if geo.qwen else OV_GEOMETRY
        res.update(family=geo.family, tail_tokens=geo.tail_tokens, budget_high=args.budget_high,
                   pre_select=args.pre_select, full_frames=full_geo.frames)
        if geo.qwen:
            res.update(groups=geo.groups, grid_thw=list(geo.grid_thw), mrope_note=MROPE_NOTE,
                       mrope_section=qwen_mrope_section(geo.family, geo.head_dim),
                       full_num_visual=full_geo.num_visual)
    res["targets"] = [{"target": t, "value": v, "met": ok} for t, v, ok in check_targets(res)]
    if args.profile:
        b = {b.name: b for b in benches}[args.profile]
        res["profile"] = profile_config(model, *prep[b.name], b, args)
    return res


_GEO_NEW_FIELDS = {"image_width": 0, "temporal_patch": 1, "merge": 1, "fps": 2.0}


def geo_repr(geo: Geometry) -> str:
    """repr of the geometry; Video-LLaVA's and LLaVA-OneVision's line as before the Qwen fields (left out at their
    defaults), Video-LLaVA's also without the family field."""
    parts = [f"{f.name}={getattr(geo, f.name)!r}" for f in dataclasses.fields(geo)
             if geo.qwen or f.name not in _GEO_NEW_FIELDS]
    out = f"Geometry({', '.join(parts)})"
    return out.replace(", family='video_llava'", "")


def profile_config(model, inputs, enc, pre, bench: Bench, args) -> str:
    from torch.profiler import ProfilerActivity, profile

    with _ctx(model, bench):
        prefill_and_decode(model, inputs, enc, 0, pre=pre)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
            prefill_and_decode(model, inputs, enc, 0, pre=pre)
    model.set_attn_implementation("sdpa")
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
    with open(args.out + f".profile-{bench.name.replace('@', '_')}.txt", "w") as fh:
        fh.write(table)
    print(table)
    return table


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.memory_child:
        print(json.dumps(memory_child(json.loads(args.memory_child))))
        return {}
    res = run(args)
    report = render_report(res)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w") as fh:
        json.dump(res, fh, indent=1, default=str)
    with open(args.out + ".md", "w") as fh:
        fh.write(f"`{res['command']}`\n\n{report}\n")
    print()
    print(report)
    print(f"\nwrote {args.out}.json and {args.out}.md")
    return res


if __name__ == "__main__":
    main()
