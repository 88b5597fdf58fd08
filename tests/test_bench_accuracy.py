"""Smoke test of the accuracy benchmark on the shipped test bed (tiny n, so it cannot rot)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HANG_GUARD_S = 3600  # not a time assertion: only stops a hung run (each run takes ~5 s on an idle machine)


def test_bench_accuracy_runs_and_writes_json(tmp_path):
    out = tmp_path / "acc.json"
    res = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_accuracy.py"), "--seed", "31337", "--n", "16",
         "--presets", "video,random,sparsevlm-v1.5", "--budgets", "1.0,0.1", "--batch-size", "16",
         "--eq", "", "--seed-presets", "", "--json", str(out)],
        capture_output=True, text=True, timeout=HANG_GUARD_S,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert set(doc["results"]) == {"video", "random", "sparsevlm-v1.5"}
    assert doc["n"] == 16 and doc["num_visual"] == 296
    from videosparse.config import equivalent_tokens

    for preset, by_budget in doc["results"].items():
        assert by_budget["1.0"] == doc["full"]  # keep-all answers exactly like the full model
        assert doc["per_type"][preset]["1.0"] == doc["full_per_type"]
        # 16 questions, the 4 types in turn: the accuracy is the mean of the 4 per-type accuracies (quarters)
        per_type = doc["per_type"][preset]["0.1"]
        assert set(per_type) == {"where", "when", "shape", "count"}
        assert all(4 * v == int(4 * v) for v in per_type.values())
        assert by_budget["0.1"] == pytest.approx(sum(per_type.values()) / 4)
        # the budget is the tokens *selected* at the last stage; recycled (merged) tokens come on top
        _, selected, merged = doc["stage_plans"][preset]["0.1"][-1]
        assert selected == round(0.1 * 296)
        assert doc["stage_counts"][preset]["0.1"][-1] == selected + merged
        plan_layers = [layer for layer, _, _ in doc["stage_plans"][preset]["0.1"]]
        assert doc["equivalent_tokens"][preset]["0.1"] == pytest.approx(
            equivalent_tokens(296, doc["num_layers"], plan_layers, doc["stage_counts"][preset]["0.1"]))
        assert doc["equivalent_tokens"][preset]["1.0"] == 296
        # the printed table row is these numbers
        assert f"| {preset} | {100 * by_budget['1.0']:.1f}% | {100 * by_budget['0.1']:.1f}% |" in res.stdout
    # at 10 % the question-guided selection keeps the asked-about tokens and the answers (this seed: 100 % recall,
    # 15/16 answers); content-blind random selection does neither (6 % recall, 2/16)
    recall, acc = doc["target_recall"], doc["results"]
    assert recall["video"]["0.1"] >= 0.75 and recall["random"]["0.1"] <= 0.25
    assert acc["video"]["0.1"] >= acc["random"]["0.1"] + 0.25
    assert doc["full"] >= 0.9  # the test bed answers these questions with every token
    assert set(doc["versions"]) >= {"videosparse", "torch", "transformers"}


def test_bench_accuracy_equal_equivalent_tokens(tmp_path):
    out = tmp_path / "eq.json"
    presets = ["video", "sparsevlm-video", "sparsevlm-v1", "sparsevlm-v2", "random"]
    # 0.505 x 296 = 149.5 equivalent tokens: below the floor of sparsevlm-video (153) and sparsevlm-v1 (151)
    res = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_accuracy.py"), "--seed", "31337", "--n", "12",
         "--skip-kept", "--eq", "0.505,0.6", "--eq-presets", ",".join(presets), "--seed-presets", "sparsevlm-video",
         "--batch-size", "6", "--json", str(out)],
        capture_output=True, text=True, timeout=HANG_GUARD_S,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    doc = json.loads(out.read_text())
    for key in ("results", "per_type", "target_recall", "equivalent_tokens", "stage_counts", "targets"):
        assert key in doc  # the kept-fraction keys stay (empty with --skip-kept)
    assert doc["results"] == {}
    assert doc["eq_settings"] == {"0.505": 0.505 * 296, "0.6": 0.6 * 296}
    assert doc["eq_presets"] == presets
    for key in ("eq_results", "eq_per_type", "eq_target_recall", "eq_equivalent_tokens", "eq_stage_counts",
                "eq_stage_plans", "eq_skipped", "eq_ranges"):
        assert set(doc[key]) == set(presets), key
    # out of reach: skipped with the reason, never run; everything else ran
    assert set(doc["eq_skipped"]["sparsevlm-video"]) == {"0.505"}
    assert "cannot be reached" in doc["eq_skipped"]["sparsevlm-video"]["0.505"]
    assert set(doc["eq_skipped"]["sparsevlm-v1"]) == {"0.505"}
    for name in ("video", "sparsevlm-v2", "random"):
        assert doc["eq_skipped"][name] == {} and set(doc["eq_results"][name]) == {"0.505", "0.6"}
    for name in presets:
        lo, hi = doc["eq_ranges"][name]
        for key, target in doc["eq_settings"].items():
            if key in doc["eq_skipped"][name]:
                assert target < lo - 0.5
                continue
            achieved = doc["eq_equivalent_tokens"][name][key]
            assert abs(achieved - target) <= 2.0, (name, key, achieved, target)
            # what the model saw (trace) is what the config planned
            assert abs(achieved - doc["eq_planned_equivalent_tokens"][name][key]) < 1e-9
            plan = doc["eq_stage_plans"][name][key]
            assert doc["eq_stage_counts"][name][key] == [k + m for _, k, m in plan]
            # 12 questions, the 4 types in turn: the accuracy is the mean of the per-type accuracies (thirds)
            per_type = doc["eq_per_type"][name][key]
            assert set(per_type) == set(doc["full_per_type"]) == {"where", "when", "shape", "count"}
            assert doc["eq_results"][name][key] == pytest.approx(sum(per_type.values()) / 4)
    # the fixed-count sparsevlm presets recycle on top, the others do not
    assert all(m > 0 for _, _, m in doc["eq_stage_plans"]["sparsevlm-video"]["0.6"])
    assert all(m == 0 for _, _, m in doc["eq_stage_plans"]["video"]["0.6"])
    seed = doc["seed_rule"]["sparsevlm-video"]
    assert seed["budget"] == "rank" and 0.0 <= seed["accuracy"] <= 1.0
    assert seed["equivalent_min"] <= seed["equivalent_tokens"] <= seed["equivalent_max"] <= 296
    out_txt = res.stdout
    assert "Accuracy at equal equivalent tokens" in out_txt and "Seed presets at their own rule" in out_txt
    assert "| sparsevlm-video | - | " in out_txt  # unreachable cell printed as "-"
    assert "video >= every sparsevlm-* preset at equal equivalent tokens" in out_txt
    assert any(t["target"].startswith("video >= every sparsevlm-*") for t in doc["targets"])
    for name in presets:
        assert f"| {name} |" in out_txt


def test_bench_accuracy_onevision_test_bed(tmp_path):
    """`--model testbed-onevision`: the same sweep on the LLaVA-OneVision test bed (36 tokens per frame, no CLS)."""
    from videosparse import testbed

    if not (Path(testbed.path("testbed-onevision")) / "model.safetensors").exists():
        pytest.skip("OneVision test-bed checkpoint not shipped")
    out = tmp_path / "ov.json"
    res = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_accuracy.py"), "--model", "testbed-onevision", "--seed", "31337",
         "--n", "8", "--presets", "video,random", "--budgets", "1.0,0.1", "--batch-size", "8", "--eq", "",
         "--seed-presets", "", "--json", str(out)],
        capture_output=True, text=True, timeout=HANG_GUARD_S,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert doc["model_type"] == "llava_onevision" and doc["model"] == "testbed-onevision"
    assert doc["num_visual"] == 8 * 36  # the closing newline is not a visual token
    assert doc["full"] >= 0.75
    for preset in ("video", "random"):
        assert doc["results"][preset]["1.0"] == doc["full"]
        _, selected, _ = doc["stage_plans"][preset]["0.1"][-1]
        assert selected == round(0.1 * 288)
    assert doc["target_recall"]["video"]["0.1"] >= doc["target_recall"]["random"]["0.1"]
