"""Rater -> visual relevance from query/key rows (works with any attention backend).

Only the rater rows of a layer's attention are computed: softmax(q_r . k^T * scale) in float32 with
causal and padding masks. No N x N map is ever built for SparseVLM-style scoring.
Pure tensor code: no transformers, no modules, no I/O.
"""

from __future__ import annotations

import math

import torch


def repeat_kv(k: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, Hkv, N, d) -> (B, Hkv * n_rep, N, d), head h uses kv head h // n_rep."""
    if n_rep == 1:
        return k
    B, H, N, d = k.shape
    return k[:, :, None].expand(B, H, n_rep, N, d).reshape(B, H * n_rep, N, d)


def rater_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    query_pos: torch.Tensor,
    key_valid: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Attention probabilities of a few query rows over all keys.

    q:         (B, H, R, d) post-rotary queries of the rater rows
    k:         (B, Hkv, N, d) post-rotary keys (H % Hkv == 0; grouped-query heads are repeated)
    query_pos: (B, R) long, index of each query row in the key sequence (causal: key j <= query_pos)
    key_valid: (B, N) bool, False for padding keys
    returns    (B, H, R, N) float32; rows of padded raters (query_pos < 0) are all zeros
    """
    B, H, R, d = q.shape
    k = repeat_kv(k, H // k.shape[1])
    logits = torch.einsum("bhrd,bhnd->bhrn", q.float(), k.float()) * scale
    N = k.shape[2]
    keys = torch.arange(N, device=q.device)
    allowed = (keys[None, None, :] <= query_pos[:, :, None]) & key_valid[:, None, :]  # (B, R, N)
    logits = logits.masked_fill(~allowed[:, None], float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.nan_to_num(probs, nan=0.0)


def received_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    key_valid: torch.Tensor,
    scale: float,
    chunk: int | None = None,
) -> torch.Tensor:
    """FastV criterion: mean attention each key receives from every (valid) query row.

    q: (B, H, N, d), k: (B, Hkv, N, d), key_valid: (B, N) bool.
    Computed in row chunks so memory is O(chunk * N) per head, not O(N^2): by default at most 256 rows and
    about 2^21 attention weights (8 MB in float32) per chunk.
    returns (B, N) float32
    """
    B, H, N, d = q.shape
    if chunk is None:
        chunk = max(16, min(256, (1 << 21) // max(1, B * H * N)))
    k = repeat_kv(k, H // k.shape[1]).float()
    total = torch.zeros(B, N, dtype=torch.float32, device=q.device)
    keys = torch.arange(N, device=q.device)
    for s in range(0, N, chunk):
        e = min(N, s + chunk)
        rows = torch.arange(s, e, device=q.device)
        logits = torch.einsum("bhrd,bhnd->bhrn", q[:, :, s:e].float(), k) * scale
        allowed = (keys[None, :] <= rows[:, None])[None] & key_valid[:, None, :]
        logits = logits.masked_fill(~allowed[:, None], float("-inf"))
        probs = torch.nan_to_num(torch.softmax(logits, dim=-1), nan=0.0)
        probs = probs * key_valid[:, s:e][:, None, :, None]  # padded query rows do not vote
        total += probs.mean(dim=1).sum(dim=1)
    n_valid = key_valid.sum(dim=1, keepdim=True).clamp(min=1)
    return total / n_valid


def rope_gravity(max_distance: int, inv_freq: torch.Tensor) -> torch.Tensor:
    """RoPE long-term-decay weight g(delta) for delta = 0..max_distance (g(0) = 1).

    g(delta) = mean_j | (1/(j+1)) * sum_{i<=j} exp(1j * delta * theta_i) |, the normalised bound of
    RoFormer's long-term decay (Su et al. 2021, eq. 36). Dividing attention by g removes the
    positional preference of RoPE for nearby keys (SparseVLM v2's "gravity correction").

    inv_freq: (d/2,) rotary frequencies. returns (max_distance + 1,) float32.
    """
    delta = torch.arange(max_distance + 1, dtype=torch.float64, device=inv_freq.device)
    ang = delta[:, None] * inv_freq.double()[None, :]
    re = torch.cumsum(torch.cos(ang), dim=1)
    im = torch.cumsum(torch.sin(ang), dim=1)
    counts = torch.arange(1, inv_freq.numel() + 1, dtype=torch.float64, device=inv_freq.device)
    mag = torch.sqrt(re**2 + im**2) / counts
    return mag.mean(dim=1).float()


def rope_gravity_official(max_distance: int, inv_freq: torch.Tensor) -> torch.Tensor:
    """The seed's (SparseVLM v2) RoPE "gravity" factor: rotary(ones, m) . rotary(ones, n) / sqrt(d).

    For an all-ones head vector each rotary pair contributes 2 cos(delta x theta_i), so the factor is
    2 sum_i cos(delta x theta_i) / sqrt(d) with d = 2 x len(inv_freq): sqrt(d) at distance 0, but it
    oscillates and is <= 0 at some distances (dividing attention by it then flips or explodes the
    score). Kept as an option for fidelity; `rope_gravity` is the bounded alternative.
    returns (max_distance + 1,) float32
    """
    delta = torch.arange(max_distance + 1, dtype=torch.float64, device=inv_freq.device)
    d = 2 * inv_freq.numel()
    g = 2.0 * torch.cos(delta[:, None] * inv_freq.double()[None, :]).sum(dim=1) / math.sqrt(d)
    return g.float()


def visual_scores(
    probs: torch.Tensor,
    rater_valid: torch.Tensor,
    visual_idx: torch.Tensor,
    head_agg: str = "mean",
    priority_heads: int = 8,
    gravity: torch.Tensor | None = None,
    query_pos: torch.Tensor | None = None,
    key_pos: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reduce rater rows to one relevance score per visual token.

    probs:       (B, H, R, N) float32 from `rater_attention`
    rater_valid: (B, R) bool (raters padded to a common R)
    visual_idx:  (B, M) long, positions of the visual tokens in the key sequence
    head_agg:    'mean' over heads, or 'priority': mean over the `priority_heads` heads with the
                 largest rater->visual attention mass (per sample)
    gravity:     optional (Dmax+1,) RoPE decay table; scores are divided by g(|qpos - kpos|) using
                 the RoPE positions `query_pos` (B, R) and `key_pos` (B, M)
    returns      (B, M) float32
    """
    B, H, R, N = probs.shape
    idx = visual_idx[:, None, None, :].expand(B, H, R, visual_idx.shape[1])
    vis = probs.gather(3, idx)  # (B, H, R, M)
    if gravity is not None:
        if query_pos is None or key_pos is None:
            raise ValueError("visual_scores: gravity needs query_pos and key_pos")
        dist = (query_pos[:, :, None] - key_pos[:, None, :]).abs().clamp(max=gravity.numel() - 1)
        vis = vis / gravity[dist][:, None]
    rmask = rater_valid[:, None, :, None].float()
    if head_agg == "priority":
        mass = (vis * rmask).sum(dim=(2, 3))  # (B, H)
        h = min(priority_heads, H)
        top = mass.topk(h, dim=1).indices  # (B, h)
        vis = vis.gather(1, top[:, :, None, None].expand(B, h, R, vis.shape[3]))
    elif head_agg != "mean":
        raise ValueError(f"visual_scores: unknown head_agg {head_agg!r}")
    per_rater = vis.mean(dim=1)  # (B, R, M)
    n = rater_valid.sum(dim=1, keepdim=True).clamp(min=1).float()
    return (per_rater * rater_valid[:, :, None]).sum(dim=1) / n


def relevance_rank(probs: torch.Tensor, rater_valid: torch.Tensor, visual_idx: torch.Tensor) -> torch.Tensor:
    """Rank of the rater x visual relevance matrix (heads averaged), per sample (SparseVLM v1 / video).

    probs: (B, H, R, N); rater_valid: (B, R); visual_idx: (B, M). returns (B,) long.
    The attention is float32, so singular values below float32 rounding are not rank: the tolerance is
    max(R, M) x float32 eps x the largest singular value (the float32 ``matrix_rank`` default the seed
    relies on), applied to singular values computed in float64. Two raters with the same query (their
    rows proportional up to float32 noise) add one to the rank, not two.
    """
    B, H, R, N = probs.shape
    idx = visual_idx[:, None, None, :].expand(B, H, R, visual_idx.shape[1])
    rel = probs.gather(3, idx).float().mean(dim=1).double()  # (B, R, M)
    eps = torch.finfo(torch.float32).eps
    out = []
    for b in range(B):
        m = rel[b][rater_valid[b]]
        if not m.numel():
            out.append(0)
            continue
        sv = torch.linalg.svdvals(m)
        tol = max(m.shape) * eps * sv.max()
        out.append(int((sv > tol).sum().item()))
    return torch.tensor(out, dtype=torch.long, device=probs.device)


def softmax_scale(head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim)
