"""`videosparse` command line: ask | heatmap | demo.

`videosparse --help` (and every sub-command's --help) returns without importing torch.
Errors print one line on stderr and exit with code 2 (`--debug` shows the traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time

EXIT_USAGE = 2
TESTBED = "testbed"


class CLIError(Exception):
    """An error reported to the user as one line (exit code 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``videosparse: error: ...``, exit 2) instead of usage + error."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(EXIT_USAGE, f"videosparse: error: {message} (see {self.prog} --help)\n")


def _progress(enabled: bool):
    def say(msg: str) -> None:
        if enabled:
            print(f"[videosparse] {msg}", file=sys.stderr, flush=True)

    say.enabled = enabled  # type: ignore[attr-defined]
    return say


class _Bar:
    """tqdm bar over generate's forward passes, on ``stream`` (default stderr), only when it is a terminal.
    An early stop (end of sequence) closes the bar at the steps actually taken instead of freezing at e.g. 3/64."""

    def __init__(self, label: str, enabled: bool, stream=None) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled and _isatty(self.stream)
        self.bar = None

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total <= 0:
            return
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=f"[videosparse] {self.label}", file=self.stream, leave=True,
                            unit="step", dynamic_ncols=True)
        self.bar.update(max(0, min(done, total) - self.bar.n))

    def close(self) -> None:
        if self.bar is not None:
            if self.bar.n < self.bar.total:
                self.bar.total = self.bar.n  # stopped early: the bar ends full at the steps taken
                self.bar.refresh()
            self.bar.close()
            self.bar = None


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or not a file
        return False


