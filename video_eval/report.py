"""Side-by-side report of one or more results documents: ``report.md`` (table) and ``report.png`` (plot).

:func:`write_report` takes results documents (dicts, or paths to ``results.<judge>.json`` files written by
:func:`video_eval.metrics.write_results`) and writes into ``out_dir``:

* ``report.md``: one table row per (run, config) — dataset, model, config, judge, accuracy, mean score,
  answered / errored / judge failures, visual tokens after each pruning stage, equivalent tokens, mean
  prefill and decode time, questions per second — a legend naming every judge (model and prompt
  template hash), and a bold warning when the rows were graded by different judges.
* ``report.png``: accuracy (%) against mean equivalent visual tokens, one line per method (the config
  label before ``@``: ``video@0.1`` -> ``video``), the unpruned ``full`` config as a dashed horizontal
  reference line, one panel per dataset (and per judge when judges are mixed).

The offline judge (string match against the reference answer) is always labelled
``offline match (not GPT-judge)`` so its numbers are not mistaken for GPT-judged accuracy.

Matplotlib is imported lazily and only through :class:`matplotlib.figure.Figure`: no pyplot, no backend
selection and no change to ``matplotlib.rcParams``.
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .metrics import MetricsError, check_results_document, load_results

OFFLINE_LABEL = "offline match (not GPT-judge)"
FONT = "DejaVu Sans"
PANEL_INCHES = (6.0, 4.5)
"""Size of one plot panel in inches; the PNG is ``ncols * 600`` x ``nrows * 450`` pixels at :data:`DPI`."""
DPI = 100
MAX_COLUMNS = 3
REPORT_MD = "report.md"
REPORT_PNG = "report.png"

_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
           "#bcbd22", "#7f7f7f"]
_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
_LINESTYLES = ["-", ":", "-.", (0, (5, 1, 1, 1))]


class ReportError(ValueError):
    """The report cannot be made from the given results (none given, unreadable or malformed)."""


# ---------------------------------------------------------------------------------------------- inputs


def _load(item: Any, position: int) -> tuple[dict[str, Any], str | None]:
    if isinstance(item, Mapping):
        try:
            check_results_document(item, where=f"results document #{position + 1}")
        except MetricsError as exc:
            raise ReportError(str(exc)) from None
        return dict(item), None
    if isinstance(item, (str, os.PathLike)):
        try:
            return load_results(item), os.fspath(item)
        except MetricsError as exc:
            raise ReportError(str(exc)) from None
    raise ReportError(f"results #{position + 1}: expected a results document (dict) or a path to one, "
                      f"got {type(item).__name__}")


def _as_list(results: Any) -> list[Any]:
    if isinstance(results, (Mapping, str, os.PathLike)):
        return [results]
    if isinstance(results, Iterable):
        return list(results)
    raise ReportError(f"expected results documents or paths, got {type(results).__name__}")


# ---------------------------------------------------------------------------------------------- labels


def judge_key(judge: Mapping[str, Any]) -> tuple[str, str, str | None]:
    """What makes two judges the same: kind, model and prompt template hash."""
    return (str(judge.get("kind")), str(judge.get("model")), judge.get("template_sha256"))


def judge_label(judge: Mapping[str, Any]) -> str:
    """Short human label: the offline judge is clearly marked as not a GPT judge."""
    kind, model = judge.get("kind"), judge.get("model")
    if kind == "offline":
        return OFFLINE_LABEL
    if kind == "choice":
        return f"multiple choice, no judge ({model})"
    if kind == "openai":
        return f"GPT judge {model}"
    return f"{kind} judge {model}"


def _judge_legend(judge: Mapping[str, Any]) -> str:
    if judge.get("kind") == "choice":
        return judge_label(judge)
    sha = judge.get("template_sha256")
    template = f"template sha256 `{sha[:12]}`" if sha else "no prompt template"
    return f"{judge_label(judge)}: model `{judge.get('model')}`, {template}"


def dataset_label(run: Mapping[str, Any]) -> str:
    """``name/split`` plus ``(first N)`` when the run was limited."""
    ds = run.get("dataset") or {}
    label = str(ds.get("name"))
    if ds.get("split"):
        label += f"/{ds['split']}"
    if ds.get("limit") is not None:
        label += f" (first {ds['limit']})"
    return label


def model_label(run: Mapping[str, Any]) -> str:
    """Hub ids as given; local paths shortened to their last component."""
    model = str(run.get("model"))
    if os.path.isabs(model) or model.startswith("."):
        return os.path.basename(model.rstrip("/\\")) or model
    return model


def method_of(config: str) -> str:
    """The method of a config label: the part before ``@`` (``video@0.1`` -> ``video``)."""
    return config.split("@", 1)[0]


# ---------------------------------------------------------------------------------------------- numbers


def _fmt(value: float | None, digits: int = 1, scale: float = 1.0) -> str:
    if value is None:
        return "n/a"
    return f"{value * scale:.{digits}f}"


def _fmt_count(value: float | None) -> str:
    if value is None:
        return "n/a"
    return str(int(round(value))) if abs(value - round(value)) < 0.05 else f"{value:.1f}"


def _fmt_rate(value: float | None) -> str:
    if value is None:
        return "n/a"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _tokens_cell(m: Mapping[str, Any]) -> str:
    counts = m.get("mean_counts")
    if m.get("mean_visual_tokens") is None:
        return "n/a"
    return " → ".join(_fmt_count(v) for v in [m["mean_visual_tokens"], *(counts or [])])


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


# ---------------------------------------------------------------------------------------------- table


def _rows(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for i, doc in enumerate(runs):
        metrics = doc["metrics"]
        order = [c for c in doc.get("config_order") or [] if c in metrics]
        order += [c for c in metrics if c not in order]
        for config in order:
            rows.append({"run": i, "doc": doc, "config": config, "m": metrics[config]})
    return rows


def _temp_roots() -> set[str]:
    import tempfile

    return {os.path.realpath(tempfile.gettempdir()), os.path.realpath(os.sep)}


def source_reference(src: str, out_dir: str) -> str:
    """How report.md in ``out_dir`` refers to the results file ``src``: a link relative to the report when
    the two share a directory (a link that survives moving the whole tree), else just the file's last two
    path components, unlinked. Files that share only the filesystem root or the system temp directory
    with the report (e.g. a temporary run deleted after the report is written) are never linked."""
    a, o = os.path.realpath(src), os.path.realpath(out_dir)
    try:
        shared = os.path.commonpath([a, o])
    except ValueError:  # different drives
        shared = ""
    if not shared or shared in _temp_roots():
        tail = os.path.join(os.path.basename(os.path.dirname(a)), os.path.basename(a))
        return f"`{tail}` (not linked: outside the report's directory tree)"
    rel = os.path.relpath(a, o)
    return f"[{rel}](<{rel}>)"


def _markdown(runs: Sequence[dict[str, Any]], sources: Sequence[str | None], title: str | None,
              png_name: str, out_dir: str = ".") -> str:
    judges: dict[tuple, Mapping[str, Any]] = {}
    for doc in runs:
        judges.setdefault(judge_key(doc["judge"]), doc["judge"])
    mixed = len(judges) > 1

    lines = [f"# {title or 'Video-QA evaluation report'}", ""]
    if mixed:
        lines += [f"**Warning: this table mixes {len(judges)} different judges; accuracies graded by different "
                  f"judges (or prompt templates) are not comparable.**", ""]
    lines.append("Judges: " + "; ".join(_judge_legend(j) for j in judges.values()) + ".")
    lines += ["",
              "Accuracy = answers judged correct / answers judged. Errored predictions (no answer) and judge "
              "failures (the judge gave no usable verdict) are left out of the denominator and counted in "
              "their own columns. Tokens: visual tokens before pruning → mean tokens kept after each stage. "
              "Times are means per answered question.", ""]

    header = ["Run", "Dataset", "Model", "Config", "Judge", "Accuracy %", "Mean score", "Judged", "Answered",
              "Errored", "Judge failures", "Visual tokens → after each stage", "Equivalent tokens", "Prefill ms",
              "Decode ms", "Questions/s"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] * 5 + ["---:"] * (len(header) - 5)) + "|")
    for row in _rows(runs):
        run, m = row["doc"]["run"], row["m"]
        cells = [str(row["run"] + 1), dataset_label(run), model_label(run), row["config"],
                 judge_label(row["doc"]["judge"]), _fmt(m.get("accuracy"), 1, 100.0),
                 _fmt(m.get("mean_score"), 2), str(m.get("judged")), f"{m.get('answered')}/{m.get('n')}",
                 str(m.get("errored")), str(m.get("judge_failures")), _tokens_cell(m),
                 _fmt(m.get("mean_equivalent_tokens"), 1), _fmt(m.get("mean_prefill_seconds"), 1, 1000.0),
                 _fmt(m.get("mean_decode_seconds"), 1, 1000.0), _fmt_rate(m.get("questions_per_second"))]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    lines += ["", f"![Accuracy against equivalent visual tokens]({png_name})", "", "## Runs", ""]
    for i, (doc, src) in enumerate(zip(runs, sources)):
        run = doc["run"]
        ds = run.get("dataset") or {}
        size = ds.get("size", "?")
        parts = [f"dataset {dataset_label(run)} ({size} question{'' if size == 1 else 's'})",
                 f"model `{run.get('model')}`"]
        for key in ("frames", "max_new_tokens", "batch_size", "seed", "world_size"):
            if run.get(key) is not None:
                parts.append(f"{key} {run[key]}")
        if run.get("git_commit"):
            parts.append(f"commit `{str(run['git_commit'])[:12]}`")
        parts.append(f"judge {_judge_legend(doc['judge'])}")
        if src:
            parts.append(f"results {source_reference(src, out_dir)}")
        lines.append(f"{i + 1}. " + ", ".join(_cell(p) for p in parts))
        for w in doc.get("warnings") or []:
            lines.append(f"   * warning: {_cell(w)}")
    lines += _breakdown_tables(runs)
    return "\n".join(lines) + "\n"


def _breakdown_runs(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Plot panels of multiple-choice runs by the first key of their breakdown (Video-MME: duration; MVBench:
    task): one results-like document per value, its accuracy the value's."""
    out: list[dict[str, Any]] = []
    for doc in runs:
        keys = list(doc.get("breakdown") or [])
        metrics = doc.get("metrics") or {}
        if not keys:
            continue
        key = keys[0]
        values: list[str] = []
        for m in metrics.values():
            for v in (m.get("per_breakdown") or {}).get(key, {}):
                if v not in values:
                    values.append(v)
        for v in values:
            run = dict(doc["run"])
            ds = dict(run.get("dataset") or {})
            ds["split"] = f"{ds.get('split') or 'test'} · {key} {v}"
            run["dataset"] = ds
            derived = {}
            for c, m in metrics.items():
                cell = (m.get("per_breakdown") or {}).get(key, {}).get(v) or {}
                derived[c] = {"accuracy": cell.get("accuracy"), "mean_equivalent_tokens": m.get("mean_equivalent_tokens")}
            out.append({"run": run, "judge": doc["judge"], "metrics": derived})
    return out


