#!/usr/bin/env python
"""Long-video benchmark: needle accuracy at a fixed decoder budget, and memory / time vs frames sampled.

A. Needle benchmark on the trained test bed (48 x 48 frames, P = 37 tokens per frame). Synthetic clips of
   256 frames in which every asked-about object is visible in only 2 frames. Three ways of feeding the
   decoder the SAME number of visual tokens (8 x 37 = 296), all with the default in-decoder "video" preset:

     (a) uniform8  -- Video-LLaVA's default: 8 uniformly sampled frames, all their tokens (short path);
     (b) relevance -- the long path over all 256 frames, question-guided pre-selection into a 296-token pool;
     (c) random    -- the long path with ``long.method="random"`` (same pool size, seeded random scores).

   Reported: exact-match accuracy overall and per question type; for (a) the share of questions whose
   object appears in one of the 8 sampled frames and the accuracy on the questions whose object it never
   sees (against the chance rate of guessing among the answers of that question type); for every method
   the share of questions whose target tokens (``frame * 37 + 1 + row * 6 + col``) ALL enter the decoder
   (the pool, ``trace.pool.kept``, for (b)/(c); the 8 frames for (a)). The random baseline is content-blind
   (no temporal-redundancy penalty: on these static synthetic scenes the penalty alone would steer a random
   pool to the frames where something appears). An extra row (b') turns off the temporal-redundancy penalty
   of the relevance pre-selection (``long.temporal_tau=None``). Row (b'') places the pooled tokens at time positions (``long.positions="time"``,
   where they would sit in an 8-frame clip) instead of consecutive ones. Row (o) is the model's ceiling
   with whole frames: 8 frames that include the object's frames (the short path; an oracle, not a method).

B. Memory and time vs frames sampled ({8, 32, 128, 512}) on (1) the test bed and (2) a random-weight model
   with the real Video-LLaVA token geometry (224 px, patch 14 -> 257 tokens per frame; small hidden sizes
   for the CPU; built with ``videosparse.testbed.model.build_config``, saved with ``save_pretrained`` and
   loaded by ``VideoQA.from_pretrained(dir)``; pool = 8 x 257 = 2056). One video FILE per model (lossless
   H.264, PyAV), one fresh subprocess per (model, frames) with one torch thread: model load, then one
   question asked with ``num_frames=N`` (frames decoded in chunks on the long path). Memory:
   ``ru_maxrss`` after the load (baseline) and after the ask (peak); "working" = peak - baseline. The
   children are started through a small launcher process: a process started straight from the benchmark
   would inherit the benchmark's own RSS high-water mark in its ru_maxrss. Also the ask's own peak RSS and
   its rise over the RSS right before it (VmHWM reset through /proc/self/clear_refs, where available), and
   ``torch.cuda.max_memory_allocated`` on CUDA. Times: the Answer's phases (median over --repeats asks;
   the memory figures are from the first ask).

Targets (printed as PASS/FAIL at the end; the quick mode reports them too but they are not meaningful at
its size): (b) >= 90 %; (a) on never-seen objects no better than chance + 10 points; peak RSS at the
largest frame count <= 1.5 x at 8 frames for both models (the stricter of ru_maxrss and the ask's VmHWM);
prefill time flat once the pool is full (prefill at the largest frame count / at the smallest long-path
frame count, 32 in the full run, <= 1.5).

Usage:
    python scripts/bench_long.py [--json OUT]          # full run (N = 192 questions; several minutes)
    python scripts/bench_long.py --quick --json OUT    # CI size: 16 questions, frames {8, 64} (< 90 s)
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _p in (ROOT, HERE):  # the package, and scripts/bench_speed.py (machine info, load meter)
    if _p not in sys.path:
        sys.path.insert(0, _p)

NEEDLE_FRAMES = 256
UNIFORM_FRAMES = 8
FRAMES = (8, 32, 128, 512)
QUICK_FRAMES = (8, 64)
MODELS = ("testbed", "realgeo")
CHANCE_MARGIN = 0.10  # (a) on unseen objects must be <= chance + this
# name, label, LongVideoConfig overrides (SparseConfig.long) of the long path (None: the short path on 8 uniform frames)
METHODS = (
    ("uniform8", "(a) 8 uniform frames, all tokens (Video-LLaVA default)", None),
    ("relevance", "(b) long path, 256 frames, relevance pre-selection", {}),
    ("random", "(c) long path, 256 frames, random pre-selection", {"method": "random"}),
    # extra rows (not in the targets): the relevance pre-selection without its temporal-redundancy penalty,
    # with time positions, and the whole-frame ceiling
    ("relevance_no_temporal", "(b') relevance pre-selection, no temporal-redundancy penalty",
     {"temporal_tau": None}),
    ("relevance_time_positions", "(b'') relevance pre-selection, long.positions='time'",
     {"positions": "time"}),
    # the model's ceiling with whole frames: 8 frames that include the object's frames (short path)
    ("oracle8", "(o) oracle: 8 frames including the object's frames, all tokens", None),
)
EXTRAS = ("relevance_no_temporal", "relevance_time_positions", "oracle8")


# ----------------------------------------------------------------------------------------- helpers
def _status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _maxrss_kb() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r // 1024) if sys.platform == "darwin" else int(r)  # bytes on macOS, KiB on Linux


def _median(xs: list) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def _pct(x: float) -> str:
    return "n/a" if x is None or x != x else f"{100 * x:.1f}%"


def _mb(kb: Any) -> str:
    return "n/a" if kb is None else f"{kb / 1024:.1f}"


def _ms(s: Any) -> str:
    return "n/a" if s is None else f"{1000 * s:.1f}"


def _ratio(a: Any, b: Any) -> float | None:
    if a is None or b is None or b <= 0:
        return None
    return float(a) / float(b)


def _fmt_ratio(r: Any) -> str:
    return "n/a" if r is None else f"{r:.2f}x"


def versions() -> dict:
    import av
    import numpy
    import torch
    import transformers

    info = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "av": av.__version__, "numpy": numpy.__version__, "platform": platform.platform(),
            "logical_cpus": os.cpu_count(), "cuda": torch.cuda.is_available()}
    try:  # the CPU model, git commit and videosparse version, as the speed benchmark records them
        from bench_speed import machine_info

        info.update(machine_info(torch.get_num_threads()))
    except Exception as e:  # pragma: no cover - informational only
        info["machine_info_error"] = repr(e)
    return info


def _load_meter() -> Any:
    """bench_speed's LoadMeter (CPU used by other processes during the run), or a no-op context."""
    try:
        from bench_speed import LoadMeter

        return LoadMeter()
    except Exception:  # pragma: no cover - informational only
        import contextlib

        return contextlib.nullcontext()


