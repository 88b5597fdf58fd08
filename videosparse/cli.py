"""`videosparse` command line: ask | heatmap | demo.

`videosparse --help` (and every sub-command's --help) returns without importing torch.
Errors print one line on stderr and exit with code 2 (`--debug` shows the traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

EXIT_USAGE = 2
TESTBED = "testbed"


class CLIError(Exception):
    """An error reported to the user as one line (exit code 2)."""


def _progress(enabled: bool):
    def say(msg: str) -> None:
        if enabled:
            print(f"[videosparse] {msg}", file=sys.stderr, flush=True)

    say.enabled = enabled  # type: ignore[attr-defined]
    return say


class _Bar:
    """A one-line progress bar on stderr, drawn only when stderr is a terminal."""

    def __init__(self, label: str, enabled: bool) -> None:
        self.label = label
        self.enabled = enabled and sys.stderr.isatty()
        self.drawn = False

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total <= 0:
            return
        n = min(done, total)
        fill = int(30 * n / total)
        sys.stderr.write(f"\r[videosparse] {self.label} [{'#' * fill}{'.' * (30 - fill)}] {n}/{total}")
        sys.stderr.flush()
        self.drawn = True

    def close(self) -> None:
        if self.drawn:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self.drawn = False


def _parse_budget(text: str | None):
    if text is None:
        return None
    t = text.strip()
    if t == "rank":
        return "rank"
    try:
        if t.isdigit() or (t.startswith("-") and t[1:].isdigit()):
            return int(t)
        return float(t)
    except ValueError:
        raise CLIError(f"--budget: expected a token count (194), a fraction (0.1) or 'rank', got {text!r}") from None


def testbed_dir() -> str:
    """Directory of the embedded test-bed checkpoint shipped inside the package."""
    from videosparse.testbed import path

    return path()


def _model_path(name: str) -> str:
    return testbed_dir() if name == TESTBED else name


def _add_common(p: argparse.ArgumentParser, default_model: str) -> None:
    p.add_argument("--model", default=default_model,
                   help=f"hub id or local directory of a Video-LLaVA checkpoint, or '{TESTBED}' for the "
                        f"embedded test-bed model (default: {default_model})")
    p.add_argument("--preset", default="video", help="sparsity preset: video, sparsevlm-v1, sparsevlm-v1.5, "
                                                     "sparsevlm-v2, fastv, random, uniform, or 'none' (full model)")
    p.add_argument("--budget", default=None, help="visual tokens kept: count (194), fraction (0.1) or 'rank'")
    p.add_argument("--frames", type=int, default=8, help="frames sampled uniformly from the video (default 8)")
    p.add_argument("--device", default=None, help="torch device (default: cpu)")
    p.add_argument("--dtype", default=None, help="float32, float16 or bfloat16 (default: checkpoint's)")
    p.add_argument("--attn", default="sdpa", choices=["eager", "sdpa", "flash_attention_2"],
                   help="attention implementation (default sdpa)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--heatmap", metavar="DIR", default=None, help="write PNG/MP4/JSON/NPZ retention heatmaps here")
    p.add_argument("--json", action="store_true", help="print the answer as JSON on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress messages on stderr")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="videosparse",
                                 description="Question-guided visual token pruning for Video-LLaVA.")
    ap.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = ap.add_subparsers(dest="cmd", metavar="{ask,heatmap,demo}")
    a = sub.add_parser("ask", help="answer a question about a video (pruned)")
    a.add_argument("video", help="video file")
    a.add_argument("question", help="the question")
    _add_common(a, "LanguageBind/Video-LLaVA-7B-hf")
    a.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    h = sub.add_parser("heatmap", help="re-render heatmaps from a saved retention JSON and its video")
    h.add_argument("trace", help="retention JSON written by `ask --heatmap` / `demo`")
    h.add_argument("--video", required=True, help="the video the trace was made on")
    h.add_argument("--out", required=True, help="output directory")
    h.add_argument("--no-video", action="store_true", help="skip the MP4 overlay")
    h.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    d = sub.add_parser("demo", help="run the whole pipeline offline on the embedded test-bed model")
    d.add_argument("--out", default="videosparse-demo", help="output directory (default ./videosparse-demo)")
    d.add_argument("--seed", type=int, default=7, help="seed of the generated clip")
    d.add_argument("--preset", default="video")
    d.add_argument("--budget", default="0.1")
    d.add_argument("--json", action="store_true")
    d.add_argument("--quiet", action="store_true")
    d.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    return ap


def _sparsity(preset: str, budget, num_layers: int):
    from videosparse import SparseConfig

    if preset in ("none", "full"):
        if budget is not None:
            raise CLIError("--budget given with --preset none")
        return None
    return SparseConfig.preset(preset, budget=budget, num_layers=num_layers)


def _load_qa(model: str, preset: str, budget, frames: int, device, dtype, attn, say):
    from videosparse.pipeline import VideoQA

    path = _model_path(model)
    if model == TESTBED and not os.path.isdir(path):
        raise CLIError(f"the embedded test-bed model is missing at {path}")
    say(f"loading model {model} ...")
    t0 = time.perf_counter()
    qa = VideoQA.from_pretrained(path, sparsity=None, device=device, dtype=dtype, attn_implementation=attn,
                                 num_frames=frames)
    qa.set_sparsity(_sparsity(preset, budget, qa.model.config.text_config.num_hidden_layers))
    say(f"model loaded in {time.perf_counter() - t0:.1f}s")
    return qa


def _check_budget_fits(qa) -> None:
    if qa.sparsity is None:
        return
    nv = qa.num_frames * qa.tokens_per_frame
    qa.sparsity.stage_counts(nv)  # ValueError naming the budget when impossible


def _answer(qa, video, question, max_new_tokens, say):
    say("encoding the frames (vision tower) ...")
    t0 = time.perf_counter()
    qa.encode(video)
    say(f"encoded in {time.perf_counter() - t0:.2f}s; generating ...")
    bar = _Bar("generating (forward passes)", enabled=say is not None and getattr(say, "enabled", True))
    qa.on_step = bar
    try:
        ans = qa.ask(video, question, max_new_tokens=max_new_tokens)
    finally:
        bar.close()
        qa.on_step = None
    say(f"answered: prefill {ans.prefill_seconds:.3f}s, decode {ans.decode_seconds:.3f}s ({ans.new_tokens} tokens)")
    return ans


def _print_answer(ans, as_json: bool, heat: dict | None) -> None:
    if as_json:
        d = ans.to_dict()
        d["per_frame_kept"] = ans.trace.kept_per_frame()[0].tolist() if ans.trace is not None else None
        d["heatmap"] = heat
        print(json.dumps(d))
        return
    print(f"Q: {ans.question}")
    print(f"A: {ans.text}")
    if ans.trace is not None:
        P = ans.trace.tokens_per_frame
        print(f"visual tokens {ans.visual_tokens} -> {ans.counts} after stages at layers "
              f"{[s.layer for s in ans.trace.stages]}; equivalent tokens {ans.equivalent_tokens:.1f}")
        for t, k in enumerate(ans.trace.kept_per_frame()[0].tolist()):
            ts = ans.timestamps[t] if t < len(ans.timestamps) else float("nan")
            print(f"  frame {t} (t={ts:6.2f}s): kept {k:3d}/{P}")
    else:
        print(f"visual tokens {ans.visual_tokens} (full model, no pruning)")
    print(f"prefill {ans.prefill_seconds:.3f}s, decode {ans.decode_seconds:.3f}s")
    if heat:
        for kind, path in heat.items():
            print(f"heatmap {kind}: {path}")


def _write_heatmaps(qa, ans, out_dir: str, video: bool = True) -> dict | None:
    if ans.trace is None:
        return None
    from videosparse import heatmap

    title = f"Q: {ans.question}  A: {ans.text}"
    meta = {"question": ans.question, "answer": ans.text, "video": ans.video,
            "frame_indices": ans.frame_indices, "preprocessing": qa.spec.to_dict()}
    return heatmap.write_all(ans.frames, ans.trace, out_dir, spec=qa.spec, timestamps=ans.timestamps,
                             title=title, video=video, meta=meta)


def cmd_ask(args, say) -> int:
    if not args.question or not args.question.strip():
        raise CLIError("the question is empty")
    if not os.path.exists(args.video):
        raise CLIError(f"{args.video}: no such file")
    budget = _parse_budget(args.budget)
    from videosparse.video import load_video

    say(f"decoding {args.frames} frames of {args.video} ...")
    t0 = time.perf_counter()
    clip = load_video(args.video, num_frames=args.frames)  # bad video fails before the model loads
    say(f"decoded in {time.perf_counter() - t0:.2f}s ({clip.frames.shape[2]}x{clip.frames.shape[1]}, "
        f"{clip.backend})")
    qa = _load_qa(args.model, args.preset, budget, args.frames, args.device, args.dtype, args.attn, say)
    _check_budget_fits(qa)
    ans = _answer(qa, clip, args.question, args.max_new_tokens, say)
    heat = _write_heatmaps(qa, ans, args.heatmap) if args.heatmap else None
    _print_answer(ans, args.json, heat)
    return 0


def cmd_heatmap(args, say) -> int:
    from videosparse import heatmap
    from videosparse.video import VideoProcessorSpec, load_video

    if not os.path.exists(args.trace):
        raise CLIError(f"{args.trace}: no such file")
    try:
        trace, doc = heatmap.trace_from_json(args.trace)
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CLIError(f"{args.trace}: not a videosparse retention JSON ({type(e).__name__})") from None
    indices = (doc.get("meta") or {}).get("frame_indices")
    clip = load_video(args.video, indices=indices) if indices else load_video(args.video, num_frames=trace.num_frames)
    if clip.frames.shape[0] != trace.num_frames:
        raise CLIError(f"{args.video}: decoded {clip.frames.shape[0]} frames, the trace has {trace.num_frames}")
    spec = _spec_from_doc(doc) or VideoProcessorSpec()
    meta = doc.get("meta") or {}
    title = f"Q: {meta.get('question', '')}  A: {meta.get('answer', '')}" if meta else None
    paths = heatmap.write_all(clip.frames, trace, args.out, spec=spec, timestamps=doc.get("timestamps"),
                              title=title, video=not args.no_video, meta=meta)
    for kind, p in paths.items():
        print(f"heatmap {kind}: {p}")
    return 0


def _spec_from_doc(doc):
    from videosparse.video import VideoProcessorSpec

    sp = (doc.get("meta") or {}).get("preprocessing")
    if not sp:
        return None
    return VideoProcessorSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in sp.items()})


def cmd_demo(args, say) -> int:
    from videosparse.demo import run_demo

    budget = _parse_budget(args.budget)
    result = run_demo(out_dir=args.out, seed=args.seed, preset=args.preset, budget=budget, say=say)
    ans, heat = result["answer"], result["heatmap"]
    if args.json:
        d = ans.to_dict()
        d.update({"expected": result["expected"], "video_file": result["video"], "heatmap": heat,
                  "per_frame_kept": ans.trace.kept_per_frame()[0].tolist() if ans.trace is not None else None})
        print(json.dumps(d))
        return 0
    print(f"clip: {result['video']} ({result['description']})")
    _print_answer(ans, False, heat)
    print(f"expected answer: {result['expected']}  ->  {'correct' if ans.text == result['expected'] else 'WRONG'}")
    return 0


def main(argv: list | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.cmd is None:
        parser.print_help()
        return EXIT_USAGE
    debug = getattr(args, "debug", False)
    quiet = getattr(args, "quiet", False)
    say = _progress(not quiet)
    if quiet:
        try:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        except ImportError:  # pragma: no cover
            pass
    try:
        return {"ask": cmd_ask, "heatmap": cmd_heatmap, "demo": cmd_demo}[args.cmd](args, say)
    except KeyboardInterrupt:
        print("videosparse: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one line, no traceback, exit 2
        if debug:
            raise
        msg = str(e).strip().splitlines()
        text = msg[0] if msg else type(e).__name__
        if not isinstance(e, (CLIError, ValueError, OSError)) and not type(e).__name__.endswith("Error"):
            text = f"{type(e).__name__}: {text}"
        print(f"videosparse: error: {text}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
