"""RetentionTrace: what was kept, where, and with which scores.

Indices are into the original visual tokens of the sample, frame-major: token i is frame i // P,
in-frame index i % P; in-frame index 0 is the frame's CLS token when `has_cls`, and the patch grid
(rows x cols) follows in row-major order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass
class StageRecord:
    """One pruning stage.

    layer:       the stage scores with this layer's attention and shrinks the sequence after it
    kept:        (B, K) long, original visual indices of the tokens alive after the stage (incl. merged)
    merged:      (B, K) bool, True where the kept token is a recycled cluster (placed at its center)
    scores:      (B, Nv) float32 over the original visual tokens; NaN for tokens already gone
    raters:      (B, Nt) bool over the text tokens after the video (None for text-agnostic methods)
    clusters:    (B, Nv) long, recycled cluster id (index into `kept` of the merged token) or -1
    redundant:   (B, Nv) bool temporal-redundancy flags (None when disabled)
    """

    layer: int
    kept: torch.Tensor
    merged: torch.Tensor
    scores: torch.Tensor
    raters: torch.Tensor | None = None
    clusters: torch.Tensor | None = None
    redundant: torch.Tensor | None = None

    @property
    def count(self) -> int:
        return int(self.kept.shape[1])


@dataclass
class RetentionTrace:
    """Record of one prefill's pruning, for every sample of the batch.

    num_frames T, tokens_per_frame P, has_cls, grid (rows, cols) of patches per frame,
    num_layers of the decoder, stages in order, and the config it was produced with.
    """

    num_frames: int
    tokens_per_frame: int
    has_cls: bool
    grid: tuple
    num_layers: int
    batch_size: int
    stages: list = field(default_factory=list)
    config: dict = field(default_factory=dict)
    raters_text_positions: torch.Tensor | None = None  # (B, Nt) positions of the candidate text tokens
    # long-video path: visual tokens that entered the decoder (the pool), else None (= num_visual)
    decoder_visual: int | None = None
    # long-video path: the pre-selection before the decoder (layer -1; kept = the pool, scores = the
    # pre-selection scores of every sampled token, redundant = temporal-redundancy flags)
    pool: StageRecord | None = None
    timestamps: list | None = None  # seconds of each of the num_frames sampled frames

    @property
    def num_visual(self) -> int:
        return self.num_frames * self.tokens_per_frame

    @property
    def counts(self) -> list:
        """Visual tokens alive after each stage (same for every sample)."""
        return [s.count for s in self.stages]

    @property
    def equivalent_tokens(self) -> float:
        """Mean over all decoder layers of the visual tokens each layer sees."""
        total, current = 0.0, self.decoder_visual if self.decoder_visual is not None else self.num_visual
        by_layer = {s.layer: s.count for s in self.stages}
        for layer in range(self.num_layers):
            total += current
            if layer in by_layer:
                current = by_layer[layer]
        return total / self.num_layers

    def kept_mask(self, stage: int = -1) -> torch.Tensor:
        """(B, T, P) bool: visual tokens alive after `stage` (merged tokens count at their center)."""
        B = self.batch_size
        m = torch.zeros(B, self.num_visual, dtype=torch.bool)
        if self.stages:
            m.scatter_(1, self.stages[stage].kept.cpu(), True)
        elif self.pool is not None:
            m.scatter_(1, self.pool.kept.cpu(), True)
        else:
            m[:] = True
        return m.view(B, self.num_frames, self.tokens_per_frame)

    def kept_per_frame(self, stage: int = -1) -> torch.Tensor:
        """(B, T) long kept tokens per frame after `stage`."""
        return self.kept_mask(stage).sum(dim=-1)

    def select(self, b: int) -> "RetentionTrace":
        """The trace of sample `b` alone (batch size 1)."""
        def one(x: Any) -> Any:
            return None if x is None else x[b : b + 1]

        def rec(s: Any) -> Any:
            return None if s is None else StageRecord(s.layer, one(s.kept), one(s.merged), one(s.scores),
                                                      one(s.raters), one(s.clusters), one(s.redundant))

        return RetentionTrace(self.num_frames, self.tokens_per_frame, self.has_cls, self.grid, self.num_layers, 1,
                              [rec(s) for s in self.stages], dict(self.config), one(self.raters_text_positions),
                              self.decoder_visual, rec(self.pool),
                              None if self.timestamps is None else list(self.timestamps))

    def kept_frames(self, stage: int = -1, sample: int = 0) -> list:
        """Sampled-frame index of every token kept after `stage` (the pool when there are no stages)."""
        rec = self.stages[stage] if self.stages else self.pool
        if rec is None:
            return [t for t in range(self.num_frames) for _ in range(self.tokens_per_frame)]
        return [int(i) // self.tokens_per_frame for i in rec.kept[sample].tolist()]

    def kept_timestamps(self, stage: int = -1, sample: int = 0) -> list:
        """Seconds (of the source video) of every token kept after `stage`, in token order; None entries when
        the trace has no timestamps."""
        ts = self.timestamps
        return [None if ts is None else float(ts[t]) for t in self.kept_frames(stage, sample)]

    def to_dict(self) -> dict:
        def t(x: Any) -> Any:
            if x is None:
                return None
            if isinstance(x, torch.Tensor):
                x = x.detach().cpu()
                if x.dtype.is_floating_point:
                    return [[None if np.isnan(v) else float(v) for v in row] for row in x.float().tolist()]
                return x.tolist()
            return x

        def rec(s: Any) -> dict:
            return {
                "layer": s.layer,
                "count": s.count,
                "kept": t(s.kept),
                "merged": t(s.merged),
                "scores": t(s.scores),
                "raters": t(s.raters),
                "clusters": t(s.clusters),
                "redundant": t(s.redundant),
            }

        return {
            "num_frames": self.num_frames,
            "tokens_per_frame": self.tokens_per_frame,
            "has_cls": self.has_cls,
            "grid": list(self.grid),
            "num_layers": self.num_layers,
            "batch_size": self.batch_size,
            "counts": self.counts,
            "equivalent_tokens": self.equivalent_tokens,
            "config": self.config,
            "decoder_visual": self.decoder_visual,
            "timestamps": None if self.timestamps is None else [float(x) for x in self.timestamps],
            "pool": None if self.pool is None else rec(self.pool),
            "stages": [rec(s) for s in self.stages],
        }

    def save_json(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump(self.to_dict(), f)
