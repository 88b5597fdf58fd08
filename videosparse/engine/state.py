"""Explicit state of the engine: what a prefill found and what the cache keeps for the decode steps."""

from __future__ import annotations

from dataclasses import dataclass

import torch

CACHE_STATE_ATTR = "_videosparse_state"


@dataclass
class VisualLayout:
    """Where the visual tokens of a prefill are (found by the family before the decoder runs).

    visual_mask:      (B, N) bool, the video tokens of every sample (one contiguous run per sample)
    num_frames:       T sampled frames
    tokens_per_frame: P tokens of one frame (CLS included when the family keeps it)
    ids:              (B, K) long pooled tokens' ``frame * P + p`` (long-video path), else None
    tail:             tokens right after the visual run that close the video block (LLaVA-OneVision's
                      ``image_newline``): kept, never scored, never pruned, never raters
    grid:             (rows, cols) of a frame's patch tokens for this input (families whose grid depends on
                      the video's resolution, e.g. Qwen-VL); None: the family's fixed grid
    samples:          per-sample ``(num_frames, tokens_per_frame, (rows, cols))`` when the samples of the batch
                      have different geometries (then ``num_frames`` / ``tokens_per_frame`` / ``grid`` are
                      sample 0's); None when every sample has the same

    The visual tokens of a sample need not be contiguous (Qwen3-VL puts timestamp text between temporal
    groups): they are the ``visual_mask`` positions in prompt order, frame-major.
    """

    visual_mask: torch.Tensor
    num_frames: int
    tokens_per_frame: int
    ids: torch.Tensor | None = None
    tail: int = 0
    grid: tuple | None = None
    samples: list | None = None


@dataclass
class CacheState:
    """Stored on the cache after a pruned prefill; read by the decode steps.

    prefill_len: N, the prompt length the 2-D attention mask starts with
    segments:    [(first_layer, last_layer, keep_idx (B, N_s) or None, rope shift)] in layer order; a
                 segment's layers hold the cache of the prompt rows ``keep_idx`` (all rows when None)
    valid:       per segment, None or (B, N_s) bool: False for the filler rows a batch whose samples keep
                 different numbers of tokens carries (left of the real rows, always masked)
    """

    prefill_len: int
    segments: list
    valid: list | None = None
