"""One pruning stage on tensors: scores -> temporal redundancy -> global budget -> recycling.

This is the model-independent heart of a stage; adapters call it with the scores they computed from
a layer's query/key rows. Pure tensor code: no transformers, no modules, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from videosparse.core.budget import apply_temporal, effective_floor, select_tokens, temporal_redundancy
from videosparse.config import seed_recycle_counts
from videosparse.core.recycle import recycle, recycle_count


@dataclass
class StageResult:
    """keep:      (B, K) long indices into the stage's M current visual tokens, ascending: the slots
               that stay in the sequence
    hidden:    (B, K, D) hidden states to place at those slots (merged where `merged`)
    merged:    (B, K) bool, True for recycled cluster tokens
    ids:       (B, K) long, the token each slot now stands for (its index into M; a merged token's is its
               cluster center). Equal to `keep` unless merged tokens are placed after the kept ones.
    scores:    (B, M) float32 final selection scores (after temporal adjustment)
    clusters:  (B, M) long cluster id as an index into `keep`, or -1
    redundant: (B, M) bool temporal-redundancy flags (all False when disabled / not on a full grid)
    """

    keep: torch.Tensor
    hidden: torch.Tensor
    merged: torch.Tensor
    scores: torch.Tensor
    clusters: torch.Tensor
    redundant: torch.Tensor
    ids: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.ids is None:
            self.ids = self.keep


def run_stage(
    scores: torch.Tensor,
    hidden: torch.Tensor,
    count: int,
    frame_id: torch.Tensor,
    num_frames: int,
    grid_shape: tuple | None = None,
    frame_floor: int = 0,
    forced: torch.Tensor | None = None,
    temporal_tau: float | None = None,
    temporal_mode: str = "discount",
    temporal_discount: float = 0.5,
    recycle_tokens: bool = False,
    recycle_ratio: float = 0.3,
    recycle_cluster_ratio: float = 0.1,
    recycle_knn: int = 5,
    floor_share: float = 1.0,
    recycle_share: float = 1.0,
    override: torch.Tensor | None = None,
    redundancy_features: torch.Tensor | None = None,
    recycle_rule: str = "share",
    recycle_place: str = "center",
) -> StageResult:
    """Choose `count` of the M current visual tokens of every sample.

    scores:     (B, M) float relevance of each current visual token
    hidden:     (B, M, D) their hidden states (layer output at the stage)
    frame_id:   (B, M) long frame of each token
    grid_shape: (T, P) when the M tokens are the full frame-major grid (enables temporal redundancy)
    forced:     (B, M) bool tokens taken first (e.g. CLS)
    floor_share / recycle_share: the per-frame floor and the recycled tokens each use at most this
                share of `count` (1.0 = no cap)
    override:   (B, count) long indices into M to keep instead of selecting (no recycling)
    redundancy_features: (B, M, D') features compared across frames for temporal redundancy
                (default `hidden`; adapters pass the position-free projected visual features)
    recycle_rule: 'share': the result keeps exactly `count` tokens per sample, merged tokens included
                (at most recycle_share of them). 'seed': `count` tokens are selected and the seed's merged
                tokens (see `videosparse.config.seed_recycle_counts`) are added on top, clustered by
                DPC-KNN with k = the number of clusters, the point itself included.
    recycle_place: 'center' (a merged token takes its cluster center's slot) or 'after' (merged tokens
                take the last slots, after every kept token; `ids` says which token each slot holds).
    """
    B, M, D = hidden.shape
    dev = hidden.device
    s = scores.float()
    redundant = torch.zeros(B, M, dtype=torch.bool, device=dev)
    excluded = None
    root_flat = None
    if override is not None:
        keep = override.sort(dim=1).values
        if keep.shape != (B, count):
            raise ValueError(f"selection override must have shape {(B, count)}, got {tuple(keep.shape)}")
        clusters = torch.full((B, M), -1, dtype=torch.long, device=dev)
        return StageResult(keep, hidden.gather(1, keep[:, :, None].expand(B, count, D)),
                           torch.zeros(B, count, dtype=torch.bool, device=dev), s, clusters, redundant)
    if temporal_tau is not None and grid_shape is not None and grid_shape[0] * grid_shape[1] == M:
        T, P = grid_shape
        feats = hidden if redundancy_features is None else redundancy_features
        red = temporal_redundancy(feats.reshape(B, T, P, feats.shape[-1]), temporal_tau)
        s3, excl, root = apply_temporal(s.view(B, T, P), red, temporal_mode, temporal_discount)
        s = s3.reshape(B, M)
        redundant = red.reshape(B, M)
        if temporal_mode == "merge":
            excluded = excl.reshape(B, M)
            root_flat = (root * P + torch.arange(P, device=dev)).reshape(B, M)
    f = effective_floor(frame_floor, count, num_frames, floor_share)
    n_cand, knn, include_self = None, recycle_knn, False
    if recycle_tokens and recycle_rule == "seed":
        n_cand, c = seed_recycle_counts(M - count, recycle_ratio, recycle_cluster_ratio)
        knn, include_self = c, True
        n_select = count
    else:
        c = recycle_count(M, count, recycle_ratio, recycle_cluster_ratio) if recycle_tokens else 0
        c = min(c, int(recycle_share * count + 1e-9))  # merged tokens take at most this share of the budget
        # the per-frame floor is a stronger promise than recycling: leave room for it among real tokens
        c = min(c, max(0, count - f * num_frames))
        n_select = count - c
    kept = select_tokens(s, n_select, frame_id=frame_id, num_frames=num_frames, floor=f,
                         excluded=excluded, forced=forced)
    kept_hidden = hidden.gather(1, kept[:, :, None].expand(B, kept.shape[1], D))
    if root_flat is not None:
        # merge mode: a kept chain root carries the mean of its run of near-identical copies
        summed = torch.zeros(B, M, D, dtype=torch.float32, device=dev)
        summed.scatter_add_(1, root_flat[:, :, None].expand(B, M, D), hidden.float())
        cnt = torch.zeros(B, M, device=dev).scatter_add_(1, root_flat, torch.ones(B, M, device=dev))
        chain_mean = (summed / cnt[:, :, None].clamp(min=1)).to(hidden.dtype)
        kept_hidden = chain_mean.gather(1, kept[:, :, None].expand(B, kept.shape[1], D))
    clusters = torch.full((B, M), -1, dtype=torch.long, device=dev)
    if c > 0:
        centers, merged_h, members, labels = recycle(
            hidden, s, kept, c, recycle_ratio, knn, cluster_ratio=None if n_cand is not None else recycle_cluster_ratio,
            num_candidates=n_cand, include_self=include_self)
        c = centers.shape[1]
        total = kept.shape[1] + c
        if recycle_place == "after":
            # merged tokens take the last slots, after every kept token (the seed's order)
            ids = torch.cat([kept, centers], dim=1)
            keep = ids.sort(dim=1).values
            hid = torch.cat([kept_hidden, merged_h], dim=1)
            merged = torch.zeros(B, total, dtype=torch.bool, device=dev)
            merged[:, kept.shape[1]:] = True
            slot_of_cluster = torch.arange(kept.shape[1], total, device=dev).expand(B, c)
            slot_of_member = torch.where(labels >= 0, slot_of_cluster.gather(1, labels.clamp(min=0)),
                                         torch.full_like(labels, -1))
            clusters.scatter_(1, members, slot_of_member)
            return StageResult(keep, hid, merged, s, clusters, redundant, ids)
        keep_all = torch.cat([kept, centers], dim=1)
        hid_all = torch.cat([kept_hidden, merged_h], dim=1)
        is_merged = torch.cat([torch.zeros_like(kept, dtype=torch.bool), torch.ones_like(centers, dtype=torch.bool)], 1)
        order = keep_all.argsort(dim=1)
        keep = keep_all.gather(1, order)
        hid = hid_all.gather(1, order[:, :, None].expand(B, total, D))
        merged = is_merged.gather(1, order)
        # cluster id -> position of its merged token inside `keep`
        inv = order.argsort(dim=1)  # position in `keep` of each entry of keep_all
        center_slot = inv[:, kept.shape[1]:]  # (B, c)
        slot_of_member = torch.where(labels >= 0, center_slot.gather(1, labels.clamp(min=0)), torch.full_like(labels, -1))
        clusters.scatter_(1, members, slot_of_member)
        return StageResult(keep, hid, merged, s, clusters, redundant)
    merged = torch.zeros(B, kept.shape[1], dtype=torch.bool, device=dev)
    return StageResult(kept, kept_hidden, merged, s, clusters, redundant)
