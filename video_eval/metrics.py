"""Metrics over judged records and the results JSON document.

* :func:`compute_results`: judged records (one judged file: one judge) -> per-config metrics, keyed by
  config label in run order: counts of answered / errored / judged / judge-failure records, accuracy
  and mean score over the judged records, the same per question type, mean visual tokens after each
  pruning stage, mean equivalent tokens, timing and throughput.
* :func:`judge_info`: the single judge that produced a judged file (mixed judges are an error).
* :func:`results_document` / :func:`write_results` / :func:`load_results`: the ``results.<judge>.json``
  file (schema 1), written atomically.

How records are counted (per config):

* ``errored``: the prediction failed (``error`` is not null). Not sent to the judge, not judged.
* ``answered``: ``error`` is null. Timing and token statistics are means over answered records.
* ``judge_failures``: answered, but the judge gave no usable verdict (``judge_error`` is not null).
  A judge failure is *not* a wrong answer: it is left out of the accuracy denominator.
* ``judged``: answered and ``judge_error`` is null; ``accuracy`` = judged "yes" / ``judged``.

Pure Python (no numpy); nothing is imported or read at import time.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

RESULTS_SCHEMA = 1

UNTYPED = "untyped"
"""``per_type`` key of records whose question type is null."""

_REQUIRED_KEYS = ("question_id", "config", "type", "error", "visual_tokens", "counts", "equivalent_tokens",
                  "new_tokens", "prefill_seconds", "decode_seconds", "judge", "judge_pred", "judge_score",
                  "judge_error")


class MetricsError(ValueError):
    """Judged records or a results document that cannot be summarised (inconsistent or malformed)."""


def _rid(rec: Mapping[str, Any]) -> str:
    return f"question_id={rec.get('question_id')!r} config={rec.get('config')!r}"


def _judge_key(judge: Any, rec: Mapping[str, Any]) -> tuple[str, str, str | None]:
    if not isinstance(judge, Mapping) or "kind" not in judge or "model" not in judge:
        raise MetricsError(f"record {_rid(rec)}: 'judge' must be an object with 'kind', 'model' and "
                           f"'template_sha256', got {judge!r}")
    return (str(judge["kind"]), str(judge["model"]), judge.get("template_sha256"))


def judge_info(judged_records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The judge shared by all records: ``{"kind", "model", "template_sha256"}``.

    Raises :class:`MetricsError` when there are no records or when records were judged by different
    judges (kind, model or prompt template differ): such records do not belong in one judged file.
    """
    seen: dict[tuple[str, str, str | None], int] = {}
    for rec in judged_records:
        if "judge" not in rec:
            raise MetricsError(f"record {_rid(rec)} has no 'judge' field (is this a predictions file "
                               f"rather than a judged file?)")
        key = _judge_key(rec["judge"], rec)
        seen[key] = seen.get(key, 0) + 1
    if not seen:
        raise MetricsError("no judged records: cannot tell which judge produced them")
    if len(seen) > 1:
        desc = "; ".join(f"{k[0]} model={k[1]!r} template={k[2]!r} ({n} records)" for k, n in seen.items())
        raise MetricsError(f"judged records mix {len(seen)} judges ({desc}); one judged file must come from "
                           f"a single judge")
    kind, model, sha = next(iter(seen))
    return {"kind": kind, "model": model, "template_sha256": sha}


def _mean(values: Sequence[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def _natural_key(label: str) -> tuple:
    """Sort question types naturally ("2" before "10"), the ``untyped`` bucket last."""
    if label == UNTYPED:
        return (2, "")
    parts = re.split(r"(\d+)", label)
    return (0 if label[:1].isdigit() else 1,
            tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts if p != ""))


def _number(rec: Mapping[str, Any], key: str) -> float:
    value = rec[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise MetricsError(f"record {_rid(rec)}: {key!r} must be a finite number, got {value!r}")
    return value


def _check_record(rec: Mapping[str, Any]) -> None:
    if not isinstance(rec, Mapping):
        raise MetricsError(f"a judged record must be a JSON object, got {type(rec).__name__}")
    missing = [k for k in _REQUIRED_KEYS if k not in rec]
    if missing:
        raise MetricsError(f"record {_rid(rec)} lacks field(s) {', '.join(missing)}")
    if not isinstance(rec["config"], str) or not rec["config"]:
        raise MetricsError(f"record {_rid(rec)}: 'config' must be a non-empty string")
    if rec["error"] is not None:
        return  # errored: never judged, its other fields are not used
    if not isinstance(rec["counts"], list):
        raise MetricsError(f"record {_rid(rec)}: 'counts' must be a list of token counts")
    if rec["judge_error"] is None and rec["judge_pred"] not in ("yes", "no"):
        raise MetricsError(f"record {_rid(rec)}: answered and without judge_error, so judge_pred must be "
                           f"'yes' or 'no', got {rec['judge_pred']!r}")
    score = rec["judge_score"]
    if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))):
        raise MetricsError(f"record {_rid(rec)}: judge_score must be a number or null, got {score!r}")


