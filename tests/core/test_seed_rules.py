"""Seed-fidelity rules of the core: the official recycling rule, the rank rules, the official gravity factor,
and the two defects found against the official code (DPC-KNN tie-break, float32 rank noise).

The slow references below are written from the published rule in plain Python/numpy loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from videosparse.config import seed_recycle_counts
from videosparse.core.budget import rank_adaptive_count
from videosparse.core.recycle import dpc_knn
from videosparse.core.scores import rater_attention, relevance_rank, rope_gravity, rope_gravity_official
from videosparse.core.select import run_stage


# ----------------------------------------------------------------------------- defects (failed before the fix)
def test_dpc_knn_identical_densest_points_do_not_both_become_centers():
    # group A holds two identical points (the densest spot); groups B and C are far away
    g = torch.Generator().manual_seed(0)
    a = torch.randn(1, 6, generator=g)
    A = torch.cat([a, a, a + 0.3 * torch.randn(4, 6, generator=g)])
    B = torch.randn(5, 6, generator=g) * 0.3 + 8
    C = torch.randn(5, 6, generator=g) * 0.3 - 8
    x = torch.cat([A, B, C])[None]
    for include_self in (False, True):
        centers, labels = dpc_knn(x, 3, k=3, include_self=include_self)
        c = set(centers[0].tolist())
        assert not {0, 1} <= c, "both copies of the densest point became centers"
        # one center per group, so every group is its own cluster
        assert len(c & set(range(6))) == 1 and len(c & set(range(6, 11))) == 1 and len(c & set(range(11, 16))) == 1
        assert len(set(labels[0, :6].tolist())) == 1 and len(set(labels[0].tolist())) == 3


def test_relevance_rank_ignores_float32_noise_of_a_repeated_query():
    # three raters; raters 1 and 2 have the same query at different positions, so (one head) their attention
    # rows over the visual keys are proportional (different causal denominators) up to float32 rounding -> rank 2
    g = torch.Generator().manual_seed(1)
    H, N, d = 1, 40, 16
    k = torch.randn(1, H, N, d, generator=g)
    q = torch.randn(1, H, 3, d, generator=g)
    q[:, :, 2] = q[:, :, 1]
    qpos = torch.tensor([[36, 37, 39]])
    probs = rater_attention(q, k, qpos, torch.ones(1, N, dtype=torch.bool), 0.25)
    vis = torch.arange(2, 34)[None]
    assert int(relevance_rank(probs, torch.ones(1, 3, dtype=torch.bool), vis)[0]) == 2
    # a float64 rank with float64 tolerance counts the float32 noise (what the old code did)
    rel = probs[0][:, :, vis[0]].mean(0).double()
    assert int(torch.linalg.matrix_rank(rel)) == 3


# ----------------------------------------------------------------------------- rules
def test_seed_recycle_counts_rule():
    assert seed_recycle_counts(0) == (0, 0)
    assert seed_recycle_counts(1) == (1, 1)
    assert seed_recycle_counts(2048) == (615, 62)  # Video-LLaVA at rank 8: 2056 - 8 pruned
    assert seed_recycle_counts(276) == (83, 9)
    n = 2048
    assert seed_recycle_counts(n) == (int(0.3 * n) + 1, int((int(0.3 * n) + 1) / 10) + 1)


@pytest.mark.parametrize("rule,scale,bias,rank,n,expect", [
    ("rank", 1, 0, 8, 2056, 8), ("rank", 1, 0, 2056, 2056, 2056), ("rank", 1, 0, 3000, 2056, 2056),
    ("linear", 13.5, 0, 8, 2056, 108), ("linear", 9, 6, 8, 2056, 78), ("linear", 0.8, 0, 8, 2056, 6),
    ("linear", 13.5, 0, 200, 2056, 2055), ("lambda", 1, 0, 8, 100, 54),
])
def test_rank_adaptive_rules(rule, scale, bias, rank, n, expect):
    got = rank_adaptive_count(n, torch.tensor([rank]), 0.5, rule=rule, scale=scale, bias=bias)
    assert got == expect


def test_official_gravity_factor_and_its_flaw_on_a_video_llava_prompt():
    # Video-LLaVA-7B: head dim 128, rope theta 10000; a prompt of ~2,116 positions
    inv = 1.0 / (10000 ** (torch.arange(0, 128, 2, dtype=torch.int64).float() / 128))
    g = rope_gravity_official(2115, inv)
    # definition: rotary(ones, m) . rotary(ones, n) / sqrt(d), computed the long way at a few distances
    d = 128
    for delta in (0, 1, 17, 900, 2115):
        def rot(pos):
            ang = pos * inv.double()
            c, s = torch.cat([ang.cos(), ang.cos()]), torch.cat([ang.sin(), ang.sin()])
            x = torch.ones(d, dtype=torch.float64)
            return x * c + torch.cat([-x[d // 2:], x[: d // 2]]) * s
        assert g[delta].item() == pytest.approx((rot(delta + 5.0) @ rot(5.0)).item() / math.sqrt(d), abs=1e-3)
    assert g[0].item() == pytest.approx(math.sqrt(128), rel=1e-6)
    assert int((g <= 0).sum()) == 16
    assert int(((g > 0) & (g < g[0] / 10)).sum()) == 329
    assert int((g.abs() < g[0] / 10).sum()) == 345
    bounded = rope_gravity(2115, inv)
    assert bool((bounded > 0).all()) and bounded[0].item() == pytest.approx(1.0)


# ----------------------------------------------------------------------------- slow reference of the seed rule
def ref_seed_stage(scores: np.ndarray, hidden: np.ndarray, k: int):
    """The official video-branch stage, written from the rule: top-k kept; the top int(0.3 n) + 1 pruned by
    score are clustered by DPC-KNN (distance ||xi - xj|| / sqrt(C); density exp(-mean squared distance to the
    c nearest, itself included); delta = distance to the nearest denser point, the maximum distance for the
    densest; centers = top c of density x delta; each point joins its nearest center) into int(n_c / 10) + 1
    clusters; merged token = cluster mean; sequence = kept tokens (ascending) then merged tokens (center order)."""
    M, C = hidden.shape
    order = sorted(range(M), key=lambda i: (-scores[i], i))
    kept = sorted(order[:k])
    pruned = order[k:]
    n = len(pruned)
    n_c = int(0.3 * n) + 1
    c = int(n_c / 10) + 1
    cand = sorted(pruned[:n_c])
    x = hidden[cand].astype(np.float64)
    dist = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1)) / math.sqrt(C)
    dens = np.array([math.exp(-np.mean(np.sort(dist[i])[:c] ** 2)) for i in range(n_c)])
    delta = []
    for i in range(n_c):
        higher = [dist[i, j] for j in range(n_c) if dens[j] > dens[i] or (dens[j] == dens[i] and j < i)]
        delta.append(min(higher) if higher else dist.max())
    score = [dens[i] * delta[i] for i in range(n_c)]
    centers = sorted(range(n_c), key=lambda i: (-score[i], i))[:c]
    labels = [int(np.argmin([dist[i, cc] for cc in centers])) for i in range(n_c)]
    for ci, cc in enumerate(centers):
        labels[cc] = ci
    merged = np.stack([x[[i for i in range(n_c) if labels[i] == ci]].mean(0) for ci in range(c)])
    return kept, [cand[cc] for cc in centers], merged


@pytest.mark.parametrize("M,k,D", [(2056, 8, 16), (296, 30, 8), (60, 59, 4), (120, 1, 8)])
def test_seed_recycling_stage_matches_slow_reference(M, k, D):
    g = torch.Generator().manual_seed(M + k)
    hidden = torch.randn(1, M, D, generator=g)
    scores = torch.rand(1, M, generator=g)
    frame_id = torch.zeros(1, M, dtype=torch.long)
    res = run_stage(scores, hidden, k, frame_id, 1, recycle_tokens=True, recycle_ratio=0.3,
                    recycle_cluster_ratio=0.1, recycle_rule="seed", recycle_place="after")
    kept, centers, merged = ref_seed_stage(scores[0].double().numpy(), hidden[0].double().numpy(), k)
    n_c, c = seed_recycle_counts(M - k)
    assert res.keep.shape[1] == k + c  # merged tokens on top of the kept count
    assert res.ids[0].tolist() == kept + centers  # kept ascending, then merged in center order
    assert res.merged[0].tolist() == [False] * k + [True] * c
    assert res.keep[0].tolist() == sorted(kept + centers)  # the slots stay in sequence order
    assert np.allclose(res.hidden[0, :k].numpy(), hidden[0, kept].numpy())
    assert np.allclose(res.hidden[0, k:].double().numpy(), merged, atol=1e-5)
    # cluster ids point at the slot of the member's merged token
    for j in range(c):
        assert int(res.clusters[0, centers[j]]) == k + j


def test_seed_recycling_center_placement_keeps_slots_and_ids_equal():
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(2, 100, 8, generator=g)
    scores = torch.rand(2, 100, generator=g)
    res = run_stage(scores, hidden, 20, torch.zeros(2, 100, dtype=torch.long), 1, recycle_tokens=True,
                    recycle_rule="seed", recycle_place="center")
    assert res.keep.shape == (2, 20 + seed_recycle_counts(80)[1])
    assert torch.equal(res.keep, res.ids) and bool((res.keep[:, 1:] > res.keep[:, :-1]).all())