# ----------------------------------------------------------------------------------------- A. needle
def target_ids(sample: Any, tokens_per_frame: int, grid: int) -> list:
    """Visual-token ids (``frame * P + 1 + row * grid + col``; 0 = CLS) of the asked-about cells."""
    return [int(t) * tokens_per_frame + 1 + int(r) * grid + int(c) for (t, r, c) in sample.target]


def oracle_frames(uniform: Any, target_frames: list) -> Any:
    """8 sorted frame indices: the target frames plus the uniform frames farthest from them."""
    import numpy as np

    rest = [int(u) for u in uniform if int(u) not in target_frames]
    rest.sort(key=lambda u: -min(abs(u - t) for t in target_frames))
    keep = list(target_frames) + rest[: len(uniform) - len(target_frames)]
    return np.array(sorted(keep), dtype=int)


def chance_rate(qtype: str) -> float:
    from videosparse.testbed import synthetic as syn

    return 1.0 / len(syn.ANSWERS[qtype])


def needle_benchmark(n: int, seed: int, max_new_tokens: int = 4, extras: bool = True, log: Any = print) -> dict:
    """Part A. n questions (types cycle where/when/shape/count) about 256-frame synthetic clips.
    extras: also the row (b') without the temporal-redundancy penalty, (b'') with time positions and the
    oracle row (o)."""
    import numpy as np

    from videosparse import LongVideoConfig, SparseConfig, VideoQA
    from videosparse.testbed import synthetic as syn

    gen = syn.GenConfig(num_frames=NEEDLE_FRAMES)
    qa = VideoQA.from_pretrained("testbed")
    P = qa.tokens_per_frame
    grid = gen.grid
    layers = int(qa.model.config.text_config.num_hidden_layers)
    base_cfg = SparseConfig.preset("video", num_layers=layers)
    fields = {f.name for f in dataclasses.fields(LongVideoConfig)}
    method_list = [m for m in METHODS if (extras or m[0] not in EXTRAS) and set(m[2] or {}) <= fields]
    configs = {name: base_cfg.replace(long=base_cfg.long.replace(**over)) if over else base_cfg
               for name, _, over in method_list}
    uniform_idx = np.linspace(0, NEEDLE_FRAMES - 1, UNIFORM_FRAMES).astype(int)
    uniform_set = {int(i) for i in uniform_idx}
    decoder_tokens = UNIFORM_FRAMES * P

    rows: list = []
    t_start = time.time()
    for i in range(n):
        s = syn.make_sample(seed, i, gen)
        tids = target_ids(s, P, grid)
        tframes = sorted({int(t) for (t, _, _) in s.target})
        row = {"index": i, "qtype": s.qtype, "question": s.question, "answer": s.answer, "target_frames": tframes,
               "uniform8_sees_object": any(f in uniform_set for f in tframes),
               "uniform8_sees_all_target_frames": all(f in uniform_set for f in tframes), "methods": {}}
        for name, _, _ in method_list:
            cfg = configs[name]
            if qa.sparsity is not cfg:
                qa.set_sparsity(cfg)
            t0 = time.perf_counter()
            if name in ("uniform8", "oracle8"):
                idx = uniform_idx if name == "uniform8" else oracle_frames(uniform_idx, tframes)
                ans = qa.ask(s.frames[idx], s.question, max_new_tokens=max_new_tokens, keep_frames=False)
                in_decoder = all(int(f) in set(idx.tolist()) for f in tframes)
                share = float(np.mean([int(t) in set(idx.tolist()) for (t, _, _) in s.target]))
                tokens = ans.pool_tokens or ans.visual_tokens
            else:
                ans = qa.ask(s.frames, s.question, num_frames=NEEDLE_FRAMES, max_new_tokens=max_new_tokens,
                             keep_frames=False)
                kept = set(ans.trace.pool.kept.reshape(-1).tolist())
                in_decoder = all(t in kept for t in tids)
                share = float(np.mean([t in kept for t in tids]))
                tokens = ans.pool_tokens
            wall = time.perf_counter() - t0
            row["methods"][name] = {
                "pred": ans.text, "correct": bool(syn.exact_match(ans.text, s.answer)), "decoder_tokens": int(tokens),
                "pool_tokens": int(ans.pool_tokens), "targets_all_in": bool(in_decoder), "target_share_in": share,
                "equivalent_tokens": float(ans.equivalent_tokens), "counts": [int(c) for c in ans.counts],
                "seconds": wall, "vision_seconds": ans.vision_seconds, "preselect_seconds": ans.preselect_seconds,
                "prefill_seconds": ans.prefill_seconds,
            }
        rows.append(row)
        if log is not None and ((i + 1) % 16 == 0 or i + 1 == n):
            acc = {m: np.mean([r["methods"][m]["correct"] for r in rows]) for m, _, _ in method_list}
            log(f"[needle] {i + 1}/{n}  " + "  ".join(f"{m} {100 * a:.0f}%" for m, a in acc.items())
                + f"  ({time.time() - t_start:.0f} s)", file=sys.stderr)
    qa.close()

    types = [t for t in syn.QUESTION_TYPES if any(r["qtype"] == t for r in rows)]

    def mean(xs: list) -> float:
        return float(np.mean(xs)) if xs else float("nan")

    methods: dict = {}
    for name, label, over in method_list:
        ms = [r["methods"][name] for r in rows]
        methods[name] = {
            "label": label,
            "long_path": over is not None,
            "pre_overrides": over,
            "accuracy": mean([m["correct"] for m in ms]),
            "per_type": {t: mean([r["methods"][name]["correct"] for r in rows if r["qtype"] == t]) for t in types},
            "decoder_tokens": mean([m["decoder_tokens"] for m in ms]),
            "pool_tokens": mean([m["pool_tokens"] for m in ms]),
            "targets_all_in": mean([m["targets_all_in"] for m in ms]),
            "target_share_in": mean([m["target_share_in"] for m in ms]),
            "equivalent_tokens": mean([m["equivalent_tokens"] for m in ms]),
            "seconds_per_question": mean([m["seconds"] for m in ms]),
            "unknown_share": mean([syn.normalize_answer(m["pred"]) == syn.UNKNOWN_WORD for m in ms]),
        }
    unseen = [r for r in rows if not r["uniform8_sees_object"]]
    seen = [r for r in rows if r["uniform8_sees_object"]]
    return {
        "n": n, "seed": seed, "num_frames": NEEDLE_FRAMES, "tokens_per_frame": P, "decoder_tokens": decoder_tokens,
        "uniform_frames": [int(i) for i in uniform_idx], "types": types, "in_decoder_preset": base_cfg.name,
        "methods": methods,
        "uniform8": {
            "object_seen_share": mean([r["uniform8_sees_object"] for r in rows]),
            "all_target_frames_seen_share": mean([r["uniform8_sees_all_target_frames"] for r in rows]),
            "unseen": {"n": len(unseen),
                       "accuracy": mean([r["methods"]["uniform8"]["correct"] for r in unseen]),
                       "chance": mean([chance_rate(r["qtype"]) for r in unseen]),
                       "unknown_share": mean([syn.normalize_answer(r["methods"]["uniform8"]["pred"]) == syn.UNKNOWN_WORD
                                              for r in unseen])},
            "seen": {"n": len(seen), "accuracy": mean([r["methods"]["uniform8"]["correct"] for r in seen])},
        },
        "questions": rows,
        "seconds": time.time() - t_start,
    }


