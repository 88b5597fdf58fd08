"""Smoke test of scripts/bench_speed.py at a toy size, so the harness cannot rot."""

from __future__ import annotations

import importlib.util
import json
import math
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


def test_quick_mode_keeps_the_real_token_geometry(bench):
    args = bench.parse_args(["--quick"])
    geo = bench.resolve(args)
    assert (geo.frames, geo.tokens_per_frame, geo.num_visual, geo.layers) == (8, 257, 2056, 32)
    assert 55 <= geo.seq_len - geo.num_visual <= 65
    assert geo.hidden == 128 and geo.hidden // geo.heads == 64
    assert (args.budget, args.budget5, args.repeats, args.new_tokens) == (194, 103, 1, 8)
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


def test_selection_timer_restores_functions(bench):
    import videosparse.core.select as sel
    import videosparse.models.video_llava as vl

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
    for name, r in data["results"].items():
        assert r["prefill"]["n"] == 2 and r["prefill"]["median"] > 0
        assert r["decode_step"]["n"] == 2 * 3
        assert math.isfinite(r["ratios"]["prefill_speedup"]) and r["ratios"]["flops_ideal_speedup"] >= 1.0
        assert f"| {name} |" in md
    v = data["results"]["video@7"]
    assert v["counts"] == [7] and v["stage_layers"] == [1]
    assert v["flops"]["scoring"] > 0 and v["selection"]["median"] > 0
    assert "scores" in v["selection_groups_median_s"]
    # (no "recycle" group here: recycling is capped at 10 % of the budget, 0 clusters at 7 tokens)
    # pruned cache: layers after the stage hold text + kept tokens only
    text = data["seq_len"] - data["num_visual"]
    assert v["cache_lengths_after_prefill"][:2] == [data["seq_len"]] * 2
    assert set(v["cache_lengths_after_prefill"][2:]) == {text + 7}
    assert data["results"]["lower-bound@7"]["flops"]["scoring"] == 0
    assert data["results"]["seed-ref@7"]["attn"] == "eager"
    # memory in fresh child processes, for the requested subset only
    for name in ("full", "video@7"):
        m = data["results"][name]["memory"]
        assert m["peak_mb"] >= m["base_mb"] > 0 and m["kv_cache_mb"] > 0
        assert "memory_ratio" in data["results"][name]["ratios"]
    assert "memory" not in data["results"]["fastv@7"]
    assert data["results"]["video@7"]["memory"]["kv_cache_mb"] < data["results"]["full"]["memory"]["kv_cache_mb"]
    # provenance
    for key in ("torch", "transformers", "torch_threads", "cpu"):
        assert key in data["machine"]
    assert data["machine"]["torch_threads"] == 1
    assert "other_processes_cores" in data["load"] and "flops_formula" in data
    assert "Load:" in md and "hidden 64" in md
