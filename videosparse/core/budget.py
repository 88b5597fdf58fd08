"""Global spatio-temporal allocation of the visual-token budget.

All frames and positions compete for one budget per sample (global top-k), with an optional
per-frame floor, a temporal-redundancy discount, and SparseVLM-v1's rank-adaptive count.
Pure tensor code: no transformers, no modules, no I/O.
"""

from __future__ import annotations

import torch


def temporal_redundancy(hidden: torch.Tensor, tau: float) -> torch.Tensor:
    """Tokens nearly identical to the same spatial token of the previous frame.

    hidden: (B, T, P, D) visual hidden states on the frame grid
    tau:    cosine-similarity threshold
    returns (B, T, P) bool, True where cos(h[t, p], h[t-1, p]) > tau (frame 0 is never redundant)
    """
    B, T, P, D = hidden.shape
    out = torch.zeros(B, T, P, dtype=torch.bool, device=hidden.device)
    if T < 2:
        return out
    h = hidden.float()
    cos = torch.nn.functional.cosine_similarity(h[:, 1:], h[:, :-1], dim=-1, eps=1e-8)
    out[:, 1:] = cos > tau
    return out


def redundancy_roots(redundant: torch.Tensor) -> torch.Tensor:
    """Frame index of the first frame of each token's run of redundant copies.

    redundant: (B, T, P) bool from `temporal_redundancy`
    returns    (B, T, P) long: root frame r such that tokens (r..t, p) are a chain of copies
    """
    B, T, P = redundant.shape
    root = torch.zeros(B, T, P, dtype=torch.long, device=redundant.device)
    for t in range(1, T):
        root[:, t] = torch.where(redundant[:, t], root[:, t - 1], torch.full_like(root[:, t], t))
    return root