def render_needle(res: dict) -> str:
    types = res["types"]
    out = [f"### A. Needle benchmark: test bed, {res['n']} questions (seed {res['seed']}), {res['num_frames']}-frame "
           f"clips, every object visible in 2 frames; {res['decoder_tokens']} visual tokens enter the decoder "
           f"(in-decoder preset '{res['in_decoder_preset']}')", ""]
    head = ["method", "decoder tokens", "accuracy"] + types + ["targets all in decoder input", "target tokens in",
                                                                "answers 'unknown'", "s / question"]
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "---|" * len(head))
    for name in res["methods"]:
        m = res["methods"][name]
        cells = [m["label"], f"{m['decoder_tokens']:.0f}", _pct(m["accuracy"])]
        cells += [_pct(m["per_type"][t]) for t in types]
        cells += [_pct(m["targets_all_in"]), _pct(m["target_share_in"]), _pct(m["unknown_share"]),
                  f"{m['seconds_per_question']:.3f}"]
        out.append("| " + " | ".join(cells) + " |")
    u = res["uniform8"]
    out += ["", "| (a) 8 uniform frames | value |", "|---|---|",
            f"| questions whose object is in >= 1 of the 8 frames | {_pct(u['object_seen_share'])} |",
            f"| questions whose target frames are all among the 8 | {_pct(u['all_target_frames_seen_share'])} |",
            f"| accuracy, object seen (n={u['seen']['n']}) | {_pct(u['seen']['accuracy'])} |",
            f"| accuracy, object never seen (n={u['unseen']['n']}) | {_pct(u['unseen']['accuracy'])} |",
            f"| chance on those questions (1 / answers of the type) | {_pct(u['unseen']['chance'])} |",
            f"| answers 'unknown' when the object is never seen | {_pct(u['unseen']['unknown_share'])} |"]
    return "\n".join(out)


