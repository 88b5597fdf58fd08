"""Seed presets on the real Video-LLaVA geometry (8 frames x 257 tokens, 32 decoder layers, random weights):
per-stage token counts equal the official rule's, computed here by an independent slow reference."""

from __future__ import annotations

import pytest
import torch

from conftest import VIDEO_TOKEN, make_inputs, make_model
from videosparse import SparseConfig, sparsify
from videosparse.config import V1_RANK_RULES, V2_SCHEDULES, V15_SCHEDULES, equivalent_tokens

NV = 8 * 257


def official_counts(version: str, setting: int | None, rank: int, n: int = NV) -> list:
    """Tokens after each stage by the official code's rules (github Gumpest/SparseVLMs), from its description:
    kept k per stage, then the recycled tokens added on top: of p pruned, int(0.3 p) + 1 candidates,
    int(candidates / 10) + 1 clusters."""
    def recycled(p):
        return 0 if p <= 0 else int((int(0.3 * p) + 1) / 10) + 1

    out = []
    if version == "video":
        k = rank if n - rank > 0 else n
        return [k + recycled(n - k)]
    if version == "v1":
        scale, bias = V1_RANK_RULES[setting]
        for _ in range(4):
            k = min(int(rank * scale + bias), n - 1)
            n = k + recycled(n - k)
            out.append(n)
        return out
    table = (V15_SCHEDULES if version == "v1.5" else V2_SCHEDULES)[setting]
    for c in table:
        k = min(c, n - 1)
        n = k + (recycled(n - k) if version == "v1.5" else 0)
        out.append(n)
    return out


@pytest.fixture(scope="module")
def real_geometry():
    model = make_model("sdpa", layers=32, image_size=224, patch=14, hidden=64, heads=4, kv_heads=2, seed=3)
    inp = make_inputs(model, frames=8, questions=((9, 10, 11, 12, 13), (14, 15, 16)))
    assert int((inp["input_ids"][0] == VIDEO_TOKEN).sum()) == NV  # the real geometry: 8 x 257 video tokens
    return model, inp


