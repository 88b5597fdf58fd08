"""Qwen2.5-VL and Qwen3-VL (``Qwen2_5_VLForConditionalGeneration``, ``Qwen3VLForConditionalGeneration``): the
family file.

What only these families know:

* **Dynamic grids.** A visual token is a 2 x 2 merged patch of 2 frames (temporal patch 2); the grid of a
  video depends on its resolution, so two videos of one batch can have different token counts. A "frame" of
  the engine (per-frame floor, trace, heatmaps) is a temporal group. The grid comes from ``video_grid_thw``
  in a plain forward and, in ``generate`` (whose prefill hands the model pre-encoded features and no grid),
  from the model's own 3-axis positions of the first video run: its distinct height and width positions.
* **Multi-axis rotary positions** (mrope: time, height, width; interleaved in Qwen3-VL). The decoder layers
  receive the recomposed cos/sin of every row, so kept tokens keep their stock positions by gathering rows,
  and the decode positions the stock model derives from ``rope_deltas`` and the cache length continue
  exactly (layer 0's cache always holds the whole prompt). Renumbering and 1-D RoPE gravity are refused.
* **Qwen3-VL**: timestamp text precedes each temporal group, so a video is several runs of placeholders with
  text between them (the selection is global across runs; the timestamp text is never pruned); per-head q/k
  RMS norms before rotary (``ModelAdapter.project_queries`` applies them); deepstack features added to the
  visual rows after the first layers (the engine adds them to the rows still alive).

Videos only: image inputs are refused. One video per sample.
"""

from __future__ import annotations

from typing import Any

from videosparse.models.base import ModelAdapter, register_adapter


class QwenVLAdapter(ModelAdapter):
    """What Qwen2.5-VL and Qwen3-VL share."""

    image_inputs = ("pixel_values", "image_grid_thw")
    mrope = True

    def _read_geometry(self, mcfg: Any) -> None:
        self.grid = None  # per video: (height, width) / spatial_merge_size
        self.has_cls = False
        self.tokens_per_frame = None
        self.tail_tokens = 0
        self.video_token_id = int(mcfg.video_token_id)
        self.image_token_id = getattr(mcfg, "image_token_id", None)
        self.merge = int(mcfg.vision_config.spatial_merge_size)

    def locate(self, args: tuple, kwargs: dict, handle: Any) -> Any:
        import torch

        from videosparse.engine.state import VisualLayout

        input_ids = kwargs.get("input_ids", args[0] if args else None)
        for key in self.image_inputs:
            if kwargs.get(key) is not None:
                raise ValueError(f"videosparse: image inputs ({key}) are not supported; pass videos as "
                                 "pixel_values_videos, or run inside `with handle.disabled():`")
        if input_ids is None:
            raise ValueError("videosparse: input_ids are required to locate the video tokens (got inputs_embeds only)")
        types = kwargs.get("mm_token_type_ids")  # 0 text, 1 image, 2 video (the processor's)
        has_images = (bool((types == 1).any()) if types is not None else
                      self.image_token_id is not None and bool((input_ids == self.image_token_id).any()))
        if has_images:
            raise ValueError("videosparse: the prompt holds image tokens; image inputs are not supported")
        vm = input_ids == self.video_token_id
        counts = vm.sum(dim=1)
        if not bool(counts.all()):
            raise ValueError(
                f"videosparse: a sample has no video tokens (video_token_id={self.video_token_id}; tokens per sample "
                f"{counts.tolist()}); videosparse prunes video tokens only - run text-only prompts inside "
                "`with handle.disabled():`")
        B = int(input_ids.shape[0])
        if handle._pool is not None:  # the long-video path: K pooled tokens of T temporal groups of rows x cols
            if len(handle._pool) < 3:
                raise ValueError(f"videosparse: a {self.name} pool needs its frame grid: handle.pooled(ids, frames, "
                                 "grid=(rows, cols))")
            ids, frames, (rows, cols) = handle._pool
            ids = torch.as_tensor(ids, dtype=torch.long)
            P = int(rows) * int(cols)
            if ids.ndim != 2 or B % ids.shape[0] or bool((counts != ids.shape[1]).any()):
                raise ValueError(f"videosparse: the pooled layout {tuple(ids.shape)} does not match the input: "
                                 f"{B} sample(s) with {counts.tolist()} video tokens")
            if bool((ids[:, 1:] <= ids[:, :-1]).any()) or int(ids.min()) < 0 or int(ids.max()) >= frames * P:
                raise ValueError(f"videosparse: pooled token ids must be ascending and inside {frames} frames x {P}")
            ids = ids.repeat_interleave(B // ids.shape[0], dim=0)  # beams / returned sequences
            return VisualLayout(vm, int(frames), P, ids.to(vm.device), grid=(int(rows), int(cols)))
        m = self.merge
        grid = kwargs.get("video_grid_thw")
        geo = []
        if grid is not None:
            grid = torch.as_tensor(grid).long().cpu()
            if grid.shape[0] != B:
                raise ValueError(f"videosparse: {grid.shape[0]} videos for {B} samples; one video per sample is "
                                 "supported")
            for t, hh, ww in grid.tolist():
                rows, cols = hh // m, ww // m
                geo.append((int(t), rows * cols, (rows, cols)))
        else:
            pos = kwargs.get("position_ids")
            if pos is None or pos.ndim != 3 or pos.shape[0] < 3:
                raise ValueError("videosparse: cannot find the video grid: pass video_grid_thw, or the model's "
                                 "3-axis position_ids (what generate does)")
            hpos, wpos = pos[-2].cpu(), pos[-1].cpu()
            vmc = vm.cpu()
            for b in range(B):
                idx = vmc[b].nonzero()[:, 0]
                gaps = (idx[1:] - idx[:-1] != 1).nonzero()
                run = idx[: int(gaps[0]) + 1] if gaps.numel() else idx  # the first run: one temporal group or more
                rows = int(hpos[b, run].unique().numel())
                cols = int(wpos[b, run].unique().numel())
                P = rows * cols
                if int(counts[b]) % P:
                    raise ValueError(f"videosparse: sample {b}: {int(counts[b])} video tokens are not whole frames "
                                     f"of {rows} x {cols} tokens (one video per sample is supported)")
                geo.append((int(counts[b]) // P, P, (rows, cols)))
        for b, (t, p, _) in enumerate(geo):
            if t * p != int(counts[b]):
                raise ValueError(f"videosparse: sample {b} holds {int(counts[b])} video tokens but its grid makes "
                                 f"{t} x {p} (one video per sample is supported)")
        T, P, g = geo[0]
        return VisualLayout(vm, T, P, grid=g, samples=None if len(set(geo)) == 1 else geo)


@register_adapter
class Qwen2_5_VLAdapter(QwenVLAdapter):
    name = "qwen2_5_vl"
    model_types = ("qwen2_5_vl",)
    description = ("transformers Qwen2_5_VLForConditionalGeneration / Qwen2_5_VLModel "
                   "(e.g. Qwen/Qwen2.5-VL-7B-Instruct)")
    model_classes = ("Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLModel")


@register_adapter
class Qwen3VLAdapter(QwenVLAdapter):
    name = "qwen3_vl"
    model_types = ("qwen3_vl",)
    description = ("transformers Qwen3VLForConditionalGeneration / Qwen3VLModel (dense; e.g. "
                   "Qwen/Qwen3-VL-8B-Instruct)")
    model_classes = ("Qwen3VLForConditionalGeneration", "Qwen3VLModel")
