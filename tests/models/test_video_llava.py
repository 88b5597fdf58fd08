"""The patched Video-LLaVA against the untouched model (tiny random models built from configs)."""

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


@pytest.mark.parametrize("attn", ATTN)
@pytest.mark.parametrize("layers", [(1,), (0, 2)])
def test_keep_all_matches_untouched_forward_and_generate(tiny_models, attn, layers):
    model = tiny_models[attn]
    inp = make_inputs(model, questions=QUESTIONS)
    with torch.no_grad():
        ref = model(**inp).logits
        ref_seq, ref_logits = _gen(model, inp)
        cfg = SparseConfig(budget=1.0, layers=layers, recycle=True, temporal_tau=0.9, frame_floor=1)
        with sparsify(model, cfg) as h:
            out = model(**inp).logits
            seq, logits = _gen(model, inp)
            assert h.trace.counts == [_nv(model, inp)] * len(layers)
    diff_fwd = (out - ref).abs().max().item()
    diff_gen = (logits - ref_logits).abs().max().item()
    print(f"keep-all {attn} layers={layers}: forward max|diff|={diff_fwd:.3g} generate max|diff|={diff_gen:.3g}")
    assert diff_fwd <= 1e-6 and diff_gen <= 1e-6
    assert torch.equal(seq, ref_seq)


@pytest.mark.parametrize("attn", ATTN)
def test_remove_restores_model_exactly(attn):
    model = make_model(attn, seed=3)
    inp = make_inputs(model, questions=QUESTIONS)
    decoder = model.model.language_model
    before_dict = dict(decoder.__dict__)
    hooks_before = (len(model.model._forward_pre_hooks), len(decoder._forward_pre_hooks))
    with torch.no_grad():
        ref = model(**inp).logits
        ref_seq, _ = _gen(model, inp)
        h = sparsify(model, SparseConfig.preset("video", budget=0.2, num_layers=4))
        pruned = model(**inp).logits
        assert pruned.shape[1] < ref.shape[1]
        assert "forward" in decoder.__dict__
        h.remove()
        h.remove()  # idempotent
        after = model(**inp).logits
        seq, _ = _gen(model, inp)
    assert "forward" not in decoder.__dict__
    assert "_videosparse_handles" not in decoder.__dict__
    assert set(decoder.__dict__) == set(before_dict)
    assert (len(model.model._forward_pre_hooks), len(decoder._forward_pre_hooks)) == hooks_before
    assert torch.equal(after, ref)
    assert torch.equal(seq, ref_seq)


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_rater_scores_equal_eager_attention_rows(layer):
    model = make_model("eager", seed=4)
    inp = make_inputs(model, questions=QUESTIONS)
    with torch.no_grad():
        att = model(**inp, output_attentions=True).attentions[layer]  # (B, H, N, N)
        cfg = SparseConfig(budget=0.3, layers=(layer,))
        with sparsify(model, cfg) as h:
            model(**inp)
            st = h.trace.stages[0]
    ids = inp["input_ids"]
    for b in range(ids.shape[0]):
        vis = (ids[b] == VIDEO_TOKEN).nonzero()[:, 0]
        tpos = h.trace.raters_text_positions[b]
        rpos = tpos[st.raters[b]]
        ref = att[b][:, rpos][:, :, vis].float().mean(0).mean(0)
        err = (st.scores[b] - ref).abs().max().item()
        print(f"layer {layer} sample {b}: max|score - eager rows| = {err:.2e}")
        assert err < 1e-5


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
    with torch.no_grad(), sparsify(model, SparseConfig(budget=5, layers=(1,))) as h:
        out = model(**inp, output_hidden_states=True)
    assert len(out.hidden_states) == 5
    N = inp["input_ids"].shape[1]
    # hidden_states[i] is the input of layer i: layers 0..1 see everything, layers 2.. the kept tokens
    assert [x.shape[1] for x in out.hidden_states] == [N, N, N] + [N - _nv(model, inp) + 5] * 2
    assert out.logits.shape[1] == N - _nv(model, inp) + 5


