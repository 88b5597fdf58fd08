"""Recycling of pruned tokens: DPC-KNN clustering and merge (SparseVLM's token recycling).

Pure tensor code: no transformers, no modules, no I/O.
"""

from __future__ import annotations

import math

import torch


def recycle_count(num_visual: int, budget: int, ratio: float, cluster_ratio: float) -> int:
    """How many of the `budget` slots go to merged (recycled) tokens.

    The pruned tokens number about num_visual - budget; the best `ratio` of them are clustered into
    `cluster_ratio` as many clusters. At least one real token is always kept, and nothing is recycled
    when there is nothing to prune.
    """
    pruned = num_visual - budget
    if pruned <= 0 or budget <= 1:
        return 0
    c = int(math.floor(cluster_ratio * ratio * pruned))
    return max(0, min(c, budget - 1, pruned))


def dpc_knn(x: torch.Tensor, num_clusters: int, k: int = 5, valid: torch.Tensor | None = None,
            include_self: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Density-peak clustering with k-nearest-neighbour density (DPC-KNN), batched.

    x:       (B, n, D) points
    valid:   (B, n) bool, invalid points are never centers and are not assigned (label -1)
    density  rho_i   = exp(-mean of squared distances to the k nearest neighbours); with include_self the
             point itself (distance 0) is one of the k, as in the seed code (k = number of clusters there)
    delta_i  = min distance to a point of higher density (max distance for the densest point)
    centers  = the `num_clusters` points with largest rho * delta; others join the nearest center
    returns (centers (B, c) long indices into n, labels (B, n) long in [0, c) or -1)
    Deterministic: ties in density are broken exactly by index (of two equally dense points the lower
    index counts as denser), so two identical points never both become centers. (An additive
    ``1e-12 * index`` is below float32 resolution near density 1 and broke no tie.)
    """
    B, n, D = x.shape
    c = min(num_clusters, n)
    if c <= 0 or n == 0:
        return (
            torch.zeros(B, 0, dtype=torch.long, device=x.device),
            torch.full((B, n), -1, dtype=torch.long, device=x.device),
        )
    xf = x.float()
    dist = torch.cdist(xf, xf) / math.sqrt(D)  # (B, n, n)
    big = torch.finfo(dist.dtype).max
    eye = torch.eye(n, dtype=torch.bool, device=x.device)[None]
    all_valid = valid is None or bool(valid.all())
    # fast path (the common case): no validity masks at all -- identical result, ~20% less time
    pair_valid = None if all_valid else valid[:, :, None] & valid[:, None, :]
    dist_masked = dist if pair_valid is None else dist.masked_fill(~pair_valid, big)
    if include_self:
        knn = dist_masked.topk(max(1, min(k, n)), dim=-1, largest=False).values
        if pair_valid is not None:
            knn = torch.where(knn >= big, torch.zeros_like(knn), knn)
    elif n > 1:
        knn = dist_masked.masked_fill(eye, big).topk(max(1, min(k, n - 1)), dim=-1, largest=False).values
        if pair_valid is not None:
            knn = torch.where(knn >= big, torch.zeros_like(knn), knn)
    else:
        knn = torch.zeros(B, n, 1, device=x.device)
    density = torch.exp(-(knn**2).mean(dim=-1))
    if pair_valid is not None:
        density = density.masked_fill(~valid, -1.0)
    # (B, i, j): j denser than i; equal densities: the lower index is denser (exact, no additive noise). A
    # stable descending sort ranks the points in that order, so one comparison of ranks decides it.
    order = torch.sort(-density, dim=1, stable=True).indices
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(n, device=x.device).expand(B, n))
    denser = rank[:, None, :] < rank[:, :, None]
    if pair_valid is None:
        dmax = dist.flatten(1).max(dim=1).values[:, None].expand(B, n)
        delta = dist.masked_fill(~denser, big).min(dim=-1).values
    else:
        dmax = dist.masked_fill(~pair_valid, 0).flatten(1).max(dim=1).values[:, None].expand(B, n)
        delta = dist.masked_fill(~(denser & pair_valid), big).min(dim=-1).values
    delta = torch.where(delta >= big, dmax, delta)
    score = density * delta
    if pair_valid is not None:
        score = score.masked_fill(~valid, -1.0)
    centers = torch.argsort(-score, dim=1, stable=True)[:, :c]  # (B, c), equal scores: lower index first
    cd = dist.gather(2, centers[:, None, :].expand(B, n, c))  # (B, n, c)
    labels = cd.argmin(dim=-1)
    labels.scatter_(1, centers, torch.arange(c, device=x.device).expand(B, c))  # a center is its own
    if pair_valid is not None:
        labels = labels.masked_fill(~valid, -1)
    return centers, labels


def merge_clusters(x: torch.Tensor, labels: torch.Tensor, num_clusters: int) -> torch.Tensor:
    """Mean of each cluster.

    x: (B, n, D); labels: (B, n) long in [0, c) or -1 (ignored). returns (B, c, D) in x.dtype.
    """
    B, n, D = x.shape
    out = torch.zeros(B, num_clusters + 1, D, dtype=torch.float32, device=x.device)
    lab = torch.where(labels < 0, torch.full_like(labels, num_clusters), labels)
    out.scatter_add_(1, lab[:, :, None].expand(B, n, D), x.float())
    cnt = torch.zeros(B, num_clusters + 1, device=x.device)
    cnt.scatter_add_(1, lab, torch.ones(B, n, device=x.device))
    return (out[:, :num_clusters] / cnt[:, :num_clusters, None].clamp(min=1)).to(x.dtype)


def recycle(
    hidden: torch.Tensor,
    scores: torch.Tensor,
    kept: torch.Tensor,
    num_clusters: int,
    ratio: float,
    k: int = 5,
    cluster_ratio: float | None = None,
    num_candidates: int | None = None,
    include_self: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cluster the best pruned tokens and merge each cluster into one token.

    hidden: (B, M, D) visual hidden states; scores: (B, M); kept: (B, K) indices kept by top-k.
    The candidates are the top `ratio` of the pruned tokens by score (at least num_clusters), capped at
    num_clusters / cluster_ratio when `cluster_ratio` is given; `num_candidates` fixes their number instead
    (the seed rule). `k` / `include_self`: the DPC-KNN density (see `dpc_knn`).
    Each merged token is placed at its cluster center's position (a pruned position, so it never
    collides with a kept one) and its hidden state is the cluster mean.
    returns (center_idx (B, c) long into M, merged (B, c, D), member_idx (B, n_cand) long into M,
             labels (B, n_cand) long) — `member_idx`/`labels` describe the clusters for the trace.
    """
    B, M, D = hidden.shape
    dev = hidden.device
    if num_clusters <= 0:
        z = torch.zeros(B, 0, dtype=torch.long, device=dev)
        return z, hidden.new_zeros(B, 0, D), z, z
    pruned_mask = torch.ones(B, M, dtype=torch.bool, device=dev)
    pruned_mask.scatter_(1, kept, False)
    n_pruned = M - kept.shape[1]
    # the best `ratio` of the pruned tokens, but no more than ~1/cluster_ratio per cluster (10 with the
    # default 0.1): when the budget caps the clusters, clustering more candidates only costs O(m^2 D)
    n_cand = min(n_pruned, max(num_clusters, int(math.ceil(ratio * n_pruned))))
    if cluster_ratio is not None and cluster_ratio > 0:
        n_cand = min(n_cand, max(num_clusters, int(math.ceil(num_clusters / cluster_ratio))))
    if num_candidates is not None:
        n_cand = max(num_clusters, min(n_pruned, num_candidates))
    s = scores.float().masked_fill(~pruned_mask, float("-inf"))
    order = torch.argsort(-s, dim=1, stable=True)
    cand = order[:, :n_cand].sort(dim=1).values  # (B, n_cand)
    xc = hidden.gather(1, cand[:, :, None].expand(B, n_cand, D))
    centers_local, labels = dpc_knn(xc, num_clusters, k=k, include_self=include_self)
    merged = merge_clusters(xc, labels, centers_local.shape[1])
    center_idx = cand.gather(1, centers_local)
    return center_idx, merged, cand, labels