# ----------------------------------------------------------------------------------------- B. setup
def build_real_geometry(out_dir: str, seed: int = 0) -> dict:
    """Random-weight Video-LLaVA with the real token geometry (224 px, patch 14 -> 257 tokens per frame) and
    small hidden sizes, saved with save_pretrained (model + test-bed tokenizer + preprocessor config) so
    ``VideoQA.from_pretrained(out_dir)`` loads it. Built with the test bed's own builders."""
    import torch
    from transformers import VideoLlavaForConditionalGeneration

    from videosparse.testbed import model as tb
    from videosparse.testbed import synthetic as syn

    gen = syn.GenConfig(num_frames=UNIFORM_FRAMES, grid=16, cell=14)  # 16 x 14 = 224 px, patch 14
    size = tb.ModelSize(vision_hidden=64, vision_layers=2, vision_heads=4, text_hidden=128, text_layers=4,
                        text_heads=4, text_intermediate=256)
    tok = tb.build_tokenizer()
    tok.model_max_length = 4096
    cfg = tb.build_config(tok, gen, size)
    cfg.text_config.max_position_embeddings = 4096
    torch.manual_seed(seed)
    model = VideoLlavaForConditionalGeneration(cfg).eval()
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.bos_token_id = tok.bos_token_id
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    tb.save_json(tb.preprocessor_config(gen), os.path.join(out_dir, "preprocessor_config.json"))
    v, t = cfg.vision_config, cfg.text_config
    return {"path": out_dir, "image_size": v.image_size, "patch_size": v.patch_size,
            "tokens_per_frame": tb.tokens_per_frame(cfg), "vision_hidden": v.hidden_size,
            "vision_layers": v.num_hidden_layers, "vision_heads": v.num_attention_heads,
            "vision_intermediate": v.intermediate_size, "text_hidden": t.hidden_size,
            "text_layers": t.num_hidden_layers,
            "text_heads": t.num_attention_heads, "text_intermediate": t.intermediate_size, "vocab": t.vocab_size,
            "max_position_embeddings": t.max_position_embeddings, "video_token_id": cfg.video_token_index,
            "image_token_id": cfg.image_token_index,
            "parameters": sum(p.numel() for p in model.parameters())}


