#!/usr/bin/env python
"""Accuracy vs visual-token budget on the trained test bed, for every method, in one run.

    python scripts/bench_accuracy.py --seed 777 --n 1000 [--json out/acc.json]

A fresh held-out set is generated from --seed (never a training seed), written as real H.264 files
and read back through `videosparse.video`, so decoding is part of the measurement. The shipped
test-bed model (or --model DIR) answers every question with all visual tokens, then with each preset
at budgets {100, 50, 25, 10, 5} % of the visual tokens. Exact-match accuracy overall and per question
type, the share of the asked-about patches that survived selection ("target recall") and the
equivalent tokens are printed as tables and written to JSON with the config and versions.

Budget semantics: the budget is the number of visual tokens alive after the *last* stage. Single-stage
presets (video, fastv, random, uniform) prune once at their stage layer; multi-stage presets
(sparsevlm-v1.5/v2) keep the seed's per-stage ratios before their last stage (so they see more tokens
in early layers: compare their equivalent tokens).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

PRESETS = ["video", "sparsevlm-v1.5", "sparsevlm-v2", "fastv", "random", "uniform"]
BUDGETS = [1.0, 0.5, 0.25, 0.1, 0.05]


def preset_config(name: str, frac: float, num_visual: int, num_layers: int):
    """SparseConfig for `name` keeping round(frac * num_visual) tokens after its last stage."""
    from videosparse import SparseConfig
    from videosparse.config import V15_SCHEDULES, V2_SCHEDULES, _fit, rescale_layers

    final = max(1, int(round(frac * num_visual)))
    if name in ("sparsevlm-v1.5", "sparsevlm-v2"):
        table = V15_SCHEDULES if name == "sparsevlm-v1.5" else V2_SCHEDULES
        layers = rescale_layers((2, 6, 15), num_layers)
        seed_counts = _fit(table[192], len(layers))
        counts = [min(num_visual, max(final, int(round(final * c / seed_counts[-1])))) for c in seed_counts]
        counts[-1] = final
        return SparseConfig.preset(name, budget=tuple(zip(layers, counts)), num_layers=num_layers)
    return SparseConfig.preset(name, budget=final, num_layers=num_layers)


def main(argv: list | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=777, help="seed of the held-out set (default 777)")
    ap.add_argument("--n", type=int, default=1000, help="questions (default 1000)")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--model", default=None, help="checkpoint directory (default: the shipped test bed)")
    ap.add_argument("--presets", default=",".join(PRESETS))
    ap.add_argument("--budgets", default=",".join(str(b) for b in BUDGETS))
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--data-dir", default=None, help="keep the written videos here (default: a temp dir)")
    args = ap.parse_args(argv)

    import torch
    import transformers

    from videosparse.testbed import synthetic as syn
    from videosparse.testbed import model as tb
    from videosparse import __version__, sparsify

    if args.threads:
        torch.set_num_threads(args.threads)
    presets = [p for p in args.presets.split(",") if p]
    budgets = [float(b) for b in args.budgets.split(",") if b]
    t_start = time.perf_counter()
    model, tokenizer, spec = tb.load_testbed(args.model)
    num_layers = model.config.text_config.num_hidden_layers
    P = tb.tokens_per_frame(model.config)

    tmp = None
    data_dir = args.data_dir
    if data_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="vs-acc-")
        data_dir = tmp.name
    samples = syn.make_dataset(args.seed, args.n)
    T = samples[0].frames.shape[0]
    jsonl = syn.write_dataset(samples, data_dir)
    samples = syn.load_samples(jsonl, num_frames=T)  # decoded back through videosparse.video
    num_visual = T * P
    print(f"held-out set: seed {args.seed}, {len(samples)} questions, {T} frames x {P} tokens = {num_visual} "
          f"visual tokens; model: {num_layers}-layer decoder; threads {torch.get_num_threads()}", flush=True)

    full = tb.evaluate(model, tokenizer, samples, args.batch_size, spec)
    print(f"full model: {full['accuracy']:.4f} {json.dumps(full['per_type'])}", flush=True)
    results: dict = {}
    per_type: dict = {}
    recall: dict = {}
    equiv: dict = {}
    counts: dict = {}
    for name in presets:
        results[name], per_type[name], recall[name], equiv[name], counts[name] = {}, {}, {}, {}, {}
        for b in budgets:
            cfg = preset_config(name, b, num_visual, num_layers)
            with sparsify(model, cfg) as h:
                r = tb.evaluate(model, tokenizer, samples, args.batch_size, spec, handle=h)
                trace = h.trace
            key = str(b)
            results[name][key] = r["accuracy"]
            per_type[name][key] = r["per_type"]
            recall[name][key] = r.get("target_recall")
            equiv[name][key] = trace.equivalent_tokens
            counts[name][key] = trace.counts
            print(f"{name:>15} @ {b:>5.0%}: acc {r['accuracy']:.4f}  recall {r.get('target_recall', float('nan')):.3f}"
                  f"  stages {trace.counts}  equiv {trace.equivalent_tokens:.1f}", flush=True)

    # ---------------- tables
    lines = []
    head = "| method | " + " | ".join(f"{b:.0%}" for b in budgets) + " |"
    lines += ["", f"Exact-match accuracy (full model, all {num_visual} visual tokens: {full['accuracy']:.1%}; "
              f"n = {len(samples)}, seed {args.seed}; ~1 point standard error at n = 1000)", "", head,
              "|---|" + "---|" * len(budgets)]
    for name in presets:
        lines.append(f"| {name} | " + " | ".join(f"{results[name][str(b)]:.1%}" for b in budgets) + " |")
    lines += ["", "Share of full-token accuracy", "", head, "|---|" + "---|" * len(budgets)]
    for name in presets:
        lines.append(f"| {name} | " + " | ".join(
            f"{results[name][str(b)] / full['accuracy']:.1%}" for b in budgets) + " |")
    lines += ["", "Target recall (share of the asked-about patches kept un-merged after the last stage)", "", head,
              "|---|" + "---|" * len(budgets)]
    for name in presets:
        lines.append(f"| {name} | " + " | ".join(
            "-" if recall[name][str(b)] is None else f"{recall[name][str(b)]:.1%}" for b in budgets) + " |")
    lines += ["", "Equivalent tokens (mean visual tokens per decoder layer)", "", head, "|---|" + "---|" * len(budgets)]
    for name in presets:
        lines.append(f"| {name} | " + " | ".join(f"{equiv[name][str(b)]:.0f}" for b in budgets) + " |")
    types = list(full["per_type"])
    lines += ["", "Per question type at 10 % and 5 % (full model: " +
              ", ".join(f"{t} {full['per_type'][t]:.1%}" for t in types) + ")", "",
              "| method | budget | " + " | ".join(types) + " |", "|---|---|" + "---|" * len(types)]
    for name in presets:
        for b in budgets:
            if b in (0.1, 0.05):
                pt = per_type[name][str(b)]
                lines.append(f"| {name} | {b:.0%} | " + " | ".join(f"{pt.get(t, float('nan')):.1%}" for t in types) + " |")
    # targets of the issue
    def acc(name, b):
        return results.get(name, {}).get(str(b))

    tgt = []
    if "video" in results and 0.1 in budgets and 0.05 in budgets:
        r10, r5 = acc("video", 0.1) / full["accuracy"], acc("video", 0.05) / full["accuracy"]
        tgt.append(("video >= 98% of full accuracy at 10%", f"{r10:.1%}", r10 >= 0.98))
        tgt.append(("video >= 95% of full accuracy at 5%", f"{r5:.1%}", r5 >= 0.95))
        for base in ("random", "uniform"):
            if base in results:
                d = acc("video", 0.05) - acc(base, 0.05)
                tgt.append((f"video >= {base} + 10 points at 5%", f"{d * 100:+.1f} points", d >= 0.10))
        if "fastv" in results:
            worst = min(acc("video", b) - acc("fastv", b) for b in budgets)
            tgt.append(("video never below fastv", f"min difference {worst * 100:+.1f} points", worst >= 0))
    if tgt:
        lines += ["", "| target | measured | met |", "|---|---|---|"]
        lines += [f"| {a} | {b} | {'yes' if c else 'NO'} |" for a, b, c in tgt]
    elapsed = time.perf_counter() - t_start
    lines += ["", f"Command: `python scripts/bench_accuracy.py --seed {args.seed} --n {args.n}` "
              f"({elapsed / 60:.1f} min, {torch.get_num_threads()} threads)."]
    print("\n".join(lines))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        doc = {
            "full": full["accuracy"], "full_per_type": full["per_type"], "results": results, "per_type": per_type,
            "target_recall": recall, "equivalent_tokens": equiv, "stage_counts": counts,
            "configs": {n: {str(b): preset_config(n, b, num_visual, num_layers).to_dict() for b in budgets}
                        for n in presets},
            "targets": [{"target": a, "measured": b, "met": c} for a, b, c in tgt],
            "seed": args.seed, "n": len(samples), "num_visual": num_visual, "num_layers": num_layers,
            "model": args.model or tb.default_path(), "seconds": elapsed,
            "versions": {"videosparse": __version__, "torch": torch.__version__,
                         "transformers": transformers.__version__, "python": platform.python_version()},
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": torch.get_num_threads()},
        }
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
        print(f"wrote {args.json}")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
