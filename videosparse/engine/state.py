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
    """

    visual_mask: torch.Tensor
    num_frames: int
    tokens_per_frame: int
    ids: torch.Tensor | None = None
    tail: int = 0


@dataclass
class CacheState:
    """Stored on the cache after a pruned prefill; read by the decode steps.

    prefill_len: N, the prompt length the 2-D attention mask starts with
    segments:    [(first_layer, last_layer, keep_idx (B, N_s) or None, rope shift)] in layer order; a
                 segment's layers hold the cache of the prompt rows ``keep_idx`` (all rows when None)
    """

    prefill_len: int
    segments: list
