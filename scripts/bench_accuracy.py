#!/usr/bin/env python
"""Accuracy vs visual-token budget on the trained test bed, for every method, in one run.

    python scripts/bench_accuracy.py --seed 777 --n 1000 [--json out/acc.json] [--skip-kept]
    python scripts/bench_accuracy.py --model testbed-onevision --n 200 --skip-kept

A fresh held-out set is generated from --seed (never a training seed), written as real H.264 files
and read back through `videosparse.video`, so decoding is part of the measurement. The shipped
test-bed model (--model: "testbed", the default, "testbed-onevision", or a checkpoint DIR) answers every
question with all visual tokens, then with each preset
at budgets {100, 50, 25, 10, 5} % of the visual tokens. Exact-match accuracy overall and per question
type, the share of the asked-about patches that survived selection ("target recall") and the
equivalent tokens are printed as tables and written to JSON with the config and versions.

Budget semantics: the budget is the number of visual tokens alive after the *last* stage. Single-stage
presets (video, fastv, random, uniform) prune once at their stage layer; multi-stage presets
(sparsevlm-v1.5/v2) keep the seed's per-stage ratios before their last stage (so they see more tokens
in early layers: compare their equivalent tokens).

Second sweep, at equal *equivalent tokens* (the SparseVLM paper's unit: mean over decoder layers of the
visual tokens each layer sees, merged/recycled tokens included): every preset of --eq-presets gets the
budget "<x>eq" for each x of --eq (x <= 1: a fraction of the visual tokens, else tokens), which the
config solves into stage counts. A setting a preset cannot reach (see `SparseConfig.equivalent_range`)
is printed as "-" with the reason. The rank-adaptive seed presets (--seed-presets) also run once at
their own default ('rank') budget; their counts are decided per batch, so their equivalent tokens are
the mean over the questions (and depend on --batch-size). --skip-kept skips the kept-fraction sweep.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

PRESETS = ["video", "sparsevlm-v1.5", "sparsevlm-v2", "fastv", "random", "uniform"]
BUDGETS = [1.0, 0.5, 0.25, 0.1, 0.05]
EQ_PRESETS = ["video", "sparsevlm-video", "sparsevlm-v1", "sparsevlm-v1.5", "sparsevlm-v2", "fastv", "random",
              "uniform"]
# fractions of the visual tokens; on the 4-layer test beds (296 visual tokens; OneVision: 288) the floor of every
# preset is <= 153 equivalent tokens (51.7 %, sparsevlm-video: stage after layer 1 plus recycled tokens on top)
EQ_SETTINGS = [0.52, 0.55, 0.60, 0.70]
SEED_PRESETS = ["sparsevlm-video", "sparsevlm-v1"]


def eq_key(x: float) -> str:
    return f"{x:g}"


def eq_target(x: float, num_visual: int) -> float:
    """Equivalent tokens asked for by setting x (x <= 1: a fraction of the visual tokens, else tokens)."""
    return x * num_visual if x <= 1 else float(x)


def evaluate_traced(model, tokenizer, samples, batch_size, spec, cfg) -> dict:
    """`testbed.evaluate` batch by batch under `sparsify(model, cfg)`, keeping every batch's trace.

    Same batches (hence same answers) as one `evaluate` call; adds the question-weighted mean equivalent
    tokens and stage counts (rank-adaptive presets decide their counts per batch)."""
    import numpy as np

    from videosparse import sparsify
    from videosparse.testbed import model as tb
    from videosparse.testbed import synthetic as syn

    correct: list = []
    rec_sum, rec_n = 0.0, 0
    eqs: list = []  # (equivalent tokens, counts, batch length)
    with sparsify(model, cfg) as h:
        for i in range(0, len(samples), batch_size):
            chunk = samples[i: i + batch_size]
            r = tb.evaluate(model, tokenizer, chunk, batch_size, spec, handle=h, return_predictions=True)
            correct += r["correct"]
            if r.get("target_recall") is not None:
                rec_sum += r["target_recall"] * len(chunk)
                rec_n += len(chunk)
            tr = h.trace
            if tr is None or not tr.stages:
                eqs.append((float(tr.num_visual if tr is not None else 0), [], len(chunk)))
            else:
                eqs.append((float(tr.equivalent_tokens), list(tr.counts), len(chunk)))
    per_type = {}
    for t in syn.QUESTION_TYPES:
        idx = [j for j, s in enumerate(samples) if s.qtype == t]
        if idx:
            per_type[t] = float(np.mean([correct[j] for j in idx]))
    n = sum(w for _, _, w in eqs)
    distinct = {tuple(c) for _, c, _ in eqs}
    if len(distinct) == 1:
        counts = list(next(iter(distinct)))
    else:  # per-stage question-weighted mean
        counts = [sum(c[k] * w for _, c, w in eqs) / n for k in range(len(eqs[0][1]))]
    return {
        "accuracy": float(np.mean(correct)), "per_type": per_type,
        "target_recall": rec_sum / rec_n if rec_n == len(samples) and rec_n else None,
        "equivalent_tokens": sum(e * w for e, _, w in eqs) / n,
        "equivalent_min": min(e for e, _, _ in eqs), "equivalent_max": max(e for e, _, _ in eqs),
        "counts": counts, "counts_per_batch": [c for _, c, _ in eqs] if len(distinct) > 1 else None,
    }


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
    ap.add_argument("--model", default=None,
                    help="test-bed name ('testbed' = default, 'testbed-onevision') or checkpoint directory")
    ap.add_argument("--presets", default=",".join(PRESETS))
    ap.add_argument("--budgets", default=",".join(str(b) for b in BUDGETS))
    ap.add_argument("--skip-kept", action="store_true", help="skip the kept-fraction sweep (--presets/--budgets)")
    ap.add_argument("--eq", default=",".join(eq_key(x) for x in EQ_SETTINGS),
                    help="equivalent-token settings, x <= 1 a fraction of the visual tokens, else tokens "
                         "(budget '<x>eq'); empty: skip the sweep (default %(default)s)")
    ap.add_argument("--eq-presets", default=",".join(EQ_PRESETS), help="presets of the equivalent-token sweep")
    ap.add_argument("--seed-presets", default=",".join(SEED_PRESETS),
                    help="rank-adaptive presets also run at their own default budget (empty: none)")
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--data-dir", default=None, help="keep the written videos here (default: a temp dir)")
    args = ap.parse_args(argv)

    import torch
    import transformers

    from videosparse.testbed import synthetic as syn
    from videosparse.testbed import model as tb
    from videosparse import SparseConfig, __version__

    if args.threads:
        torch.set_num_threads(args.threads)
    presets = [p for p in args.presets.split(",") if p]
    budgets = [] if args.skip_kept else [float(b) for b in args.budgets.split(",") if b]
    if args.skip_kept:
        presets = []
    eq_settings = [float(x) for x in args.eq.split(",") if x.strip()]
    eq_presets = [p for p in args.eq_presets.split(",") if p] if eq_settings else []
    seed_presets = [p for p in args.seed_presets.split(",") if p]
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
          f"visual tokens; model: {args.model or 'testbed'} ({model.config.model_type}, {num_layers}-layer decoder); "
          f"threads {torch.get_num_threads()}", flush=True)

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
            r = evaluate_traced(model, tokenizer, samples, args.batch_size, spec, cfg)
            key = str(b)
            results[name][key] = r["accuracy"]
            per_type[name][key] = r["per_type"]
            recall[name][key] = r["target_recall"]
            equiv[name][key] = r["equivalent_tokens"]
            counts[name][key] = r["counts"]
            rec = float("nan") if r["target_recall"] is None else r["target_recall"]
            print(f"{name:>15} @ {b:>5.0%}: acc {r['accuracy']:.4f}  recall {rec:.3f}"
                  f"  stages {r['counts']}  equiv {r['equivalent_tokens']:.1f}", flush=True)

    # ---------------- equivalent-token sweep
    eq_res: dict = {}
    eq_plans: dict = {}
    eq_planned: dict = {}
    eq_cfgs: dict = {}
    eq_skipped: dict = {}
    eq_ranges: dict = {}
    for name in eq_presets:
        eq_res[name], eq_plans[name], eq_planned[name], eq_cfgs[name], eq_skipped[name] = {}, {}, {}, {}, {}
        try:
            eq_ranges[name] = list(SparseConfig.preset(name, budget=f"{num_visual}eq", num_layers=num_layers)
                                   .equivalent_range(num_visual, num_layers))
        except (ValueError, KeyError, TypeError) as e:
            eq_ranges[name] = None
            print(f"{name:>15}: no equivalent-token range ({e})", flush=True)
        for x in eq_settings:
            key, target = eq_key(x), eq_target(x, num_visual)
            try:
                cfg = SparseConfig.preset(name, budget=f"{key}eq", num_layers=num_layers)
                plan = cfg.stage_plan(num_visual, num_layers)  # ValueError when the target is out of reach
                planned = cfg.equivalent_tokens(num_visual, num_layers)
                r = evaluate_traced(model, tokenizer, samples, args.batch_size, spec, cfg)
            except (ValueError, KeyError, TypeError) as e:
                eq_skipped[name][key] = str(e)
                print(f"{name:>15} @ {key}eq ({target:.1f}): skipped: {e}", flush=True)
                continue
            eq_res[name][key] = r
            eq_plans[name][key] = [list(p) for p in plan]
            eq_planned[name][key] = planned
            eq_cfgs[name][key] = cfg.to_dict()
            print(f"{name:>15} @ {key}eq ({target:.1f}): acc {r['accuracy']:.4f}  recall "
                  f"{r['target_recall'] if r['target_recall'] is not None else float('nan'):.3f}  stages {r['counts']}"
                  f"  plan {plan}  equiv {r['equivalent_tokens']:.2f}", flush=True)

    # ---------------- rank-adaptive seed presets at their own rule
    seed_res: dict = {}
    for name in seed_presets:
        try:
            cfg = SparseConfig.preset(name, num_layers=num_layers)
            r = evaluate_traced(model, tokenizer, samples, args.batch_size, spec, cfg)
        except (ValueError, KeyError, TypeError) as e:
            seed_res[name] = {"skipped": str(e)}
            print(f"{name:>15} @ own rule: skipped: {e}", flush=True)
            continue
        r["budget"] = cfg.budget
        r["config"] = cfg.to_dict()
        # `video` at the same (mean) equivalent tokens, for reference
        try:
            vcfg = SparseConfig.preset("video", budget=f"{r['equivalent_tokens']:.2f}eq", num_layers=num_layers)
            vcfg.stage_plan(num_visual, num_layers)
            v = evaluate_traced(model, tokenizer, samples, args.batch_size, spec, vcfg)
            r["video_same_eq"] = {"accuracy": v["accuracy"], "per_type": v["per_type"],
                                  "equivalent_tokens": v["equivalent_tokens"], "counts": v["counts"]}
        except (ValueError, KeyError, TypeError) as e:
            r["video_same_eq"] = {"skipped": str(e)}
        seed_res[name] = r
        print(f"{name:>15} @ own rule ({cfg.budget}): acc {r['accuracy']:.4f}  mean stages {r['counts']}  "
              f"equiv {r['equivalent_tokens']:.2f} (batches {r['equivalent_min']:.1f}..{r['equivalent_max']:.1f})",
              flush=True)

    # ---------------- tables
    lines = []
    types = list(full["per_type"])
    pct = lambda v: "-" if v is None else f"{v:.1%}"  # noqa: E731
    if presets and budgets:
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
        lines += ["", "Target recall (share of the asked-about patches kept un-merged after the last stage)", "",
                  head, "|---|" + "---|" * len(budgets)]
        for name in presets:
            lines.append(f"| {name} | " + " | ".join(pct(recall[name][str(b)]) for b in budgets) + " |")
        lines += ["", "Equivalent tokens (mean visual tokens per decoder layer)", "", head,
                  "|---|" + "---|" * len(budgets)]
        for name in presets:
            lines.append(f"| {name} | " + " | ".join(f"{equiv[name][str(b)]:.0f}" for b in budgets) + " |")
        lines += ["", "Per question type at 10 % and 5 % (full model: " +
                  ", ".join(f"{t} {full['per_type'][t]:.1%}" for t in types) + ")", "",
                  "| method | budget | " + " | ".join(types) + " |", "|---|---|" + "---|" * len(types)]
        for name in presets:
            for b in budgets:
                if b in (0.1, 0.05):
                    pt = per_type[name][str(b)]
                    lines.append(f"| {name} | {b:.0%} | " +
                                 " | ".join(f"{pt.get(t, float('nan')):.1%}" for t in types) + " |")

    if eq_presets and eq_settings:
        keys = [eq_key(x) for x in eq_settings]
        ehead = "| method | " + " | ".join(
            f"{eq_target(x, num_visual):.1f} eq ({100 * eq_target(x, num_visual) / num_visual:.3g}%)" for x in eq_settings
        ) + " |"
        esep = "|---|" + "---|" * len(eq_settings)

        def cell(name, key, fmt):
            r = eq_res[name].get(key)
            return "-" if r is None else fmt(r)

        lines += ["", f"Accuracy at equal equivalent tokens (budget '<x>eq'; full model {full['accuracy']:.1%} with "
                  f"{num_visual}; n = {len(samples)}, seed {args.seed})", "", ehead, esep]
        for name in eq_presets:
            lines.append(f"| {name} | " + " | ".join(cell(name, k, lambda r: f"{r['accuracy']:.1%}")
                                                     for k in keys) + " |")
        notes = [f"- {name} @ {k}eq: {why}" for name in eq_presets for k, why in eq_skipped[name].items()]
        if notes:
            lines += ["", "Not reachable (\"-\"):"] + notes
        lines += ["", "Achieved equivalent tokens (trace; tokens alive after each stage, recycled included)", "",
                  ehead, esep]
        for name in eq_presets:
            lines.append(f"| {name} | " + " | ".join(
                cell(name, k, lambda r: f"{r['equivalent_tokens']:.1f} {r['counts']}") for k in keys) + " |")
        lines += ["", "Reachable range of equivalent tokens: " + "; ".join(
            f"{name} " + ("-" if eq_ranges.get(name) is None else
                          f"[{eq_ranges[name][0]:.1f}, {eq_ranges[name][1]:.1f}]") for name in eq_presets)]
        lines += ["", "Target recall at equal equivalent tokens", "", ehead, esep]
        for name in eq_presets:
            lines.append(f"| {name} | " + " | ".join(cell(name, k, lambda r: pct(r["target_recall"]))
                                                     for k in keys) + " |")
        lo_x = min(eq_settings, key=lambda x: eq_target(x, num_visual))
        lo_k = eq_key(lo_x)
        lines += ["", f"Per question type at the lowest setting, {eq_target(lo_x, num_visual):.1f} equivalent tokens "
                  f"({lo_k}eq)", "", "| method | " + " | ".join(types) + " |", "|---|" + "---|" * len(types),
                  "| full model | " + " | ".join(f"{full['per_type'][t]:.1%}" for t in types) + " |"]
        for name in eq_presets:
            r = eq_res[name].get(lo_k)
            lines.append(f"| {name} | " + " | ".join(
                "-" if r is None else f"{r['per_type'].get(t, float('nan')):.1%}" for t in types) + " |")

    if seed_res:
        lines += ["", "Seed presets at their own rule (rank-adaptive counts, decided per batch of "
                  f"{args.batch_size}; equivalent tokens = mean over the questions)", "",
                  "| preset | budget | accuracy | target recall | mean equivalent tokens | per batch | mean stage counts "
                  "| video at the same equivalent tokens |", "|---|---|---|---|---|---|---|---|"]
        for name, r in seed_res.items():
            if "skipped" in r:
                lines.append(f"| {name} | - | - | - | - | - | - | - ({r['skipped']}) |")
                continue
            v = r.get("video_same_eq", {})
            vtxt = "-" if "accuracy" not in v else f"{v['accuracy']:.1%} ({v['equivalent_tokens']:.1f} eq)"
            lines.append(
                f"| {name} | {r['budget']} | {r['accuracy']:.1%} | {pct(r['target_recall'])} | "
                f"{r['equivalent_tokens']:.1f} ({r['equivalent_tokens'] / num_visual:.1%}) | "
                f"{r['equivalent_min']:.1f}..{r['equivalent_max']:.1f} | "
                f"{[round(c, 1) for c in r['counts']]} | {vtxt} |")

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
    diffs = [(eq_res["video"][k]["accuracy"] - eq_res[p_][k]["accuracy"], p_, k)
             for p_ in eq_presets if p_.startswith("sparsevlm-") for k in eq_res.get(p_, {})
             if k in eq_res.get("video", {})]
    if diffs:
        worst, wp, wk = min(diffs)
        tgt.append(("video >= every sparsevlm-* preset at equal equivalent tokens",
                    f"min difference {worst * 100:+.1f} points ({wp} @ {wk}eq; {len(diffs)} comparisons)",
                    worst >= 0))
    if tgt:
        lines += ["", "| target | measured | met |", "|---|---|---|"]
        lines += [f"| {a} | {b} | {'yes' if c else 'NO'} |" for a, b, c in tgt]
    elapsed = time.perf_counter() - t_start
    cmd = " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    lines += ["", f"Command: `python scripts/bench_accuracy.py {cmd}` "
              f"({elapsed / 60:.1f} min, {torch.get_num_threads()} threads)."]
    print("\n".join(lines))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        doc = {
            "full": full["accuracy"], "full_per_type": full["per_type"], "results": results, "per_type": per_type,
            "target_recall": recall, "equivalent_tokens": equiv, "stage_counts": counts,
            "configs": {n: {str(b): preset_config(n, b, num_visual, num_layers).to_dict() for b in budgets}
                        for n in presets},
            "stage_plans": {n: {str(b): [list(x) for x in preset_config(n, b, num_visual, num_layers)
                                        .stage_plan(num_visual, num_layers)] for b in budgets} for n in presets},
            "targets": [{"target": a, "measured": b, "met": c} for a, b, c in tgt],
            "eq_settings": {eq_key(x): eq_target(x, num_visual) for x in eq_settings},
            "eq_presets": eq_presets,
            "eq_results": {n: {k: r["accuracy"] for k, r in eq_res[n].items()} for n in eq_presets},
            "eq_per_type": {n: {k: r["per_type"] for k, r in eq_res[n].items()} for n in eq_presets},
            "eq_target_recall": {n: {k: r["target_recall"] for k, r in eq_res[n].items()} for n in eq_presets},
            "eq_equivalent_tokens": {n: {k: r["equivalent_tokens"] for k, r in eq_res[n].items()} for n in eq_presets},
            "eq_planned_equivalent_tokens": eq_planned,
            "eq_stage_counts": {n: {k: r["counts"] for k, r in eq_res[n].items()} for n in eq_presets},
            "eq_stage_plans": eq_plans,
            "eq_configs": eq_cfgs,
            "eq_skipped": eq_skipped,
            "eq_ranges": eq_ranges,
            "seed_rule": seed_res,
            "batch_size": args.batch_size,
            "seed": args.seed, "n": len(samples), "num_visual": num_visual, "num_layers": num_layers,
            "model": args.model or tb.default_path(), "model_type": model.config.model_type, "seconds": elapsed,
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
