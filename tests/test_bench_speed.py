"""Smoke test of scripts/bench_speed.py at a toy size, so the harness cannot rot."""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_speed_script", os.path.join(ROOT, "scripts", "bench_speed.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolve annotations through sys.modules
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop(spec.name, None)


def _check_rows(data: dict, md: str, b: int) -> dict:
    """Every configuration at kept budget ``b`` is in the JSON and the markdown table; the pre-LLM baseline keeps
    exactly ``b`` visual tokens in its cache. Returns the pre-LLM row."""
    rows = data["results"]
    text = data["seq_len"] - data["num_visual"]
    for kind in ("video", "sparsevlm-video", "sparsevlm-v1", "sparsevlm-v1.5", "sparsevlm-v2", "fastv", "pre-llm",
                 "lower-bound"):
        assert f"{kind}@{b}" in rows, (kind, b, list(rows))
        assert f"| {kind}@{b} |" in md
    p = rows[f"pre-llm@{b}"]
    assert p["counts"] == [b] and set(p["cache_lengths_after_prefill"]) == {text + b}
    return p


def test_quick_mode_keeps_the_real_token_geometry(bench):
    args = bench.parse_args(["--quick"])
    geo = bench.resolve(args)
    assert (geo.frames, geo.tokens_per_frame, geo.num_visual, geo.layers) == (8, 257, 2056, 32)
    assert 55 <= geo.seq_len - geo.num_visual <= 65
    assert geo.hidden == 128 and geo.hidden // geo.heads == 64
    assert (args.budget, args.budget5, args.repeats, args.new_tokens) == (194, 103, 1, 8)
    # equal-equivalent settings: the paper's 194, and the video preset keeping 103 tokens after layer 1
    assert (args.eq_budget, args.eq_budget2) == (194, 225)
    full = bench.parse_args([])
    bench.resolve(full)
    assert (full.repeats, full.new_tokens, full.threads) == (5, 32, 2)


def test_flops_formula(bench):
    geo = bench.TOY
    D, F, n = geo.hidden, geo.intermediate, 7
    want = 2 * n * (D * D + 2 * D * geo.kv_dim + D * D) + 2 * 2 * D * n * (n + 1) / 2 + 2 * 3 * n * D * F
    assert bench.layer_flops(n, geo) == want
    full = bench.Bench("full", "sdpa", None, "")
    text = geo.seq_len - geo.num_visual
    f = bench.prefill_flops(geo, full, [], [], 0)
    assert f["scoring"] == 0
    assert f["decoder"] == geo.layers * bench.layer_flops(geo.seq_len, geo) + 2 * D * geo.vocab
    # one stage at layer 1 keeping 3: layers 0, 1 full, the rest see 3 visual tokens
    assert bench.seen_per_layer(geo, [1], [3]) == [geo.num_visual] * 2 + [3] * (geo.layers - 2)
    f1 = bench.prefill_flops(geo, full, [1], [3], 0)
    assert f1["decoder"] == (2 * bench.layer_flops(geo.seq_len, geo)
                             + (geo.layers - 2) * bench.layer_flops(text + 3, geo) + 2 * D * geo.vocab)


def _paper_geometry(bench):
    return bench.dataclasses.replace(bench.Geometry(), hidden=64, heads=1, kv_heads=1, intermediate=176)


def test_eq_rows_on_the_real_geometry(bench):
    """Every preset gets a row per setting; an unreachable one runs at its lowest, labelled (min)."""
    from videosparse import SparseConfig

    geo = _paper_geometry(bench)
    nv, L = geo.num_visual, geo.layers
    benches = bench.configurations(geo, 194, 103, quick=True, eq_budgets=(194, 225))
    eq = {b.name: b for b in benches if b.eq is not None}
    assert set(eq) == {"video@194eq", "sparsevlm-video@194eq", "sparsevlm-v1@202.5eq(min)",
                       "sparsevlm-v1.5@202.5eq(min)", "sparsevlm-v2@194eq", "fastv@194eq",
                       "video@225eq", "sparsevlm-video@225eq", "sparsevlm-v1@225eq", "sparsevlm-v1.5@225eq",
                       "sparsevlm-v2@225eq", "fastv@225eq"}, sorted(eq)
    for name, b in eq.items():
        e = b.eq
        achieved = b.cfg.equivalent_tokens(nv, L)
        assert achieved == pytest.approx(e["planned_equivalent_tokens"])
        lo, _ = SparseConfig.preset(e["preset"], budget=e["setting"], num_layers=L).equivalent_range(nv, L)
        if e["bound"] is None:
            assert abs(achieved - e["target"]) <= 2, (name, achieved)
            assert "(min)" not in name
        else:
            assert e["bound"] == "min" and name.endswith("eq(min)") and e["target"] < lo
            assert achieved == pytest.approx(lo), (name, achieved, lo)
    # the seed's video branch at 194eq: 8 selected + 62 merged on top after layer 1
    assert [list(x) for x in eq["sparsevlm-video@194eq"].cfg.stage_plan(nv, L)] == [[1, 8, 62]]
    assert eq["fastv@194eq"].cfg.stage_counts(nv, L) == [1]
    # 225 = one stage keeping 103 after layer 1 (5 % of 2056 equivalent is unreachable after layer 1)
    assert eq["sparsevlm-video@225eq"].cfg.stage_plan(nv, L) == [(1, 42, 61)]
    assert SparseConfig(budget=103, layers=(1,)).equivalent_tokens(nv, L) == pytest.approx(225.06, abs=0.01)
    assert eq["video@225eq"].cfg.equivalent_tokens(nv, L) == pytest.approx(225, abs=1)


