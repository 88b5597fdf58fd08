"""Video-LLaVA beyond the family contract (tests/models/test_contract.py): budgets, floors, recycling, presets,
beam search and sampling, cached decoding, output capture, baselines and config errors (tiny random models)."""

from __future__ import annotations

import pytest
import torch

from conftest import VIDEO_TOKEN, make_inputs, make_model
from videosparse import SparseConfig, sparsify

ATTN = ["eager", "sdpa"]
QUESTIONS = ((9, 10, 11, 12, 13), (14, 15))  # different lengths -> left padding


def _gen(model, inp, **kw):
    out = model.generate(**inp, max_new_tokens=6, do_sample=False, output_logits=True,
                         return_dict_in_generate=True, pad_token_id=0, **kw)
    return out.sequences, torch.stack(out.logits, 1)


def _nv(model, inp):
    return int((inp["input_ids"][0] == VIDEO_TOKEN).sum())


def patch_core_function(monkeypatch, name, wrap):
    """Replace the core scoring function `name` (videosparse.core.scores) by wrap(original) in every videosparse
    module that imported it (the adapter or the engine, wherever the pruned prefill calls it)."""
    import importlib
    import sys

    for mod in ("videosparse.models.video_llava", "videosparse.engine.engine"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError:
            pass
    orig = getattr(importlib.import_module("videosparse.core.scores"), name)
    hit = [m for n, m in list(sys.modules.items()) if n.startswith("videosparse") and getattr(m, name, None) is orig]
    assert hit, f"no videosparse module calls {name}"
    for m in hit:
        monkeypatch.setattr(m, name, wrap(orig))


def test_full_map_scoring_equals_rater_rows(tiny_models):
    model = tiny_models["sdpa"]
    inp = make_inputs(model, questions=QUESTIONS)
    res = {}
    for impl in ("rows", "full"):
        cfg = SparseConfig.preset("sparsevlm-v2", budget=0.2, num_layers=4, score_impl=impl)
        with torch.no_grad(), sparsify(model, cfg) as h:
            model(**inp)
        res[impl] = h.trace
    for a, b in zip(res["rows"].stages, res["full"].stages):
        assert torch.equal(a.kept, b.kept)
        assert torch.allclose(a.scores.nan_to_num(-1), b.scores.nan_to_num(-1), atol=1e-6)


@pytest.mark.parametrize("preset", ["video", "sparsevlm-v1.5", "sparsevlm-v2", "fastv", "sparsevlm-v1"])
def test_selection_identical_eager_and_sdpa(tiny_models, preset):
    inp = make_inputs(tiny_models["eager"], questions=QUESTIONS)
    kept = {}
    for attn in ATTN:
        budget = {"sparsevlm-v1": None, "sparsevlm-v1.5": 0.2, "sparsevlm-v2": 0.2}.get(preset, 0.15)
        cfg = SparseConfig.preset(preset, budget=budget, num_layers=4)
        with torch.no_grad(), sparsify(tiny_models[attn], cfg) as h:
            tiny_models[attn](**inp)
        kept[attn] = [s.kept for s in h.trace.stages]
    assert len(kept["eager"]) == len(kept["sdpa"])
    for a, b in zip(kept["eager"], kept["sdpa"]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("budget_kind", ["one", "frame", "all_but_one", "frac_round", "frac_small"])
@pytest.mark.parametrize("recycle", [False, True])
def test_exact_budget_floor_text_and_order(tiny_models, budget_kind, recycle):
    model = tiny_models["sdpa"]
    inp = make_inputs(model, frames=4, questions=QUESTIONS)
    nv = _nv(model, inp)
    P = nv // 4
    budget = {"one": 1, "frame": P, "all_but_one": nv - 1, "frac_round": 0.33, "frac_small": 0.07}[budget_kind]
    expected = budget if isinstance(budget, int) else max(1, round(budget * nv))
    cfg = SparseConfig(budget=budget, layers=(1,), recycle=recycle, frame_floor=2, temporal_tau=0.8,
                       recycle_ratio=0.5, recycle_cluster_ratio=0.3, floor_share=1.0, recycle_share=1.0)
    captured = {}

    def grab(mod, args, kwargs, out):
        captured["h"] = out

    layer2 = model.model.language_model.layers[2]
    hook = layer2.register_forward_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad(), sparsify(model, cfg) as h:
            logits = model(**inp).logits
    finally:
        hook.remove()
    st = h.trace.stages[0]
    N = inp["input_ids"].shape[1]
    assert st.kept.shape == (2, expected)  # exactly the budget, recycled tokens included
    assert logits.shape[1] == N - nv + expected  # text tokens all kept
    assert captured["h"].shape[1] == N - nv + expected
    assert (st.kept[:, 1:] > st.kept[:, :-1]).all()  # original order
    per_frame = h.trace.kept_per_frame()
    assert (per_frame >= min(2, expected // 4)).all()
    assert int(per_frame.sum(1).unique().item()) == expected
    if recycle and expected not in (1, nv - 1):
        assert st.merged.any()
    assert h.trace.counts == [expected]


@pytest.mark.parametrize("budget", [8, 15, 40])
def test_floor_and_recycling_shares_cap_their_slots(tiny_models, budget):
    model = tiny_models["sdpa"]
    inp = make_inputs(model, frames=4, questions=QUESTIONS)
    cfg = SparseConfig(budget=budget, layers=(1,), frame_floor=3, floor_share=0.5, recycle=True,
                       recycle_ratio=1.0, recycle_cluster_ratio=1.0, recycle_share=0.25)
    with torch.no_grad(), sparsify(model, cfg) as h:
        model(**inp)
    st = h.trace.stages[0]
    assert st.kept.shape == (2, budget)
    assert (st.merged.sum(1) <= int(0.25 * budget)).all() and st.merged.any()
    f = min(3, int(0.5 * budget) // 4)
    assert (h.trace.kept_per_frame() >= f).all()


def test_text_tokens_never_dropped_logits_match_positions(tiny_models):
    """Logits of the pruned model line up with the kept positions: the last position is the prompt end."""
    model = tiny_models["eager"]
    inp = make_inputs(model, questions=QUESTIONS)
    with torch.no_grad():
        ref = model(**inp, output_hidden_states=True)
        with sparsify(model, SparseConfig(budget=5, layers=(1,))) as h:
            out = model(**inp, output_hidden_states=True)
            # the last kept position is the prompt's end: generate's next token is read from it
            nxt = model.generate(**inp, max_new_tokens=1, do_sample=False, pad_token_id=0)[:, -1]
    assert len(out.hidden_states) == 5
    N = inp["input_ids"].shape[1]
    nv = _nv(model, inp)
    K = N - nv + 5
    # hidden_states[i] is the input of layer i: layers 0..1 see everything, layers 2.. the kept tokens;
    # hidden_states[2] (layer 1's output) is reported whole or already pruned (see the fresh-model test below)
    shapes = [x.shape[1] for x in out.hidden_states]
    assert shapes in ([N, N, N, K, K], [N, N, K, K, K]), shapes
    assert out.logits.shape[1] == K
    # before the stage nothing differs from the untouched model
    for i in range(2):
        assert torch.allclose(out.hidden_states[i], ref.hidden_states[i], atol=1e-5), i
    kept_rows = torch.stack([torch.cat([(inp["input_ids"][b] != VIDEO_TOKEN).nonzero()[:, 0],
                                        int((inp["input_ids"][b] == VIDEO_TOKEN).nonzero()[0, 0])
                                        + h.trace.stages[0].kept[b]]).sort().values for b in range(2)])
    want = ref.hidden_states[2] if shapes[2] == N else _gather_seq(ref.hidden_states[2], kept_rows)
    assert torch.allclose(out.hidden_states[2], want, atol=1e-5)
    # after it, every text token is still there, in place: the tokens before the video (padding + prefix) see
    # only themselves (causal), so their states equal the untouched model's at every layer
    for b in range(2):
        fv = int((inp["input_ids"][b] == VIDEO_TOKEN).nonzero()[0, 0])
        pre = inp["attention_mask"][b, :fv].bool()  # the prefix (left padding excluded: its rows are arbitrary)
        assert int(pre.sum()) == 3
        for i in range(3, 5):
            assert torch.allclose(out.hidden_states[i][b, :fv][pre], ref.hidden_states[i][b, :fv][pre], atol=1e-5)
        assert torch.allclose(out.logits[b, :fv][pre], ref.logits[b, :fv][pre], atol=1e-5), b
    assert h.trace.counts == [5]
    assert torch.equal(nxt, out.logits[:, -1].argmax(-1))
    assert not torch.allclose(out.logits[:, -1], ref.logits[:, -1], atol=1e-3)


def _gather_seq(x, rows):
    return x.gather(1, rows[:, :, None].expand(*rows.shape, x.shape[-1]))


def test_output_hidden_states_do_not_depend_on_what_ran_before():
    outs = []
    model = make_model("eager", seed=0)  # fresh: transformers installs its output-capture hooks lazily
    inp = make_inputs(model, questions=QUESTIONS)
    with torch.no_grad():
        for _ in range(2):
            with sparsify(model, SparseConfig(budget=5, layers=(1,))):
                outs.append(model(**inp, output_hidden_states=True))
    first, second = outs
    assert [x.shape for x in first.hidden_states] == [x.shape for x in second.hidden_states]
    for a, b in zip(first.hidden_states, second.hidden_states):
        assert torch.allclose(a, b, atol=1e-6)


def test_preset_schedules_and_trace_counts():
    cfg = SparseConfig.preset("sparsevlm-v1.5", budget=192)
    assert [c for _, c in cfg.budget] == [300, 200, 110] and cfg.stage_layers == (2, 6, 15)
    assert cfg.stage_counts(576) == [300, 200, 110]
    assert [c for _, c in SparseConfig.preset("sparsevlm-v1.5", budget=128).budget] == [303, 110, 36]
    assert [c for _, c in SparseConfig.preset("sparsevlm-v1.5", budget=64).budget] == [66, 30, 17]
    v2 = SparseConfig.preset("sparsevlm-v2", budget=96)
    assert [c for _, c in v2.budget] == [246, 54, 28] and v2.gravity and v2.head_agg == "priority"
    assert not v2.recycle
    assert v2.priority_heads == 14 and v2.gravity == "bounded"
    # the seed's recycling adds merged tokens on top: 300 + 9, 200 + 4, 110 + 3 on 576 tokens
    assert cfg.stage_plan(576, 32) == [(2, 300, 9), (6, 200, 4), (15, 110, 3)]
    eq = cfg.equivalent_tokens(576, 32)
    assert eq == pytest.approx((3 * 576 + 4 * 309 + 9 * 204 + 16 * 113) / 32)
    # the trace of a run reports post-stage counts and equivalent tokens
    model = make_model("sdpa", layers=6, image_size=32, patch=4, seed=5)  # 65 tokens/frame
    inp = make_inputs(model, frames=8, questions=QUESTIONS)  # 520 visual tokens
    sched = SparseConfig.preset("sparsevlm-v1.5", budget=((1, 300), (2, 200), (3, 110)), num_layers=6)
    with torch.no_grad(), sparsify(model, sched) as h:
        model(**inp)
    # the seed's merged tokens come on top: 300 + 7 (of 220 pruned: 67 candidates, 7 clusters), 200 + 4, 110 + 3
    assert sched.stage_plan(520, 6) == [(1, 300, 7), (2, 200, 4), (3, 110, 3)]
    assert h.trace.counts == [307, 204, 113]
    assert h.trace.equivalent_tokens == pytest.approx((2 * 520 + 307 + 204 + 2 * 113) / 6)
    assert h.trace.stages[1].kept.shape == (2, 204)
    assert h.trace.stages[0].merged[:, 300:].all() and not h.trace.stages[0].merged[:, :300].any()
    # later stages keep a subset of earlier ones
    for b in range(2):
        assert set(h.trace.stages[2].kept[b].tolist()) <= set(h.trace.stages[1].kept[b].tolist())


def test_rank_adaptive_v1_runs_and_counts_follow_rank(tiny_models, monkeypatch):
    from videosparse.config import seed_recycle_counts
    from videosparse.core.budget import rank_adaptive_count

    model = tiny_models["sdpa"]
    inp = make_inputs(model, questions=QUESTIONS)
    cfg = SparseConfig.preset("sparsevlm-v1", num_layers=4)
    assert cfg.budget == "rank" and cfg.recycle_rule == "seed" and not cfg.clamp_counts
    ranks = []

    def spy(orig):
        def rank(*args):
            r = orig(*args)
            ranks.append(r.clone())
            return r

        return rank

    patch_core_function(monkeypatch, "relevance_rank", spy)
    with torch.no_grad(), sparsify(model, cfg) as h:
        model.generate(**inp, max_new_tokens=3, pad_token_id=0)
    counts = h.trace.counts
    assert len(ranks) == len(counts) == len(cfg.layers)  # one rank per stage, prefill only
    # each stage keeps the seed's linear rule of its measured rank (the larger of the batch), then the seed's
    # recycled tokens on top: int((int(0.3 p) + 1) / 10) + 1 of the p pruned
    n, expected = _nv(model, inp), []
    for r in ranks:
        k = min(int(int(r.max()) * cfg.rank_scale + cfg.rank_bias), n)
        assert k == rank_adaptive_count(n, r, cfg.rank_lambda, rule="linear", scale=cfg.rank_scale, bias=cfg.rank_bias)
        merged = int((int(0.3 * (n - k)) + 1) / 10) + 1 if n > k else 0
        assert merged == (seed_recycle_counts(n - k)[1] if n > k else 0)
        n = k + merged
        expected.append(n)
    assert counts == expected, (counts, expected, [r.tolist() for r in ranks])
    assert counts[-1] < _nv(model, inp)


def test_baselines_through_same_machinery(tiny_models):
    from videosparse.baselines import random_scores

    model = tiny_models["eager"]
    inp = make_inputs(model, questions=QUESTIONS)
    nv = _nv(model, inp)
    kept, traces = {}, {}
    for name in ("random", "uniform", "fastv"):
        cfg = SparseConfig.preset(name, budget=10, num_layers=4)
        assert cfg.frame_floor == 0 and cfg.temporal_tau is None and not cfg.recycle and cfg.layers == (1,)
        with torch.no_grad(), sparsify(model, cfg) as h:
            model(**inp)
        kept[name], traces[name] = h.trace.stages[0].kept, h.trace.stages[0]
        assert kept[name].shape == (2, 10)
        # the kept tokens are the 10 best of the recorded scores, in order
        assert torch.equal(kept[name], h.trace.stages[0].scores.topk(10).indices.sort(1).values), name
    # uniform: evenly spaced slots floor((j + 0.5) * nv / 10)
    assert kept["uniform"].tolist() == [[int((j + 0.5) * nv / 10) for j in range(10)]] * 2
    # random: the top 10 of the seeded per-token table, the same for every sample of the batch
    table = random_scores(torch.arange(nv)[None], nv, seed=SparseConfig.preset("random").seed)[0]
    assert kept["random"].tolist() == [table.topk(10).indices.sort().values.tolist()] * 2
    # fastv: attention received by each video token at layer 1, averaged over heads and the valid queries
    with torch.no_grad():
        att = model(**inp, output_attentions=True).attentions[1].double()  # (B, H, N, N)
    mask = inp["attention_mask"].bool()
    for b in range(2):
        vis = (inp["input_ids"][b] == VIDEO_TOKEN).nonzero()[:, 0]
        recv = att[b].mean(0)[mask[b]].sum(0) / mask[b].sum()
        assert torch.allclose(traces["fastv"].scores[b].double(), recv[vis], atol=1e-5), b


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"budget": 0}, "budget"),
        ({"budget": -3}, "budget"),
        ({"budget": 1.5}, "budget"),
        ({"budget": 0.0}, "budget"),
        ({"budget": "half"}, "budget"),
        ({"budget": [(3, 10), (2, 5)]}, "budget"),
        ({"layers": (-1,)}, "layers"),
        ({"layers": (2, 2)}, "layers"),
        ({"layers": (3, 1)}, "layers"),
        ({"method": "magic"}, "method"),
        ({"raters": "first"}, "raters"),
        ({"frame_floor": -1}, "frame_floor"),
        ({"temporal_tau": 2.0}, "temporal_tau"),
    ],
)
def test_bad_configs_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"SparseConfig.{field}"):
        SparseConfig(**kwargs)