class _OnceFilter(logging.Filter):
    """Each distinct message once per command (the question is checked before the model loads and again when
    it is asked: its warning is printed once)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set = set()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.levelno, record.getMessage())
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"videosparse: {record.levelname.lower()}: {_flagged(record.getMessage())}"


@contextlib.contextmanager
def _cli_logging(quiet: bool):
    """The library logs (`logging`); the CLI prints its warnings as ``videosparse: warning: ...`` lines on
    stderr, each once, none with --quiet (the command's own `videosparse: error:` line still prints). Removed
    again on exit."""
    log = logging.getLogger("videosparse")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    handler.addFilter(_OnceFilter())
    handler.setLevel(logging.CRITICAL + 1 if quiet else logging.WARNING)
    log.addHandler(handler)
    try:
        yield
    finally:
        log.removeHandler(handler)


def _int_at_least(minimum: int, words: str):
    """An argparse type: an integer >= `minimum`, described as `words` in the error."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {words}, got {text!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"must be {words}, got {v}")
        return v

    return parse


_nonnegative_int = _int_at_least(0, "an integer >= 0")
_positive_int = _int_at_least(1, "a positive integer")


def _positive_float(text: str) -> float:
    import math

    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return v


def _dtype_name(text: str) -> str:
    from videosparse.loading import DTYPES

    if text.lower() not in DTYPES:
        raise argparse.ArgumentTypeError(f"unknown dtype {text!r}; expected float32, float16 or bfloat16")
    return DTYPES[text.lower()]


def _parse_budget(text: str | None):
    from videosparse.config import parse_budget

    if text is None:
        return None
    try:
        return parse_budget(text)
    except ValueError:
        raise CLIError(f"--budget: expected a token count (194), a fraction (0.1), equivalent tokens (194eq) or "
                       f"'rank', got {text!r}") from None


BUDGET_HELP = ("visual-token budget: 'Neq' = N equivalent tokens, the SparseVLM paper's unit (mean visual tokens "
               "per decoder layer; e.g. 194eq, the paper's Video-LLaVA setting): the stage counts are solved for it; "
               "an int = tokens kept after the last stage (video, fastv, random, uniform), a float in (0, 1] = that "
               "fraction (1 keeps one token, 1.0 all of them), 'rank' = rank-adaptive; sparsevlm-v1: 192/128/64 = the release code's rank rule for that "
               "setting; sparsevlm-v1.5/v2: 192/128/96/64 select the seed's per-stage counts for 576 tokens (64 ends "
               "at 17 for v1.5), other values are nominal budgets scaled by the seed's ratios (the run prints what "
               "each stage keeps, and the equivalent tokens)")


THREADS_HELP = ("torch CPU threads (default: auto = the usable CPUs minus the 1-minute load average, rounded to the "
                "nearest integer with halves down, at least 1: on a 2-core machine 2 when the load is below 0.5, else 1; "
                "oversubscribed threads made prefill 7-46x slower on a shared 2-core machine)")


def _add_common(p: argparse.ArgumentParser, default_model: str) -> None:
    p.add_argument("--model", default=default_model,
                   help=f"hub id or local directory of a Video-LLaVA checkpoint, or '{TESTBED}' for the "
                        f"embedded test-bed model (default: {default_model})")
    p.add_argument("--preset", default="video", help="sparsity preset: video, sparsevlm-video, sparsevlm-v1, sparsevlm-v1.5, "
                                                     "sparsevlm-v2, fastv, random, uniform, or 'none' (full model)")
    p.add_argument("--budget", default=None, help=BUDGET_HELP)
    p.add_argument("--frames", type=_positive_int, default=None,
                   help="frames sampled uniformly from the video (default 8); more than 8 frames' worth of tokens "
                        "(see --pre-budget) runs the long-video path: chunked decoding and a question-guided pool "
                        "before the decoder. With --fps: the most frames taken (default: no cap)")
    p.add_argument("--fps", type=_positive_float, default=None,
                   help="sample R frames per second of video instead (never repeats a frame; long-video path)")
    p.add_argument("--pre-budget", dest="pre_budget", type=_positive_int, default=None,
                   help="long videos: the most visual tokens entering the decoder (default: 8 frames' worth, "
                        "8 x 257 = 2056 on Video-LLaVA)")
    p.add_argument("--device", default=None, help="torch device: cpu (default), cuda, cuda:N, mps")
    p.add_argument("--dtype", default=None, type=_dtype_name,
                   help="float32, float16 or bfloat16 (default: checkpoint's)")
    p.add_argument("--attn", default="sdpa", choices=["eager", "sdpa", "flash_attention_2"],
                   help="attention implementation (default sdpa)")
    p.add_argument("--max-new-tokens", type=_positive_int, default=64)
    p.add_argument("--no-strict", dest="strict", action="store_false",
                   help="use the decodable frames of a truncated or partly corrupt video instead of failing")
    p.add_argument("--heatmap", metavar="DIR", default=None, help="write PNG/MP4/JSON/NPZ retention heatmaps here")
    p.add_argument("--threads", type=_positive_int, default=None, help=THREADS_HELP)
    p.add_argument("--json", action="store_true", help="print the answer as JSON on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress messages or warnings on stderr")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="videosparse", description="Question-guided visual token pruning for Video-LLaVA.")
    ap.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = ap.add_subparsers(dest="cmd", metavar="{ask,heatmap,demo}", parser_class=_Parser)
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
    h.add_argument("--no-strict", dest="strict", action="store_false",
                   help="use the decodable frames of a truncated or partly corrupt video")
    h.add_argument("--force", action="store_true",
                   help="draw the trace even when --video is not the video it was made on (size, content hash, "
                        "frame count or duration differ from what the trace recorded)")
    h.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    d = sub.add_parser("demo", help="run the whole pipeline offline on the embedded test-bed model")
    d.add_argument("--out", default="videosparse-demo", help="output directory (default ./videosparse-demo)")
    d.add_argument("--seed", type=_nonnegative_int, default=7, help="seed of the generated clip (an integer >= 0)")
    d.add_argument("--preset", default="video", help="sparsity preset (as for ask), or 'none' (full model)")
    d.add_argument("--budget", default=None, help=BUDGET_HELP + " (default: the preset's, 0.1 for video)")
    d.add_argument("--threads", type=_positive_int, default=None, help=THREADS_HELP)
    d.add_argument("--json", action="store_true")
    d.add_argument("--quiet", action="store_true")
    d.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    return ap


