"""video_eval.metrics and video_eval.report on hand-built judged records (numbers checked by hand)."""

from __future__ import annotations

import copy
import json
import math
import os
import sys

import pytest

from video_eval.metrics import (MetricsError, compute_results, judge_info, load_results, results_document,
                                write_results)
from video_eval.report import OFFLINE_LABEL, ReportError, write_report

OFFLINE = {"kind": "offline", "model": "exact-match", "template_sha256": None}
GPT = {"kind": "openai", "model": "gpt-3.5-turbo", "template_sha256": "ab12cd34ef56" + "0" * 52}
CONFIGS = ["full", "video@0.5", "video@0.25"]


def rec(qid, qtype, config, *, verdict=None, score=None, error=None, judge_error=None, counts=(),
        visual=2048, equiv=2048.0, new=10, prefill=0.5, decode=1.0, judge=OFFLINE):
    """One judged record in the SPEC field order."""
    answered = error is None
    return {
        "question_id": qid, "video_name": f"v{qid}.mp4", "question": f"q{qid}?", "answer": "yes",
        "type": qtype, "config": config,
        "prediction": "yes" if answered else "", "error": error,
        "visual_tokens": visual, "counts": list(counts), "equivalent_tokens": equiv, "new_tokens": new,
        "prefill_seconds": prefill, "decode_seconds": decode,
        "judge": dict(judge), "judge_pred": verdict if answered and judge_error is None else None,
        "judge_score": score if answered and judge_error is None else None, "judge_error": judge_error,
    }


def make_records(judge=OFFLINE):
    """4 questions (types "1", "1", "2", none) x 3 configs, canonical order (question, then config)."""
    j = {"judge": judge}
    by_q = {
        "1": [rec("1", "1", "full", verdict="yes", score=5, prefill=0.4, new=10, **j),
              rec("1", "1", "video@0.5", verdict="yes", score=4, counts=(1000, 500), equiv=700.0,
                  prefill=0.2, decode=0.5, new=5, **j),
              rec("1", "1", "video@0.25", verdict="yes", score=5, counts=(512, 256), equiv=300.0, **j)],
        "2": [rec("2", "1", "full", verdict="no", score=1, prefill=0.6, new=20, **j),
              rec("2", "1", "video@0.5", verdict="no", score=2, counts=(1100, 520), equiv=720.0,
                  prefill=0.2, decode=0.5, new=10, **j),
              rec("2", "1", "video@0.25", verdict="yes", score=4, counts=(512, 256), equiv=300.0, **j)],
        "3": [rec("3", "2", "full", verdict="yes", score=4, prefill=0.5, new=30, **j),
              # errored prediction: not answered, never judged
              rec("3", "2", "video@0.5", error="VideoError: cannot decode v3.mp4", visual=0, equiv=0.0,
                  new=0, prefill=0.0, decode=0.0, **j),
              rec("3", "2", "video@0.25", verdict="no", score=1, counts=(512, 256), equiv=300.0, **j)],
        "4": [rec("4", None, "full", verdict="yes", score=3, prefill=0.5, new=40, **j),
              # judge failure: answered, but no verdict
              rec("4", None, "video@0.5", judge_error="JudgeError: unparseable reply", counts=(1024, 540),
                  equiv=740.0, prefill=0.2, decode=0.5, new=15, **j),
              rec("4", None, "video@0.25", verdict="no", score=0, counts=(512, 256), equiv=300.0, **j)],
    }
    return [r for q in ("1", "2", "3", "4") for r in by_q[q]]


def run_spec(name="msvd", model="LanguageBind/Video-LLaVA-7B-hf", configs=CONFIGS):
    return {"dataset": {"name": name, "split": "test", "root": f"/data/{name}", "limit": 4, "size": 4},
            "model": model, "frames": 8, "configs": list(configs), "max_new_tokens": 64, "batch_size": 2,
            "seed": 0, "versions": {"videosparse": "0.1.0"}, "git_commit": "0123456789abcdef", "world_size": 1}


def make_doc(name="msvd", judge=OFFLINE, records=None, configs=CONFIGS, model="LanguageBind/Video-LLaVA-7B-hf"):
    records = make_records(judge) if records is None else records
    return results_document(run_spec(name, model, configs), judge_info(records), compute_results(records, configs))


