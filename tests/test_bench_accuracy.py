"""Smoke test of the accuracy benchmark on the shipped test bed (tiny n, so it cannot rot)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_accuracy_runs_and_writes_json(tmp_path):
    out = tmp_path / "acc.json"
    res = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_accuracy.py"), "--seed", "31337", "--n", "16",
         "--presets", "video,random,sparsevlm-v1.5", "--budgets", "1.0,0.1", "--batch-size", "16",
         "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert set(doc["results"]) == {"video", "random", "sparsevlm-v1.5"}
    assert doc["n"] == 16 and doc["num_visual"] == 296
    for preset, by_budget in doc["results"].items():
        assert by_budget["1.0"] == doc["full"]  # keep-all answers exactly like the full model
        assert 0.0 <= by_budget["0.1"] <= 1.0
        assert doc["stage_counts"][preset]["0.1"][-1] == round(0.1 * 296)
    assert doc["target_recall"]["video"]["0.1"] >= doc["target_recall"]["random"]["0.1"]
    assert "| video |" in res.stdout and "versions" in doc