def _verdict_stats(recs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    answered = [r for r in recs if r["error"] is None]
    judged = [r for r in answered if r["judge_error"] is None]
    yes = sum(1 for r in judged if r["judge_pred"] == "yes")
    scores = [float(r["judge_score"]) for r in judged if r["judge_score"] is not None]
    return {
        "n": len(recs),
        "answered": len(answered),
        "errored": len(recs) - len(answered),
        "judged": len(judged),
        "judge_failures": len(answered) - len(judged),
        "accuracy": _ratio(yes, len(judged)),
        "mean_score": _mean(scores),
    }


def _config_metrics(label: str, recs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    out = _verdict_stats(recs)

    by_type: dict[str, list[Mapping[str, Any]]] = {}
    for r in recs:
        by_type.setdefault(UNTYPED if r["type"] is None else str(r["type"]), []).append(r)
    out["per_type"] = {t: _verdict_stats(by_type[t]) for t in sorted(by_type, key=_natural_key)}

    answered = [r for r in recs if r["error"] is None]
    lengths = sorted({len(r["counts"]) for r in answered})
    if len(lengths) > 1:
        examples = {}
        for r in answered:
            examples.setdefault(len(r["counts"]), r["question_id"])
        detail = ", ".join(f"{n} stage(s) e.g. question_id={examples[n]!r}" for n in lengths)
        raise MetricsError(f"config {label!r}: answered records report different numbers of pruning stages "
                           f"({detail}); every question of one config must go through the same stages")
    if answered:
        n_stages = lengths[0]
        columns = [[] for _ in range(n_stages)]
        for r in answered:
            for i, c in enumerate(r["counts"]):
                if isinstance(c, bool) or not isinstance(c, (int, float)):
                    raise MetricsError(f"record {_rid(r)}: counts must hold numbers, got {c!r}")
                columns[i].append(c)
        out["mean_counts"] = [_mean(col) for col in columns]
    else:
        out["mean_counts"] = None

    def col(key: str) -> list[float]:
        return [_number(r, key) for r in answered]

    prefill, decode, new_tokens = col("prefill_seconds"), col("decode_seconds"), col("new_tokens")
    total_prefill, total_decode = math.fsum(prefill), math.fsum(decode)
    total_new = math.fsum(new_tokens)
    out.update({
        "mean_visual_tokens": _mean(col("visual_tokens")),
        "mean_equivalent_tokens": _mean(col("equivalent_tokens")),
        "mean_prefill_seconds": _mean(prefill),
        "total_prefill_seconds": total_prefill,
        "mean_decode_seconds": _mean(decode),
        "total_decode_seconds": total_decode,
        "mean_new_tokens": _mean(new_tokens),
        "total_new_tokens": int(total_new),
        "questions_per_second": _ratio(len(answered), total_prefill + total_decode),
        "decode_tokens_per_second": _ratio(total_new, total_decode),
    })
    return out


def compute_results(judged_records: Iterable[Mapping[str, Any]],
                    config_order: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """Per-config metrics of one judged file, keyed by config label.

    Keys are in ``config_order`` (configs listed there without records get ``n == 0`` and null
    statistics; a record whose config is not listed is an error), else in first-seen order. Each value::

        n, answered, errored, judged, judge_failures   # record counts (see module docstring)
        accuracy        # judged "yes" / judged; None when judged == 0
        mean_score      # mean judge_score over judged records; None when there is none
        per_type        # {type: {n, answered, errored, judged, judge_failures, accuracy, mean_score}},
                        #   null type -> "untyped"; types in natural order
        mean_counts     # element-wise mean of `counts` (visual tokens after each stage) over answered
                        #   records ([] for configs without pruning stages, None when nothing answered)
        mean_visual_tokens, mean_equivalent_tokens, mean_new_tokens,
        mean_prefill_seconds, total_prefill_seconds, mean_decode_seconds, total_decode_seconds,
        total_new_tokens                                # over answered records
        questions_per_second      # answered / (total prefill + total decode seconds); None when 0
        decode_tokens_per_second  # total new tokens / total decode seconds; None when 0

    Raises :class:`MetricsError` for malformed records, records of several judges, the same
    (question_id, config) twice, or answered records of one config with different numbers of stages.
    """
    records = list(judged_records)
    for rec in records:
        _check_record(rec)
    if records:
        judge_info(records)

    groups: dict[str, list[Mapping[str, Any]]] = {}
    if config_order is not None:
        order = [str(c) for c in config_order]
        if len(set(order)) != len(order):
            raise MetricsError(f"config_order lists a config twice: {order}")
        for label in order:
            groups[label] = []
    seen: set[tuple[str, str]] = set()
    for rec in records:
        label = rec["config"]
        if label not in groups:
            if config_order is not None:
                raise MetricsError(f"record {_rid(rec)}: config {label!r} is not in the run's configs "
                                   f"{list(config_order)}")
            groups[label] = []
        key = (str(rec["question_id"]), label)
        if key in seen:
            raise MetricsError(f"record {_rid(rec)} appears twice in the judged records")
        seen.add(key)
        groups[label].append(rec)
    return {label: _config_metrics(label, recs) for label, recs in groups.items()}


def results_document(run_spec: Mapping[str, Any], judge_info: Mapping[str, Any],
                     metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The ``results.<judge>.json`` document::

        {"schema": 1,
         "run": run_spec,            # RUN/run.json as written by the runner
         "judge": {"kind", "model", "template_sha256"},
         "config_order": [label, ...],
         "metrics": {label: compute_results(...)[label], ...}}

    Inputs are deep-copied through JSON, so the document is plain JSON data (no NaN/inf allowed).
    """
    if not isinstance(run_spec, Mapping):
        raise MetricsError(f"run_spec must be a mapping (run.json's content), got {type(run_spec).__name__}")
    dataset = run_spec.get("dataset")
    if not isinstance(dataset, Mapping) or not dataset.get("name"):
        raise MetricsError("run_spec must hold 'dataset' with at least a 'name'")
    if "model" not in run_spec:
        raise MetricsError("run_spec must name the 'model'")
    if not isinstance(judge_info, Mapping) or "kind" not in judge_info or "model" not in judge_info:
        raise MetricsError(f"judge_info must hold 'kind', 'model' and 'template_sha256', got {judge_info!r}")
    if not isinstance(metrics, Mapping):
        raise MetricsError("metrics must be compute_results' mapping of config label -> metrics")
    doc = {
        "schema": RESULTS_SCHEMA,
        "run": run_spec,
        "judge": {"kind": judge_info["kind"], "model": judge_info["model"],
                  "template_sha256": judge_info.get("template_sha256")},
        "config_order": list(metrics),
        "metrics": metrics,
    }
    try:
        return json.loads(json.dumps(doc, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise MetricsError(f"results document is not plain JSON data: {exc}") from exc


def write_results(path: str | os.PathLike[str], doc: Mapping[str, Any]) -> str:
    """Write ``doc`` as indented JSON to ``path`` atomically (temporary file + ``os.replace``).

    A reader never sees a half-written file; on failure the temporary file is removed and any previous
    file at ``path`` is left as it was. Returns the path written.
    """
    path = os.fspath(path)
    try:
        text = json.dumps(doc, indent=2, allow_nan=False) + "\n"
    except (TypeError, ValueError) as exc:
        raise MetricsError(f"results document is not plain JSON data: {exc}") from exc
    from videosparse.fileio import atomic_write_text

    atomic_write_text(path, text)
    return path


def load_results(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a results document written by :func:`write_results`, checking its schema."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise MetricsError(f"results file not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise MetricsError(f"results file {path} is not valid JSON: {exc}") from None
    check_results_document(doc, where=path)
    return doc


def check_results_document(doc: Any, where: str = "results document") -> None:
    """Raise :class:`MetricsError` unless ``doc`` looks like a schema-1 results document."""
    if not isinstance(doc, Mapping):
        raise MetricsError(f"{where}: a results document must be a JSON object")
    if doc.get("schema") != RESULTS_SCHEMA:
        raise MetricsError(f"{where}: unsupported results schema {doc.get('schema')!r} "
                           f"(this version reads schema {RESULTS_SCHEMA})")
    for key in ("run", "judge", "metrics"):
        if not isinstance(doc.get(key), Mapping):
            raise MetricsError(f"{where}: missing or malformed {key!r}")
    dataset = doc["run"].get("dataset")
    if not isinstance(dataset, Mapping) or not dataset.get("name"):
        raise MetricsError(f"{where}: run spec lacks dataset name")


# ----------------------------------------------------------------------------- multiple choice
MC_RESULTS_FILE = "results.json"


def mc_judge_info(scoring: str, benchmark: str) -> dict[str, Any]:
    """The "judge" of a multiple-choice results document: no judge model, the scoring rule named."""
    rule = {"text": "option text match", "likelihood": "option letter likelihood"}.get(
        scoring, f"lmms-eval letter parsing ({benchmark})")
    return {"kind": "choice", "model": f"{scoring}: {rule}", "template_sha256": None}


def _mc_cell(recs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    answered = [r for r in recs if r.get("error") is None]
    correct = sum(1 for r in answered if r.get("correct"))
    unparsed = sum(1 for r in answered if r.get("pred_letter") is None)
    return {"n": len(recs), "answered": len(answered), "correct": correct, "unparsed": unparsed,
            "accuracy": _ratio(correct, len(answered))}


def compute_mc_results(records: Iterable[Mapping[str, Any]], config_order: Sequence[str] | None = None,
                       breakdown: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """Per-config metrics of multiple-choice prediction records (no judge).

    ``accuracy`` = correct / answered: an answer whose option cannot be parsed (``pred_letter`` null,
    counted in ``unparsed``) is wrong, as in lmms-eval; errored records (no answer) are left out and
    counted in ``errored``. Besides the token and timing statistics of :func:`compute_results`, each
    config has ``correct``, ``unparsed`` and ``per_breakdown``: ``{key: {value: {n, answered, correct,
    unparsed, accuracy}}}`` for each breakdown key of the benchmark (values in natural order)."""
    recs = []
    for r in records:
        if "correct" not in r or "breakdown" not in r:
            raise MetricsError(f"record {_rid(r)} has no 'correct' / 'breakdown' (not a multiple-choice record)")
        recs.append(dict(r, judge={"kind": "choice", "model": "-", "template_sha256": None},
                         judge_pred="yes" if r.get("correct") else "no", judge_score=None, judge_error=None))
    out = compute_results(recs, config_order)
    by_config: dict[str, list] = {}
    for r in recs:
        by_config.setdefault(r["config"], []).append(r)
    for label, m in out.items():
        rs = by_config.get(label, [])
        cell = _mc_cell(rs)
        m["correct"], m["unparsed"] = cell["correct"], cell["unparsed"]
        m["mean_score"] = None
        per: dict[str, dict] = {}
        for key in breakdown:
            groups: dict[str, list] = {}
            for r in rs:
                groups.setdefault(str((r.get("breakdown") or {}).get(key, "unknown")), []).append(r)
            per[key] = {v: _mc_cell(groups[v]) for v in sorted(groups, key=_natural_key)}
        m["per_breakdown"] = per
    return out


def mc_results_document(run_spec: Mapping[str, Any], records: Iterable[Mapping[str, Any]],
                        missing: int = 0) -> dict[str, Any]:
    """The ``RUN/results.json`` document of a multiple-choice run (schema 1, judge kind ``choice``)."""
    records = list(records)
    ds = run_spec.get("dataset") or {}
    present = {r["config"] for r in records}
    metrics = compute_mc_results(records, [c for c in run_spec.get("configs", []) if c in present],
                                 breakdown=ds.get("breakdown") or ())
    doc = results_document(run_spec, mc_judge_info(str(run_spec.get("mc_scoring")), str(ds.get("name"))), metrics)
    doc["complete"] = missing == 0
    doc["missing_pairs"] = missing
    doc["breakdown"] = list(ds.get("breakdown") or ())
    from video_eval.benchmarks import BENCHMARKS, macro_accuracy  # (lazy: benchmarks imports this module's users)

    spec = BENCHMARKS.get(str(ds.get("name")))
    macro = getattr(spec, "macro", None)
    if macro:  # the release's headline is the mean of per-value accuracies (MLVU's M-Avg over its tasks)
        doc["macro"] = macro
        for m in doc["metrics"].values():
            m["macro_accuracy"] = macro_accuracy((m.get("per_breakdown") or {}).get(macro, {}))
    return doc