def test_unknown_preset_and_model_dependent_errors(tiny_models):
    with pytest.raises(ValueError, match="unknown preset"):
        SparseConfig.preset("sparsevlm-v9")
    model = tiny_models["sdpa"]
    with pytest.raises(ValueError, match="SparseConfig.layers"):
        sparsify(model, SparseConfig(layers=(3,)))  # 4 layers: last usable stage is layer 2
    inp = make_inputs(model, questions=QUESTIONS)
    nv = _nv(model, inp)
    with sparsify(model, SparseConfig(budget=nv + 1)):
        with pytest.raises(ValueError, match="SparseConfig.budget"):
            model(**inp)
    text_only = {"input_ids": torch.tensor([[1, 9, 10]]), "attention_mask": torch.ones(1, 3, dtype=torch.long)}
    with sparsify(model, SparseConfig()) as h:
        with pytest.raises(ValueError, match="no video tokens"):
            model(**text_only)
        with h.disabled():
            unpruned = model(**text_only).logits  # explicitly unpruned: exactly the untouched model
    with torch.no_grad():
        assert torch.equal(unpruned, model(**text_only).logits)
    with sparsify(model, SparseConfig()):
        with pytest.raises(ValueError, match="image inputs"):
            model(**inp, pixel_values=torch.zeros(2, 3, 16, 16))
    with pytest.raises(ValueError, match="does not support model class"):
        sparsify(torch.nn.Linear(2, 2), SparseConfig())


def test_config_roundtrip_and_presets_validate():
    from videosparse.config import PRESETS

    for name in PRESETS:
        for n in (4, 8, 32):
            cfg = SparseConfig.preset(name, num_layers=n)
            assert SparseConfig.from_dict(cfg.to_dict()) == cfg
            assert all(layer <= n - 2 for layer in cfg.stage_layers)
    with pytest.raises(ValueError, match="unknown field"):
        SparseConfig.from_dict({"budgett": 3})
