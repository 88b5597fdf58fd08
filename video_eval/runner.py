"""The evaluation runner: one dataset x several sparsity configs -> predictions as JSON lines.

* Work is cut into **units** (consecutive videos of the dataset, at least ``batch_size`` questions) and
  each unit into fixed **batches** per config. The cut depends only on the dataset, the limit and the
  batch size, never on the number of processes or on what is already done, so a resumed or sharded run
  computes every batch exactly as an uninterrupted single-process run does.
* Each video is decoded and run through the vision tower once; every config reuses its features.
  Decoding of the next units runs in background threads (a bounded prefetch) while the model works.
* Predictions are appended to ``predictions.rank<R>.jsonl`` one batch at a time (one write, flush,
  fsync). A re-run skips finished (question, config) pairs; a torn last line (a kill mid-write) is
  dropped on resume and its batch recomputed.
* Under ``accelerate launch`` units are dealt to ranks round-robin; the last rank to finish (or the
  ``merge`` command) writes ``predictions.jsonl`` in the canonical order: dataset order, then config order.
* Nothing is written before everything that can be refused was checked: the transformers version, every
  config against the model's config and the frames, the run.json of an existing run (same command, same
  videosparse/torch/transformers unless ``allow_version_change``). One process per rank: a second
  ``run`` into the same directory stops with the holder's pid and host.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import platform
import subprocess
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from videosparse.fileio import writing
from videosparse.pipeline import _one_line

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"
MERGED_FILE = "predictions.jsonl"
RANK_PATTERN = "predictions.rank{rank}.jsonl"
FULL = "full"

# run.json fields a resumed run must match (anything else may change between invocations)
INVARIANT = ("dataset", "model", "num_frames", "frame_strategy", "max_new_tokens", "prompt_template", "dtype",
             "batch_size", "seed", "mc_scoring", "pre_budget", "fps")
# run.json "versions" entries a resumed run must match (unless --allow-version-change)
VERSION_INVARIANT = ("videosparse", "torch", "transformers")


class RunError(ValueError):
    """A run cannot start or continue (bad configs, a run directory made by a different command, ...)."""


# ----------------------------------------------------------------------------- configs
@dataclass(frozen=True)
class RunConfig:
    """One entry of ``--configs``: ``full`` or ``<preset>[@<budget>]``."""

    label: str
    preset: str | None  # None: the full model
    budget: Any = None  # None: the preset's default

    def sparsity(self, model_config: Any, num_frames: int, pre_budget: int | None = None) -> Any:
        """The SparseConfig for this model (None for full), checked against its depth and input (with
        ``pre_budget``: against the long-video pool the decoder sees)."""
        from videosparse import SparseConfig
        from videosparse.pipeline import _resolve_sparsity

        if self.preset is None:
            return None
        from videosparse.frontends import frontend_for

        layers = frontend_for(model_config).num_layers(model_config)
        try:
            cfg = SparseConfig.preset(self.preset, budget=self.budget, num_layers=layers)
            if pre_budget is not None:
                cfg = cfg.replace(long=cfg.long.replace(budget=int(pre_budget)))
            return _resolve_sparsity(cfg, model_config, num_frames)
        except ValueError as e:
            raise RunError(f"--configs {self.label}: {e}") from None


def parse_configs(text: str | Iterable[str]) -> list:
    """``"full,video@0.1,fastv@0.1"`` -> [RunConfig]. Checked without a model: preset names, budget
    syntax and range, duplicates. Labels are normalised (``video@.1`` -> ``video@0.1``)."""
    from videosparse.config import PRESETS, Budget

    parts = [p.strip() for p in (text.split(",") if isinstance(text, str) else text)]
    if not parts or any(not p for p in parts):
        raise RunError(f"--configs: expected a comma-separated list like full,video@0.1,fastv@0.1, got {text!r}")
    out: list = []
    for p in parts:
        name, _, budget_text = p.partition("@")
        name = name.strip()
        if name in ("full", "none"):
            if budget_text:
                raise RunError(f"--configs {p}: the full model takes no budget")
            rc = RunConfig(FULL, None)
        else:
            if name not in PRESETS:
                raise RunError(f"--configs {p}: unknown preset {name!r}; known: full, {', '.join(sorted(PRESETS))}")
            budget = None
            if budget_text:
                try:
                    budget = Budget.parse(budget_text).raw
                except ValueError as e:
                    raise RunError(f"--configs {p}: budget {str(e).replace('SparseConfig.budget: ', '')}") from None
            label = name if budget is None else f"{name}@{budget}"
            rc = RunConfig(label, name, budget)
        if any(o.label == rc.label for o in out):
            raise RunError(f"--configs: {rc.label} is listed twice")
        out.append(rc)
    return out


# ----------------------------------------------------------------------------- work units
@dataclass
class Unit:
    """Consecutive videos of the dataset and all their questions (items in dataset order)."""

    index: int
    videos: list
    items: list


def make_units(items: list, batch_size: int) -> list:
    """Group items by video (in order of first appearance) and pack consecutive videos into units of at
    least ``batch_size`` questions. Depends only on the items and the batch size."""
    by_video: dict = {}
    for it in items:
        by_video.setdefault(it.video_name, []).append(it)
    units: list = []
    cur_v: list = []
    cur_i: list = []
    for v, its in by_video.items():
        cur_v.append(v)
        cur_i.extend(its)
        if len(cur_i) >= batch_size:
            units.append(Unit(len(units), cur_v, sorted(cur_i, key=lambda x: x.index)))
            cur_v, cur_i = [], []
    if cur_i:
        units.append(Unit(len(units), cur_v, sorted(cur_i, key=lambda x: x.index)))
    return units


def batches_of(unit: Unit, batch_size: int) -> list:
    """The fixed batches of a unit (per config): its items in dataset order, cut every batch_size."""
    return [unit.items[s : s + batch_size] for s in range(0, len(unit.items), batch_size)]


def shard(units: list, rank: int, world: int) -> list:
    """Units of one rank: round-robin, so ranks get similar amounts of work."""
    return [u for u in units if u.index % world == rank]


# ----------------------------------------------------------------------------- prediction files
def _parse_lines(path: Path, repair: bool) -> list:
    """Records of a predictions file. A last line without its newline or not valid JSON is a torn
    write: dropped (and, with ``repair``, cut from the file). Any other bad line is an error."""
    if not path.exists():
        return []
    data = path.read_bytes()
    records: list = []
    pos = 0
    lines = data.split(b"\n")
    for k, raw in enumerate(lines):
        last = k == len(lines) - 1
        if last and raw == b"":
            break
        try:
            rec = json.loads(raw) if not last else None  # no newline after it: torn by definition
        except json.JSONDecodeError:
            rec = None
            if k < len(lines) - 2:
                raise RunError(f"{path}:{k + 1}: not a JSON line (the file was edited or is not a predictions "
                               f"file); fix or remove that line") from None
        if rec is None:
            logger.warning("%s: dropped a torn last line (%d bytes) left by an interrupted run", path, len(raw))
            if repair:
                with writing(path, "repair"), open(path, "r+b") as f:
                    f.truncate(pos)
                    f.flush()
                    os.fsync(f.fileno())
            break
        if not isinstance(rec, dict) or "question_id" not in rec or "config" not in rec:
            raise RunError(f"{path}:{k + 1}: not a prediction record")
        records.append(rec)
        pos += len(raw) + 1
    return records


def read_predictions(run_dir: str | os.PathLike, repair_rank: int | None = None) -> list:
    """Every record of every rank file of a run (torn last lines ignored; repaired for ``repair_rank``)."""
    run_dir = Path(run_dir)
    out: list = []
    for p in sorted(run_dir.glob("predictions.rank*.jsonl")):
        own = repair_rank is not None and p.name == RANK_PATTERN.format(rank=repair_rank)
        out.extend(_parse_lines(p, repair=own))
    return out


_RESUME_HINT = "finished batches are kept; fix this and re-run the same command to resume"


class PredictionWriter:
    """Appends records as JSON lines: one write per batch, flushed and fsync'd before returning.

    An OS error (full disk, read-only file system) is an OutputError naming the file; a partly written
    batch is a torn last line, dropped and recomputed on resume."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with writing(path, "open", _RESUME_HINT):
            self._f = open(path, "ab")

    def write(self, records: list) -> None:
        """Append ``records`` (one line each) in one write, then flush and fsync."""
        if not records:
            return
        blob = b"".join(json.dumps(r, ensure_ascii=False).encode("utf-8") + b"\n" for r in records)
        with writing(self.path, "write", _RESUME_HINT):
            self._f.write(blob)
            self._f.flush()
            os.fsync(self._f.fileno())

    def close(self) -> None:
        try:
            self._f.close()
        except OSError:  # the write that failed already said why; buffered bytes of a full disk are lost
            pass