def _check_preset(preset: str, budget) -> None:
    """Unknown preset / budget with no preset: before anything is loaded (config.py imports no torch)."""
    from videosparse.config import PRESETS

    if preset in ("none", "full"):
        if budget is not None:
            raise CLIError("--budget given with --preset none (the full model prunes nothing)")
        return
    if preset not in PRESETS:
        raise CLIError(f"--preset: unknown preset {preset!r}; known: {', '.join(sorted(PRESETS))}, none")
    if budget is not None:
        from videosparse.config import Budget

        try:
            Budget.of(budget)  # 0, -5, 1.5: no model needed to refuse them
        except ValueError as e:
            raise CLIError(_flagged(str(e))) from None


def _sparsity(preset: str, budget, num_layers: int, num_visual: int | None = None):
    """The SparseConfig for the model's depth, checked against the input's visual tokens; errors name
    the flag instead of the Python field."""
    from videosparse import SparseConfig

    if preset in ("none", "full"):
        return None
    try:
        cfg = SparseConfig.preset(preset, budget=budget, num_layers=num_layers)
        if num_visual is not None:
            cfg.describe(num_visual, num_layers)
    except ValueError as e:
        raise CLIError(_flagged(str(e))) from None
    return cfg


def _flagged(msg: str) -> str:
    """Library messages name Python fields/arguments; the CLI user knows flags."""
    for old, new in (("SparseConfig.budget: ", "--budget: "), ("SparseConfig.preset: ", "--preset: "),
                     ("SparseConfig.layers: ", "--preset/--budget: "), ("strict=False", "--no-strict"),
                     ("num_frames", "--frames"), ("max_new_tokens", "--max-new-tokens"),
                     ("LongVideoConfig.budget: ", "--pre-budget: "), ("pre_budget", "--pre-budget")):
        msg = msg.replace(old, new)
    return msg