def table_rows(md: str) -> dict[tuple[str, str], list[str]]:
    """(run number, config) -> cells of the markdown table."""
    lines = [ln for ln in md.splitlines() if ln.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for ln in lines[1:]:
        cells = [c.strip() for c in ln.strip().strip("|").split("|")]
        assert len(cells) == len(header), ln
        rows[(cells[0], cells[3])] = dict(zip(header, cells))
    return rows


def png_size(path):
    from PIL import Image

    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()
        return im.size


# ---------------------------------------------------------------------------------------------- metrics


def test_compute_results_matches_hand_computation():
    res = compute_results(make_records())
    assert list(res) == CONFIGS

    full = res["full"]
    assert (full["n"], full["answered"], full["errored"], full["judged"], full["judge_failures"]) == (4, 4, 0, 4, 0)
    assert full["accuracy"] == pytest.approx(3 / 4)
    assert full["mean_score"] == pytest.approx((5 + 1 + 4 + 3) / 4)
    assert full["mean_counts"] == []
    assert full["mean_visual_tokens"] == 2048 and full["mean_equivalent_tokens"] == 2048
    assert full["total_prefill_seconds"] == pytest.approx(2.0)
    assert full["mean_prefill_seconds"] == pytest.approx(0.5)
    assert full["total_decode_seconds"] == pytest.approx(4.0)
    assert full["mean_new_tokens"] == pytest.approx(25.0)
    assert full["questions_per_second"] == pytest.approx(4 / 6.0)
    assert full["decode_tokens_per_second"] == pytest.approx(100 / 4.0)

    v = res["video@0.5"]
    # q3 errored (not answered, not judged), q4 judge failure (answered, not judged)
    assert (v["n"], v["answered"], v["errored"], v["judged"], v["judge_failures"]) == (4, 3, 1, 2, 1)
    assert v["accuracy"] == pytest.approx(1 / 2)  # 1 yes / 2 judged: the judge failure is not "wrong"
    assert v["mean_score"] == pytest.approx((4 + 2) / 2)
    # stage means over answered records q1, q2, q4 (the errored q3 with counts [] is excluded)
    assert v["mean_counts"] == pytest.approx([(1000 + 1100 + 1024) / 3, (500 + 520 + 540) / 3])
    assert v["mean_visual_tokens"] == 2048
    assert v["mean_equivalent_tokens"] == pytest.approx(720.0)
    assert v["total_prefill_seconds"] == pytest.approx(0.6)
    assert v["total_decode_seconds"] == pytest.approx(1.5)
    assert v["mean_decode_seconds"] == pytest.approx(0.5)
    assert v["total_new_tokens"] == 30
    assert v["questions_per_second"] == pytest.approx(3 / 2.1)
    assert v["decode_tokens_per_second"] == pytest.approx(20.0)

    pt = v["per_type"]
    assert list(pt) == ["1", "2", "untyped"]
    assert pt["1"]["n"] == 2 and pt["1"]["judged"] == 2 and pt["1"]["accuracy"] == pytest.approx(0.5)
    assert pt["1"]["mean_score"] == pytest.approx(3.0)
    assert pt["2"]["errored"] == 1 and pt["2"]["judged"] == 0 and pt["2"]["accuracy"] is None
    assert pt["untyped"]["judge_failures"] == 1 and pt["untyped"]["accuracy"] is None
    assert pt["untyped"]["mean_score"] is None

    q = res["video@0.25"]
    assert q["accuracy"] == pytest.approx(0.5) and q["mean_counts"] == [512, 256]
    assert res["full"]["per_type"]["1"]["accuracy"] == pytest.approx(0.5)


def test_config_order_and_unknown_or_missing_configs():
    records = make_records()
    res = compute_results(records, config_order=["video@0.25", "full", "video@0.5", "fastv@0.1"])
    assert list(res) == ["video@0.25", "full", "video@0.5", "fastv@0.1"]
    empty = res["fastv@0.1"]
    assert empty["n"] == 0 and empty["accuracy"] is None and empty["mean_counts"] is None
    assert empty["questions_per_second"] is None and empty["decode_tokens_per_second"] is None
    with pytest.raises(MetricsError, match="'video@0.25' is not in the run's configs"):
        compute_results(records, config_order=["full", "video@0.5"])


def test_all_errored_config_has_no_accuracy_and_no_throughput():
    records = [rec(str(i), None, "fastv@0.1", error="RuntimeError: out of memory", counts=(), visual=0,
                   equiv=0.0, new=0, prefill=0.0, decode=0.0) for i in range(3)]
    m = compute_results(records)["fastv@0.1"]
    assert (m["n"], m["answered"], m["errored"], m["judged"]) == (3, 0, 3, 0)
    assert m["accuracy"] is None and m["mean_equivalent_tokens"] is None
    assert m["questions_per_second"] is None and m["total_prefill_seconds"] == 0


def test_mixed_stage_lengths_raise():
    records = make_records()
    bad = next(r for r in records if r["question_id"] == "2" and r["config"] == "video@0.5")
    bad["counts"] = [1100, 520, 100]
    with pytest.raises(MetricsError, match=r"config 'video@0\.5'.*different numbers of pruning stages"):
        compute_results(records)
    # an errored record with [] counts does not count as a different stage list (see q3 above)
    compute_results(make_records())


def test_mixed_judges_duplicates_and_malformed_records_raise():
    records = make_records()
    records[-1]["judge"] = dict(GPT)
    with pytest.raises(MetricsError, match="mix 2 judges"):
        compute_results(records)
    with pytest.raises(MetricsError, match="mix 2 judges"):
        judge_info(records)
    assert judge_info(make_records(GPT)) == GPT

    with pytest.raises(MetricsError, match="appears twice"):
        compute_results(make_records() + [make_records()[0]])

    no_verdict = make_records()
    no_verdict[0]["judge_pred"] = None  # answered, no judge_error, but no verdict either
    with pytest.raises(MetricsError, match="judge_pred must be 'yes' or 'no'"):
        compute_results(no_verdict)

    missing = make_records()
    del missing[0]["judge"]
    with pytest.raises(MetricsError, match="lacks field"):
        compute_results(missing)
    with pytest.raises(MetricsError, match="no judged records"):
        judge_info([])


def test_results_document_written_atomically_round_trips(tmp_path):
    doc = make_doc()
    assert doc["schema"] == 1 and doc["judge"] == OFFLINE and doc["config_order"] == CONFIGS
    assert doc["run"]["dataset"]["name"] == "msvd"
    assert doc["metrics"]["video@0.5"]["judge_failures"] == 1

    path = tmp_path / "results.offline.json"
    write_results(path, {"schema": 1, "stale": True})
    write_results(path, doc)
    assert load_results(path) == doc
    assert os.listdir(tmp_path) == ["results.offline.json"]  # no temporary file left behind

    broken = copy.deepcopy(doc)
    broken["metrics"]["full"]["accuracy"] = math.nan
    with pytest.raises(MetricsError, match="not plain JSON"):
        write_results(path, broken)
    assert load_results(path) == doc and os.listdir(tmp_path) == ["results.offline.json"]

    (tmp_path / "old.json").write_text(json.dumps({"schema": 0}))
    with pytest.raises(MetricsError, match="unsupported results schema"):
        load_results(tmp_path / "old.json")


# ---------------------------------------------------------------------------------------------- report


def test_report_single_run_markdown_numbers_and_png(tmp_path):
    import matplotlib

    def rc_snapshot():  # raw values: reading rcParams["backend"] the normal way would import pyplot
        return {k: repr(v) for k, v in dict.items(matplotlib.rcParams)}

    had_pyplot = "matplotlib.pyplot" in sys.modules
    rc_before = rc_snapshot()

    path = tmp_path / "run" / "results.offline.json"
    path.parent.mkdir()
    write_results(path, make_doc())
    md_path, png_path = write_report([str(path)], tmp_path / "report")
    assert md_path == str(tmp_path / "report" / "report.md") and png_path.endswith("report.png")

    md = open(md_path, encoding="utf-8").read()
    rows = table_rows(md)
    assert set(rows) == {("1", c) for c in CONFIGS}
    v = rows[("1", "video@0.5")]
    assert v["Dataset"] == "msvd/test (first 4)" and v["Model"] == "LanguageBind/Video-LLaVA-7B-hf"
    assert v["Judge"] == OFFLINE_LABEL
    assert v["Accuracy %"] == "50.0" and v["Mean score"] == "3.00"
    assert (v["Judged"], v["Answered"], v["Errored"], v["Judge failures"]) == ("2", "3/4", "1", "1")
    assert v["Visual tokens → after each stage"] == "2048 → 1041.3 → 520"
    assert v["Equivalent tokens"] == "720.0"
    assert v["Prefill ms"] == "200.0" and v["Decode ms"] == "500.0"
    assert v["Questions/s"] == f"{3 / 2.1:.2f}"
    f = rows[("1", "full")]
    assert f["Accuracy %"] == "75.0" and f["Visual tokens → after each stage"] == "2048"
    assert f["Questions/s"] == "0.67"
    assert "offline match (not GPT-judge): model `exact-match`, no prompt template" in md
    assert "Warning" not in md
    assert "![Accuracy against equivalent visual tokens](report.png)" in md

    assert png_size(png_path) == (600, 450)
    # no global matplotlib state touched
    assert rc_snapshot() == rc_before
    assert had_pyplot or "matplotlib.pyplot" not in sys.modules


def test_report_two_runs_side_by_side_with_na_accuracy(tmp_path):
    configs = ["full", "video@0.5", "video@0.25", "fastv@0.1"]
    errored = [rec(str(i), None, "fastv@0.1", judge=GPT, error="RuntimeError: out of memory", visual=0, equiv=0.0,
                   new=0, prefill=0.0, decode=0.0) for i in range(1, 5)]
    second = make_doc("activitynet", GPT, make_records(GPT) + errored, configs, model="/models/Video-LLaVA-7B-hf")
    md_path, png_path = write_report([make_doc(judge=GPT), second], tmp_path, title="Two datasets")
    md = open(md_path, encoding="utf-8").read()
    rows = table_rows(md)
    assert len(rows) == 7
    assert rows[("1", "full")]["Dataset"] == "msvd/test (first 4)"
    assert rows[("2", "full")]["Dataset"] == "activitynet/test (first 4)"
    assert rows[("2", "full")]["Model"] == "Video-LLaVA-7B-hf"  # local path shortened
    assert rows[("2", "video@0.5")]["Accuracy %"] == "50.0"
    na = rows[("2", "fastv@0.1")]
    assert na["Accuracy %"] == "n/a" and na["Errored"] == "4" and na["Equivalent tokens"] == "n/a"
    assert rows[("1", "full")]["Judge"] == "GPT judge gpt-3.5-turbo"
    assert "template sha256 `ab12cd34ef56`" in md and OFFLINE_LABEL not in md
    assert md.startswith("# Two datasets") and "Warning" not in md
    assert png_size(png_path) == (1200, 450)  # one panel per dataset


def test_report_warns_when_judges_are_mixed(tmp_path):
    md_path, png_path = write_report([make_doc(judge=OFFLINE), make_doc(judge=GPT)], tmp_path)
    md = open(md_path, encoding="utf-8").read()
    warning = [ln for ln in md.splitlines() if "Warning" in ln]
    assert len(warning) == 1 and warning[0].startswith("**") and warning[0].endswith("**")
    assert "mixes 2 different judges" in warning[0]
    rows = table_rows(md)
    assert rows[("1", "full")]["Judge"] == OFFLINE_LABEL
    assert rows[("2", "full")]["Judge"] == "GPT judge gpt-3.5-turbo"
    assert png_size(png_path) == (1200, 450)  # same dataset, one panel per judge


def test_report_rejects_bad_input(tmp_path):
    with pytest.raises(ReportError, match="nothing to report"):
        write_report([], tmp_path)
    with pytest.raises(ReportError, match="not found"):
        write_report(tmp_path / "missing.json", tmp_path)
    with pytest.raises(ReportError, match="unsupported results schema"):
        write_report({"metrics": {}}, tmp_path)


def test_report_links_results_relative_to_itself_never_a_foreign_temporary_path(tmp_path):
    import shutil
    import tempfile

    kept = tmp_path / "runs" / "msvd" / "results.offline.json"
    kept.parent.mkdir(parents=True)
    write_results(kept, make_doc())
    temp_run = tempfile.mkdtemp(prefix="eval_tmp_run_")  # a run in its own temporary directory
    try:
        gone = os.path.join(temp_run, "run", "results.offline.json")
        os.makedirs(os.path.dirname(gone))
        write_results(gone, make_doc())
        md_path, _ = write_report([str(kept), gone], tmp_path / "reports")
    finally:
        shutil.rmtree(temp_run)
    md = open(md_path, encoding="utf-8").read()
    # a relative link that resolves from the report's directory
    assert "[../runs/msvd/results.offline.json](<../runs/msvd/results.offline.json>)" in md
    assert os.path.isfile(os.path.join(tmp_path / "reports", "../runs/msvd/results.offline.json"))
    # the deleted temporary run is named, not linked
    assert temp_run not in md and os.path.basename(temp_run) not in md
    assert "`run/results.offline.json` (not linked" in md
    assert str(tmp_path) not in md  # no absolute paths at all