def test_flops_model_counts_recycling_like_the_run(bench):
    """Tokens after each stage include the merged ones (seed rule: on top), and the DPC-KNN candidates the FLOPs
    model charges are those the run clustered (seed rule int(0.3 x pruned) + 1; share rule capped)."""
    import videosparse.core.select as sel

    geo = bench.TOY
    model = bench.build_model(geo)
    inputs = bench.make_inputs(model, geo)
    enc, _ = bench.encode_video(model, inputs.pop("pixel_values_videos"))
    from videosparse import SparseConfig

    cases = [bench.eq_bench("sparsevlm-video", 30, geo), bench.eq_bench("sparsevlm-v1.5", 30, geo),
             bench.Bench("video@40", "sdpa", SparseConfig.preset("video", budget=40, num_layers=geo.layers), "")]
    seen_calls = []
    orig = sel.recycle

    def spy(*a, **k):
        out = orig(*a, **k)
        seen_calls.append((int(out[2].shape[1]), int(out[0].shape[1])))  # (candidates, clusters)
        return out

    sel.recycle = spy
    try:
        for b in cases:
            seen_calls.clear()
            with bench._ctx(model, b) as h:
                bench.prefill_and_decode(model, inputs, enc, 0)
                tr = h.trace
            fl = bench.prefill_flops(geo, b, [s.layer for s in tr.stages], tr.counts, int(tr.stages[0].raters.sum()))
            model_calls = [(s["candidates"], s["clusters"]) for s in fl["stages"] if s["clusters"]]
            assert seen_calls and model_calls == seen_calls, (b.name, model_calls, seen_calls)
            if b.eq is not None:
                assert [k + m for _, k, m in b.eq["plan"]] == tr.counts
                assert [(s["selected"], s["merged"]) for s in fl["stages"]] == [(k, m) for _, k, m in b.eq["plan"]]
                assert all(s["merged_on_top"] for s in fl["stages"])
            # the layers see the traced counts, merged tokens included: mean = the trace's equivalent tokens
            seen = fl["seen_per_layer"]
            assert sum(seen) / geo.layers == pytest.approx(tr.equivalent_tokens)
    finally:
        sel.recycle = orig
    # seed rule by hand: 74 -> 1 selected: 73 pruned, int(0.3 x 73) + 1 = 22 candidates, int(2.2) + 1 = 3 merged
    rec = bench.stage_recycling(cases[0].cfg, geo, 74, 4, (1, 3))
    assert (rec["selected"], rec["merged"], rec["candidates"], rec["clusters"]) == (1, 3, 22, 3)


def test_selection_timer_restores_functions(bench):
    import videosparse.core.select as sel
    import videosparse.engine.engine as vl

    before = (vl.run_stage, vl.rater_attention, sel.recycle)
    with bench.SelectionTimer():
        assert vl.run_stage is not before[0]
    assert (vl.run_stage, vl.rater_attention, sel.recycle) == before