def make_video(path: str, frames: int, size: int, seed: int) -> dict:
    """A long synthetic needle clip written losslessly (libx264rgb, crf 0) with PyAV; returns its question."""
    from videosparse.testbed import synthetic as syn

    cell = 8 if size == 48 else 14
    gen = syn.GenConfig(num_frames=frames + frames % 2, grid=size // cell, cell=cell)
    s = syn.make_sample(seed, 0, gen)
    syn.write_video(s.frames, path)
    info = {"path": path, "frames": int(s.frames.shape[0]), "size": [int(x) for x in s.frames.shape[1:3]],
            "bytes": os.path.getsize(path), "question": s.question, "answer": s.answer, "codec": "libx264rgb crf 0"}
    del s
    return info


# ----------------------------------------------------------------------------------------- B. child
def memory_child(spec: dict) -> dict:
    """Runs in a fresh process: load the model, ask one question about the video with num_frames frames."""
    import torch

    torch.set_num_threads(int(spec["threads"]))
    import av  # noqa: F401  (imported before the baseline: code, not working memory)
    import numpy as np  # noqa: F401

    import videosparse.core.pool  # noqa: F401
    import videosparse.longvideo  # noqa: F401
    import videosparse.video  # noqa: F401
    from videosparse import VideoQA

    rss_imports_kb = _maxrss_kb()
    cuda = torch.cuda.is_available() and not spec.get("cpu", False)
    t0 = time.perf_counter()
    # cache_size=0: every repeat decodes and encodes again (the short path would reuse its cached features)
    qa = VideoQA.from_pretrained(spec["model"], device="cuda" if cuda else "cpu", cache_size=0)
    load_s = time.perf_counter() - t0
    if spec.get("chunk_frames"):
        sp = qa.sparsity
        qa.set_sparsity(sp.replace(long=sp.long.replace(chunk_frames=int(spec["chunk_frames"]))))
    P = qa.tokens_per_frame
    gc.collect()
    baseline_kb = _maxrss_kb()  # ru_maxrss after the model load, before the ask
    rss_before_kb = _status_kb("VmRSS:")
    try:  # reset the kernel's RSS high-water mark so VmHWM is the ask's own peak
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        hwm_reset = True
    except OSError:
        hwm_reset = False
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    gen = {"max_new_tokens": int(spec["new_tokens"]), "min_new_tokens": int(spec["new_tokens"])}
    runs = []
    peak_first_kb = hwm_first_kb = cuda_peak = None
    for r in range(int(spec["repeats"])):
        t0 = time.perf_counter()
        ans = qa.ask(spec["video"], spec["question"], num_frames=int(spec["frames"]), keep_frames=False, **gen)
        wall = time.perf_counter() - t0
        steps = max(1, ans.new_tokens - 1) if ans.new_tokens else max(1, int(spec["new_tokens"]) - 1)
        runs.append({"wall": wall, "video_decode": ans.video_decode_seconds, "vision": ans.vision_seconds,
                     "preselect": ans.preselect_seconds, "prefill": ans.prefill_seconds, "decode": ans.decode_seconds,
                     "decode_per_step": ans.decode_seconds / steps, "new_tokens": ans.new_tokens,
                     "decoder_tokens": int(ans.pool_tokens or ans.visual_tokens), "pool_tokens": int(ans.pool_tokens),
                     "visual_tokens": int(ans.visual_tokens), "frames_used": len(ans.timestamps),
                     "counts": [int(c) for c in ans.counts], "text": ans.text})
        if r == 0:
            peak_first_kb = _maxrss_kb()
            hwm_first_kb = _status_kb("VmHWM:") if hwm_reset else None
            if cuda:
                cuda_peak = int(torch.cuda.max_memory_allocated())
        del ans
    peak_all_kb = _maxrss_kb()
    total_peak_kb = max(baseline_kb, peak_first_kb)  # lifetime ru_maxrss (clear_refs can only lower the reading)
    phases = ("wall", "video_decode", "vision", "preselect", "prefill", "decode", "decode_per_step")
    return {
        "model": spec["model_name"], "frames": int(spec["frames"]), "tokens_per_frame": P,
        "long_path": runs[0]["pool_tokens"] > 0, "decoder_tokens": runs[0]["decoder_tokens"],
        "visual_tokens": runs[0]["visual_tokens"], "frames_used": runs[0]["frames_used"],
        "counts": runs[0]["counts"], "new_tokens": runs[0]["new_tokens"], "answer": runs[0]["text"],
        "chunk_frames": int(qa.sparsity.long.chunk_frames) if qa.sparsity is not None else None,
        "load_seconds": load_s, "threads": torch.get_num_threads(), "device": "cuda" if cuda else "cpu",
        "rss_after_imports_kb": rss_imports_kb, "baseline_kb": baseline_kb, "rss_before_ask_kb": rss_before_kb,
        "peak_kb": total_peak_kb, "working_kb": total_peak_kb - baseline_kb,
        "ask_hwm_kb": hwm_first_kb, "ask_working_kb": (hwm_first_kb - rss_before_kb)
        if hwm_first_kb is not None and rss_before_kb is not None else None,
        "peak_all_repeats_kb": max(baseline_kb, peak_all_kb), "cuda_max_allocated_bytes": cuda_peak,
        "repeats": len(runs), "seconds": {k: _median([r[k] for r in runs]) for k in phases},
        "seconds_all": {k: [r[k] for r in runs] for k in phases},
    }


# A process started straight from this one inherits this one's RSS high-water mark in its ru_maxrss (Linux
# carries the pre-exec mm's hiwater into signal->maxrss at exec; with vfork that is the parent's lifetime peak,
# e.g. the GBs of rendering the 224 px video). A small launcher in between forks the child from a fresh
# interpreter instead, so the child's ru_maxrss starts at the launcher's ~10 MB.
LAUNCHER = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"


def run_child(spec: dict, timeout: float = 1200) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--_child", json.dumps(spec)]
    proc = subprocess.run([sys.executable, "-c", LAUNCHER] + cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"child {spec['model_name']} @ {spec['frames']} frames failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def memory_benchmark(frames: list, models: list, work: str, repeats: int, new_tokens: int, seed: int,
                     chunk_frames: int | None = None, log: Any = print) -> dict:
    """Part B: per model, one video file, one subprocess per frame count."""
    from videosparse.testbed import synthetic as syn

    n_video = max(frames) + 8  # a few more source frames than the most sampled
    out: dict = {}
    for name in models:
        t0 = time.time()
        if name == "testbed":
            model_info = {"path": "testbed", "image_size": 48, "patch_size": 8, "tokens_per_frame": 37}
            size = 48
        else:
            model_info = build_real_geometry(os.path.join(work, "realgeo_model"), seed=0)
            size = model_info["image_size"]
        video = make_video(os.path.join(work, f"{name}_{n_video}f{syn.VIDEO_EXT}"), n_video, size, seed)
        if log is not None:
            log(f"[memory] {name}: model + {video['frames']}-frame {size} px video ready "
                f"({video['bytes'] / 1e6:.1f} MB, {time.time() - t0:.1f} s)", file=sys.stderr)
        runs = {}
        for n in frames:
            spec = {"model": model_info["path"], "model_name": name, "video": video["path"],
                    "question": video["question"], "frames": n, "threads": 1, "repeats": repeats,
                    "new_tokens": new_tokens, "chunk_frames": chunk_frames}
            t1 = time.time()
            runs[str(n)] = run_child(spec)
            if log is not None:
                r = runs[str(n)]
                log(f"[memory] {name} {n} frames: peak {_mb(r['peak_kb'])} MB, working {_mb(r['working_kb'])} MB, "
                    f"prefill {_ms(r['seconds']['prefill'])} ms ({time.time() - t1:.1f} s)", file=sys.stderr)
        P = model_info["tokens_per_frame"]
        lo, hi = str(min(frames)), str(max(frames))
        long_frames = [n for n in frames if runs[str(n)]["long_path"]]
        ref = str(min(long_frames)) if long_frames else None
        ratios = {
            "frames_hi": int(hi), "frames_lo": int(lo), "prefill_ref_frames": int(ref) if ref else None,
            "peak": _ratio(runs[hi]["peak_kb"], runs[lo]["peak_kb"]),
            "ask_peak": _ratio(runs[hi]["ask_hwm_kb"], runs[lo]["ask_hwm_kb"]),
            "working": _ratio(runs[hi]["working_kb"], runs[lo]["working_kb"]),
            "ask_working": _ratio(runs[hi]["ask_working_kb"], runs[lo]["ask_working_kb"]),
            "prefill_vs_ref": _ratio(runs[hi]["seconds"]["prefill"], runs[ref]["seconds"]["prefill"]) if ref else None,
            "prefill_vs_lo": _ratio(runs[hi]["seconds"]["prefill"], runs[lo]["seconds"]["prefill"]),
        }
        out[name] = {"model": model_info, "video": video, "pre_budget": 8 * P, "runs": runs, "ratios": ratios}
    return out


def render_memory(res: dict) -> str:
    out = []
    for name, m in res.items():
        mi = m["model"]
        if name == "testbed":
            title = "test bed (trained; 48 px, patch 8 -> 37 tokens/frame, 4 layers)"
        else:
            title = (f"real Video-LLaVA geometry, random weights ({mi['image_size']} px, patch {mi['patch_size']} -> "
                     f"{mi['tokens_per_frame']} tokens/frame; vision {mi['vision_hidden']}x{mi['vision_layers']}L, "
                     f"text {mi['text_hidden']}x{mi['text_layers']}L, {mi['parameters'] / 1e6:.2f} M params)")
        v = m["video"]
        out += [f"### B. Memory and time: {title}", "",
                f"Video file: {v['frames']} frames, {v['size'][1]}x{v['size'][0]} px, {v['codec']}, "
                f"{v['bytes'] / 1e6:.1f} MB; pool (pre_budget) = {m['pre_budget']} tokens; the long path decodes "
                f"and encodes "
                f"{next(iter(m['runs'].values()))['chunk_frames']} frames per chunk; 1 torch thread per "
                f"subprocess; times = median of {next(iter(m['runs'].values()))['repeats']} asks; memory in MB.", ""]
        head = ["frames", "path", "decoder tokens", "baseline ru_maxrss (after load)", "peak ru_maxrss",
                "working (peak - baseline)", "RSS before ask", "ask peak RSS (VmHWM)", "ask HWM - RSS before",
                "decode video ms", "vision ms", "preselect ms", "prefill ms", "decode ms/step",
                "total ms"]
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "---|" * len(head))
        for n, r in m["runs"].items():
            s = r["seconds"]
            cells = [n, "long (pool)" if r["long_path"] else "short", str(r["decoder_tokens"]), _mb(r["baseline_kb"]),
                     _mb(r["peak_kb"]), _mb(r["working_kb"]), _mb(r["rss_before_ask_kb"]), _mb(r["ask_hwm_kb"]),
                     _mb(r["ask_working_kb"]), _ms(s["video_decode"]),
                     _ms(s["vision"]), _ms(s["preselect"]), _ms(s["prefill"]), _ms(s["decode_per_step"]),
                     _ms(s["wall"])]
            out.append("| " + " | ".join(cells) + " |")
        cuda = [r["cuda_max_allocated_bytes"] for r in m["runs"].values() if r["cuda_max_allocated_bytes"] is not None]
        if cuda:
            out.append("")
            out.append("CUDA max_memory_allocated (MB): " + ", ".join(
                f"{n}: {r['cuda_max_allocated_bytes'] / 2**20:.1f}" for n, r in m["runs"].items()))
        q = m["ratios"]
        out += ["", "| ratio | value |", "|---|---|",
                f"| peak ru_maxrss {q['frames_hi']} / {q['frames_lo']} frames | {_fmt_ratio(q['peak'])} |",
                f"| ask peak RSS (VmHWM) {q['frames_hi']} / {q['frames_lo']} frames | {_fmt_ratio(q['ask_peak'])} |",
                f"| working memory (ru_maxrss) {q['frames_hi']} / {q['frames_lo']} frames | "
                f"{_fmt_ratio(q['working'])} |",
                f"| ask HWM - RSS before {q['frames_hi']} / {q['frames_lo']} frames | {_fmt_ratio(q['ask_working'])} |",
                f"| prefill {q['frames_hi']} / {q['prefill_ref_frames']} frames (pool full) | "
                f"{_fmt_ratio(q['prefill_vs_ref'])} |",
                f"| prefill {q['frames_hi']} / {q['frames_lo']} frames | {_fmt_ratio(q['prefill_vs_lo'])} |", ""]
    return "\n".join(out)