def _breakdown_tables(runs: Sequence[dict[str, Any]]) -> list[str]:
    """Multiple-choice runs: accuracy per value of each breakdown key (rows) and config (columns)."""
    out: list[str] = []
    for i, doc in enumerate(runs):
        metrics = doc.get("metrics") or {}
        keys = list(doc.get("breakdown") or [])
        if not keys or not any(isinstance(m.get("per_breakdown"), Mapping) for m in metrics.values()):
            continue
        configs = [c for c in doc.get("config_order") or metrics if c in metrics]
        out += ["", f"## Run {i + 1}: accuracy by {', '.join(keys)} ({dataset_label(doc['run'])})", "",
                "Accuracy % = correct / answered; an answer whose option cannot be parsed counts as wrong. "
                "Questions per row in brackets.", ""]
        for key in keys:
            values: list[str] = []
            for c in configs:
                for v in (metrics[c].get("per_breakdown") or {}).get(key, {}):
                    if v not in values:
                        values.append(v)
            out += [f"| {_cell(key)} | " + " | ".join(_cell(c) for c in configs) + " |",
                    "|---|" + "---:|" * len(configs)]
            for v in values:
                cells = []
                n = None
                for c in configs:
                    cell = (metrics[c].get("per_breakdown") or {}).get(key, {}).get(v) or {}
                    n = n if n is not None else cell.get("n")
                    cells.append(_fmt(cell.get("accuracy"), 1, 100.0))
                out.append(f"| {_cell(v)} ({n}) | " + " | ".join(cells) + " |")
            overall = [_fmt(metrics[c].get("accuracy"), 1, 100.0) for c in configs]
            out += [f"| **overall** | " + " | ".join(overall) + " |", ""]
    return out