def record_key(rec: dict) -> tuple:
    """The resume key of a prediction record: (question id, config label)."""
    return (str(rec["question_id"]), rec["config"])


# ----------------------------------------------------------------------------- run spec
def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                           capture_output=True, text=True, timeout=5)
    return out.stdout.strip() + ("-dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")


def versions() -> dict:
    """Python and package versions recorded in run.json (None for a package that is not installed)."""
    import importlib.metadata as md

    v = {"python": platform.python_version()}
    for pkg in ("videosparse", "torch", "transformers", "accelerate", "av", "decord"):
        try:
            v[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            v[pkg] = None
    return v


@contextlib.contextmanager
def _locked(run_dir: Path) -> Iterator[None]:
    """An exclusive lock on the run directory (ranks of one machine update run.json / merge in turn)."""
    import fcntl

    path = run_dir / ".lock"
    with writing(path, "open the lock file"):
        f = open(path, "a")
    with f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


RANK_LOCK = ".rank{rank}.lock"


@contextlib.contextmanager
def rank_lock(run_dir: Path, rank: int) -> Iterator[None]:
    """Hold rank ``rank`` of a run directory for the duration of the block, or fail at once.

    Two ``run`` commands into the same ``--out`` would otherwise both do all the work. The lock is an
    ``flock`` on ``RUN/.rank<R>.lock`` (released by the kernel when the process dies, so a killed run
    never leaves a stale lock); the file holds the holder's pid, host and start time for the message."""
    import fcntl
    import socket

    path = Path(run_dir) / RANK_LOCK.format(rank=rank)
    with writing(path, "open the lock file", "--out must be a writable directory"):
        f = open(path, "a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            try:
                who = json.loads(f.read() or "{}")
            except json.JSONDecodeError:
                who = {}
            holder = (f"pid {who.get('pid', '?')} on host {who.get('host', '?')}, since {who.get('since', '?')}"
                      if who else "a process that has not written its name yet")
            raise RunError(f"{run_dir} is in use: another `video_eval run` holds rank {rank} of it ({holder}); "
                           f"wait for it to finish, or choose another --out") from None
        with writing(path, "write the lock file"):
            f.seek(0)
            f.truncate()
            f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))
            f.flush()
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    finally:
        f.close()