def test_toy_run_end_to_end(bench, tmp_path):
    out = str(tmp_path / "speed")
    res = bench.main(["--toy", "--threads", "1", "--repeats", "2", "--new-tokens", "3",
                      "--memory-configs", "full,video@7", "--out", out])
    data = json.load(open(out + ".json"))
    md = open(out + ".md").read()
    assert data["results"].keys() == res["results"].keys()
    names = list(data["results"])
    assert names[0] == "full"
    assert (data["num_visual"], data["budget"], data["budget5"]) == (74, 7, 4)
    for want in ("video@7", "video@4", "lower-bound@7", "fastv@7", "seed-ref@7", "sparsevlm-v1", "full-eager"):
        assert want in names, names
    assert any(n.startswith("sparsevlm-v1.5@") for n in names) and any(n.startswith("sparsevlm-v2@") for n in names)
    full = data["results"]["full"]
    for name, r in data["results"].items():
        assert r["prefill"]["n"] == 2 and r["prefill"]["median"] > 0
        assert r["decode_step"]["n"] == 2 * 3
        # every ratio is the quotient of the figures it names (time ratios are reported, never bounded)
        q = r["ratios"]
        assert q["prefill_speedup"] == pytest.approx(full["prefill"]["median"] / r["prefill"]["median"], rel=1e-9)
        assert q["decode_speedup"] == pytest.approx(full["decode_step"]["median"] / r["decode_step"]["median"],
                                                    rel=1e-9)
        assert q["flops_ideal_speedup"] == pytest.approx(full["flops"]["decoder"] / r["flops"]["decoder"], rel=1e-9)
        assert q["achieved_fraction_of_ideal"] == pytest.approx(q["prefill_speedup"] / q["flops_ideal_speedup"])
        assert q["flops_ideal_speedup"] >= 1.0 and (q["flops_ideal_speedup"] == 1.0) == (r["counts"] in ([], None)
                                                                                          or name.startswith("full"))
        assert f"| {name} |" in md
    v = data["results"]["video@7"]
    assert v["counts"] == [14, 7] and v["stage_layers"] == [1, 2]  # the video preset's two stages
    assert v["flops"]["scoring"] > 0 and v["selection"]["median"] > 0
    assert "scores" in v["selection_groups_median_s"]
    # (no "recycle" group here: recycling is capped at 10 % of the budget, 0 clusters at 7 tokens)
    # pruned cache: layers after the stage hold text + kept tokens only
    text = data["seq_len"] - data["num_visual"]
    assert v["cache_lengths_after_prefill"][:2] == [data["seq_len"]] * 2
    assert v["cache_lengths_after_prefill"][2] == text + 14
    assert set(v["cache_lengths_after_prefill"][3:]) == {text + 7}
    assert data["results"]["lower-bound@7"]["flops"]["scoring"] == 0
    assert data["results"]["seed-ref@7"]["attn"] == "eager"
    # memory in fresh child processes, for the requested subset only
    for name in ("full", "video@7"):
        m = data["results"][name]["memory"]
        assert m["peak_mb"] >= m["base_mb"] > 0 and m["kv_cache_mb"] > 0 and m["delta_mb"] > 0
        ratio = data["results"][name]["ratios"]["memory_ratio"]
        assert ratio == pytest.approx(m["delta_mb"] / data["results"]["full"]["memory"]["delta_mb"], rel=1e-9)
    assert "memory" not in data["results"]["fastv@7"]
    assert data["results"]["video@7"]["memory"]["kv_cache_mb"] < data["results"]["full"]["memory"]["kv_cache_mb"]
    # equal-equivalent rows: one per preset and setting, on target or at the preset's lowest, labelled (min)
    from videosparse import SparseConfig

    assert data["eq_budgets"] == [7, 27]
    text = data["seq_len"] - data["num_visual"]
    geo = bench.TOY
    full_dec = data["results"]["full"]["flops"]["decoder"]
    for setting, target in (("7eq", 7.0), ("27eq", 27.0)):
        rows = {r["eq"]["preset"]: (n, r) for n, r in data["results"].items()
                if r.get("eq") and any(x["setting"] == setting for x in r["eq"]["settings"])}
        assert set(rows) == set(bench.EQ_PRESETS), (setting, rows.keys())
        for preset, (name, r) in rows.items():
            achieved = r["equivalent_tokens"]  # from the run's trace
            lo, _ = SparseConfig.preset(preset, budget=setting, num_layers=geo.layers).equivalent_range(
                data["num_visual"], geo.layers)
            if abs(achieved - target) > 2:
                assert name.endswith("eq(min)") and r["eq"]["bound"] == "min", (name, achieved)
                assert achieved == pytest.approx(lo) and target < lo
            assert r["eq"]["plan_matches_trace"], name
            # FLOPs-ideal speedup = decoder FLOPs of the layers' visual tokens from the trace's counts
            seen = bench.seen_per_layer(geo, r["stage_layers"], r["counts"])
            assert seen == r["visual_tokens_seen_per_layer"]
            assert sum(seen) / geo.layers == pytest.approx(achieved)
            dec = sum(bench.layer_flops(text + v, geo) for v in seen) + 2 * geo.hidden * geo.vocab
            assert r["ratios"]["flops_ideal_speedup"] == pytest.approx(full_dec / dec)
            for st in r["stages"]:
                if st["trace_candidates"] is not None:
                    assert st["trace_candidates"] == st["candidates"], (name, st)
            assert f"| {name} |" in md
    # 7eq is below every preset's lowest on the toy (layers 0-1 see all 74 tokens); 27eq is reachable by video
    assert "video@25.3eq(min)" in names and "video@27eq" in names
    assert data["results"]["sparsevlm-video@27eq"]["counts"] == [4]  # 1 selected + 3 merged on top
    assert "FLOPs-ideal at the seed's 7-equivalent setting: " in md
    sv = data["results"]["sparsevlm-video@27.3eq(min)"]
    assert f"(measured sparsevlm-video@27.3eq(min): {sv['ratios']['prefill_speedup']:.2f}x)" in md
    # provenance
    for key in ("torch", "transformers", "torch_threads", "cpu"):
        assert key in data["machine"]
    assert data["machine"]["torch_threads"] == 1
    assert "other_processes_cores" in data["load"] and "flops_formula" in data
    assert "Load:" in md and "hidden 64" in md


