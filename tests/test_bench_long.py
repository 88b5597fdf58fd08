"""Smoke test of scripts/bench_long.py --quick (needle benchmark + memory/time subprocesses), so it cannot rot.

The benchmark's targets (accuracy >= 90 %, memory and prefill ratios) are not asserted here: they are
benchmark results, and --quick is too small for them. Only the structure and sane values are.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_long_quick_runs_and_writes_json(tmp_path):
    out = tmp_path / "long.json"
    t0 = time.time()
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_long.py"), "--quick", "--json", str(out)],
                         capture_output=True, text=True, timeout=300)
    wall = time.time() - t0
    assert res.returncode == 0, res.stderr[-3000:]
    doc = json.loads(out.read_text())

    # --- A. needle benchmark
    needle = doc["needle"]
    assert needle["n"] == 16 and needle["num_frames"] == 256 and needle["tokens_per_frame"] == 37
    assert needle["decoder_tokens"] == 296
    assert needle["uniform_frames"] == [0, 36, 72, 109, 145, 182, 218, 255]
    methods = needle["methods"]
    assert {"uniform8", "relevance", "random"} <= set(methods)
    for name, m in methods.items():
        assert 0.0 <= m["accuracy"] <= 1.0, name
        assert set(m["per_type"]) == {"where", "when", "shape", "count"}
        assert all(0.0 <= v <= 1.0 for v in m["per_type"].values())
        assert 0.0 <= m["targets_all_in"] <= 1.0 and 0.0 <= m["target_share_in"] <= 1.0
        assert m["decoder_tokens"] == 296, name  # the same decoder budget for every method
    for name in ("relevance", "random"):
        assert methods[name]["long_path"] and methods[name]["pool_tokens"] == 296
    assert not methods["uniform8"]["long_path"] and methods["uniform8"]["pool_tokens"] == 0
    # question-guided pre-selection puts the asked-about tokens in the pool at least as often as random
    assert methods["relevance"]["targets_all_in"] >= methods["random"]["targets_all_in"]
    u = needle["uniform8"]
    assert 0.0 <= u["object_seen_share"] <= 1.0
    assert u["unseen"]["n"] + u["seen"]["n"] == 16
    assert 0.0 < u["unseen"]["chance"] < 1.0
    assert len(needle["questions"]) == 16

    # --- B. memory and time, one subprocess per (model, frames)
    memory = doc["memory"]
    assert set(memory) == {"testbed", "realgeo"}
    assert memory["testbed"]["pre_budget"] == 8 * 37
    assert memory["realgeo"]["model"]["tokens_per_frame"] == 257 and memory["realgeo"]["pre_budget"] == 2056
    for name, m in memory.items():
        assert set(m["runs"]) == {"8", "64"}
        assert m["video"]["frames"] >= 64
        for n, r in m["runs"].items():
            assert r["frames_used"] == int(n)
            assert r["long_path"] == (n == "64")
            assert r["decoder_tokens"] == m["pre_budget"]
            assert r["baseline_kb"] > 0 and r["peak_kb"] >= r["baseline_kb"] and r["working_kb"] >= 0
            if r["ask_hwm_kb"] is not None:
                assert r["ask_hwm_kb"] > 0 and r["ask_working_kb"] >= 0
            for phase in ("video_decode", "vision", "prefill", "decode", "wall"):
                assert r["seconds"][phase] > 0 and math.isfinite(r["seconds"][phase]), (name, n, phase)
            assert r["seconds"]["preselect"] > 0 if r["long_path"] else r["seconds"]["preselect"] == 0
            assert r["threads"] == 1
        q = m["ratios"]
        assert q["peak"] > 0 and q["prefill_vs_ref"] > 0

    assert doc["checks"] and all(isinstance(c["pass"], bool) for c in doc["checks"])
    assert "| (b) long path" in res.stdout and "| ratio | value |" in res.stdout
    assert res.stdout.count("PASS") + res.stdout.count("FAIL") >= len(doc["checks"])
    assert wall < 180, f"--quick took {wall:.0f} s"