def _atomic_write(path: Path, text: str) -> None:
    from videosparse.fileio import atomic_write_text

    atomic_write_text(path, text)


def load_spec(run_dir: str | os.PathLike) -> dict:
    """The run.json of a run directory (RunError when missing or not JSON)."""
    p = Path(run_dir) / RUN_FILE
    if not p.is_file():
        raise RunError(f"{run_dir} is not a run directory (no {RUN_FILE}); start one with `python -m video_eval run`")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise RunError(f"{p}: not valid JSON ({e})") from None


def _version_text(v: dict) -> str:
    return ", ".join(f"{k} {v.get(k) or 'not installed'}" for k in VERSION_INVARIANT)


def _open_spec(run_dir: Path, spec: dict, allow_version_change: bool = False) -> dict:
    """Create run.json, or check that the existing one was made by the same command (configs may be
    added: the recorded list is the union, in order of first use) with the same videosparse, torch and
    transformers versions. ``allow_version_change`` resumes on other versions anyway; ``versions``
    keeps the run's first versions and each change is appended to ``version_changes``."""
    with _locked(run_dir):
        path = run_dir / RUN_FILE
        if path.exists():
            old = load_spec(run_dir)
            for k in INVARIANT:
                if old.get(k) != spec.get(k):
                    raise RunError(
                        f"{run_dir} holds a run with a different {k} ({_short(old.get(k))} vs now {_short(spec.get(k))}); "
                        f"resume with the same command or choose another --out")
            merged = dict(spec)
            merged["configs"] = list(old.get("configs", [])) + [c for c in spec["configs"] if c not in old.get("configs", [])]
            merged["created"] = old.get("created", spec["created"])
            old_v, new_v = old.get("versions") or {}, spec.get("versions") or {}
            changes = list(old.get("version_changes") or [])
            # the versions the run was last continued with (the first ones, or the last recorded change)
            current = changes[-1]["versions"] if changes else old_v
            if current and any(current.get(k) != new_v.get(k) for k in VERSION_INVARIANT):
                if not allow_version_change:
                    raise RunError(
                        f"{run_dir} was run with {_version_text(current)}; this process has {_version_text(new_v)}: "
                        f"resuming would mix versions in one run. Install the run's versions, choose another --out, "
                        f"or pass --allow-version-change to continue anyway (recorded in run.json)")
                logger.warning("%s: continuing a run made with %s on %s (--allow-version-change; recorded in %s)",
                               run_dir, _version_text(current), _version_text(new_v), RUN_FILE)
                changes.append({"since": spec["created"], "versions": dict(new_v),
                                "records_before": len(read_predictions(run_dir))})
            merged["versions"] = old_v or new_v
            if changes:
                merged["version_changes"] = changes
            spec = merged
        _atomic_write(path, json.dumps(spec, indent=2, ensure_ascii=False) + "\n")
    return spec


