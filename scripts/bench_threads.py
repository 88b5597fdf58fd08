#!/usr/bin/env python
"""Prefill time vs torch threads, on an idle and on a busy CPU: why `videosparse ask` picks its thread count.

For every (load, threads) cell a fresh subprocess loads the model, sets ``torch.set_num_threads(threads)``
and asks one question about an 8-frame clip ``--repeats`` times after one warm-up ask; the cell's figure is
the median prefill (the first forward: all visual tokens through the decoder) and the median whole ask
(decode + vision + prefill + decode steps). "busy" runs ``--burners`` busy-looping processes (pure Python,
one core each) next to the measured one, as other people's jobs would on a shared machine; "idle" runs
none (other users' load is not controlled: the 1-minute load average is printed with every cell).

Threads compared: 1, every usable core (torch's default on a machine with that many physical cores), and
``auto`` = ``videosparse.pipeline.default_threads()`` evaluated in the child at the time it starts (the
rule the CLI applies when ``--threads`` is not given).

Usage:
    python scripts/bench_threads.py [--model testbed|realgeo] [--repeats 5] [--burners N] [--json OUT]

``realgeo`` is a random-weight model with Video-LLaVA's token geometry (257 tokens per frame, 2056 visual
tokens for 8 frames), built by ``scripts/bench_long.py``'s builder into a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def child(spec: dict) -> dict:
    """Runs in a fresh process: threads, model, warm-up, timed asks."""
    from videosparse.pipeline import default_threads

    threads = default_threads() if spec["threads"] == "auto" else int(spec["threads"])
    import torch

    torch.set_num_threads(threads)
    from videosparse import VideoQA

    qa = VideoQA.from_pretrained(spec["model"], cache_size=0, progress=False)
    gen = {"max_new_tokens": 4, "min_new_tokens": 4}
    qa.ask(spec["video"], spec["question"], **gen)  # warm-up
    prefill, wall = [], []
    for _ in range(int(spec["repeats"])):
        t0 = time.perf_counter()
        ans = qa.ask(spec["video"], spec["question"], **gen)
        wall.append(time.perf_counter() - t0)
        prefill.append(ans.prefill_seconds)
    return {"threads": torch.get_num_threads(), "prefill": statistics.median(prefill),
            "ask": statistics.median(wall), "decoder_tokens": ans.visual_tokens}


def run_cell(spec: dict, burners: int, timeout: float = 900) -> dict:
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(burners)]
    try:
        if burners:
            time.sleep(2.0)  # let the burners reach the run queue
        load = os.getloadavg()[0]
        cmd = [sys.executable, os.path.abspath(__file__), "--_child", json.dumps(spec)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"child {spec} failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["loadavg_1min"] = load
    return out


def main(argv: list | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="testbed", choices=["testbed", "realgeo"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--burners", type=int, default=None,
                    help="busy-looping processes of the 'busy' condition (default: usable cores - 1, at least 1)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._child:
        print(json.dumps(child(json.loads(args._child))))
        return {}
    sys.path.insert(0, HERE)
    from videosparse.testbed import synthetic as syn

    cpus = _usable_cpus()
    burners = args.burners if args.burners is not None else max(1, cpus - 1)
    work = tempfile.mkdtemp(prefix="bench_threads_")
    if args.model == "realgeo":
        from bench_long import build_real_geometry, make_video

        model = build_real_geometry(os.path.join(work, "realgeo"))["path"]
        vid = make_video(os.path.join(work, "clip.mp4"), 8, 224, seed=3)
        video, question = vid["path"], vid["question"]
    else:
        model = "testbed"
        s = syn.make_sample(7, 0)
        video = os.path.join(work, "clip.mp4")
        syn.write_video(s.frames, video)
        question = s.question
    threads = ["1", str(cpus), "auto"] if cpus > 1 else ["1", "auto"]
    res: dict = {"model": args.model, "usable_cpus": cpus, "burners": burners, "repeats": args.repeats, "cells": []}
    for cond, nb in (("idle", 0), ("busy", burners)):
        for t in threads:
            spec = {"model": model, "video": video, "question": question, "threads": t, "repeats": args.repeats}
            cell = run_cell(spec, nb)
            cell.update(condition=cond, asked=t)
            res["cells"].append(cell)
            print(f"  {cond:4s} threads={t:>4s} (ran {cell['threads']}): prefill {cell['prefill'] * 1e3:8.1f} ms, "
                  f"ask {cell['ask'] * 1e3:8.1f} ms, load avg {cell['loadavg_1min']:.2f}", file=sys.stderr, flush=True)
    print(render(res))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=1)
    return res


def render(res: dict) -> str:
    cells = res["cells"]
    cols = sorted({c["asked"] for c in cells}, key=lambda a: (a == "auto", int(a) if a != "auto" else 0))
    head = ["condition"] + [f"prefill, {a} thr" if a != "auto" else "prefill, auto" for a in cols] + \
        [f"ratio {a}/1" for a in cols if a != "1"]
    lines = [f"model {res['model']}, {res['usable_cpus']} usable CPUs, busy = {res['burners']} busy-looping process(es), "
             f"median of {res['repeats']} asks after a warm-up",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for cond in ("idle", "busy"):
        row = {c["asked"]: c for c in cells if c["condition"] == cond}
        base = row["1"]["prefill"]
        vals = [f"{row[a]['prefill'] * 1e3:.1f} ms" + (f" ({row[a]['threads']})" if a == "auto" else "") for a in cols]
        ratios = [f"{row[a]['prefill'] / base:.1f}x" for a in cols if a != "1"]
        lines.append("| " + " | ".join([cond] + vals + ratios) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
