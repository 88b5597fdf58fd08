"""Judge a run: merged predictions -> ``judged.<judge>.jsonl`` + ``results.<judge>.json``.

Judging never changes the predictions; several judges can be applied to one run side by side (each
writes its own files, named by its label). Re-judging is cheap: answered judgements come from the
cache and only earlier judge failures are sent again.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


@dataclass
class JudgeResult:
    """What ``judge_run`` wrote: file paths, the results document, completeness of the run and judge stats."""
    label: str
    judged_path: str
    results_path: str
    results: dict
    complete: bool
    missing: int
    stats: Any = None
    cache: bool = True  # verdicts are cached, so re-running resends only the judge failures
    first_failure: str | None = None  # one judge failure's error, as an example

    def summary_text(self) -> str:
        """Per-config accuracy/score lines for the terminal, with the judge named and caveats."""
        judge = self.results.get("judge", {})
        head = f"judge: {judge.get('model')} ({judge.get('kind')})"
        if judge.get("kind") == "offline":
            head += " -- normalised exact/contains match, NOT comparable with GPT-judge numbers"
        elif judge.get("template_sha256"):
            head += f", template {str(judge['template_sha256'])[:12]}"
        lines = [head]
        for label, m in self.results.get("metrics", {}).items():
            acc = "n/a" if m.get("accuracy") is None else f"{100 * m['accuracy']:.1f}%"
            score = "n/a" if m.get("mean_score") is None else f"{m['mean_score']:.2f}"
            eq = m.get("mean_equivalent_tokens")
            eq_s = "n/a" if eq is None else f"{eq:.1f}"
            lines.append(f"  {label:<22} accuracy {acc:>6}  score {score:>4}  equivalent tokens {eq_s:>7}  "
                         f"judged {m.get('judged')}/{m.get('answered')}  errored {m.get('errored')}  "
                         f"judge failures {m.get('judge_failures')}")
        for w in self.results.get("warnings") or []:
            lines.append(f"WARNING: {w}")
        if any(m.get("judge_failures") for m in self.results.get("metrics", {}).values()):
            if self.first_failure:
                lines.append(f"a judge failure: {self.first_failure}")
            if self.cache:
                lines.append("judge failures are not counted as wrong; run the same judge command again to retry "
                             "them (everything else comes from the cache)")
            else:
                lines.append("judge failures are not counted as wrong; run the same judge command again to retry "
                             "them (the judge cache is off, so every item is sent again: without --judge-cache "
                             "none only the failures are)")
        if not self.complete:
            lines.append(f"WARNING: the run is incomplete ({self.missing} (question, config) pairs missing); "
                         f"these numbers cover the finished part only")
        lines.append(f"wrote {self.judged_path}\nwrote {self.results_path}")
        return "\n".join(lines)


def _stale(merged: Path, run_dir: Path) -> bool:
    if not merged.exists():
        return True
    t = merged.stat().st_mtime_ns
    return any(p.stat().st_mtime_ns > t for p in run_dir.glob("predictions.rank*.jsonl"))


def _merged_records(run_dir: Path, verb: str) -> tuple:
    """(run spec, merged prediction records, pairs still missing, merged file path) of a run; the shards are
    merged first when the merged file is stale. ValueError when there is nothing to ``verb`` yet."""
    from video_eval.runner import MERGED_FILE, load_spec, merge

    spec = load_spec(run_dir)
    merged_path = run_dir / MERGED_FILE
    ms = merge(run_dir, partial=True) if _stale(merged_path, run_dir) else None
    records = [json.loads(line) for line in merged_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    expected = int(spec["dataset"]["size"]) * len(spec["configs"])
    missing = ms.missing if ms is not None else expected - len(records)
    if not records:
        raise ValueError(f"{run_dir}: no predictions to {verb} yet (run `python -m video_eval run ...` first)")
    return spec, records, missing, merged_path


def judge_run(run_dir: str | os.PathLike, judge: Any, progress: bool = True) -> JudgeResult:
    """Judge every prediction of a run with ``judge`` (an OfflineJudge or OpenAIJudge)."""
    from video_eval import judges
    from video_eval.metrics import compute_results, results_document, write_results
    from video_eval.runner import _atomic_write

    run_dir = Path(run_dir)
    spec, records, missing, _ = _merged_records(run_dir, "judge")
    if missing:
        logger.warning("%s: judging an incomplete run (%d pairs missing)", run_dir, missing)
    judged, stats = judges.judge_records(records, judge, progress=progress)
    label = judge.label
    judged_path = run_dir / f"judged.{label}.jsonl"
    _atomic_write(judged_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in judged))
    present = {r["config"] for r in records}
    metrics = compute_results(judged, config_order=[c for c in spec["configs"] if c in present])
    doc = results_document(spec, judge.info(), metrics)
    doc["complete"] = missing == 0
    doc["missing_pairs"] = missing
    doc["judge_stats"] = stats.to_dict() if hasattr(stats, "to_dict") else stats
    doc["warnings"] = stats.warnings(judge.info().get("model")) if hasattr(stats, "warnings") else []
    results_path = run_dir / f"results.{label}.json"
    write_results(results_path, doc)
    first_failure = next((r["judge_error"] for r in judged if r.get("judge_error")), None)
    return JudgeResult(label, str(judged_path), str(results_path), doc, missing == 0, missing, stats,
                       cache=getattr(judge, "cache", True) is not None, first_failure=first_failure)


def is_mc_run(spec: dict) -> bool:
    """Whether a run.json is a multiple-choice benchmark run (scored without a judge)."""
    return bool(spec.get("mc_scoring")) or (spec.get("dataset") or {}).get("kind") == "multiple_choice"


def score_mc_run(run_dir: str | os.PathLike) -> JudgeResult:
    """Score a multiple-choice run: merged predictions -> ``RUN/results.json`` (accuracy overall and by
    the benchmark's breakdown; no judge). Incomplete runs are scored over their finished part."""
    from video_eval.metrics import MC_RESULTS_FILE, mc_results_document, write_results

    run_dir = Path(run_dir)
    spec, records, missing, merged_path = _merged_records(run_dir, "score")
    doc = mc_results_document(spec, records, missing)
    path = run_dir / MC_RESULTS_FILE
    write_results(path, doc)
    return JudgeResult("choice", str(merged_path), str(path), doc, missing == 0, missing, cache=False)


def mc_summary_text(res: JudgeResult) -> str:
    """Per-config accuracy lines of a multiple-choice run, then the breakdowns of the first config."""
    doc = res.results
    lines = [f"scoring: {doc['judge']['model']} (no judge)"]
    for label, m in doc["metrics"].items():
        acc = "n/a" if m.get("accuracy") is None else f"{100 * m['accuracy']:.1f}%"
        eq = m.get("mean_equivalent_tokens")
        lines.append(f"  {label:<22} accuracy {acc:>6}  correct {m.get('correct')}/{m.get('answered')}  "
                     f"unparsed {m.get('unparsed')}  errored {m.get('errored')}  equivalent tokens "
                     f"{'n/a' if eq is None else f'{eq:.1f}'}"
                     + (f"  M-Avg ({doc.get('macro')}) {100 * m['macro_accuracy']:.1f}%"
                        if m.get("macro_accuracy") is not None else ""))
    if not res.complete:
        lines.append(f"WARNING: the run is incomplete ({res.missing} (question, config) pairs missing); "
                     f"these numbers cover the finished part only")
    lines.append(f"wrote {res.results_path}")
    return "\n".join(lines)
