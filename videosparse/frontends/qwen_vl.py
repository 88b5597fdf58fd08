"""Qwen2.5-VL and Qwen3-VL's front ends (``Qwen2_5_VLForConditionalGeneration``, ``Qwen3VLForConditionalGeneration``).

Geometry per video, not per model (``dynamic_grid``): every frame is resized by ``smart_resize`` to multiples of
``patch_size x merge_size`` (28 px for Qwen2.5-VL, 32 px for Qwen3-VL) within the processor's pixel limits, two
consecutive frames make one temporal patch, and each 2 x 2 block of patches is merged into one token. So a
video of T sampled frames at h x w pixels gives ``ceil(T / 2)`` temporal groups ("frames" of the trace) of
``(h / 28) x (w / 28)`` tokens (Qwen2.5-VL); two videos of different sizes have different counts, and one batch
may hold both (the engine's per-sample geometry).

Frames are preprocessed by the package's own code (``videosparse.video.qwen``: transformers' Qwen video
processors need torchvision). Qwen2.5-VL's temporal positions use ``second_per_grid_ts`` (seconds one temporal
patch spans, from the sampled frame rate); Qwen3-VL writes each group's time as text before it
(``<t seconds>``). Projected features (and Qwen3-VL's deepstack features) are computed once per video and
handed to ``generate`` through ``mm_encoder_outputs``; the model computes its own 3-axis positions from
``video_grid_thw`` and ``mm_token_type_ids``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from videosparse.frontends.base import FrontEnd, register_frontend

logger = logging.getLogger(__name__)

_SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
_USER = "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>{question}<|im_end|>\n<|im_start|>assistant\n"
# the checkpoints' chat templates rendered for one video and one text turn (add_generation_prompt=True):
# Qwen2.5-VL adds its default system turn, Qwen3-VL has none
QWEN2_5_TEMPLATE = _SYSTEM + _USER
QWEN3_TEMPLATE = _USER
_FILES = ("processor_config.json", "video_preprocessor_config.json", "preprocessor_config.json")


class _QwenVLFrontEnd(FrontEnd):
    video_placeholder = "<|video_pad|>"
    has_cls = False
    tail_tokens = 0  # <|vision_end|> is the template's, outside the placeholder
    default_num_frames = 32  # 16 temporal groups
    dynamic_grid = True
    frames_per_step = 2
    family = ""

    # ------------------------------------------------------------------ preprocessing
    def default_spec(self) -> Any:
        from videosparse.video.qwen import QwenVideoSpec

        return QwenVideoSpec.qwen2_5_vl() if self.family == "qwen2_5_vl" else QwenVideoSpec.qwen3_vl()

    def preprocessor_spec(self, source: str, local_files_only: bool = False) -> Any:
        """The checkpoint's video processor config read the way transformers reads it (a nested
        ``processor_config.json``, else ``video_preprocessor_config.json``, else ``preprocessor_config.json``);
        none: the published checkpoint's settings (``QwenVideoSpec.qwen2_5_vl()`` / ``qwen3_vl()``), logged."""
        from videosparse.video.qwen import QwenVideoSpec

        if os.path.isdir(source):
            try:
                return QwenVideoSpec.from_pretrained(source, family=self.family)
            except FileNotFoundError:
                logger.warning("no video processor config in %s; using %s's published settings", source, self.family)
                return self.default_spec()
        import json

        from transformers.utils import cached_file

        for name in _FILES:
            try:
                path = cached_file(source, name, _raise_exceptions_for_missing_entries=False,
                                   local_files_only=local_files_only)
            except OSError:
                path = None
            if not path:
                continue
            with open(path, encoding="utf-8") as fh:
                d = json.load(fh)
            if name == "processor_config.json" and not isinstance(d.get("video_processor"), dict):
                continue
            return QwenVideoSpec.from_dict(d, family=self.family)
        logger.warning("no video processor config for %s; using %s's published settings", source, self.family)
        return self.default_spec()

    def check_spec(self, config: Any, spec: Any) -> None:
        from videosparse.video.qwen import QwenVideoSpec

        if not isinstance(spec, QwenVideoSpec):
            raise ValueError(f"a {self.family} model needs a QwenVideoSpec (videosparse.video.qwen), got "
                             f"{type(spec).__name__}")
        v = config.vision_config
        for ours, theirs in (("patch_size", "patch_size"), ("merge_size", "spatial_merge_size"),
                             ("temporal_patch_size", "temporal_patch_size")):
            if getattr(spec, ours) != getattr(v, theirs):
                raise ValueError(f"the preprocessing's {ours}={getattr(spec, ours)} does not match the vision tower's "
                                 f"{theirs}={getattr(v, theirs)}")

    # ------------------------------------------------------------------ geometry
    def tokens_per_frame(self, config: Any) -> None:
        return None  # per video: see encode_frames

    def frame_grid(self, config: Any) -> tuple:
        raise ValueError(f"{self.family}: a frame's token grid depends on the video's size (smart_resize); it is "
                         f"known once the video is encoded")

    def min_tokens_per_frame(self, config: Any, spec: Any) -> int:
        """A lower bound on the tokens of one temporal group, whatever the video (checks made before decoding)."""
        return 1

    def video_token_id(self, config: Any) -> int:
        return config.video_token_id

    # ------------------------------------------------------------------ prompt
    def prompt(self, question: str, num_frames: int, tokens_per_frame: int, template: str | None = None,
               extra: dict | None = None) -> str:
        if self.family != "qwen3_vl":
            return super().prompt(question, num_frames, tokens_per_frame, template, extra)
        from videosparse.video.qwen import qwen3_video_prompt

        template = self.prompt_template if template is None else template
        if num_frames < 1 or tokens_per_frame < 1:
            raise ValueError(f"num_frames and tokens_per_frame must be >= 1, got {num_frames}, {tokens_per_frame}")
        if extra:
            grid, times = extra["grid"], extra["prompt_times"]
        else:  # nominal (length checks before decoding): grid with the same token count, time 0
            grid, times = (num_frames, tokens_per_frame * 4, 1), [0.0] * num_frames
        text = template.format(question=question.strip())
        block = qwen3_video_prompt(grid, times, 2 if not extra else extra["merge"], video_token=self.video_placeholder)
        return text.replace(self.video_placeholder, block, 1)

    # ------------------------------------------------------------------ inputs
    def encode_frames(self, model: Any, frames: Any, spec: Any, clip: Any = None, size: tuple | None = None) -> tuple:
        """Preprocess (smart_resize, normalise, patchify), run the vision tower + merger once: tokens
        (groups, h' x w', D) and extra = grid, times (per group: mean of its first and last frame's time;
        ``spans`` = (first, last)), Qwen2.5-VL's ``second_per_grid_ts``, Qwen3-VL's prompt times and deepstack
        features (one (groups x h' x w', D) tensor per deepstack layer). ``size``: (height, width) to resize to
        (a chunk of a longer clip: the clip's size, see `clip_size`)."""
        from videosparse.video import Clip
        from videosparse.video.qwen import preprocess_video

        if clip is None:
            clip = Clip.from_array(frames)
        if self.family == "qwen3_vl" and len(frames) < 2:
            raise ValueError("Qwen3-VL needs at least 2 frames of a video (one temporal patch)")
        inp = preprocess_video(frames, spec, size)
        visual = model.model.visual
        pv = inp["pixel_values_videos"].to(model.device, visual.dtype)
        grid = inp["video_grid_thw"].to(model.device)
        out = model.model.get_video_features(pixel_values_videos=pv, video_grid_thw=grid, return_dict=True)
        gt, gh, gw = (int(x) for x in inp["video_grid_thw"][0])
        m = spec.merge_size
        feats = out.pooler_output[0].reshape(gt, gh * gw // (m * m), -1)
        extra = self.clip_extra(clip, spec, (gt, gh, gw))
        deep = getattr(out, "deepstack_features", None)
        if deep:
            extra["deepstack"] = [d[0] for d in deep]
        return feats, extra

    def clip_extra(self, clip: Any, spec: Any, grid: tuple) -> dict:
        """A clip's metadata for the prompt, ``generate`` and the trace: grid (t, h, w) patches, merge, per temporal
        group its (first, last) frame time (``spans``) and mid-time (``times``); Qwen2.5-VL's
        ``second_per_grid_ts`` (2 / the sampled frame rate), Qwen3-VL's prompt times (the processor's)."""
        import numpy as np

        from videosparse.video.qwen import qwen3_timestamps, second_per_grid_ts

        gt = int(grid[0])
        tp = spec.temporal_patch_size
        n = len(clip.indices)
        ts = np.asarray(clip.timestamps, dtype=np.float64)
        ts = np.concatenate([ts, np.repeat(ts[-1:], -len(ts) % tp)])
        spans = [(float(ts[g * tp]), float(ts[g * tp + tp - 1])) for g in range(gt)]
        extra: dict = {"grid": tuple(int(x) for x in grid), "merge": spec.merge_size,
                       "times": [(a + b) / 2 for a, b in spans], "spans": spans}
        if self.family == "qwen2_5_vl":
            extra["second_per_grid_ts"] = second_per_grid_ts(n, max(int(clip.num_source_frames), n), clip.fps, tp)
        else:
            extra["prompt_times"] = qwen3_timestamps(clip.indices, clip.fps, tp)
        return extra

    def clip_size(self, spec: Any, num_frames: int, height: int, width: int) -> tuple:
        """(height, width) the processor resizes every frame of a ``num_frames``-frame clip to."""
        from videosparse.video.qwen import video_resize_hw

        return video_resize_hw(num_frames, height, width, spec)

    def pool_encoder(self, model: Any, spec: Any, size: tuple) -> Any:
        """The long path's chunk encoder: frames (an even number, or the clip's last chunk) -> (tokens (groups, P,
        D), aux (groups, P, L x D) = the deepstack features, or None). Every chunk is resized to the clip's size;
        the vision towers attend within each temporal group, so chunking along time gives the whole clip's
        features (tested)."""
        def encode(frames: Any) -> Any:
            feats, extra = self.encode_frames(model, frames, spec, size=size)
            deep = extra.get("deepstack")
            if not deep:
                return feats
            import torch

            aux = torch.cat([d.reshape(feats.shape[0], feats.shape[1], -1) for d in deep], dim=-1)
            return feats, aux

        return encode

    def pooled_inputs(self, model: Any, tokenizer: Any, template: str, questions: list, pools: list) -> tuple:
        """What ``generate`` needs for a batch of long-video pools (one per question, the same video geometry):
        (input_ids, attention_mask, generate kwargs, vision positions (3, B, N), rope deltas (B, 1)).

        The pooled prompt is the whole-video prompt with the video tokens outside the pool removed (Qwen3-VL: and
        the timestamp text and vision markers of temporal groups left without any token), so every remaining token
        keeps the 3-axis position the stock model gives it in the whole-video prompt (`get_rope_index` of the
        model, on token ids only), and the rope delta is moved by the tokens removed, so the decode steps continue
        exactly the whole-video positions."""
        import torch

        dev = model.device
        vid = self.video_token_id(model.config)
        mcfg = model.config
        vs, ve = mcfg.vision_start_token_id, mcfg.vision_end_token_id
        rows_ids, positions, deltas = [], [], []
        for q, pv in zip(questions, pools):
            T, P = pv.num_frames, pv.tokens_per_frame
            e = pv.extra
            full_text = self.prompt(q, T, P, template, e)
            full = torch.tensor(tokenizer(full_text, add_special_tokens=True, verbose=False)["input_ids"])
            types = (full == vid).long() * 2
            vpos = (full == vid).nonzero()[:, 0]
            if vpos.numel() != T * P:
                raise ValueError(f"the whole-video prompt holds {vpos.numel()} video tokens, expected {T} x {P}")
            grid = torch.tensor([e["grid"]], dtype=torch.long)
            kw = {"mm_token_type_ids": types[None], "video_grid_thw": grid,
                  "attention_mask": torch.ones(1, full.numel(), dtype=torch.long)}
            if self.family == "qwen2_5_vl":
                kw["second_per_grid_ts"] = torch.tensor([e["second_per_grid_ts"]])
            with torch.no_grad():
                pos, delta = model.model.get_rope_index(full[None], **kw)
            keep = full != vid
            keep[vpos[pv.ids]] = True
            if self.family == "qwen3_vl":  # groups without a pooled token lose their timestamp text and markers
                vsp, vep = (full == vs).nonzero()[:, 0], (full == ve).nonzero()[:, 0]
                if vsp.numel() != T + 1 or vep.numel() != T + 1:
                    raise ValueError("the whole-video prompt's vision markers do not match its temporal groups")
                used = torch.zeros(T, dtype=torch.bool)
                used[torch.unique(pv.ids // P)] = True
                for g in range(T):
                    if not used[g]:
                        start = int(vep[g - 1]) + 1 if g else int(vsp[0]) + 1
                        keep[start : int(vep[g]) + 1] = False
            rows_ids.append(full[keep])
            positions.append(pos[:, 0, keep.to(pos.device)])
            deltas.append(delta.reshape(-1)[0] + int(full.numel()) - int(keep.sum()))
        n = max(int(r.numel()) for r in rows_ids)
        B = len(rows_ids)
        pad = tokenizer.pad_token_id
        input_ids = torch.full((B, n), pad, dtype=torch.long)
        mask = torch.zeros(B, n, dtype=torch.long)
        pos = torch.ones(3, B, n, dtype=positions[0].dtype)
        for b, (r, p) in enumerate(zip(rows_ids, positions)):
            input_ids[b, n - r.numel():] = r
            mask[b, n - r.numel():] = 1
            pos[:, b, n - r.numel():] = p.cpu()
        input_ids, mask = input_ids.to(dev), mask.to(dev)
        gen: dict = {"mm_token_type_ids": (input_ids == vid).long() * 2,
                     "video_grid_thw": torch.tensor([pv.extra["grid"] for pv in pools], dtype=torch.long, device=dev)}
        deep = None
        if pools[0].aux is not None:
            D = pools[0].features.shape[-1]
            deep = [tuple(pv.aux[:, k * D:(k + 1) * D] for pv in pools) for k in range(pools[0].aux.shape[-1] // D)]
        gen["mm_encoder_outputs"] = _encoder_outputs(tuple(pv.features for pv in pools), deep)
        return input_ids, mask, gen, pos.to(dev), torch.stack(deltas).reshape(B, 1).to(dev)

    def video_inputs(self, model: Any, features: list, extras: list, input_ids: Any, pixels: list | None = None) -> dict:
        """``generate`` keyword arguments for a batch: per sample its tokens (T x P, D) and ``encode_frames``
        extra, in row order; ``pixels``: per sample the preprocessed ``pixel_values_videos`` instead (batches
        ``generate`` expands: beams, several returned sequences)."""
        import torch

        dev = input_ids.device
        kw: dict = {"video_grid_thw": torch.tensor([e["grid"] for e in extras], dtype=torch.long, device=dev),
                    "mm_token_type_ids": (input_ids == self.video_token_id(model.config)).long() * 2}
        if self.family == "qwen2_5_vl":
            kw["second_per_grid_ts"] = torch.tensor([e["second_per_grid_ts"] for e in extras], device=dev)
        if pixels is not None:
            kw["pixel_values_videos"] = torch.cat(pixels).to(dev, model.model.visual.dtype)
            return kw
        deep = None
        if "deepstack" in extras[0]:
            deep = [tuple(e["deepstack"][k] for e in extras) for k in range(len(extras[0]["deepstack"]))]
        kw["mm_encoder_outputs"] = _encoder_outputs(tuple(f.reshape(-1, f.shape[-1]) for f in features), deep)
        return kw

    def pixels(self, frames: Any, spec: Any) -> Any:
        """One video's ``pixel_values_videos`` (the rows ``generate`` re-encodes when it expands a batch)."""
        from videosparse.video.qwen import preprocess_video

        return preprocess_video(frames, spec)["pixel_values_videos"]


def _encoder_outputs(pooled: tuple, deepstack: list | None) -> dict:
    """``mm_encoder_outputs`` for ``generate``: per video its tokens (n, D) and, for Qwen3-VL, per deepstack layer
    a tuple of the videos' deepstack features, the shapes ``get_video_features`` returns."""
    if deepstack is not None:
        from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures

        return {"video": BaseModelOutputWithDeepstackFeatures(pooler_output=pooled, deepstack_features=deepstack)}
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    return {"video": BaseModelOutputWithPooling(pooler_output=pooled)}


@register_frontend
class Qwen2_5_VLFrontEnd(_QwenVLFrontEnd):
    name = "qwen2_5_vl"
    model_types = ("qwen2_5_vl",)
    family = "qwen2_5_vl"
    description = ("Qwen2.5-VL (transformers Qwen2_5_VLForConditionalGeneration, e.g. "
                   "Qwen/Qwen2.5-VL-7B-Instruct; videos only)")
    prompt_template = QWEN2_5_TEMPLATE

    def model_class(self) -> type:
        from transformers import Qwen2_5_VLForConditionalGeneration

        return Qwen2_5_VLForConditionalGeneration


@register_frontend
class Qwen3VLFrontEnd(_QwenVLFrontEnd):
    name = "qwen3_vl"
    model_types = ("qwen3_vl",)
    family = "qwen3_vl"
    description = ("Qwen3-VL (transformers Qwen3VLForConditionalGeneration, e.g. Qwen/Qwen3-VL-8B-Instruct; "
                   "videos only)")
    prompt_template = QWEN3_TEMPLATE

    def model_class(self) -> type:
        from transformers import Qwen3VLForConditionalGeneration

        return Qwen3VLForConditionalGeneration