@pytest.mark.parametrize("attn", ATTN)
@pytest.mark.parametrize("preset", ["video", "sparsevlm-v1.5"])
def test_batch_with_left_padding_equals_each_sample_alone(tiny_models, attn, preset):
    model = tiny_models[attn]
    inp = make_inputs(model, questions=QUESTIONS, seed=7)
    cfg = SparseConfig.preset(preset, budget=0.2, num_layers=4)
    with torch.no_grad(), sparsify(model, cfg) as h:
        seq, _ = _gen(model, inp)
        kept_b = [s.kept for s in h.trace.stages]
        for b in range(2):
            L = int(inp["attention_mask"][b].sum())
            single = {
                "input_ids": inp["input_ids"][b : b + 1, -L:],
                "attention_mask": inp["attention_mask"][b : b + 1, -L:],
                "pixel_values_videos": inp["pixel_values_videos"][b : b + 1],
            }
            seq1, _ = _gen(model, single)
            for sb, s1 in zip(kept_b, h.trace.stages):
                assert torch.equal(sb[b], s1.kept[0])
            assert torch.equal(seq[b, -6:], seq1[0, -6:])


@pytest.mark.parametrize("attn", ATTN)
@pytest.mark.parametrize("positions", ["original", "renumber"])
def test_cached_decoding_equals_no_cache_recompute(tiny_models, attn, positions):
    model = tiny_models[attn]
    inp = make_inputs(model, questions=QUESTIONS, seed=9)
    cfg = SparseConfig(budget=0.2, layers=(0, 2), positions=positions)
    with torch.no_grad(), sparsify(model, cfg) as h:
        seq, logits = _gen(model, inp)
        kept = [s.kept for s in h.trace.stages]
        n_new = logits.shape[1]
        full = seq[:, :-1]
        mask = torch.cat([inp["attention_mask"], torch.ones(2, n_new - 1, dtype=torch.long)], 1)
        pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        with h.override_selection(kept):
            ref = model(input_ids=full, attention_mask=mask, position_ids=pos,
                        pixel_values_videos=inp["pixel_values_videos"], use_cache=False).logits
    ref = ref[:, -n_new:]
    err = (ref - logits).abs().max().item()
    print(f"cached vs no-cache ({attn}, {positions}): max|diff| = {err:.2e}")
    assert err < 1e-4


@pytest.mark.parametrize("mode", ["beam", "sample"])
def test_generate_modes_run_pruned(tiny_models, mode):
    model = tiny_models["sdpa"]
    inp = make_inputs(model, questions=QUESTIONS)
    kw = {"num_beams": 3} if mode == "beam" else {"do_sample": True, "top_k": 5}
    torch.manual_seed(0)
    with torch.no_grad():
        ref = model.generate(**inp, max_new_tokens=4, pad_token_id=0, **kw)
        torch.manual_seed(0)
        with sparsify(model, SparseConfig(budget=1.0, layers=(1,))):
            same = model.generate(**inp, max_new_tokens=4, pad_token_id=0, **kw)
        with sparsify(model, SparseConfig.preset("video", budget=0.1, num_layers=4)) as h:
            out = model.generate(**inp, max_new_tokens=4, pad_token_id=0, **kw)
    assert torch.equal(same, ref)  # keep-all is exact in every decoding mode
    assert out.shape == ref.shape
    nb = 3 if mode == "beam" else 1
    assert h.trace.stages[0].kept.shape[0] == 2 * nb


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


def test_rank_adaptive_v1_runs_and_counts_follow_rank(tiny_models):
    model = tiny_models["sdpa"]
    inp = make_inputs(model, questions=QUESTIONS)
    cfg = SparseConfig.preset("sparsevlm-v1", num_layers=4)
    with torch.no_grad(), sparsify(model, cfg) as h:
        model.generate(**inp, max_new_tokens=3, pad_token_id=0)
    counts = h.trace.counts
    assert all(a >= b for a, b in zip(counts, counts[1:]))
    assert counts[-1] < _nv(model, inp)


def test_baselines_through_same_machinery(tiny_models):
    model = tiny_models["sdpa"]
    inp = make_inputs(model, questions=QUESTIONS)
    kept = {}
    for name in ("random", "uniform", "fastv"):
        with torch.no_grad(), sparsify(model, SparseConfig.preset(name, budget=10, num_layers=4)) as h:
            model(**inp)
        kept[name] = h.trace.stages[0].kept
        assert kept[name].shape == (2, 10)
    assert torch.equal(kept["uniform"][0], kept["uniform"][1])
    assert torch.equal(kept["random"][0], kept["random"][1])  # seeded per sample, same video grid


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
            model(**text_only)  # explicitly unpruned
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