# ---------------------------------------------------------------------------------------------- plot


def _panels(runs: Sequence[dict[str, Any]], mixed: bool) -> dict[tuple, list[int]]:
    panels: dict[tuple, list[int]] = {}
    for i, doc in enumerate(runs):
        key = (dataset_label(doc["run"]), judge_key(doc["judge"]) if mixed else None)
        panels.setdefault(key, []).append(i)
    return panels


def _figure(runs: Sequence[dict[str, Any]], title: str | None):
    from matplotlib.figure import Figure

    judges = {judge_key(d["judge"]): d["judge"] for d in runs}
    mixed = len(judges) > 1
    panels = _panels(runs, mixed)
    ncols = min(len(panels), MAX_COLUMNS)
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(PANEL_INCHES[0] * ncols, PANEL_INCHES[1] * nrows), dpi=DPI, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)

    method_colors: dict[str, str] = {}
    for doc in runs:
        for config in doc["metrics"]:
            method_colors.setdefault(method_of(config), _COLORS[len(method_colors) % len(_COLORS)])

    for p, ((ds_label, jkey), run_ids) in enumerate(panels.items()):
        ax = axes[p // ncols][p % ncols]
        models = [model_label(runs[i]["run"]) for i in run_ids]
        by_model = len(set(models)) == len(models)
        plotted = 0
        for k, i in enumerate(run_ids):
            doc = runs[i]
            tag = "" if len(run_ids) == 1 else (f" · {models[k]}" if by_model else f" · run {i + 1}")
            series: dict[str, list[tuple[float, float]]] = {}
            for config, m in doc["metrics"].items():
                acc, x = m.get("accuracy"), m.get("mean_equivalent_tokens")
                if acc is None or x is None:
                    continue
                series.setdefault(method_of(config), []).append((float(x), 100.0 * acc))
            for method, points in series.items():
                points.sort()
                xs, ys = [pt[0] for pt in points], [pt[1] for pt in points]
                color = method_colors[method]
                marker = _MARKERS[k % len(_MARKERS)]
                if method == "full":
                    for x, y in points:
                        ax.axhline(y, color=color, linestyle="--", linewidth=1.2,
                                   label=f"full{tag}: {y:.1f}% at {x:.0f} tokens")
                        ax.plot([x], [y], marker=marker, color=color, linestyle="none")
                else:
                    ax.plot(xs, ys, marker=marker, color=color, linestyle=_LINESTYLES[k % len(_LINESTYLES)],
                            linewidth=1.6, markersize=6, label=f"{method}{tag}")
                plotted += len(points)
        panel_title = ds_label if jkey is None else f"{ds_label}\n{judge_label(judges[jkey])}"
        ax.set_title(panel_title, fontfamily=FONT, fontsize=11)
        ax.set_xlabel("equivalent visual tokens (mean per question)", fontfamily=FONT)
        ax.set_ylabel("accuracy (%)", fontfamily=FONT)
        ax.tick_params(labelfontfamily=FONT)
        ax.grid(True, alpha=0.3)
        if plotted:
            ax.legend(prop={"family": FONT, "size": 8}, loc="best")
        else:
            ax.text(0.5, 0.5, "no judged answers", transform=ax.transAxes, ha="center", va="center",
                    fontfamily=FONT, color="#666666")
    for p in range(len(panels), nrows * ncols):
        axes[p // ncols][p % ncols].set_visible(False)

    if mixed:
        judge_line = "judges differ between panels (see panel titles): not comparable"
    else:
        judge = next(iter(judges.values()))
        sha = judge.get("template_sha256")
        judge_line = f"judge: {judge_label(judge)}" + (f", template {sha[:8]}" if sha else "")
    width = 62 * ncols  # characters that fit across the figure at this font size
    lines = [title or "Accuracy vs. equivalent visual tokens", judge_line]
    heading = "\n".join(part for line in lines for part in textwrap.wrap(line, width, break_on_hyphens=False))
    fig.suptitle(heading, fontfamily=FONT, fontsize=12)
    return fig


# ---------------------------------------------------------------------------------------------- output


def _atomic_write(path: str, write) -> None:
    from videosparse.fileio import atomic_write

    atomic_write(path, write)


def write_report(results_docs_or_paths: Any, out_dir: str | os.PathLike[str],
                 title: str | None = None) -> tuple[str, str]:
    """Write ``report.md`` and ``report.png`` for one or more results documents into ``out_dir``.

    ``results_docs_or_paths``: a results document (dict) or path, or a sequence of them; each becomes
    one run (its configs become table rows, in the run's config order). Returns
    ``(markdown_path, png_path)``. Raises :class:`ReportError` when nothing is given or a document is
    unreadable or not a schema-1 results document.
    """
    items = _as_list(results_docs_or_paths)
    if not items:
        raise ReportError("no results documents given: nothing to report")
    loaded = [_load(item, i) for i, item in enumerate(items)]
    runs = [doc for doc, _ in loaded]
    sources = [src for _, src in loaded]

    out_dir = os.fspath(out_dir)
    from videosparse.fileio import writing

    with writing(out_dir, "create the report directory"):
        os.makedirs(out_dir, exist_ok=True)
    md_path = os.path.join(out_dir, REPORT_MD)
    png_path = os.path.join(out_dir, REPORT_PNG)

    text = _markdown(runs, sources, title, REPORT_PNG, out_dir)

    def write_md(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    fig = _figure(runs + _breakdown_runs(runs), title)
    _atomic_write(png_path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))
    _atomic_write(md_path, write_md)
    return md_path, png_path