# ----------------------------------------------------------------------------------------- checks
def checks(needle: dict | None, memory: dict | None) -> list:
    out = []
    if needle is not None:
        b = needle["methods"]["relevance"]["accuracy"]
        out.append({"name": "(b) relevance accuracy >= 90%", "pass": b >= 0.90, "value": b})
        u = needle["uniform8"]["unseen"]
        ok = u["n"] > 0 and u["accuracy"] <= u["chance"] + CHANCE_MARGIN
        out.append({"name": f"(a) accuracy on never-seen objects <= chance + {CHANCE_MARGIN:.2f}", "pass": bool(ok),
                    "value": u["accuracy"], "chance": u["chance"], "n": u["n"]})
    if memory is not None:
        for name, m in memory.items():
            q = m["ratios"]
            # the stricter of the process peak (ru_maxrss, which the import transient can mask) and the ask's
            # own peak RSS (VmHWM reset before the ask)
            worst = max(r for r in (q["peak"], q["ask_peak"]) if r is not None) if q["peak"] is not None else None
            out.append({"name": f"{name}: peak RSS {q['frames_hi']} / {q['frames_lo']} frames <= 1.5",
                        "pass": worst is not None and worst <= 1.5, "value": worst, "ru_maxrss": q["peak"],
                        "ask_peak": q["ask_peak"]})
        for name, m in memory.items():
            q = m["ratios"]
            out.append({"name": f"{name}: prefill {q['frames_hi']} / {q['prefill_ref_frames']} frames <= 1.5",
                        "pass": q["prefill_vs_ref"] is not None and q["prefill_vs_ref"] <= 1.5,
                        "value": q["prefill_vs_ref"]})
    return out


