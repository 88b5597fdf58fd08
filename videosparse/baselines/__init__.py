"""Text-agnostic baselines that go through the same selection machinery as the core.

Each returns scores (B, M) over the current visual tokens; selection (global top-k, floor) is shared.
FastV's criterion (mean attention received from every query row) lives in
`videosparse.core.scores.received_attention` because it needs query/key rows like the core.
"""

from __future__ import annotations

import torch


def random_scores(orig_idx: torch.Tensor, num_visual: int, seed: int) -> torch.Tensor:
    """Seeded random scores, reproducible per sample regardless of its position in a batch.

    orig_idx: (B, M) original visual index of each current token. returns (B, M) float32.
    """
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    table = torch.rand(num_visual, generator=g)  # one fixed random score per original visual token
    return table.to(orig_idx.device)[orig_idx]


def uniform_scores(orig_idx: torch.Tensor, count: int) -> torch.Tensor:
    """Scores that make top-`count` pick tokens evenly spread over the current sequence.

    Token i of M gets score 1 if it is the nearest token to one of `count` evenly spaced slots
    (i = floor((j + 0.5) * M / count)), else a small score decreasing with the distance to the nearest
    slot, so ties never decide. returns (B, M) float32.
    """
    B, M = orig_idx.shape
    dev = orig_idx.device
    if count <= 0:
        return torch.zeros(B, M, device=dev)
    slots = ((torch.arange(count, device=dev, dtype=torch.float64) + 0.5) * M / count).floor().long().clamp(max=M - 1)
    pos = torch.arange(M, device=dev)
    # distance to the nearest slot (slots ascend): the slot at or after each position, or the one before it
    right = torch.searchsorted(slots, pos).clamp(max=count - 1)
    left = (right - 1).clamp(min=0)
    dist = torch.minimum((slots[right] - pos).abs(), (pos - slots[left]).abs()).float()
    s = 1.0 / (1.0 + dist)
    return s.expand(B, M).clone()
