"""Every core function against a slow, obvious reference implementation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from videosparse.baselines import random_scores, uniform_scores
from videosparse.core.budget import (
    apply_temporal,
    effective_floor,
    rank_adaptive_count,
    select_tokens,
    temporal_redundancy,
)
from videosparse.core.raters import select_raters, text_relevance
from videosparse.core.recycle import dpc_knn, merge_clusters, recycle_count
from videosparse.core.scores import (
    rater_attention,
    received_attention,
    relevance_rank,
    rope_gravity,
    visual_scores,
)
from videosparse.core.select import run_stage


# ----------------------------------------------------------------------------- raters
def ref_raters(vis, txt, valid, mode):
    B = vis.shape[0]
    out = torch.zeros(valid.shape, dtype=torch.bool)
    for b in range(B):
        idx = [t for t in range(txt.shape[1]) if valid[b, t]]
        if not idx:
            continue
        if mode == "all":
            out[b, idx] = True
            continue
        if mode == "last":
            out[b, idx[-1]] = True
            continue
        rel = []
        for t in idx:
            acc = 0.0
            for v in range(vis.shape[1]):
                logits = [float(vis[b, v] @ txt[b, u]) for u in idx]
                m = max(logits)
                den = sum(math.exp(x - m) for x in logits)
                acc += math.exp(float(vis[b, v] @ txt[b, t]) - m) / den
            rel.append(acc / vis.shape[1])
        mean = sum(rel) / len(rel)
        chosen = [t for t, r in zip(idx, rel) if r > mean] or idx
        out[b, chosen] = True
    return out


@pytest.mark.parametrize("mode", ["sparsevlm", "last", "all"])
def test_select_raters_matches_reference(mode):
    g = torch.Generator().manual_seed(0)
    vis = torch.randn(3, 7, 5, generator=g, dtype=torch.float64)
    txt = torch.randn(3, 6, 5, generator=g, dtype=torch.float64)
    valid = torch.ones(3, 6, dtype=torch.bool)
    valid[1, 4:] = False
    valid[2, 0] = False
    got = select_raters(vis, txt, valid, mode)
    assert torch.equal(got, ref_raters(vis, txt, valid, mode))
    assert not (got & ~valid).any()
    assert got.any(dim=1).all()


def test_raters_equal_relevance_falls_back_to_all_valid():
    vis = torch.zeros(1, 4, 3)
    txt = torch.ones(1, 5, 3)
    valid = torch.tensor([[True, True, False, True, True]])
    assert torch.equal(select_raters(vis, txt, valid), valid)
    assert torch.allclose(text_relevance(vis, txt, valid).sum(), torch.tensor(1.0))


# ----------------------------------------------------------------------------- scores
def ref_rows(q, k, qpos, kvalid, scale):
    B, H, R, d = q.shape
    Hkv, N = k.shape[1], k.shape[2]
    out = torch.zeros(B, H, R, N, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            kh = k[b, h // (H // Hkv)].double()
            for r in range(R):
                if qpos[b, r] < 0:
                    continue
                allowed = [j for j in range(N) if j <= qpos[b, r] and kvalid[b, j]]
                if not allowed:
                    continue
                logits = torch.stack([(q[b, h, r].double() @ kh[j]) * scale for j in allowed])
                p = torch.softmax(logits, 0)
                for j, pj in zip(allowed, p):
                    out[b, h, r, j] = pj
    return out


def test_rater_attention_matches_reference_with_gqa_causal_and_padding():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 4, 3, 8, generator=g)
    k = torch.randn(2, 2, 10, 8, generator=g)
    qpos = torch.tensor([[9, 5, -1], [9, 8, 7]])
    kvalid = torch.ones(2, 10, dtype=torch.bool)
    kvalid[1, :3] = False  # left padding
    got = rater_attention(q, k, qpos, kvalid, 0.35)
    ref = ref_rows(q, k, qpos, kvalid, 0.35)
    assert (got.double() - ref).abs().max() < 1e-6
    assert got[0, :, 2].abs().sum() == 0  # padded rater row


def test_received_attention_matches_full_attention_map():
    g = torch.Generator().manual_seed(2)
    q = torch.randn(2, 4, 9, 8, generator=g)
    k = torch.randn(2, 4, 9, 8, generator=g)
    kvalid = torch.ones(2, 9, dtype=torch.bool)
    kvalid[0, :2] = False
    got = received_attention(q, k, kvalid, 0.3, chunk=4)
    allpos = torch.arange(9).expand(2, 9)
    full = ref_rows(q, k, allpos, kvalid, 0.3)  # (B, H, N, N)
    full = full * kvalid[:, None, :, None]
    ref = full.mean(1).sum(1) / kvalid.sum(1, keepdim=True)
    assert (got.double() - ref).abs().max() < 1e-6


def test_rope_gravity_matches_complex_sum():
    inv = 1.0 / (10000 ** (torch.arange(0, 16, 2).double() / 16))
    g = rope_gravity(50, inv.float())
    for delta in (0, 1, 7, 50):
        acc = 0.0
        for j in range(8):
            s = sum(complex(math.cos(delta * inv[i]), math.sin(delta * inv[i])) for i in range(j + 1))
            acc += abs(s) / (j + 1)
        assert abs(g[delta].item() - acc / 8) < 1e-5
    assert g[0].item() == pytest.approx(1.0)
    assert g[50] < g[0]


@pytest.mark.parametrize("head_agg", ["mean", "priority"])
@pytest.mark.parametrize("gravity", [False, True])
def test_visual_scores_matches_reference(head_agg, gravity):
    g = torch.Generator().manual_seed(3)
    B, H, R, N = 2, 4, 3, 12
    probs = torch.rand(B, H, R, N, generator=g)
    rvalid = torch.tensor([[True, True, False], [True, True, True]])
    vis = torch.tensor([[2, 3, 4, 5, 6], [4, 5, 6, 7, 8]])
    qpos = torch.tensor([[10, 11, 0], [9, 10, 11]])
    kpos = vis.clone()
    table = rope_gravity(20, 1.0 / (10000 ** (torch.arange(0, 8, 2).float() / 8))) if gravity else None
    got = visual_scores(probs, rvalid, vis, head_agg, 2, table, qpos, kpos)
    for b in range(B):
        v = probs[b][:, :, vis[b]].clone()  # (H, R, M)
        if gravity:
            for r in range(R):
                for m in range(vis.shape[1]):
                    v[:, r, m] /= table[abs(int(qpos[b, r]) - int(kpos[b, m]))]
        if head_agg == "priority":
            mass = torch.stack([v[h][rvalid[b]].sum() for h in range(H)])
            heads = sorted(range(H), key=lambda h: -mass[h].item())[:2]
            v = v[heads]
        ref = v.mean(0)[rvalid[b]].mean(0)
        assert torch.allclose(got[b], ref, atol=1e-6)


def test_relevance_rank_and_adaptive_count():
    probs = torch.zeros(1, 1, 3, 6)
    probs[0, 0, 0, 1] = 1
    probs[0, 0, 1, 2] = 1
    probs[0, 0, 2, 2] = 1  # rows 1 and 2 identical -> rank 2
    rank = relevance_rank(probs, torch.ones(1, 3, dtype=torch.bool), torch.tensor([[0, 1, 2, 3, 4, 5]]))
    assert rank.tolist() == [2]
    assert rank_adaptive_count(6, rank, 1.0) == 2  # prune lambda*(6-2)=4
    assert rank_adaptive_count(6, rank, 0.5) == 4
    assert rank_adaptive_count(6, torch.tensor([2, 5]), 1.0) == 5  # batch keeps the larger count


# ----------------------------------------------------------------------------- temporal
def test_temporal_redundancy_and_merge_reference():
    g = torch.Generator().manual_seed(4)
    h = torch.randn(1, 4, 3, 6, generator=g)
    h[0, 1, 0] = h[0, 0, 0] * 2  # same direction -> cos 1
    h[0, 2, 0] = h[0, 1, 0] + 1e-4
    h[0, 3, 2] = h[0, 2, 2]
    red = temporal_redundancy(h, 0.99)
    ref = torch.zeros(1, 4, 3, dtype=torch.bool)
    for t in range(1, 4):
        for p in range(3):
            c = torch.nn.functional.cosine_similarity(h[0, t, p], h[0, t - 1, p], dim=0)
            ref[0, t, p] = c > 0.99
    assert torch.equal(red, ref)
    assert red[0, 1, 0] and red[0, 2, 0] and red[0, 3, 2]
    s = torch.rand(1, 4, 3, generator=g)
    d, excl, _ = apply_temporal(s, red, "discount", 0.25)
    assert torch.allclose(d, torch.where(red, s * 0.25, s)) and not excl.any()
    m, excl, root = apply_temporal(s, red, "merge")
    assert torch.equal(excl, red)
    assert m[0, 0, 0] == pytest.approx((s[0, 0, 0] + s[0, 1, 0] + s[0, 2, 0]).item())
    assert m[0, 2, 2] == pytest.approx((s[0, 2, 2] + s[0, 3, 2]).item())
    assert root[0, 2, 0] == 0 and root[0, 3, 2] == 2 and root[0, 3, 0] == 3


# ----------------------------------------------------------------------------- budget
def ref_select(scores, k, frame_id, T, floor, excluded=None, forced=None):
    B, M = scores.shape
    out = []
    f = effective_floor(floor, k, T)
    for b in range(B):
        def key(i):
            tier = 1
            if excluded is not None and excluded[b, i]:
                tier = 0
            return (tier, float(scores[b, i]), -i)
        base = {i: key(i) for i in range(M)}
        tiers = {i: base[i][0] for i in range(M)}
        if f > 0:
            for t in range(T):
                members = sorted([i for i in range(M) if frame_id[b, i] == t], key=lambda i: base[i], reverse=True)
                for i in members[:f]:
                    tiers[i] = 2
        if forced is not None:
            for i in range(M):
                if forced[b, i]:
                    tiers[i] = 3
        ranked = sorted(range(M), key=lambda i: (tiers[i], base[i][1], -i), reverse=True)
        out.append(sorted(ranked[:k]))
    return torch.tensor(out, dtype=torch.long).view(B, k)


@settings(max_examples=60, deadline=None)
@given(
    T=st.integers(1, 5), P=st.integers(1, 6), B=st.integers(1, 3), data=st.data(),
)
def test_select_tokens_matches_reference(T, P, B, data):
    M = T * P
    k = data.draw(st.integers(0, M))
    floor = data.draw(st.integers(0, 3))
    seed = data.draw(st.integers(0, 10_000))
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 4, (B, M), generator=g).float()  # many ties on purpose
    frame_id = (torch.arange(M) // P).expand(B, M)
    excluded = torch.rand(B, M, generator=g) < 0.2
    got = select_tokens(scores, k, frame_id, T, floor, excluded=excluded)
    ref = ref_select(scores, k, frame_id, T, floor, excluded)
    assert torch.equal(got, ref)
    assert got.shape == (B, k)
    if k:
        assert (got[:, 1:] > got[:, :-1]).all()  # original order, no duplicates
        f = effective_floor(floor, k, T)
        per_frame = torch.stack([(frame_id.gather(1, got) == t).sum(1) for t in range(T)], 1)
        assert (per_frame >= min(f, P)).all()


def test_effective_floor_share():
    assert effective_floor(1, 15, 8) == 1
    assert effective_floor(1, 15, 8, share=0.25) == 0  # 8 floor picks would be > 25% of 15
    assert effective_floor(1, 194, 8, share=0.25) == 1
    assert effective_floor(3, 194, 8, share=0.25) == 3 and effective_floor(7, 194, 8, share=0.25) == 6


def test_select_tokens_forced_and_errors():
    s = torch.tensor([[0.1, 0.9, 0.8, 0.2]])
    forced = torch.tensor([[True, False, False, False]])
    assert select_tokens(s, 2, forced=forced).tolist() == [[0, 1]]
    with pytest.raises(ValueError):
        select_tokens(s, 5)


# ----------------------------------------------------------------------------- recycling
def ref_dpc_knn(x, c, k):
    x = x.double().numpy()
    n, D = x.shape
    dist = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1)) / math.sqrt(D)
    kk = max(1, min(k, n - 1))
    dens = []
    for i in range(n):
        others = sorted(dist[i, j] for j in range(n) if j != i)[:kk]
        dens.append(math.exp(-np.mean(np.square(others))) + (n - i) * 1e-12)
    delta = []
    for i in range(n):
        higher = [dist[i, j] for j in range(n) if dens[j] > dens[i]]
        delta.append(min(higher) if higher else dist.max())
    score = [dens[i] * delta[i] for i in range(n)]
    centers = sorted(range(n), key=lambda i: -score[i])[:c]
    labels = [int(np.argmin([dist[i, cc] for cc in centers])) for i in range(n)]
    for ci, cc in enumerate(centers):
        labels[cc] = ci
    return set(centers), labels, centers


def test_dpc_knn_matches_reference_and_merge_is_cluster_mean():
    g = torch.Generator().manual_seed(5)
    pts = torch.cat([torch.randn(6, 4, generator=g) * 0.1 + 3, torch.randn(5, 4, generator=g) * 0.1 - 3,
                     torch.randn(4, 4, generator=g) * 0.1])
    centers, labels = dpc_knn(pts[None], 3, k=3)
    ref_centers, ref_labels, ref_order = ref_dpc_knn(pts, 3, 3)
    assert set(centers[0].tolist()) == ref_centers
    assert centers[0].tolist() == ref_order
    assert labels[0].tolist() == ref_labels
    # three well separated blobs -> three clusters matching the blobs
    assert len(set(labels[0, :6].tolist())) == 1 and len(set(labels[0, 6:11].tolist())) == 1
    merged = merge_clusters(pts[None], labels, 3)
    for ci in range(3):
        assert torch.allclose(merged[0, ci], pts[labels[0] == ci].mean(0), atol=1e-6)


def test_recycle_count_rules():
    assert recycle_count(100, 100, 0.3, 0.1) == 0
    assert recycle_count(100, 1, 0.3, 0.1) == 0
    assert recycle_count(1000, 100, 0.3, 0.1) == 27
    assert recycle_count(1000, 20, 1.0, 1.0) == 19  # at least one real token stays


@pytest.mark.parametrize("count", [1, 2, 7, 17, 35, 47])
@pytest.mark.parametrize("recycle", [False, True])
def test_run_stage_keeps_exact_count(count, recycle):
    g = torch.Generator().manual_seed(count)
    B, T, P, D = 2, 4, 12, 8
    M = T * P
    hidden = torch.randn(B, M, D, generator=g)
    scores = torch.rand(B, M, generator=g)
    frame_id = (torch.arange(M) // P).expand(B, M)
    res = run_stage(scores, hidden, count, frame_id, T, grid_shape=(T, P), frame_floor=1, temporal_tau=0.5,
                    recycle_tokens=recycle, recycle_ratio=0.5, recycle_cluster_ratio=0.5)
    assert res.keep.shape == (B, count) and res.hidden.shape == (B, count, D)
    assert (res.keep[:, 1:] > res.keep[:, :-1]).all()
    expected_c = min(recycle_count(M, count, 0.5, 0.5), max(0, count - effective_floor(1, count, T) * T))
    if recycle and expected_c > 0:
        assert res.merged.sum(1).eq(expected_c).all()
        # every merged token is the mean of its cluster members
        for b in range(B):
            for slot in res.merged[b].nonzero()[:, 0].tolist():
                members = (res.clusters[b] == slot).nonzero()[:, 0]
                assert len(members) >= 1
                assert torch.allclose(res.hidden[b, slot], hidden[b, members].mean(0), atol=1e-5)
                assert res.keep[b, slot].item() in members.tolist()  # placed at its center
    else:
        assert not res.merged.any()
        assert torch.equal(res.hidden, hidden.gather(1, res.keep[:, :, None].expand(B, count, D)))
    if count >= T:
        per_frame = torch.stack([((res.keep // P) == t).sum(1) for t in range(T)], 1)
        assert (per_frame >= 1).all()


# ----------------------------------------------------------------------------- baselines
def test_uniform_and_random_scores():
    idx = torch.arange(40).expand(2, 40)
    u = uniform_scores(idx, 8)
    kept = select_tokens(u, 8)
    assert kept[0].tolist() == [int((j + 0.5) * 40 / 8) for j in range(8)]
    r1 = random_scores(idx[:1], 40, seed=3)
    r2 = random_scores(idx, 40, seed=3)
    assert torch.equal(r1[0], r2[1])  # per-sample reproducible regardless of batch
    assert not torch.equal(random_scores(idx[:1], 40, seed=4), r1)


def test_dpc_knn_masked_path_equals_fast_path_and_ignores_invalid():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 30, 8, generator=g)
    c1, l1 = dpc_knn(x, 4, k=5)
    c2, l2 = dpc_knn(x, 4, k=5, valid=torch.ones(2, 30, dtype=torch.bool))
    assert torch.equal(c1, c2) and torch.equal(l1, l2)
    valid = torch.ones(2, 30, dtype=torch.bool)
    valid[:, 20:] = False
    c3, l3 = dpc_knn(x, 4, k=5, valid=valid)
    c4, l4 = dpc_knn(x[:, :20], 4, k=5)
    assert torch.equal(c3, c4) and torch.equal(l3[:, :20], l4) and (l3[:, 20:] == -1).all()


def test_uniform_scores_equal_the_nearest_slot_distance_without_an_m_by_count_matrix():
    """The scores are 1 / (1 + distance to the nearest evenly spaced slot), computed by a search over the sorted
    slots (the earlier M x count distance matrix took 157 MB at 6,272 tokens x 1,568 kept)."""
    for M in (1, 2, 3, 7, 37, 296, 2056):
        for count in sorted({1, 2, 3, M // 3 + 1, M // 2 + 1, M}):
            slots = [min(M - 1, int((j + 0.5) * M / count)) for j in range(count)]
            want = torch.tensor([1.0 / (1 + min(abs(i - s) for s in slots)) for i in range(M)])
            got = uniform_scores(torch.zeros(2, M, dtype=torch.long), count)
            assert got.shape == (2, M) and torch.equal(got[0], want) and torch.equal(got[1], want)