# ----------------------------------------------------------------------------------------- LLaVA-OneVision family
def test_ov_geometry_comes_from_the_front_end(bench):
    """Tokens per frame and the closing newline are the front end's answer about the built config, not a formula."""
    from videosparse.frontends import get_frontend

    fe = get_frontend("llava_onevision")
    for geo in (bench.OV_GEOMETRY, bench.OV_TOY):
        cfg = bench.model_config(geo)
        assert type(cfg).__name__ == "LlavaOnevisionConfig"
        assert geo.tokens_per_frame == fe.tokens_per_frame(cfg) and geo.tail_tokens == fe.tail_tokens == 1
        assert geo.seq_len == geo.prefix_tokens + geo.num_visual + 1 + geo.question_tokens
    args = bench.parse_args(["--family", "llava_onevision"])
    geo = bench.resolve(args)
    assert (geo.frames, geo.tokens_per_frame, geo.num_visual, geo.layers) == (32, 196, 6272, 28)
    assert (geo.heads, geo.kv_heads, geo.hidden // geo.heads) == (7, 1, 32)  # the 7B's 28:4 = 7:1 GQA ratio
    assert (args.budget, args.budget_high, args.eq_budget, args.eq_budget2) == (627, 1568, 592, None)
    assert (args.repeats, args.new_tokens, args.threads) == (3, 32, 2)
    quick = bench.parse_args(["--family", "llava_onevision", "--quick"])
    qgeo = bench.resolve(quick)
    assert (qgeo.frames, qgeo.num_visual, quick.budget, quick.budget_high, quick.repeats) == (8, 1568, 157, 392, 1)
    # the built toy model's video features have the front end's tokens per frame
    model = bench.build_model(bench.OV_TOY)
    inputs = bench.make_inputs(model, bench.OV_TOY)
    feats, _ = bench.video_features(model, inputs["pixel_values_videos"])
    assert tuple(feats.shape[:2]) == (bench.OV_TOY.frames, bench.OV_TOY.tokens_per_frame)
    assert int((inputs["input_ids"] == model.config.video_token_id).sum()) == bench.OV_TOY.num_visual + 1


def test_ov_flops_count_gqa_and_biases(bench):
    """The FLOPs model of the Qwen2 decoder: k/v projections D x Dkv (GQA), q/k/v biases counted exactly. Checked
    against the parameters of a built layer, so taking kv_dim = hidden would fail."""
    geo = bench.OV_TOY
    model = bench.build_model(geo)
    layer = model.model.language_model.layers[0]
    weights = sum(p.numel() for n, p in layer.named_parameters() if p.ndim == 2)
    biases = sum(p.numel() for n, p in layer.named_parameters() if p.ndim == 1 and "proj" in n)
    assert biases == geo.hidden + 2 * geo.kv_dim and geo.kv_dim < geo.hidden
    n, D = 11, geo.hidden
    attention = 2 * 2 * D * n * (n + 1) / 2
    assert bench.layer_flops(n, geo) == 2 * n * weights + n * biases + attention
    mha = bench.dataclasses.replace(geo, kv_heads=geo.heads)  # kv_dim = hidden: more FLOPs than the real layer
    assert bench.layer_flops(n, mha) > bench.layer_flops(n, geo)
    # the 7B's geometry: Dkv = 1 KV head x 32 of hidden 224 (the 7B: 4 x 128 of 3584)
    big = bench.OV_GEOMETRY
    assert big.kv_dim == 32
    assert "grouped-query" in bench.flops_doc(big) and "biases" in bench.flops_doc(big)
    assert bench.flops_doc(bench.Geometry()) == bench.flops_doc()  # Video-LLaVA's text unchanged


def test_ov_pre_llm_feeds_only_k_tokens(bench):
    """The pre-LLM baseline: the prompt holds K placeholders + the newline and the decoder sees exactly those."""
    import torch

    geo = bench.OV_TOY
    model = bench.build_model(geo)
    inputs = bench.make_inputs(model, geo)
    feats, _ = bench.video_features(model, inputs.pop("pixel_values_videos"))
    enc = bench.feature_kwargs(model, feats.reshape(1, -1, feats.shape[-1]))
    text = geo.seq_len - geo.num_visual  # incl. the newline
    for method in bench.PRE_SELECT:
        k = 10
        idx = bench.pre_llm_indices(feats, k, method)
        assert idx.numel() == k and bool((idx[1:] > idx[:-1]).all())
        if method == "norm":  # k split over the frames: 3, 3, 2, 2 of each frame's largest norms
            per = [int(((idx >= t * 16) & (idx < (t + 1) * 16)).sum()) for t in range(geo.frames)]
            assert per == [3, 3, 2, 2]
        b = bench.pre_llm_bench(k, method)
        b_inputs, b_enc, pre = bench.bench_inputs(model, b, inputs, enc, feats)
        assert b_enc is None and int((b_inputs["input_ids"] == model.config.video_token_id).sum()) == k + 1
        seen = {}
        lm = model.model.language_model

        def grab(mod, a, kw):
            seen.setdefault("emb", kw["inputs_embeds"].clone())  # the prefill (then 1 decode step)

        hook = lm.register_forward_pre_hook(grab, with_kwargs=True)
        try:
            _, _, cache, lens = bench.prefill_and_decode(model, b_inputs, None, 1, pre=pre)
        finally:
            hook.remove()
        assert lens == [text + k] * geo.layers and pre["select_s"] >= 0
        emb = seen["emb"][0]
        assert emb.shape[0] == text + k
        pos = (b_inputs["input_ids"][0] == model.config.video_token_id).nonzero().flatten()
        want = feats.reshape(-1, feats.shape[-1])[idx]
        assert torch.allclose(emb[pos[:k]], want) and torch.allclose(emb[pos[k]], model.model.image_newline)


def test_ov_toy_run_end_to_end(bench, tmp_path):
    out = str(tmp_path / "ov")
    res = bench.main(["--family", "llava_onevision", "--toy", "--threads", "1", "--repeats", "1", "--new-tokens", "2",
                      "--eq-budget", "20", "--memory-configs", "full,video@6,pre-llm@6", "--out", out])
    data = json.load(open(out + ".json"))
    md = open(out + ".md").read()
    assert data["family"] == "llava_onevision" and data["results"].keys() == res["results"].keys()
    assert (data["num_visual"], data["tokens_per_frame"], data["tail_tokens"]) == (64, 16, 1)
    assert (data["budget"], data["budget_high"], data["eq_budgets"]) == (6, 16, [20])
    rows = data["results"]
    for b in (6, 16):
        p = _check_rows(data, md, b)
        assert p["visual_tokens_seen_per_layer"] == [b] * data["geometry"]["layers"]
        assert p["pre_llm"]["decoder_visual_tokens"] == b and p["flops"]["scoring"] == 0
        # v1.5 / v2 end at the kept budget (their recycled tokens come on top for v1.5)
        assert rows[f"sparsevlm-v2@{b}"]["counts"][-1] == b
    eq = {r["eq"]["preset"]: (n, r) for n, r in rows.items() if r.get("eq")}
    assert set(eq) == set(bench.EQ_PRESETS) | {"pre-llm"}
    for preset, (name, r) in eq.items():
        assert abs(r["equivalent_tokens"] - 20) <= 2 and "(min)" not in name, (name, r["equivalent_tokens"])
        assert r["eq"]["plan_matches_trace"], name
    assert rows["pre-llm@20eq"]["counts"] == [20]
    full = rows["full"]
    for name, r in rows.items():
        q = r["ratios"]
        assert q["prefill_speedup"] == pytest.approx(full["prefill"]["median"] / r["prefill"]["median"], rel=1e-9)
        assert q["flops_ideal_speedup"] == pytest.approx(full["flops"]["decoder"] / r["flops"]["decoder"], rel=1e-9)
        assert (q["flops_ideal_speedup"] == 1.0) == (name == "full")
    for name in ("full", "video@6", "pre-llm@6"):
        assert rows[name]["memory"]["delta_mb"] > 0
    assert rows["pre-llm@6"]["memory"]["kv_cache_mb"] < rows["full"]["memory"]["kv_cache_mb"]
    assert "MALLOC_MMAP_THRESHOLD_" in data["memory_method"] and "malloc_trim" in data["memory_method"]
    # targets: the video preset at both kept budgets and the equal-equivalent setting, memory of every measured row
    targets = [t["target"] for t in data["targets"]]
    for name in ("video@6", "video@16", "video@20eq"):
        assert f"{name} prefill speedup >= 90% of the FLOPs-ideal speedup" in targets
        assert f"{name} selection overhead < 3% of the pruned prefill" in targets
    assert "every configuration's peak prefill memory not above full" in targets
    assert "| target | this run | met |" in md and "LLaVA-OneVision" in md and "grouped-query attention 7:1" in md
    assert "NOT THE 7B's FRAME COUNT" in md and "Side by side" in md


# ----------------------------------------------------------------------------------------- Qwen2.5-VL / Qwen3-VL
QWEN = ["qwen2_5_vl", "qwen3_vl"]


def _qwen_toy(bench, family):
    return bench.QWEN_GEOMETRIES[family][1]


@pytest.mark.parametrize("family", QWEN)
def test_qwen_geometry_and_inputs(bench, family):
    """The bench's clip is what the real processor makes of it (grid from videosparse.video.qwen); the prompt holds
    the family's video block (Qwen3-VL: timestamp text + one run per temporal group) and the 3-axis positions."""
    import torch

    from videosparse.video.qwen import QwenVideoSpec, video_grid_thw

    args = bench.parse_args(["--family", family])
    geo = bench.resolve(args)
    assert args.out == f"out/bench_speed_{family}"
    spec = getattr(QwenVideoSpec, family)()
    assert geo.grid_thw == video_grid_thw(geo.frames, geo.image_size, geo.image_width, spec) == (32, 24, 32)
    assert (geo.frames, geo.groups, geo.tokens_per_frame, geo.num_visual) == (64, 32, 192, 6144)
    want = {"qwen2_5_vl": (28, 7, 1, 224, 1184, 152064, 2), "qwen3_vl": (36, 8, 2, 256, 768, 151936, 280)}[family]
    assert (geo.layers, geo.heads, geo.kv_heads, geo.hidden, geo.intermediate, geo.vocab, geo.tail_tokens) == want
    assert geo.hidden // geo.heads == 32 and geo.heads // geo.kv_heads == bench.QWEN_GQA[family]
    assert (args.budget, args.budget_high, args.eq_budget, args.repeats, args.new_tokens) == (614, 1536, 580, 3, 32)
    cfg = bench.model_config(geo)  # the real checkpoints' special tokens and scaled mrope
    assert (cfg.video_token_id, cfg.vision_start_token_id, cfg.vision_end_token_id) == (151656, 151652, 151653)
    assert sum(cfg.text_config.rope_parameters["mrope_section"]) == 16
    if family == "qwen3_vl":  # '<0.2 seconds>' .. '<9.2 seconds>' 6 tokens, '<10.2 seconds>' .. 7: 10 x 6 + 22 x 7
        assert bench.qwen_timestamps(geo)[:2] == (0.25, 1.25)
        assert geo.tail_tokens == 10 * 6 + 22 * 7 + 2 * 32 + 2
        assert len(cfg.vision_config.deepstack_visual_indexes) == 3 and cfg.text_config.head_dim == 32
    quick = bench.parse_args(["--family", family, "--quick"])
    assert bench.resolve(quick).num_visual == 8 * 192 and quick.repeats == 1
    # the toy model's inputs
    toy = _qwen_toy(bench, family)
    model = bench.build_model(toy)
    inputs = bench.make_inputs(model, toy)
    ids = inputs["input_ids"][0]
    video = ids == model.config.video_token_id
    assert int(video.sum()) == toy.num_visual and ids.numel() == toy.seq_len
    assert torch.equal(inputs["mm_token_type_ids"][0], video.long() * 2)
    assert inputs["video_grid_thw"].tolist() == [list(toy.grid_thw)]
    assert inputs["pixel_values_videos"].shape == (4 * 8 * 12, 3 * 2 * 4 * 4)
    starts = int((ids == model.config.vision_start_token_id).sum())
    assert starts == (toy.groups + 1 if family == "qwen3_vl" else 1)
    assert torch.equal(inputs["_last_position"], bench.qwen_positions(model, inputs)[:, 0, -1])
    feats, deep, _ = bench.encode(model, inputs)
    assert "pixel_values_videos" not in inputs
    assert tuple(feats.shape) == (toy.groups, toy.tokens_per_frame, toy.hidden)
    assert (deep is not None and len(deep) == 3 and deep[0].shape == (toy.num_visual, toy.hidden)) == \
        (family == "qwen3_vl")


@pytest.mark.parametrize("family", QWEN)
def test_qwen_flops_count_gqa_biases_and_norms(bench, family):
    """The layer formula against the parameters of a built layer: GQA k/v projections, Qwen2.5's q/k/v biases
    (exactly), Qwen3's q/k RMS norms (1-D weights, not counted, like the other norms)."""
    geo = _qwen_toy(bench, family)
    model = bench.build_model(geo)
    layer = model.model.language_model.layers[0]
    weights = sum(p.numel() for n, p in layer.named_parameters() if p.ndim == 2)
    biases = sum(p.numel() for n, p in layer.named_parameters() if p.ndim == 1 and "proj" in n)
    norms = [n for n, p in layer.named_parameters() if p.ndim == 1 and n.startswith("self_attn.") and "norm" in n]
    assert biases == (geo.hidden + 2 * geo.kv_dim if family == "qwen2_5_vl" else 0) and geo.kv_dim < geo.hidden
    assert sorted(norms) == (["self_attn.k_norm.weight", "self_attn.q_norm.weight"] if family == "qwen3_vl" else [])
    n = 13
    attention = 2 * 2 * geo.hidden * n * (n + 1) / 2
    assert bench.layer_flops(n, geo) == 2 * n * weights + n * biases + attention
    doc = bench.flops_doc(geo)
    assert "grouped-query" in doc and ("biases are counted exactly" in doc) == (family == "qwen2_5_vl")
    assert ("q/k RMS norms" in doc and "Deepstack" in doc) == (family == "qwen3_vl")
    big = bench.QWEN_GEOMETRIES[family][0]
    assert big.kv_dim == {"qwen2_5_vl": 32, "qwen3_vl": 64}[family]
    d7 = bench.dataclasses.replace(big, **bench.FAMILIES[family]["dims_7b"])
    assert d7.kv_dim == {"qwen2_5_vl": 512, "qwen3_vl": 1024}[family]  # 4 x 128; 8 x 128


@pytest.mark.parametrize("family", QWEN)
def test_qwen_decode_steps_equal_generate(bench, family):
    """The harness's prefill (mm_encoder_outputs) + decode steps (explicit 3-axis positions) give generate's logits,
    unpruned and pruned (a seed preset through preset_for: positions='original', gravity=None)."""
    import torch

    from videosparse import sparsify

    geo = _qwen_toy(bench, family)
    model = bench.build_model(geo)
    inputs = bench.make_inputs(model, geo)
    gen_in = {k: v for k, v in inputs.items() if not k.startswith("_")}
    feats, deep, _ = bench.encode(model, inputs)
    enc = bench.feature_kwargs(model, feats.reshape(1, -1, feats.shape[-1]), deep)
    cfg = bench.preset_for(geo, "sparsevlm-v1.5", budget=0.2, num_layers=geo.layers)
    assert (cfg.positions, cfg.gravity) == ("original", None)
    for c in (None, bench.preset_for(geo, "video", budget=10, num_layers=geo.layers), cfg):
        logits = []
        hook = model.lm_head.register_forward_hook(lambda m, a, out: logits.append(out[0, -1].clone()))
        try:
            with torch.no_grad():
                if c is None:
                    bench.prefill_and_decode(model, inputs, enc, 3)
                else:
                    with sparsify(model, c):
                        bench.prefill_and_decode(model, inputs, enc, 3)
                n = len(logits)
                with (sparsify(model, c) if c is not None else torch.no_grad()):
                    ref = model.generate(**gen_in, max_new_tokens=4, do_sample=False, output_logits=True,
                                         return_dict_in_generate=True, pad_token_id=0)
        finally:
            hook.remove()
        ref = [x[0] for x in ref.logits]
        assert n == 4 and len(ref) >= 2
        for a, b in zip(logits[:n], ref):
            assert (a - b).abs().max().item() < 1e-4, (c and c.name)


@pytest.mark.parametrize("family", QWEN)
def test_qwen_pre_llm_keeps_original_positions(bench, family):
    """Qwen's pre-LLM baseline: only the K selected video tokens (and their deepstack features) enter the decoder,
    at the full prompt's 3-axis positions; Qwen3-VL's timestamp text stays."""
    import torch

    geo = _qwen_toy(bench, family)
    model = bench.build_model(geo)
    inputs = bench.make_inputs(model, geo)
    full_pos = bench.qwen_positions(model, inputs)
    feats, deep, _ = bench.encode(model, inputs)
    enc = bench.feature_kwargs(model, feats.reshape(1, -1, feats.shape[-1]), deep)
    text = geo.seq_len - geo.num_visual
    k = 10
    b = bench.pre_llm_bench(k, "uniform")
    b_inputs, b_enc, pre = bench.bench_inputs(model, b, inputs, enc, feats, deep)
    seen = {}
    lm = model.model.language_model

    def grab(mod, a, kw):
        seen.setdefault("kw", {n: (v.clone() if torch.is_tensor(v) else v) for n, v in kw.items()})

    hook = lm.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        _, steps, _, lens = bench.prefill_and_decode(model, b_inputs, b_enc, 2, pre=pre)
    finally:
        hook.remove()
    assert lens == [text + k] * geo.layers and len(steps) == 2 and pre["select_s"] >= 0
    idx = bench.pre_llm_indices(feats, k, "uniform")
    video = (inputs["input_ids"][0] == model.config.video_token_id).nonzero().flatten()
    keep = torch.ones(geo.seq_len, dtype=torch.bool)
    keep[video] = False
    keep[video[idx]] = True
    kw = seen["kw"]
    assert torch.equal(kw["position_ids"][1:], full_pos[:, :, keep])  # rows 1-3: the original 3-axis positions
    emb = kw["inputs_embeds"][0]
    assert emb.shape[0] == text + k
    kept_ids = inputs["input_ids"][0, keep]
    vis = kept_ids == model.config.video_token_id
    assert torch.allclose(emb[vis], feats.reshape(-1, feats.shape[-1])[idx])
    if family == "qwen3_vl":
        assert int(kw["visual_pos_masks"].sum()) == k
        assert all(torch.equal(d, full[idx]) for d, full in zip(kw["deepstack_visual_embeds"], deep))
        assert int((kept_ids == model.config.vision_start_token_id).sum()) == geo.groups + 1


@pytest.mark.parametrize("family", QWEN)
def test_qwen_toy_run_end_to_end(bench, tmp_path, family):
    out = str(tmp_path / family)
    res = bench.main(["--family", family, "--toy", "--threads", "1", "--repeats", "1", "--new-tokens", "2",
                      "--eq-budget", "30", "--memory-configs", "full,video@10,pre-llm@10", "--out", out])
    data = json.load(open(out + ".json"))
    md = open(out + ".md").read()
    assert data["family"] == family and data["results"].keys() == res["results"].keys()
    assert (data["num_visual"], data["tokens_per_frame"], data["groups"]) == (96, 24, 4)
    assert (data["budget"], data["budget_high"], data["eq_budgets"]) == (10, 24, [30])
    rows = data["results"]
    for b in (10, 24):
        _check_rows(data, md, b)
        assert rows[f"sparsevlm-v2@{b}"]["counts"][-1] == b
    for name, r in rows.items():  # mrope: every seed preset with original positions and no RoPE gravity
        if r["config"] is not None:
            assert r["config"]["positions"] == "original" and r["config"]["gravity"] is None, name
        if name.startswith("sparsevlm"):
            assert bench.MROPE_NOTE in r["note"], name
        q = r["ratios"]
        assert q["prefill_speedup"] == pytest.approx(rows["full"]["prefill"]["median"] / r["prefill"]["median"])
        assert (q["flops_ideal_speedup"] == 1.0) == (name == "full")
    eq = {r["eq"]["preset"]: (n, r) for n, r in rows.items() if r.get("eq")}
    assert set(eq) == set(bench.EQ_PRESETS) | {"pre-llm"}
    for preset, (name, r) in eq.items():
        assert r["eq"]["plan_matches_trace"], name
    for name in ("full", "video@10", "pre-llm@10"):
        assert rows[name]["memory"]["delta_mb"] > 0
    targets = [t["target"] for t in data["targets"]]
    for name in ("video@10", "video@24"):
        assert f"{name} prefill speedup >= 90% of the FLOPs-ideal speedup" in targets
        assert f"{name} selection overhead < 3% of the pruned prefill" in targets
    assert "every configuration's peak prefill memory not above full" in targets
    label = bench.FAMILIES[family]["label"]
    assert f"Random-weight {label} architecture" in md and "positions='original', gravity=None" in md
    assert "NOT THE BENCH's CLIP" in md and "Side by side" in md and "| target | this run | met |" in md
    assert f"{label}-{bench.FAMILIES[family]['size']}'s decoder dimensions" in md