def render_checks(cs: list) -> str:
    parts = []
    for c in cs:
        v = c["value"]
        val = "n/a" if v is None else (f"{100 * v:.1f}%" if "accuracy" in c["name"] else f"{v:.2f}")
        if "ask_peak" in c:
            val = (f"ru_maxrss {_fmt_ratio(c['ru_maxrss'])}, ask VmHWM {_fmt_ratio(c['ask_peak'])}")
        if "chance" in c:
            val += f" vs chance {100 * c['chance']:.1f}% (n={c['n']})"
        parts.append(f"{'PASS' if c['pass'] else 'FAIL'} {c['name']} [{val}]")
    overall = "PASS" if cs and all(c["pass"] for c in cs) else "FAIL"
    return f"{overall}: " + "; ".join(parts)


# ----------------------------------------------------------------------------------------- main
def parse_args(argv: list | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="CI size: 16 questions, frames 8 and 64, 1 repeat")
    ap.add_argument("--json", default=None, help="write every number here")
    ap.add_argument("--n", type=int, default=None, help="needle questions (default 192; --quick 16)")
    ap.add_argument("--seed", type=int, default=1001, help="held-out seed of the synthetic clips (default 1001)")
    ap.add_argument("--frames", default=None, help="frame counts of part B (default 8,32,128,512; --quick 8,64)")
    ap.add_argument("--models", default=",".join(MODELS), help="part B models: testbed,realgeo")
    ap.add_argument("--repeats", type=int, default=None, help="asks per subprocess for timing (default 3; --quick 1)")
    ap.add_argument("--new-tokens", type=int, default=4, help="tokens generated per answer (default 4)")
    ap.add_argument("--no-extras", dest="extras", action="store_false", default=None,
                    help="part A without the extra rows (b') (no temporal penalty), (b'') (time "
                         "positions) and (o) (oracle frames); the default leaves them out only with --quick")
    ap.add_argument("--chunk-frames", type=int, default=None,
                    help="part B: SparseConfig.long.chunk_frames of the long path (default: the preset's, 8)")
    ap.add_argument("--skip-needle", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--workdir", default=None, help="where the model and videos of part B go (default: a temp dir)")
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.n is None:
        args.n = 16 if args.quick else 192
    if args.frames is None:
        args.frames = QUICK_FRAMES if args.quick else FRAMES
    else:
        args.frames = tuple(sorted({int(x) for x in str(args.frames).split(",") if x.strip()}))
    if args.extras is None:
        args.extras = not args.quick
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in args.models if m not in MODELS]
    if bad:
        ap.error(f"--models: unknown {bad}; choose from {list(MODELS)}")
    if args.n < 1 or args.repeats < 1 or not args.frames or min(args.frames) < 1:
        ap.error("--n, --repeats and --frames must be positive")
    return args