def _check_out_dir(path: str | None, flag: str) -> None:
    """An output directory must be usable before any work is done: created now if missing."""
    if path is None:
        return
    if os.path.exists(path) and not os.path.isdir(path):
        raise CLIError(f"{flag} {path}: exists and is not a directory")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise CLIError(f"{flag} {path}: cannot create the directory ({e.strerror or e})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise CLIError(f"{flag} {path}: directory is not writable")


def _runtime(args, say) -> bool:
    """After the arguments were checked (nothing heavy imported before): transformers' output (weight-loading
    bar only on a terminal, its warnings only without --quiet; restored when the command ends) and the torch
    threads (--threads, else `default_threads()`; restored too). Returns whether progress bars are shown."""
    from videosparse.runtime import default_threads, hf_output, usable_cpus

    quiet = getattr(args, "quiet", False)
    bars = not quiet and _isatty(sys.stderr)
    stack = args._stack
    stack.enter_context(hf_output(progress=bars, warnings=not quiet))
    threads = getattr(args, "threads", None)
    why = "--threads"
    if threads is None:
        threads = default_threads()
        try:
            load = f"load average {os.getloadavg()[0]:.2f}"
        except (AttributeError, OSError):
            load = "load unknown"
        why = f"auto: {usable_cpus()} usable CPUs, {load}; set --threads to choose"
    import torch

    before = torch.get_num_threads()
    if threads != before:
        torch.set_num_threads(threads)
        stack.callback(torch.set_num_threads, before)
    say(f"{threads} torch thread{'s' if threads != 1 else ''} ({why})")
    return bars


def _answer(qa, clip, question, max_new_tokens, say, bars: bool, decode_seconds: float):
    say("encoding the frames (vision tower) ...")
    t0 = time.perf_counter()
    enc = qa.encode(clip)
    say(f"encoded in {time.perf_counter() - t0:.2f}s; generating ...")
    bar = _Bar("generating", enabled=bars)
    qa.on_step = bar
    try:
        ans = qa.ask(enc, question, max_new_tokens=max_new_tokens)  # the EncodedVideo keeps its vision time
    finally:
        bar.close()
        qa.on_step = None
    ans.video_decode_seconds = decode_seconds  # decoded (and timed) here, before the model loaded
    say(f"answered: prefill {ans.prefill_seconds:.3f}s, decode {ans.decode_seconds:.3f}s ({ans.new_tokens} tokens)")
    return ans


def _answer_long(qa, args, frames, pre_budget, say, bars: bool):
    say("decoding, encoding and pre-selecting in chunks ...")
    bar = _Bar("generating", enabled=bars)
    qa.on_step = bar
    try:
        ans = qa.ask(args.video, args.question, num_frames=frames, fps=args.fps, pre_budget=pre_budget,
                     max_new_tokens=args.max_new_tokens)
    finally:
        bar.close()
        qa.on_step = None
    say(f"{len(ans.timestamps)} frames: decode {ans.video_decode_seconds:.2f}s, vision {ans.vision_seconds:.2f}s, "
        f"pre-selection {ans.preselect_seconds:.2f}s; prefill {ans.prefill_seconds:.3f}s, "
        f"decode {ans.decode_seconds:.3f}s ({ans.new_tokens} tokens)")
    return ans


def _pool_note(ans) -> str:
    """What the long path's pre-selection dropped before the decoder (it runs even with --preset none)."""
    dropped = 1 - ans.pool_tokens / ans.visual_tokens if ans.visual_tokens else 0.0
    return (f"pool {ans.pool_tokens} (pre-selected before the decoder: {dropped:.1%} of the sampled frames' "
            f"tokens dropped)")


def _token_flow(ans) -> str:
    """``visual tokens 296 -> 60 after layer 1 -> 30 after layer 2; equivalent tokens 170.5`` (with a pool:
    ``visual tokens 9472 -> pool 296 (...) -> ...``; no stages: says that nothing is pruned in the decoder)."""
    parts = [f"visual tokens {ans.visual_tokens}"]
    if ans.pool_tokens:
        parts.append(_pool_note(ans))
    stages = ans.trace.stages if ans.trace is not None else []
    parts += [f"{c} after layer {s.layer}" for c, s in zip(ans.counts, stages)]
    line = " -> ".join(parts)
    if not stages:
        line += "; no pruning inside the decoder (--preset none)"
    return f"{line}; equivalent tokens {ans.equivalent_tokens:.1f}"


def _print_answer(ans, as_json: bool, heat: dict | None, heat_error: str | None = None,
                  heat_note: str | None = None) -> None:
    if as_json:
        d = ans.to_dict()
        d["per_frame_kept"] = ans.trace.kept_per_frame()[0].tolist() if ans.trace is not None else None
        d["heatmap"] = heat
        if heat_error:
            d["heatmap_error"] = heat_error
        if heat_note:
            d["heatmap_note"] = heat_note
        print(json.dumps(d), flush=True)
        return
    print(f"Q: {ans.question}")
    print(f"A: {ans.text}")
    for k, extra in enumerate(ans.sequences[1:], start=2):
        print(f"A{k}: {extra}")
    if ans.trace is not None:
        P = ans.trace.tokens_per_frame
        print(_token_flow(ans))
        per_frame = ans.trace.kept_per_frame()[0].tolist()
        shown = [(t, k) for t, k in enumerate(per_frame) if k or not ans.pool_tokens]
        if ans.pool_tokens:
            print(f"  kept tokens in {len(shown)} of {len(per_frame)} frames:")
        for t, k in shown:
            print(f"  frame {t} ({_time_label(ans.timestamps, t)}): kept {k:3d}/{P}")
    else:
        print(f"visual tokens {ans.visual_tokens} (full model, no pruning)")
    print(f"prefill {ans.prefill_seconds:.3f}s, decode {ans.decode_seconds:.3f}s", flush=True)


# why `--heatmap` (and the demo) writes nothing for the full model on whole frames
NO_HEATMAP = ("no heatmap written: with --preset none on whole frames every visual token reaches the decoder and "
              "none is pruned, so there is no retention to draw")
NO_HEATMAP_ASK = NO_HEATMAP + " (on the long-video path, more frames than --pre-budget holds, the pool's retention is drawn)"


def _time_label(timestamps, t: int) -> str:
    import math

    ts = timestamps[t] if t < len(timestamps) else None
    if ts is None or not math.isfinite(ts) or abs(ts) > 1e7:
        return "t=     ?"
    return f"t={ts:6.2f}s"


def _write_heatmaps(qa, ans, out_dir: str, video: bool = True) -> dict | None:
    if ans.trace is None:
        return None
    from videosparse import heatmap

    title = f"Q: {ans.question}  A: {ans.text}"
    meta = {"question": ans.question, "answer": ans.text, "video": ans.video,
            "frame_indices": ans.frame_indices, "preprocessing": qa.spec.to_dict()}
    source = ans.video if os.path.isfile(ans.video) else None  # recorded: `heatmap --video` is checked against it
    return heatmap.write_all(ans.frames, ans.trace, out_dir, spec=qa.spec, timestamps=ans.timestamps,
                             title=title, video=video, meta=meta, source=source)


def _check_video_path(path: str, flag: str = "") -> None:
    where = f"{flag} " if flag else ""
    if not os.path.exists(path):
        raise CLIError(f"{where}{path}: no such file")
    if os.path.isdir(path):
        raise CLIError(f"{where}{path}: is a directory, not a video file")


def cmd_ask(args, say) -> int:
    # 1. everything checkable from the arguments alone (milliseconds: neither torch nor transformers imported)
    if not args.question or not args.question.strip():
        raise CLIError("the question is empty")
    _check_video_path(args.video)
    budget = _parse_budget(args.budget)
    _check_preset(args.preset, budget)
    _check_out_dir(args.heatmap, "--heatmap")
    bars = _runtime(args, say)
    # 2. the checkpoint's config (no weights): architecture, depth, context; the hub fails fast
    from videosparse.loading import resolve_checkpoint, resolve_device

    ckpt = resolve_checkpoint(args.model)
    config = ckpt.load_config()
    from videosparse.frontends import frontend_for

    fe = frontend_for(config)  # the model family's prompt, frame geometry and limits
    P = fe.tokens_per_frame(config)  # None: each video has its own (Qwen-VL's smart_resize)
    layers = fe.num_layers(config)
    qspec = fe.preprocessor_spec(ckpt.source, ckpt.local_files_only)
    default_frames = fe.default_frames(qspec)
    frames = args.frames if args.frames is not None else (None if args.fps else default_frames)
    if fe.dynamic_grid:  # per-video token counts: a pool only with --pre-budget; --fps alone samples whole frames
        if frames is None:
            frames = int(getattr(qspec, "max_frames", 768))
        long = args.pre_budget is not None
        pre_budget = args.pre_budget
        decoder_tokens = pre_budget if long else None
    else:
        pre_budget = args.pre_budget if args.pre_budget is not None else default_frames * P
        long = args.fps is not None or frames * P > pre_budget
        decoder_tokens = pre_budget if long else frames * P
    sparsity = _sparsity(args.preset, budget, layers, decoder_tokens)
    if sparsity is not None and args.pre_budget is not None:
        sparsity = sparsity.replace(long=sparsity.long.replace(budget=args.pre_budget))
    resolve_device(args.device)
    if sparsity is not None:
        if decoder_tokens is None:
            try:
                sparsity.check_layers(layers)
            except ValueError as e:
                raise CLIError(_flagged(str(e))) from None
            say(f"{sparsity.name}: budget applied to each video's own visual tokens (known once it is decoded)")
        else:
            say(sparsity.describe(decoder_tokens, layers))
    # 3. the video (a bad file fails before the model loads)
    from videosparse.video import load_video, probe_video

    decode_seconds = None
    if long:
        info = probe_video(args.video, strict=args.strict, progress=None if bars else False)
        what = f"{args.fps:g} frames/s" + (f" (at most {frames})" if frames else "") if args.fps else f"{frames} frames"
        say(f"long video: {info.num_frames} frames, {info.duration:.1f}s; sampling {what}, decoded in chunks, "
            f"a pool of {pre_budget} tokens enters the decoder")
        if sparsity is None and P is not None:
            sampled = min(frames, info.num_frames) if frames else None
            share = (f" (of {sampled} frames x {P} = {sampled * P} tokens: {1 - pre_budget / (sampled * P):.1%} "
                     f"dropped)" if sampled and sampled * P > pre_budget else "")
            say(f"--preset none prunes nothing inside the decoder, but the long-video pool still keeps only "
                f"--pre-budget={pre_budget} tokens{share}, question-guided")
        clip = None
    else:
        say(f"decoding {frames} frames of {args.video} ..." if not args.fps else
            f"decoding {args.fps:g} frames/s (at most {frames}) of {args.video} ...")
        t0 = time.perf_counter()
        how = {"strategy": "fps", "sample_fps": args.fps} if args.fps else {}
        clip = load_video(args.video, num_frames=frames, strict=args.strict, progress=None if bars else False, **how)
        decode_seconds = time.perf_counter() - t0
        say(f"decoded in {decode_seconds:.2f}s ({clip.frames.shape[2]}x{clip.frames.shape[1]}, {clip.backend})")
    # 4. the prompt against the tokenizer and the model's context
    from transformers import AutoTokenizer

    from videosparse.pipeline import check_prompt

    tok = AutoTokenizer.from_pretrained(ckpt.source, local_files_only=ckpt.local_files_only)
    if fe.dynamic_grid and not long:  # at least one token per temporal group: refuses only what no size could fit
        check_prompt(tok, args.question, -(-clip.num_frames // fe.frames_per_step), 1, fe.max_positions(config),
                     args.max_new_tokens, frontend=fe)
    else:
        check_prompt(tok, args.question, (frames or 0) if long else clip.num_frames,
                     P if P is not None else "its own number of", fe.max_positions(config),
                     args.max_new_tokens, pool=pre_budget if long else None, frontend=fe)
    # 5. the model
    from videosparse.pipeline import VideoQA

    say(f"loading model {args.model} ...")
    t0 = time.perf_counter()
    qa = VideoQA.from_pretrained(ckpt, sparsity=sparsity, device=args.device, dtype=args.dtype,
                                 attn_implementation=args.attn, num_frames=default_frames if long else frames,
                                 tokenizer=tok, progress=bars)
    qa.decode_progress = None if bars else False  # the long path's sequential decodes
    say(f"model loaded in {time.perf_counter() - t0:.1f}s")
    if long:
        ans = _answer_long(qa, args, frames, pre_budget, say, bars)
    else:
        ans = _answer(qa, clip, args.question, args.max_new_tokens, say, bars, decode_seconds)
    # 6. the answer is printed before anything else can fail; heatmaps after it
    if not args.json:
        _print_answer(ans, False, None)
    heat, heat_error, heat_note = None, None, None
    if args.heatmap:
        try:
            heat = _write_heatmaps(qa, ans, args.heatmap)
        except Exception as e:  # the answer is already out; report the heatmap failure
            heat_error = f"writing heatmaps to {args.heatmap} failed: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}"
        if heat is None and heat_error is None:
            heat_note = NO_HEATMAP_ASK
    if args.json:
        _print_answer(ans, True, heat, heat_error, heat_note)
    else:
        for kind, path in (heat or {}).items():
            print(f"heatmap {kind}: {path}")
        if heat_note:
            print(heat_note)
    if heat_error:
        raise CLIError(heat_error)
    return 0


def cmd_heatmap(args, say) -> int:
    if not os.path.exists(args.trace):
        raise CLIError(f"{args.trace}: no such file")
    _check_video_path(args.video, "--video")
    _check_out_dir(args.out, "--out")
    from videosparse import heatmap

    try:
        trace, doc = heatmap.trace_from_json(args.trace)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, UnicodeDecodeError) as e:
        raise CLIError(f"{args.trace}: not a videosparse retention JSON ({type(e).__name__}: "
                       f"{str(e).strip().splitlines()[0] if str(e).strip() else ''})") from None
    meta = doc.get("meta") or {}
    recorded = meta.get("source")
    if recorded:
        mismatch = heatmap.source_mismatch(recorded, args.video)
        if mismatch and not args.force:
            raise CLIError(f"--video {args.video} is not the video this trace was made on "
                           f"({recorded.get('name') or recorded.get('path')}): {mismatch}; "
                           f"pass --force to draw the trace on it anyway")
        if mismatch:
            _warn(f"--video {args.video} is not the video the trace was made on ({mismatch}); drawn anyway (--force)")
    else:
        _warn(f"{args.trace} does not record the video it was made on (written before videosparse recorded it): "
              f"{args.video} cannot be checked against it")
    from videosparse.video import VideoProcessorSpec, load_video

    indices = meta.get("frame_indices")
    progress = False if getattr(args, "quiet", False) else None
    if indices:
        clip = load_video(args.video, indices=indices, strict=args.strict, progress=progress)
    else:
        clip = load_video(args.video, num_frames=trace.num_frames, strict=args.strict, progress=progress)
    if clip.frames.shape[0] != trace.num_frames:
        raise CLIError(f"{args.video}: decoded {clip.frames.shape[0]} frames, the trace has {trace.num_frames}")
    spec = _spec_from_doc(doc) or VideoProcessorSpec()
    title = f"Q: {meta.get('question', '')}  A: {meta.get('answer', '')}" if meta else None
    paths = heatmap.write_all(clip.frames, trace, args.out, spec=spec, timestamps=doc.get("timestamps"),
                              title=title, video=not args.no_video, meta=meta, source=recorded)
    for kind, p in paths.items():
        print(f"heatmap {kind}: {p}")
    return 0


def _warn(msg: str) -> None:
    print(f"videosparse: warning: {msg}", file=sys.stderr, flush=True)


def _spec_from_doc(doc):
    from videosparse.video import VideoProcessorSpec

    sp = (doc.get("meta") or {}).get("preprocessing")
    if not sp:
        return None
    return VideoProcessorSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in sp.items()})