def _force_rank(monkeypatch, rank):
    """relevance_rank -> `rank` for every sample, in every videosparse module that calls it (adapter or engine)."""
    import importlib
    import sys

    for mod in ("videosparse.models.video_llava", "videosparse.engine.engine"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError:
            pass
    orig = importlib.import_module("videosparse.core.scores").relevance_rank
    hit = [m for n, m in list(sys.modules.items())
           if n.startswith("videosparse") and getattr(m, "relevance_rank", None) is orig]
    assert hit, "no videosparse module calls relevance_rank"
    calls = []

    def forced(probs, rv, vis):
        calls.append(tuple(probs.shape))
        return torch.full((probs.shape[0],), rank)

    for m in hit:
        monkeypatch.setattr(m, "relevance_rank", forced)
    return calls


def _run(model, inp, cfg, rank=None, monkeypatch=None):
    calls = _force_rank(monkeypatch, rank) if rank is not None else None
    with torch.no_grad(), sparsify(model, cfg) as h:
        model(**inp)
    if calls is not None:
        assert len(calls) == len(h.trace.stages)  # the forced rank decided every stage's count
    return h.trace


def test_sparsevlm_video_at_forced_rank_8_keeps_70_tokens_and_194_equivalent(real_geometry, monkeypatch):
    model, inp = real_geometry
    cfg = SparseConfig.preset("sparsevlm-video")
    trace = _run(model, inp, cfg, rank=8, monkeypatch=monkeypatch)
    assert trace.counts == official_counts("video", None, 8) == [70]
    assert trace.equivalent_tokens == pytest.approx((2 * NV + 30 * 70) / 32) and round(trace.equivalent_tokens, 1) == 194.1
    st = trace.stages[0]
    assert st.layer == 1
    # the 8 best-scored tokens are kept (in order), then 62 merged tokens, placed after them
    for b in range(2):
        top = torch.argsort(-st.scores[b], stable=True)[:8].sort().values
        assert st.kept[b, :8].tolist() == top.tolist()
        assert st.merged[b].tolist() == [False] * 8 + [True] * 62
    # an equivalent-token budget of 194 solves to the same counts
    assert SparseConfig.preset("sparsevlm-video", budget="194eq").stage_plan(NV, 32) == [(1, 8, 62)]


@pytest.mark.parametrize("setting", [192, 128, 64])
def test_sparsevlm_v1_code_rule_counts(real_geometry, monkeypatch, setting):
    model, inp = real_geometry
    cfg = SparseConfig.preset("sparsevlm-v1", budget=setting)
    assert cfg.layers == (2, 6, 15, 19) and cfg.rank_rule == "linear"
    trace = _run(model, inp, cfg, rank=8, monkeypatch=monkeypatch)
    expected = official_counts("v1", setting, 8)
    assert trace.counts == expected
    assert trace.equivalent_tokens == pytest.approx(equivalent_tokens(NV, 32, (2, 6, 15, 19), expected))


def test_sparsevlm_v1_paper_lambda_rule_is_an_option(real_geometry, monkeypatch):
    model, inp = real_geometry
    cfg = SparseConfig.preset("sparsevlm-v1", rank_rule="lambda", rank_lambda=0.5)
    trace = _run(model, inp, cfg, rank=8, monkeypatch=monkeypatch)
    n, expected = NV, []
    for _ in range(4):
        k = n - round(0.5 * (n - 8))
        n = k + (int((int(0.3 * (n - k)) + 1) / 10) + 1)
        expected.append(n)
    assert trace.counts == expected


@pytest.mark.parametrize("version,setting", [("v1.5", 192), ("v1.5", 128), ("v1.5", 96), ("v1.5", 64),
                                             ("v2", 192), ("v2", 128), ("v2", 96), ("v2", 64)])
def test_table_presets_verbatim_counts(real_geometry, version, setting):
    model, inp = real_geometry
    cfg = SparseConfig.preset(f"sparsevlm-{version}", budget=setting)
    with torch.no_grad(), sparsify(model, cfg) as h:
        model(**inp)
    assert h.trace.counts == official_counts(version, setting, rank=0)
    if version == "v2":
        assert cfg.priority_heads == 14 and cfg.positions == "original" and not cfg.recycle


@pytest.mark.parametrize("name", ["sparsevlm-video", "sparsevlm-v1", "sparsevlm-v1.5", "sparsevlm-v2", "video",
                                  "fastv", "random", "uniform"])
def test_equivalent_budget_runs_at_the_solved_counts(real_geometry, name):
    model, inp = real_geometry
    cfg = SparseConfig.preset(name, budget="260eq")
    plan = cfg.stage_plan(NV, 32)
    with torch.no_grad(), sparsify(model, cfg) as h:
        model(**inp)
    assert h.trace.counts == [k + m for _, k, m in plan]
    assert abs(h.trace.equivalent_tokens - 260) < 2.0


def test_v2_official_gravity_runs_and_differs_from_the_bounded_one(real_geometry):
    model, inp = real_geometry
    traces = {}
    for g in ("bounded", "official", None):
        cfg = SparseConfig.preset("sparsevlm-v2", budget=192, gravity=g)
        with torch.no_grad(), sparsify(model, cfg) as h:
            model(**inp)
        traces[g] = h.trace
    assert traces["official"].counts == traces["bounded"].counts == [300, 200, 118]
    s_off, s_b, s_none = (traces[g].stages[0].scores for g in ("official", "bounded", None))
    assert not torch.allclose(s_off, s_b) and not torch.allclose(s_b, s_none)
    # first stage: every visual token is scored (no NaN: nothing is gone yet); the official factor is <= 0 at
    # some query-key distances, so some scores come out negative; the bounded factor and none keep them positive
    for s in (s_off, s_b, s_none):
        assert bool(torch.isfinite(s).all())
    assert bool((s_off < 0).any())
    assert bool((s_b > 0).all()) and bool((s_none > 0).all())