def main(argv: list | None = None) -> dict:
    args = parse_args(argv)
    if args._child is not None:
        res = memory_child(json.loads(args._child))
        print(json.dumps(res))
        return res
    t0 = time.time()
    needle = memory = None
    meter = _load_meter()
    with meter:
        if not args.skip_needle:
            needle = needle_benchmark(args.n, args.seed, max_new_tokens=args.new_tokens, extras=args.extras)
            print(render_needle(needle), "\n", flush=True)
        if not args.skip_memory:
            work = args.workdir or tempfile.mkdtemp(prefix="bench_long_")
            try:
                memory = memory_benchmark(list(args.frames), args.models, work, args.repeats, args.new_tokens,
                                          args.seed, chunk_frames=args.chunk_frames)
            finally:
                if args.workdir is None:
                    shutil.rmtree(work, ignore_errors=True)
            print(render_memory(memory), flush=True)
    cs = checks(needle, memory)
    wall = time.time() - t0
    load = getattr(meter, "result", None)
    result = {
        "config": {"quick": args.quick, "n": args.n, "seed": args.seed, "frames": list(args.frames),
                   "models": args.models, "repeats": args.repeats, "new_tokens": args.new_tokens,
                   "extras": args.extras, "chunk_frames": args.chunk_frames,
                   "command": " ".join([os.path.basename(sys.executable)] + sys.argv)},
        "versions": versions(),
        "needle": needle,
        "memory": memory,
        "machine_load": load,
        "checks": cs,
        "pass": bool(cs) and all(c["pass"] for c in cs),
        "wall_seconds": wall,
    }
    print(render_checks(cs))
    if memory is not None:
        print("info (not a target): working memory (peak - baseline ru_maxrss; ask VmHWM - RSS before) "
              + ", ".join(f"{k} {v['ratios']['frames_hi']}/{v['ratios']['frames_lo']} frames = "
                          f"{_fmt_ratio(v['ratios']['working'])}; {_fmt_ratio(v['ratios']['ask_working'])}"
                          for k, v in memory.items()))
    extra = ""
    if load:
        extra = (f"; other processes used {load['other_processes_cores']:.2f} of {os.cpu_count()} cores on average, "
                 f"load average {load['loadavg_start'][0]:.2f} -> {load['loadavg_end'][0]:.2f}")
    print(f"(wall time {wall:.0f} s{extra})")
    if args.json:
        d = os.path.dirname(os.path.abspath(args.json))
        os.makedirs(d, exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
    return result


if __name__ == "__main__":
    main()
