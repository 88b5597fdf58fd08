"""``python -m video_eval {check,run,merge,judge,report}``.

Errors are one line on stderr and exit code 2 (``--debug`` shows the traceback); nothing heavy is
imported before the arguments are checked.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

DEFAULT_MODEL = "LanguageBind/Video-LLaVA-7B-hf"
DEFAULT_CONFIGS = "full,video"
DATASET_NAMES = ("msvd", "msrvtt", "activitynet", "tgif")
MC_NAMES = ("videomme", "mvbench", "egoschema", "nextqa", "longvideobench", "mlvu")  # multiple choice, scored without a judge


class CLIError(Exception):
    """A user error: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage dump
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _at_least(cast: type, low: float, strict: bool, what: str):
    """An argparse type: ``cast(text)`` that must be > low (strict) or >= low."""

    def parse(text: str):
        try:
            v = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if v != v or v < low or (strict and v == low):  # v != v: NaN
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return v

    return parse


_positive_int = _at_least(int, 1, False, "a positive integer")
_nonneg_int = _at_least(int, 0, False, "an integer >= 0")
_positive_float = _at_least(float, 0.0, True, "a positive number")


def _add_dataset(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True,
                   help=f"dataset name: {', '.join(DATASET_NAMES)} (open-ended, judged) or {', '.join(MC_NAMES)} "
                        "(multiple choice, scored without a judge); each in its release's file layout (see the docs)")
    p.add_argument("--root", required=True, help="the dataset directory (e.g. .../GPT_Zero_Shot_QA/MSVD_Zero_Shot_QA)")
    p.add_argument("--questions", default=None, help="question file (default: the release's name under --root)")
    p.add_argument("--answers", default=None, help="answer file (default: the release's name under --root)")
    p.add_argument("--videos", default=None, help="video directory (default: the release's under --root)")
    p.add_argument("--limit", type=_positive_int, default=None,
                   help="only the first N questions (the pruning literature's first-1000 protocol); default: all")
    p.add_argument("--subtitles", action="store_true",
                   help="the 'with subtitles' setting of Video-MME and LongVideoBench: the prompt starts with the "
                        "video's subtitle text")