def apply_temporal(
    scores: torch.Tensor,
    redundant: torch.Tensor,
    mode: str = "discount",
    discount: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Spend less budget on static content.

    scores:    (B, T, P) float
    redundant: (B, T, P) bool
    mode 'discount': redundant tokens' scores are multiplied by `discount`.
    mode 'merge':    a redundant token's score is added to its chain root and the token is excluded
                     from selection (its hidden state is merged into the root by the caller).
    returns (scores (B, T, P), excluded (B, T, P) bool, root (B, T, P) long frame index)
    """
    root = redundancy_roots(redundant)
    if mode == "discount":
        out = torch.where(redundant, scores * discount, scores)
        return out, torch.zeros_like(redundant), root
    if mode != "merge":
        raise ValueError(f"apply_temporal: unknown mode {mode!r}")
    B, T, P = scores.shape
    flat_root = root * P + torch.arange(P, device=scores.device)  # (B, T, P) flat index of the root
    summed = torch.zeros(B, T * P, dtype=scores.dtype, device=scores.device)
    summed.scatter_add_(1, flat_root.reshape(B, -1), scores.reshape(B, -1))
    out = torch.where(redundant, scores, summed.view(B, T, P))
    return out, redundant.clone(), root


def effective_floor(floor: int, k: int, num_frames: int, share: float = 1.0) -> int:
    """The per-frame floor actually enforced: floor picks (floor x frames) use at most `share` of the
    budget k, so the budget (and the global choice) always wins."""
    if num_frames <= 0:
        return 0
    return max(0, min(floor, int(share * k + 1e-9) // num_frames))


def select_tokens(
    scores: torch.Tensor,
    k: int,
    frame_id: torch.Tensor | None = None,
    num_frames: int = 1,
    floor: int = 0,
    excluded: torch.Tensor | None = None,
    forced: torch.Tensor | None = None,
    floor_share: float = 1.0,
) -> torch.Tensor:
    """Global top-k over all frames and positions, with a per-frame floor.

    scores:   (B, M) float, higher is kept first
    k:        tokens to keep per sample, 0 <= k <= M
    frame_id: (B, M) long frame of each token (None: one frame)
    floor:    minimum tokens per frame; capped by `effective_floor` (floor picks <= floor_share * k)
    excluded: (B, M) bool, only chosen once every non-excluded token is taken
    forced:   (B, M) bool, taken first (e.g. CLS tokens); capped at k by score
    returns   (B, k) long indices into M, ascending (original order)
    Ties are broken by position (earlier first), so the result is deterministic.
    """
    B, M = scores.shape
    if not 0 <= k <= M:
        raise ValueError(f"select_tokens: k={k} must be in [0, {M}]")
    device = scores.device
    if k == 0:
        return torch.zeros(B, 0, dtype=torch.long, device=device)
    if k == M:
        return torch.arange(M, device=device).expand(B, M).clone()
    s = scores.float().clone()
    s = torch.nan_to_num(s, nan=float("-inf"))
    # tiers: forced (3) > floor picks (2) > normal (1) > excluded (0); within a tier by score
    tier = torch.ones(B, M, device=device)
    if excluded is not None:
        tier = torch.where(excluded, torch.zeros_like(tier), tier)
    f = effective_floor(floor, k, num_frames, floor_share) if frame_id is not None else 0
    if f > 0:
        # the f best non-excluded tokens of every frame
        order = _stable_desc(s, tier)  # rank by (tier, score, position)
        rank_in_frame = torch.zeros(B, M, dtype=torch.long, device=device)
        fid_sorted = frame_id.gather(1, order)
        onehot = torch.nn.functional.one_hot(fid_sorted, num_frames)  # (B, M, T)
        running = onehot.cumsum(dim=1) - onehot
        rank_sorted = (running * onehot).sum(-1)
        rank_in_frame.scatter_(1, order, rank_sorted)
        tier = torch.where(rank_in_frame < f, torch.full_like(tier, 2.0), tier)
    if forced is not None:
        tier = torch.where(forced, torch.full_like(tier, 3.0), tier)
    order = _stable_desc(s, tier)
    kept = order[:, :k]
    return kept.sort(dim=1).values


def _stable_desc(scores: torch.Tensor, tier: torch.Tensor) -> torch.Tensor:
    """Indices sorting by (tier desc, score desc, position asc)."""
    B, M = scores.shape
    # stable sort by score (keeps position order among equal scores), then stable sort by tier
    o = torch.argsort(-scores, dim=1, stable=True)
    t = tier.gather(1, o)
    o2 = torch.argsort(-t, dim=1, stable=True)
    return o.gather(1, o2)


def rank_adaptive_count(num_current: int, rank: torch.Tensor, lam: float, minimum: int = 1, rule: str = "lambda",
                        scale: float = 1.0, bias: float = 0.0) -> int:
    """SparseVLM rank-adaptive count of a stage with N = num_current visual tokens.

    rule 'lambda' (the paper): prune round(lam * (N - rank)) tokens.
    rule 'linear' (the v1 release code): keep min(int(rank * scale + bias), N - 1).
    rule 'rank'   (the seed's video branch): keep rank tokens; all N when rank >= N.
    rank: (B,) rank of each sample's relevance matrix. All samples of a batch keep the same count: the
    largest kept count of the batch (no sample loses more than its own rule allows).
    returns an int in [minimum, num_current].
    """
    r = rank.double()
    if rule == "lambda":
        keep = num_current - torch.round(lam * (num_current - r)).clamp(min=0)
    elif rule == "linear":
        keep = torch.floor(r * scale + bias).clamp(max=num_current - 1)
    elif rule == "rank":
        keep = torch.where(r >= num_current, torch.full_like(r, num_current), r)
    else:
        raise ValueError(f"rank_adaptive_count: unknown rule {rule!r}")
    return int(keep.long().max().clamp(min=minimum, max=num_current).item())


def rank_count_warning(count: int, rank: torch.Tensor, layer: int, num_frames: int, num_visual: int,
                       lam: float) -> str | None:
    """Message when a rank-adaptive stage keeps a degenerate count, else None.

    Degenerate: fewer kept tokens than frames, or fewer than 1 % of the visual tokens. The count is
    still used (it is the rule the user asked for); the message names the count, the rank, the layer
    and the fix.
    """
    if count >= num_frames and count >= 0.01 * num_visual:
        return None
    r = int(rank.max().item()) if rank.numel() else 0
    return (
        f"videosparse: the rank-adaptive stage at layer {layer} keeps {count} of {num_visual} visual tokens "
        f"({num_frames} frames): relevance rank {r}, rank_lambda {lam:g} prunes round(lambda x (N - rank)). "
        f"Use a fixed budget (e.g. budget=0.1 / --budget 0.1) or a smaller rank_lambda (0.5 keeps about "
        f"half per stage)."
    )