def _short(v: Any) -> str:
    s = json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else v
    return s if len(s) <= 80 else s[:77] + "..."


# ----------------------------------------------------------------------------- prefetch
class Prefetcher:
    """Decodes the videos of upcoming units in background threads, at most ``depth`` units ahead.

    ``depth=0`` decodes in the caller's thread when a unit is reached (no overlap; for comparison)."""

    def __init__(self, units: list, decode: Callable[[str], Any], depth: int = 2, workers: int = 2) -> None:
        self.units = units
        self.decode = decode
        self.depth = max(0, int(depth))
        self.workers = max(1, int(workers))

    def _decode_safely(self, name: str) -> Any:
        try:
            return self.decode(name)
        except Exception as e:  # recorded per question by the runner
            return e

    def __iter__(self) -> Iterator[tuple]:
        if self.depth == 0:
            for u in self.units:
                yield u, {v: self._decode_safely(v) for v in u.videos}
            return
        from concurrent.futures import ThreadPoolExecutor

        pending: deque = deque()
        it = iter(self.units)
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="video-prefetch") as pool:
            def submit_next() -> bool:
                u = next(it, None)
                if u is None:
                    return False
                pending.append((u, {v: pool.submit(self._decode_safely, v) for v in u.videos}))
                return True

            for _ in range(self.depth + 1):
                if not submit_next():
                    break
            while pending:
                u, futs = pending.popleft()
                clips = {v: f.result() for v, f in futs.items()}
                submit_next()
                yield u, clips


# ----------------------------------------------------------------------------- the run
@dataclass
class RunOptions:
    """Everything about a run except the dataset."""

    model: str
    configs: list  # [RunConfig]
    num_frames: int | None = None  # None: the model family's default (its front end's)
    frame_strategy: str = "uniform"
    batch_size: int = 4
    max_new_tokens: int = 128
    prompt_template: str | None = None  # None: videosparse's Video-LLaVA template
    device: str | None = None
    dtype: str | None = None
    attn_implementation: str = "sdpa"
    prefetch: int = 2
    workers: int = 2
    seed: int = 0
    strict: bool = True
    retry_errors: bool = False
    progress: bool = True
    log_every: float = 30.0
    # multiple-choice benchmarks (video_eval.benchmarks): "generate" or "text" (video_eval.mcq); None otherwise
    mc_scoring: str | None = None
    # the long-video path: a question-guided pool of pre_budget tokens enters the decoder (None: whole frames);
    # fps: sample that many frames per second (num_frames then caps the count) instead of num_frames uniform ones
    pre_budget: int | None = None
    fps: float | None = None


@dataclass
class RunSummary:
    """What one process did in ``run``: pairs computed/skipped/errored and seconds per phase (decode is summed over prefetch threads)."""
    run_dir: str
    rank: int
    world: int
    computed: int = 0  # (question, config) pairs written by this process now
    skipped: int = 0  # pairs already done
    errors: int = 0
    units: int = 0
    decode_seconds: float = 0.0
    vision_seconds: float = 0.0
    generate_seconds: float = 0.0
    wall_seconds: float = 0.0
    merged: Any = None  # MergeSummary when this process wrote the merged file


def dist_info(device: str | None = None) -> tuple:
    """(rank, world size, device) from accelerate when it is installed (one process otherwise)."""
    try:
        from accelerate import PartialState
    except ImportError:
        return 0, 1, device
    import torch

    # on a machine without CUDA (or with --device cpu) the ranks talk over gloo
    cpu = (device or "").startswith("cpu") or (device is None and not torch.cuda.is_available())
    state = PartialState(cpu=cpu)
    dev = device
    if dev is None and state.device.type != "cpu":
        dev = str(state.device)
    return int(state.process_index), int(state.num_processes), dev