def _add_judge(p: argparse.ArgumentParser) -> None:
    p.add_argument("--judge", choices=["offline", "openai"], default="offline",
                   help="offline: normalised exact/contains match (NOT comparable with GPT-judge numbers); "
                        "openai: any OpenAI-compatible chat-completions server")
    p.add_argument("--judge-base-url", default="https://api.openai.com/v1",
                   help="server URL, e.g. http://127.0.0.1:8000/v1 for a local vLLM / SGLang server")
    p.add_argument("--judge-model", default=None, help="judge model name as the server knows it (required for openai)")
    p.add_argument("--judge-api-key-env", default="OPENAI_API_KEY",
                   help="NAME of the environment variable holding the API key (the key is never written anywhere); "
                        "'none' for a server without authentication")
    p.add_argument("--judge-template", default=None, help="prompt template file (default: the shipped Video-ChatGPT one)")
    p.add_argument("--judge-concurrency", type=_positive_int, default=8, help="parallel requests (default 8)")
    p.add_argument("--judge-retries", type=_nonneg_int, default=5, help="retries per request (default 5)")
    p.add_argument("--judge-timeout", type=_positive_float, default=60.0, help="seconds per request (default 60)")
    p.add_argument("--judge-cache", default=None,
                   help="sqlite response cache (default ~/.cache/videosparse/judge-cache.sqlite); 'none' to disable")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m video_eval``."""
    ap = _Parser(prog="video_eval", description="Video-QA evaluation of videosparse configs: MSVD, MSRVTT, "
                                                 "ActivityNet, TGIF in the Video-LLaVA / Video-ChatGPT format "
                                                 "(judged), and the multiple-choice Video-MME, MVBench, EgoSchema, "
                                                 "NExT-QA, LongVideoBench, MLVU in their release layouts (scored "
                                                 "without a judge).")
    sub = ap.add_subparsers(dest="cmd", metavar="{check,run,merge,judge,report}", parser_class=_Parser)

    c = sub.add_parser("check", help="validate a dataset directory before a long run")
    _add_dataset(c)
    c.add_argument("--no-probe", dest="probe", action="store_false", help="do not open the video files")
    c.add_argument("--json", action="store_true", help="print the report as JSON")

    r = sub.add_parser("run", help="answer every question for every config (resumable, accelerate-sharded)")
    _add_dataset(r)
    r.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"hub id, local checkpoint directory, or 'testbed' (default {DEFAULT_MODEL})")
    r.add_argument("--configs", default=DEFAULT_CONFIGS,
                   help="comma-separated: full and <preset>[@<budget>], e.g. full,video@0.1,video@0.05,fastv@0.1 "
                        f"(default {DEFAULT_CONFIGS})")
    r.add_argument("--mc-scoring", choices=["auto", "generate", "text", "likelihood"], default="auto",
                   help="multiple-choice benchmarks: generate = the benchmark's prompt with its options and the "
                        "option letter parsed from the answer as lmms-eval does; text = the question alone, the "
                        "answer text mapped to an option (models that cannot read option letters); likelihood = the "
                        "benchmark's prompt, the option letter with the highest first-token probability (no "
                        "parsing; the letters must be tokens of the model); auto (default) "
                        "= text for --model testbed, generate otherwise")
    r.add_argument("--out", required=True, help="run directory (created; re-running the same command resumes)")
    r.add_argument("--frames", type=_positive_int, default=None,
                   help="frames per video, uniformly sampled (default: the model family's, 8 for Video-LLaVA, "
                        "32 for LLaVA-OneVision)")
    r.add_argument("--fps", type=_positive_float, default=None,
                   help="sample this many frames per second instead of --frames uniform ones (--frames then caps "
                        "the count)")
    r.add_argument("--pre-budget", type=_positive_int, default=None,
                   help="the long-video path: a question-guided pool of this many visual tokens, picked from all "
                        "sampled frames, enters the decoder (for long benchmarks: many frames, bounded memory)")
    r.add_argument("--batch-size", type=_positive_int, default=4, help="questions per forward pass (default 4)")
    r.add_argument("--max-new-tokens", type=_positive_int, default=128, help="answer length limit (default 128)")
    r.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: the accelerate process's device)")
    r.add_argument("--dtype", default=None, help="float32, float16 or bfloat16 (default: the checkpoint's)")
    r.add_argument("--attn", default="sdpa", choices=["eager", "sdpa", "flash_attention_2"])
    r.add_argument("--prefetch", type=_nonneg_int, default=2,
                   help="units of videos decoded ahead in background threads (0: no overlap; default 2)")
    r.add_argument("--workers", type=_positive_int, default=2, help="decoding threads (default 2)")
    r.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads per process")
    r.add_argument("--seed", type=int, default=0, help="seed (the random baseline; recorded)")
    r.add_argument("--no-strict", dest="strict", action="store_false",
                   help="use the decodable frames of truncated videos instead of recording an error")
    r.add_argument("--retry-errors", action="store_true", help="recompute pairs recorded with an error")
    r.add_argument("--allow-version-change", action="store_true",
                   help="resume a run although videosparse/torch/transformers differ from the versions in its "
                        "run.json (the change is recorded there as version_changes)")
    r.add_argument("--quiet", action="store_true", help="no progress output")
    r.add_argument("--log-every", type=_positive_float, default=30.0,
                   help="seconds between progress lines when stderr is not a terminal (default 30)")
    r.add_argument("--then-judge", action="store_true", help="judge the merged predictions when the run is complete")
    _add_judge(r)

    m = sub.add_parser("merge", help="merge the per-rank prediction files of a run")
    m.add_argument("run", help="run directory")

    j = sub.add_parser("judge", help="judge a run's merged predictions and write its results JSON")
    j.add_argument("run", help="run directory")
    _add_judge(j)

    p = sub.add_parser("report", help="markdown table + accuracy/equivalent-tokens plot of one or more runs")
    p.add_argument("results", nargs="+", help="results JSON files or run directories (all their results.*.json)")
    p.add_argument("--out", required=True, help="output directory for report.md and report.png")
    p.add_argument("--title", default=None)

    for s in (c, r, m, j, p):
        s.add_argument("--debug", action="store_true", help="show tracebacks")
    return ap


def main(argv: list | None = None) -> int:
    """Entry point: run one command; user errors are one line on stderr and exit code 2."""
    args = build_parser().parse_args(argv)
    if args.cmd is None:
        build_parser().print_help()
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return {"check": cmd_check, "run": cmd_run, "merge": cmd_merge, "judge": cmd_judge,
                "report": cmd_report}[args.cmd](args)
    except KeyboardInterrupt:
        print("video_eval: interrupted (finished batches are saved; re-run the same command to resume)",
              file=sys.stderr)
        return 130
    except (CLIError, ValueError, OSError) as e:
        if getattr(args, "debug", False):
            raise
        msg = str(e).strip().splitlines()
        print(f"video_eval: error: {msg[0] if msg else type(e).__name__}", file=sys.stderr)
        return 2


# ----------------------------------------------------------------------------- commands
def _load_dataset(args: argparse.Namespace) -> Any:
    from video_eval.benchmarks import is_mc, load_mc
    from video_eval.datasets import load_dataset

    if is_mc(args.dataset):
        _mc_args(args)
        return load_mc(args.dataset, args.root, questions=args.questions, limit=args.limit, subtitles=args.subtitles)
    if args.subtitles:
        raise CLIError(f"--subtitles is a setting of Video-MME and LongVideoBench; {args.dataset} has no subtitles")
    return load_dataset(args.dataset, args.root, questions=args.questions, answers=args.answers,
                        videos=args.videos, limit=args.limit)


def cmd_check(args: argparse.Namespace) -> int:
    """``check``: exit 0 when the dataset is usable, 1 otherwise."""
    from video_eval.benchmarks import check_mc, is_mc
    from video_eval.datasets import check

    if is_mc(args.dataset):
        _mc_args(args)
        report = check_mc(args.dataset, args.root, questions=args.questions, limit=args.limit,
                          subtitles=args.subtitles, probe=args.probe)
    elif args.subtitles:
        raise CLIError(f"--subtitles is a setting of Video-MME and LongVideoBench; {args.dataset} has no subtitles")
    else:
        report = check(args.dataset, args.root, questions=args.questions, answers=args.answers, videos=args.videos,
                   limit=args.limit, probe=args.probe)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.text())
    return 0 if report.ok else 1


def _mc_args(args: argparse.Namespace) -> None:
    for flag in ("answers", "videos"):
        if getattr(args, flag, None) is not None:
            raise CLIError(f"--{flag} is for the open-ended datasets; {args.dataset} is read from its release layout "
                           "under --root (--questions may name its question table)")


def _judge_from_args(args: argparse.Namespace) -> Any:
    from video_eval import judges

    if args.judge == "offline":
        return judges.OfflineJudge()
    if not args.judge_model:
        raise CLIError("--judge openai needs --judge-model (the model name the server serves)")
    key_env = None if str(args.judge_api_key_env).lower() == "none" else args.judge_api_key_env
    cache = args.judge_cache
    if cache is None:
        cache = str(Path.home() / ".cache" / "videosparse" / "judge-cache.sqlite")
    elif cache.lower() == "none":
        cache = None
    return judges.OpenAIJudge(base_url=args.judge_base_url, model=args.judge_model, api_key_env=key_env,
                              template=args.judge_template, concurrency=args.judge_concurrency,
                              max_retries=args.judge_retries, timeout=args.judge_timeout, cache=cache)


def _check_judge_args(args: argparse.Namespace) -> None:
    """What can be refused before a long run starts."""
    if args.judge == "openai" and not args.judge_model:
        raise CLIError("--judge openai needs --judge-model (the model name the server serves)")
    if args.judge_template is not None and not os.path.isfile(args.judge_template):
        raise CLIError(f"--judge-template: no such file {args.judge_template}")


def cmd_run(args: argparse.Namespace) -> int:
    """``run``: answer (question, config) pairs; merges (and judges, with --then-judge) when complete."""
    from video_eval.runner import RunOptions, parse_configs, run

    configs = parse_configs(args.configs)
    if args.then_judge:
        _check_judge_args(args)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} is a file, not a directory")
    dataset = _load_dataset(args)
    from video_eval.benchmarks import is_mc

    mc = is_mc(args.dataset)
    if not mc and args.mc_scoring != "auto":
        raise CLIError(f"--mc-scoring is for the multiple-choice benchmarks ({', '.join(MC_NAMES)}); "
                       f"{args.dataset} is open-ended")
    mc_scoring = None
    if mc:
        mc_scoring = args.mc_scoring if args.mc_scoring != "auto" else (
            "text" if str(args.model) == "testbed" else "generate")
        if args.then_judge:
            raise CLIError(f"{args.dataset} is multiple choice: it is scored without a judge when the run is "
                           "complete (drop --then-judge)")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    opts = RunOptions(model=args.model, configs=configs, num_frames=args.frames, batch_size=args.batch_size,
                      max_new_tokens=args.max_new_tokens, device=args.device, dtype=args.dtype,
                      attn_implementation=args.attn, prefetch=args.prefetch, workers=args.workers, seed=args.seed,
                      strict=args.strict, retry_errors=args.retry_errors, progress=not args.quiet,
                      log_every=args.log_every, mc_scoring=mc_scoring, pre_budget=args.pre_budget, fps=args.fps)
    s = run(dataset, opts, out, allow_version_change=args.allow_version_change)
    who = f"rank {s.rank}/{s.world}: " if s.world > 1 else ""
    print(f"{who}{s.computed} answered now ({s.errors} with errors), {s.skipped} already done; "
          f"{s.wall_seconds:.1f} s", file=sys.stderr)
    if s.merged is not None:
        m = s.merged
        print(f"predictions: {m.path} ({m.records} record{'' if m.records == 1 else 's'}, "
              f"{m.errors} error{'' if m.errors == 1 else 's'})")
        if mc:
            from video_eval.evaluate import mc_summary_text, score_mc_run

            print(mc_summary_text(score_mc_run(out)))
            return 0
        if args.then_judge:
            return _judge_run(out, args)
    elif s.world == 1:
        print("the run is incomplete: re-run the same command to finish it", file=sys.stderr)
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    """``merge``: write predictions.jsonl from the rank files; exit 1 while pairs are missing."""
    from video_eval.runner import merge

    s = merge(args.run, partial=True)
    print(f"{s.path}: {s.records} of {s.expected} (question, config) pairs"
          + (f", {s.missing} missing (re-run the run command to finish)" if s.missing else "")
          + (f", {s.duplicates} duplicate lines resolved" if s.duplicates else ""))
    return 0 if s.complete else 1


def cmd_judge(args: argparse.Namespace) -> int:
    """``judge``: judge the merged predictions, write judged.<judge>.jsonl and results.<judge>.json."""
    from video_eval.evaluate import is_mc_run, mc_summary_text, score_mc_run
    from video_eval.runner import load_spec

    if is_mc_run(load_spec(args.run)):
        print(f"{args.run} is a multiple-choice run: scored without a judge (--judge options are not used)",
              file=sys.stderr)
        print(mc_summary_text(score_mc_run(args.run)))
        return 0
    _check_judge_args(args)
    return _judge_run(Path(args.run), args)


def _judge_run(run_dir: Path, args: argparse.Namespace) -> int:
    from video_eval.evaluate import judge_run

    judge = _judge_from_args(args)
    res = judge_run(run_dir, judge, progress=True)
    print(res.summary_text())
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """``report``: report.md and report.png of results files or run directories."""
    from video_eval.report import write_report

    paths: list = []
    for r in args.results:
        p = Path(r)
        if p.is_dir():
            if (p / "run.json").is_file():
                from video_eval.evaluate import is_mc_run, score_mc_run
                from video_eval.runner import load_spec

                if is_mc_run(load_spec(p)):
                    score_mc_run(p)  # results.json from the current predictions (cheap, no judge)
            found = sorted(p.glob("results.*.json")) + sorted(p.glob("results.json"))
            if not found:
                raise CLIError(f"{p}: no results.*.json (judge the run first: python -m video_eval judge {p})")
            paths.extend(found)
        elif p.is_file():
            paths.append(p)
        else:
            raise CLIError(f"no such results file or run directory: {p}")
    md, png = write_report([str(p) for p in paths], args.out, title=args.title)
    print(f"wrote {md}\nwrote {png}")
    return 0