def cmd_demo(args, say) -> int:
    budget = _parse_budget(args.budget)
    _check_preset(args.preset, budget)
    _check_out_dir(args.out, "--out")
    bars = _runtime(args, say)
    from videosparse.demo import run_demo

    result = run_demo(out_dir=args.out, seed=args.seed, preset=args.preset, budget=budget, say=say, progress=bars)
    ans, heat = result["answer"], result["heatmap"]
    note = None if heat else NO_HEATMAP
    if args.json:
        d = ans.to_dict()
        d.update({"expected": result["expected"], "video_file": result["video"], "heatmap": heat,
                  "per_frame_kept": ans.trace.kept_per_frame()[0].tolist() if ans.trace is not None else None})
        if note:
            d["heatmap_note"] = note
        print(json.dumps(d))
        return 0
    print(f"clip: {result['video']} ({result['description']})")
    _print_answer(ans, False, None)
    for kind, path in (heat or {}).items():
        print(f"heatmap {kind}: {path}")
    if note:
        print(note)
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
    try:
        with contextlib.ExitStack() as stack, _cli_logging(quiet):
            args._stack = stack  # settings a command changes for its run (threads, transformers' output)
            return {"ask": cmd_ask, "heatmap": cmd_heatmap, "demo": cmd_demo}[args.cmd](args, say)
    except KeyboardInterrupt:
        print("videosparse: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one line, no traceback, exit 2
        if debug:
            raise
        msg = str(e).strip().splitlines()
        text = _flagged(msg[0]) if msg else type(e).__name__
        if not isinstance(e, (CLIError, ValueError, OSError)) and not type(e).__name__.endswith("Error"):
            text = f"{type(e).__name__}: {text}"
        print(f"videosparse: error: {text}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