def build_spec(dataset: Any, opts: RunOptions, world: int, model_config: Any = None) -> dict:
    """The run.json document: dataset, model, configs, generation settings, seed, versions, git commit.
    The prompt template is the one the run uses: ``--prompt-template`` or the model family's (its front end,
    from ``model_config``)."""
    from videosparse.frontends import frontend_for
    from videosparse.pipeline import DEFAULT_TEMPLATE

    default_template = DEFAULT_TEMPLATE if model_config is None else frontend_for(model_config).prompt_template
    ds = dataset.to_dict()
    return {
        "schema": 1,
        "dataset": {**{k: ds.get(k) for k in ("name", "split", "limit", "size", "total")},
                    **{k: ds[k] for k in ("kind", "breakdown", "subtitles") if k in ds}},
        "dataset_root": ds.get("root"),
        "model": opts.model,
        "configs": [c.label for c in opts.configs],
        "num_frames": opts.num_frames,
        "frame_strategy": opts.frame_strategy,
        "max_new_tokens": opts.max_new_tokens,
        "decoding": "greedy",
        "prompt_template": opts.prompt_template or default_template,
        "dtype": opts.dtype,
        "batch_size": opts.batch_size,
        "seed": opts.seed,
        **({"mc_scoring": opts.mc_scoring} if opts.mc_scoring else {}),
        **({"pre_budget": opts.pre_budget} if opts.pre_budget is not None else {}),
        **({"fps": opts.fps} if opts.fps is not None else {}),
        "world_size": world,
        "versions": versions(),
        "git_commit": _git_commit(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def check_versions() -> None:
    """Refuse (RunError, one line) a transformers version videosparse does not support, before a run
    writes anything (the check itself is videosparse's)."""
    from videosparse.compat import check_transformers_version

    try:
        check_transformers_version()
    except RuntimeError as e:
        raise RunError(_one_line(e)) from None


def _model_config(opts: RunOptions, qa: Any) -> tuple:
    """(model config, checkpoint or None): read without loading weights when no model is given."""
    if qa is not None:
        return qa.model.config, None
    from videosparse.loading import resolve_checkpoint

    ckpt = resolve_checkpoint(opts.model)
    return ckpt.load_config(), ckpt


def run(dataset: Any, opts: RunOptions, out_dir: str | os.PathLike, *, qa: Any = None,
        rank: int | None = None, world: int | None = None, allow_version_change: bool = False) -> RunSummary:
    """Run ``dataset`` for every config of ``opts``; resumable; sharded over accelerate ranks.

    Everything that can be refused is refused before anything is written to ``out_dir``: the
    transformers version, every config against the model and the frames (a config that cannot run is
    never recorded in run.json), a different command or different package versions in an existing run
    (``allow_version_change`` overrides the latter), another process holding this rank.

    qa: an already loaded VideoQA (tests, benchmarks); loaded from ``opts.model`` otherwise.
    rank/world: override the accelerate state (tests)."""
    t_start = time.perf_counter()
    if opts.batch_size < 1:
        raise RunError(f"--batch-size must be >= 1, got {opts.batch_size}")
    if not opts.configs:
        raise RunError("--configs: nothing to run")
    mc = any(getattr(it, "options", ()) for it in dataset.items)
    if mc and opts.mc_scoring is None:
        opts = dataclasses.replace(opts, mc_scoring="generate")
    if opts.mc_scoring is not None:
        from video_eval.mcq import SCORINGS

        if not mc:
            raise RunError(f"--mc-scoring is for multiple-choice benchmarks; {dataset.name} is open-ended")
        if opts.mc_scoring not in SCORINGS:
            raise RunError(f"--mc-scoring must be one of {', '.join(SCORINGS)}, got {opts.mc_scoring!r}")
    check_versions()
    device = opts.device
    if rank is None or world is None:
        rank, world, device = dist_info(opts.device)
    run_dir = Path(out_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunError(f"--out {run_dir} is a file, not a directory")
    model_config, ckpt = _model_config(opts, qa)
    if opts.num_frames is None:
        from videosparse.frontends import frontend_for

        fe = frontend_for(model_config)
        spec = qa.spec if qa is not None else fe.preprocessor_spec(ckpt.source, ckpt.local_files_only)
        opts = dataclasses.replace(opts, num_frames=fe.default_frames(spec))
    sparsities = {c.label: c.sparsity(model_config, opts.num_frames, opts.pre_budget) for c in opts.configs}
    letter_ids = None
    if opts.mc_scoring == "likelihood":
        # the option letters must be tokens of the model: checked (the model loaded) before anything is written
        if qa is None:
            qa = _load_qa(ckpt, device, opts)
        letter_ids = option_letter_ids(qa.tokenizer, max(len(it.options) for it in dataset.items))
    spec = build_spec(dataset, opts, world, model_config)
    with writing(run_dir, "create the run directory"):
        run_dir.mkdir(parents=True, exist_ok=True)
    with rank_lock(run_dir, rank):
        spec = _open_spec(run_dir, spec, allow_version_change)
        summary = RunSummary(run_dir=str(run_dir), rank=rank, world=world)

        existing = read_predictions(run_dir, repair_rank=rank)
        done = {record_key(r) for r in existing if not (opts.retry_errors and r.get("error"))}
        units = shard(make_units(list(dataset.items), opts.batch_size), rank, world)
        labels = [c.label for c in opts.configs]
        todo = []
        to_compute = 0
        for u in units:
            missing = sum(1 for it in u.items for lab in labels if (it.question_id, lab) not in done)
            summary.skipped += len(u.items) * len(labels) - missing
            to_compute += missing
            if missing:
                todo.append(u)

        if todo:
            if qa is None:
                qa = _load_qa(ckpt, device, opts)
            if letter_ids is not None:
                qa._video_eval_letter_ids = letter_ids  # read by _answer_batch (likelihood scoring)
            _seed(opts.seed)
            writer = PredictionWriter(run_dir / RANK_PATTERN.format(rank=rank))
            from video_eval.progress import Progress

            progress = Progress(to_compute, "answering", enabled=opts.progress, log_every=opts.log_every,
                                bar=rank == 0, noun="answered",
                                prefix=f"[rank {rank}/{world}] " if world > 1 else "")
            try:
                _run_units(qa, dataset, todo, opts, sparsities, done, writer, progress, summary)
            finally:
                writer.close()
                progress.close()
        summary.merged = try_merge(run_dir)
    summary.wall_seconds = time.perf_counter() - t_start
    return summary


def _load_qa(ckpt: Any, device: Any, opts: RunOptions) -> Any:
    from videosparse import VideoQA

    return VideoQA.from_pretrained(ckpt, sparsity=None, device=device, dtype=opts.dtype,
                                   attn_implementation=opts.attn_implementation,
                                   num_frames=opts.num_frames, frame_strategy=opts.frame_strategy,
                                   progress=opts.progress,  # False: no weight-loading bar (--quiet)
                                   **({"prompt_template": opts.prompt_template} if opts.prompt_template else {}))


def option_letter_ids(tokenizer: Any, n: int) -> list:
    """Token ids of the option letters A.. (``n`` of them): for each letter, the single-token spellings
    ``"A"`` and ``" A"`` the tokenizer has. RunError (one line) when a letter has none: likelihood scoring
    needs the letters in the model's vocabulary."""
    from video_eval.mcq import LETTERS

    unk = getattr(tokenizer, "unk_token_id", None)
    out = []
    for letter in LETTERS[:n]:
        ids = []
        for text in (letter, " " + letter):
            try:
                enc = tokenizer.encode(text, add_special_tokens=False)
            except Exception:  # a tokenizer that cannot encode it has no such token
                enc = []
            if len(enc) == 1 and enc[0] != unk and enc[0] not in ids:
                ids.append(int(enc[0]))
        if not ids:
            raise RunError(f"--mc-scoring likelihood: the model's tokenizer has no token for the option letter "
                           f"{letter!r}; use --mc-scoring generate (or text for a model without option letters, "
                           f"like the test bed)")
        out.append(ids)
    return out


class _LetterScores:
    """A logits processor for one-token generation: records each row's log-probability of every option
    letter (log-sum over its spellings) at the first step, and lets only letters be generated."""

    def __init__(self, letter_ids: list) -> None:
        self.letter_ids = letter_ids
        self.rows: list = []  # one list of letter log-probs per row, over every generate call

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        logp = torch.log_softmax(scores.float(), dim=-1)
        per = torch.stack([torch.logsumexp(logp[:, ids], dim=-1) for ids in self.letter_ids], dim=-1)
        self.rows.extend(per.cpu().tolist())
        allowed = torch.full_like(scores, float("-inf"))
        allowed[:, [i for ids in self.letter_ids for i in ids]] = 0
        return scores + allowed


def _seed(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _run_units(qa: Any, dataset: Any, units: list, opts: RunOptions, sparsities: dict, done: set,
               writer: PredictionWriter, progress: Any, summary: RunSummary) -> None:
    from videosparse.video import load_video

    first: dict = {}
    for u in units:
        for it in u.items:
            first.setdefault(it.video_name, it)

    def decode(name: str) -> Any:
        path = dataset.video_path(first[name])
        if path is None:
            raise FileNotFoundError(f"video {name!r} not found in {dataset.video_dir}")
        t0 = time.perf_counter()
        how = {"strategy": "fps", "sample_fps": opts.fps} if opts.fps else {"strategy": opts.frame_strategy}
        # a benchmark's per-video reading: a time window, a folder of frames (MVBench)
        how.update(dataset.video_options(first[name]) if hasattr(dataset, "video_options") else {})
        clip = load_video(path, num_frames=opts.num_frames, strict=opts.strict, progress=False, **how)
        return clip, time.perf_counter() - t0  # (the runner shows its own progress)

    for unit, decoded in Prefetcher(units, decode, opts.prefetch, opts.workers):
        summary.units += 1
        encoded: dict = {}
        for v, res in decoded.items():
            if isinstance(res, BaseException):
                encoded[v] = _one_line(res)
                continue
            clip, secs = res
            summary.decode_seconds += secs
            if opts.pre_budget is not None:  # the long path: the pool is per question, built inside ask_many
                encoded[v] = clip
                continue
            t0 = time.perf_counter()
            try:
                encoded[v] = qa.encode(clip)
            except Exception as e:  # a failing video is recorded and the run goes on
                encoded[v] = _one_line(e)
            summary.vision_seconds += time.perf_counter() - t0
        for c in opts.configs:
            batches = [b for b in batches_of(unit, opts.batch_size)
                       if any((it.question_id, c.label) not in done for it in b)]
            if not batches:
                continue
            qa.set_sparsity(sparsities[c.label])
            for batch in batches:
                t0 = time.perf_counter()
                records = _answer_batch(qa, batch, encoded, c.label, opts, dataset.name, dataset)
                summary.generate_seconds += time.perf_counter() - t0
                new = [r for r in records if (r["question_id"], c.label) not in done]
                writer.write(new)
                for r in new:
                    done.add((r["question_id"], c.label))
                summary.computed += len(new)
                summary.errors += sum(1 for r in new if r["error"])
                progress.update(len(new))
    qa.set_sparsity(None)


def _answer_batch(qa: Any, batch: list, encoded: dict, label: str, opts: RunOptions, benchmark: str = "",
                  dataset: Any = None) -> list:
    """Records of one fixed batch (errors recorded per question). Multiple-choice items are asked
    :func:`video_eval.mcq.model_question` and their records scored (``pred_letter``, ``correct``)."""
    if opts.mc_scoring == "likelihood":
        return _answer_batch_likelihood(qa, batch, encoded, label, opts, dataset)
    records = _answer_batch_raw(qa, batch, encoded, label, opts, dataset=dataset)
    if opts.mc_scoring is not None:
        from video_eval.mcq import score

        for it, rec in zip(batch, records):
            letter, ok = (None, False) if rec["error"] else score(rec["prediction"], it.options, it.answer,
                                                                   opts.mc_scoring, benchmark)
            rec.update({"options": list(it.options), "breakdown": dict(it.breakdown), "scoring": opts.mc_scoring,
                        "pred_letter": letter, "correct": bool(ok)})
    return records


def _answer_batch_likelihood(qa: Any, batch: list, encoded: dict, label: str, opts: RunOptions,
                             dataset: Any = None) -> list:
    """Likelihood scoring: one forward pass per question over the benchmark prompt; the option letter with
    the highest log-probability as the first answer token is the answer (no parsing)."""
    from video_eval.mcq import LETTERS

    proc = _LetterScores(qa._video_eval_letter_ids)
    order: list = []  # the batch indices of the generated rows, in the order generate saw them
    records = _answer_batch_raw(qa, batch, encoded, label, dataclasses.replace(opts, max_new_tokens=1),
                                extra={"logits_processor": _processors(proc), "on_batch": order.extend},
                                model_question_mode="generate", dataset=dataset)
    ok = [k for k, r in enumerate(records) if not r["error"]]
    mismatch = len(proc.rows) != len(order) or not set(ok) <= set(order)
    for k, (it, rec) in enumerate(zip(batch, records)):
        letter, ok_, lps = None, False, None
        if not rec["error"]:
            if mismatch:
                rec["error"] = (f"likelihood scoring: {len(proc.rows)} scored rows for {len(order)} generated "
                                f"questions (re-run with --batch-size 1)")
            else:
                row = proc.rows[order.index(k)][: len(it.options)]
                lps = {LETTERS[i]: round(float(v), 6) for i, v in enumerate(row)}
                letter = LETTERS[max(range(len(row)), key=lambda i: row[i])]
                ok_ = letter == str(it.answer).strip().upper()
        rec.update({"options": list(it.options), "breakdown": dict(it.breakdown), "scoring": "likelihood",
                    "pred_letter": letter, "correct": bool(ok_), "letter_logprobs": lps})
    return records


def _processors(proc: Any) -> Any:
    from transformers import LogitsProcessorList

    return LogitsProcessorList([proc])


def _answer_batch_raw(qa: Any, batch: list, encoded: dict, label: str, opts: RunOptions, extra: dict | None = None,
                      model_question_mode: str | None = None, dataset: Any = None) -> list:
    pairs, slots = [], []
    records: list = [None] * len(batch)
    for k, it in enumerate(batch):
        enc = encoded.get(it.video_name)
        if isinstance(enc, str):
            records[k] = _record(it, label, error=enc)
        else:
            if opts.mc_scoring is not None:
                from video_eval.mcq import model_question

                mode = model_question_mode or opts.mc_scoring
                q = model_question(it, mode)
                if mode != "text" and hasattr(dataset, "frame_prompt"):  # subtitles of the sampled frames
                    clip = getattr(enc, "clip", enc)
                    q = dataset.frame_prompt(it, getattr(clip, "timestamps", ())) or q
                pairs.append((enc, q))
            else:
                pairs.append((enc, it.question))
            slots.append(k)
    if pairs:
        extra = dict(extra or {})
        if "on_batch" in extra:  # ask_many names positions in `pairs`; the caller wants positions in `batch`
            report = extra["on_batch"]
            extra["on_batch"] = lambda idx: report([slots[p] for p in idx])
        try:
            long = {} if opts.pre_budget is None else {"pre_budget": opts.pre_budget}
            answers = qa.ask_many(pairs, batch_size=len(pairs), on_error="record",
                                  max_new_tokens=opts.max_new_tokens, do_sample=False, **long, **extra)
        except Exception as e:  # e.g. out of memory: the batch is recorded as failed, the run goes on
            msg = _one_line(e)
            for k in slots:
                records[k] = _record(batch[k], label, error=msg)
            return records
        n_ok = max(1, sum(1 for a in answers if a.error is None))
        for k, a in zip(slots, answers):
            if a.error:
                records[k] = _record(batch[k], label, error=a.error)
            else:
                # prefill/decode wall time of the batch, amortised over its questions
                records[k] = _record(batch[k], label, answer=a, share=n_ok)
    return records


def _record(it: Any, label: str, answer: Any = None, error: str | None = None, share: int = 1) -> dict:
    rec = {
        "index": it.index,
        "question_id": it.question_id,
        "video_name": it.video_name,
        "question": it.question,
        "answer": it.answer,
        "type": it.type,
        "config": label,
        "prediction": answer.text if answer is not None else "",
        "error": error,
        "visual_tokens": int(answer.visual_tokens) if answer is not None else 0,
        "counts": [int(c) for c in answer.counts] if answer is not None else [],
        "equivalent_tokens": round(float(answer.equivalent_tokens), 4) if answer is not None else 0.0,
        # frames of the answer's trace (Qwen-VL: temporal groups of 2 sampled frames) and the long-video pool
        # (0: whole frames)
        "frames": len(getattr(answer, "frame_indices", None) or ()),
        "pool_tokens": int(getattr(answer, "pool_tokens", 0) or 0),
        "new_tokens": int(answer.new_tokens) if answer is not None else 0,
        "prefill_seconds": round(answer.prefill_seconds / share, 6) if answer is not None else 0.0,
        "decode_seconds": round(answer.decode_seconds / share, 6) if answer is not None else 0.0,
    }
    return rec


# ----------------------------------------------------------------------------- merge
@dataclass
class MergeSummary:
    """Result of ``merge``: the merged file (None when not written), records, expected, missing, duplicate lines, errors."""
    path: str | None
    records: int
    expected: int
    missing: int
    duplicates: int
    errors: int

    @property
    def complete(self) -> bool:
        return self.missing == 0


TIMING_FIELDS = ("prefill_seconds", "decode_seconds")


def merge(run_dir: str | os.PathLike, partial: bool = True) -> MergeSummary:
    """Write ``predictions.jsonl``: every rank's records, one per (question, config), in dataset order
    then config order. A key present twice (``--retry-errors``) keeps its answered record, else the
    last. With ``partial=False`` nothing is written until every pair is present."""
    run_dir = Path(run_dir)
    spec = load_spec(run_dir)
    configs = spec["configs"]
    order = {c: k for k, c in enumerate(configs)}
    best: dict = {}
    dup = 0
    for rec in read_predictions(run_dir):
        key = record_key(rec)
        if key in best:
            dup += 1
            if rec.get("error") and not best[key].get("error"):
                continue
        best[key] = rec
    recs = [r for r in best.values() if r["config"] in order]
    recs.sort(key=lambda r: (int(r.get("index", 0)), order[r["config"]]))
    expected = int(spec["dataset"]["size"]) * len(configs)
    missing = expected - len(recs)
    summary = MergeSummary(None, len(recs), expected, missing, dup, sum(1 for r in recs if r.get("error")))
    if missing and not partial:
        return summary
    blob = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs)
    _atomic_write(run_dir / MERGED_FILE, blob)
    summary.path = str(run_dir / MERGED_FILE)
    return summary


def try_merge(run_dir: Path) -> MergeSummary | None:
    """Merge when every pair is present (the last rank to finish does it); None otherwise."""
    with _locked(Path(run_dir)):
        s = merge(run_dir, partial=False)
    return s if s.complete else None
