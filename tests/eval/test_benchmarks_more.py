"""NExT-QA, LongVideoBench and MLVU from fixtures in their official release layouts: the loaders (ids, options,
correct letters, breakdown fields, video files), ``check`` (a malformed row and a missing video, named), a
wrong benchmark's file or an empty folder (one error line naming what is missing), and ``run`` + ``report`` end
to end on the embedded test bed with the accuracy recomputed from predictions.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.eval.mc_fixtures import make_longvideobench, make_mlvu, make_nextqa
from video_eval.benchmarks import BENCHMARKS, check_mc, load_mc, macro_accuracy
from video_eval.cli import main
from video_eval.datasets import DatasetError
from video_eval.mcq import LETTER_INSTRUCTION, match_option_text

MAKERS = {"nextqa": make_nextqa, "longvideobench": make_longvideobench, "mlvu": make_mlvu}
BREAKDOWN = {"nextqa": ["family", "type"], "longvideobench": ["duration_group", "question_category"],
             "mlvu": ["task"]}
SPLIT = {"nextqa": "val", "longvideobench": "val", "mlvu": "dev"}
NAMES = list(MAKERS)


def _records(path):
    return [json.loads(x) for x in Path(path).read_text().splitlines()]


def _check_items(ds, fx):
    assert [it.question_id for it in ds.items] == [x["question_id"] for x in fx["items"]]
    for it, want in zip(ds.items, fx["items"]):
        assert it.video_name == want["video_name"] and it.question == want["question"]
        assert list(it.options) == want["options"] and it.answer == want["answer"]
        assert it.options["ABCDE".index(it.answer)] == want["answer_text"]
        assert dict(it.breakdown) == want["breakdown"]
        assert ds.video_path(it) == want_path(fx, it)
        # the default multiple-choice prompt: question, "A. ..." lines, the letter instruction
        lines = [f"{'ABCDE'[k]}. {o}" for k, o in enumerate(want["options"])]
        assert it.prompt == "\n".join([want["question"], *lines, LETTER_INSTRUCTION])


def want_path(fx, it):
    return fx["video_files"].get(it.video_name)


# ----------------------------------------------------------------------------- loaders
@pytest.mark.parametrize("name", NAMES)
def test_loader_reads_the_release_layout(tmp_path, name):
    fx = MAKERS[name](tmp_path / "data", n_videos=3, questions_per_video=2, seed=21, missing=1)
    ds = load_mc(name, fx["root"])
    _check_items(ds, fx)
    assert ds.split == SPLIT[name] and ds.to_dict()["breakdown"] == BREAKDOWN[name]
    assert ds.to_dict()["kind"] == "multiple_choice" and len(ds) == len(fx["items"]) == ds.total
    missing = [it for it in ds.items if ds.video_path(it) is None]
    assert {it.video_name for it in missing} == set(fx["missing"]) and len(missing) == 2
    assert [it.question_id for it in load_mc(name, fx["root"], limit=3).items] == \
        [x["question_id"] for x in fx["items"][:3]]


def test_nextqa_ids_types_splits_and_lmms_eval_copy(tmp_path):
    fx = make_nextqa(tmp_path / "rel", n_videos=2, questions_per_video=2, seed=22)
    rows = (fx["root"] / "dataset" / "nextqa" / "val.csv").read_text().splitlines()
    assert rows[0] == "video,frame_count,width,height,question,answer,qid,type,a0,a1,a2,a3,a4"
    ds = load_mc("nextqa", fx["root"])
    for it in ds.items:  # "<video>_<qid>" as the official eval_mc.py keys questions; 5 options
        assert it.question_id.startswith(it.video_name + "_") and len(it.options) == 5
        assert it.type in ("DL", "DC", "DO", "TC")
        # the release's NExTVideo/<folder>/<video>.mp4, through map_vid_vidorID.json
        assert ds.video_path(it).parent.parent == fx["root"] / "NExTVideo"
    # another split's table through --questions: the split is the file's
    te = make_nextqa(tmp_path / "te", n_videos=1, questions_per_video=2, seed=23, split="test")
    ds = load_mc("nextqa", te["root"], questions="dataset/nextqa/test.csv")
    assert ds.split == "test" and [it.question_id for it in ds.items] == [x["question_id"] for x in te["items"]]
    with pytest.raises(DatasetError, match="val.csv"):  # no val.csv and no --questions
        load_mc("nextqa", te["root"])
    # lmms-eval's copy: MC/test-00000-of-00001.parquet (integer video ids), videos flat in NExTVideo/
    pytest.importorskip("pyarrow")
    lm = make_nextqa(tmp_path / "lmms", n_videos=2, questions_per_video=2, seed=22, layout="lmms")
    ds = load_mc("nextqa", lm["root"])
    assert ds.split == "test"
    _check_items(ds, lm)
    assert all(ds.video_path(it).parent == lm["root"] / "NExTVideo" for it in ds.items)


def test_longvideobench_options_groups_and_subtitle_prefix(tmp_path):
    fx = make_longvideobench(tmp_path / "data", n_videos=4, questions_per_video=1, seed=24)
    ds = load_mc("longvideobench", fx["root"])
    assert [len(it.options) for it in ds.items] == [5, 4, 5, 4]  # the release mixes 4 and 5 candidates
    assert [dict(it.breakdown)["duration_group"] for it in ds.items] == ["15", "60", "600", "3600"]
    raw = json.loads((fx["root"] / "lvb_val.json").read_text())
    assert {"video_id", "question", "candidates", "correct_choice", "duration_group", "video_path", "subtitle_path",
            "question_category", "starting_timestamp_for_subtitles", "duration", "id"} <= set(raw[0])
    subs = load_mc("longvideobench", fx["root"], subtitles=True)
    assert subs.subtitles and subs.to_dict()["subtitles"] is True
    for it, plain in zip(subs.items, ds.items):
        # a prefix of the lines inside the video's window (both subtitle formats; the line after the
        # window and the offset of videos that start 30 s into their original are handled)
        text = fx["subtitles"][it.video_name]
        assert it.prompt == text + "\n" + plain.prompt and "long after" not in it.prompt
    assert check_mc("longvideobench", fx["root"], subtitles=True).ok
    (fx["root"] / "subtitles" / raw[0]["subtitle_path"]).unlink()
    rep = check_mc("longvideobench", fx["root"], subtitles=True)
    assert rep.ok and [p.kind for p in rep.problems] == ["missing_subtitles"]  # a warning
    assert raw[0]["subtitle_path"] in rep.text()
    # the test split has no answers: refused in one line
    with pytest.raises(DatasetError, match="no answers .*test split"):
        load_mc("longvideobench", fx["root"], questions="lvb_test_wo_gt.json")
    with pytest.raises(DatasetError, match="NExT-QA has no subtitles"):
        load_mc("nextqa", fx["root"], subtitles=True)


def test_mlvu_tasks_generation_skipped_and_m_avg(tmp_path):
    fx = make_mlvu(tmp_path / "data", n_videos=6, questions_per_video=1, seed=25)
    ds = load_mc("mlvu", fx["root"])  # the folder holding MLVU/
    assert load_mc("mlvu", fx["root"] / "MLVU").to_dict()["size"] == len(ds)  # or MLVU/ itself
    assert [it.question_id for it in ds.items] == ["1_plotQA_0", "1_plotQA_1", "2_needle_0", "2_needle_1",
                                                   "4_count_0", "4_count_1"]
    assert {dict(it.breakdown)["task"] for it in ds.items} == {"plotQA", "needle", "count"}
    assert not any("summar" in it.question or "scene" in it.question for it in ds.items)  # 8_, 9_ skipped
    # the same basename in every task folder: each question gets its own task's file
    firsts = [it for it in ds.items if it.video_name.endswith("/clip_0.mp4")]
    assert len(firsts) == 3 and len({ds.video_path(it) for it in firsts}) == 3
    assert BENCHMARKS["mlvu"].macro == "task"
    cells = {"plotQA": {"accuracy": 1.0}, "needle": {"accuracy": 0.5}, "count": {"accuracy": None}}
    assert macro_accuracy(cells) == pytest.approx(0.75) and macro_accuracy({}) is None


# ----------------------------------------------------------------------------- check
@pytest.mark.parametrize("name", NAMES)
def test_check_names_the_malformed_row_and_the_missing_video(tmp_path, name, capsys):
    fx = MAKERS[name](tmp_path / "data", n_videos=3, questions_per_video=2, seed=26, missing=1, malformed=True)
    bad = fx["malformed"]
    where = f"line {bad['line']}" if name == "nextqa" else f"entry {bad['entry']}"
    with pytest.raises(DatasetError) as e:  # a run refuses a malformed file, naming it and the row
        load_mc(name, fx["root"])
    assert str(bad["file"]) in str(e.value) and where in str(e.value) and "\n" not in str(e.value)
    rep = check_mc(name, fx["root"], probe=True)
    assert not rep.ok and rep.split == SPLIT[name]
    assert sorted(p.kind for p in rep.problems) == ["invalid_entries", "missing_videos"]
    assert rep.questions == len(fx["items"]) and rep.missing_videos == fx["missing"] and rep.opened == 2
    assert main(["check", "--dataset", name, "--root", str(fx["root"])]) == 1
    text = capsys.readouterr().out
    assert f"{bad['file']}: 1 bad entry: {where}" in text and fx["missing"][0] in text and "NOT OK" in text
    js = main(["check", "--dataset", name, "--root", str(fx["root"]), "--json", "--no-probe"])
    doc = json.loads(capsys.readouterr().out)
    assert js == 1 and doc["missing_videos"] == fx["missing"] and doc["probed"] == 0


# ----------------------------------------------------------------------------- wrong or empty layouts
def _one_line_error(argv, capsys, out):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("video_eval: error: "), err
    assert not out.exists()
    return err


def test_a_wrong_benchmark_or_an_empty_layout_is_one_error_line(tmp_path, capsys):
    nq = make_nextqa(tmp_path / "nq", n_videos=1, questions_per_video=1, seed=27)
    lv = make_longvideobench(tmp_path / "lv", n_videos=1, questions_per_video=1, seed=27)
    ml = make_mlvu(tmp_path / "ml", n_videos=1, questions_per_video=1, seed=27)
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "run"
    cases = [
        (["nextqa", empty], ["dataset/nextqa/val.csv", "MC/test-00000-of-00001.parquet"]),
        (["longvideobench", empty], ["lvb_val.json not found"]),
        (["mlvu", empty], ["json/1_plotQA.json"]),
        (["mlvu", nq["root"]], ["MLVU task files not found"]),
        (["nextqa", lv["root"], "--questions", "lvb_val.json"],
         ["is not a NExT-QA multiple-choice question file", "no video / qid / answer / a0"]),
        (["longvideobench", nq["root"], "--questions", "dataset/nextqa/val.csv"],
         ["is not a LongVideoBench question file", "no id / video_path / candidates / correct_choice"]),
        (["longvideobench", ml["root"], "--questions", "MLVU/json/1_plotQA.json"],
         ["is not a LongVideoBench question file", "no id / video_path / correct_choice"]),
        (["mlvu", lv["root"], "--questions", "lvb_val.json"], ["is not an MLVU question file", "no video / answer"]),
        (["longvideobench", lv["root"], "--questions", "lvb_test_wo_gt.json"], ["no answers", "test split"]),
        (["mlvu", ml["root"], "--questions", "MLVU/json/9_summary.json"], ["generation tasks"]),
    ]
    for (name, root, *extra), words in cases:
        argv = ["--dataset", name, "--root", str(root), *extra]
        err = _one_line_error(["run", *argv, "--model", "testbed", "--out", str(out), "--quiet"], capsys, out)
        for w in words:
            assert w in err, (name, err)
        assert main(["check", *argv]) == 1  # check: the same message as a not_loadable problem
        text = capsys.readouterr().out
        assert "ERROR not_loadable" in text and words[0] in text
    # an empty split (header only) names the file
    (empty / "dataset" / "nextqa").mkdir(parents=True)
    (empty / "dataset" / "nextqa" / "val.csv").write_text(
        "video,frame_count,width,height,question,answer,qid,type,a0,a1,a2,a3,a4\n")
    err = _one_line_error(["run", "--dataset", "nextqa", "--root", str(empty), "--model", "testbed", "--out",
                           str(out), "--quiet"], capsys, out)
    assert "val.csv holds no usable question" in err


# ----------------------------------------------------------------------------- end to end
@pytest.mark.parametrize("name", NAMES)
def test_run_and_report_end_to_end(tmp_path, name, capsys):
    fx = MAKERS[name](tmp_path / "data", n_videos=2, questions_per_video=2, seed=28)
    root, out = str(fx["root"]), tmp_path / "run"
    assert main(["check", "--dataset", name, "--root", root]) == 0
    assert main(["run", "--dataset", name, "--root", root, "--model", "testbed", "--configs", "full,video@0.1",
                 "--out", str(out), "--quiet", "--max-new-tokens", "8", "--threads", "1"]) == 0
    assert "results.json" in capsys.readouterr().out
    spec = json.loads((out / "run.json").read_text())
    assert spec["dataset"]["name"] == name and spec["dataset"]["split"] == SPLIT[name]
    assert spec["dataset"]["breakdown"] == BREAKDOWN[name] and spec["mc_scoring"] == "text"
    preds = _records(out / "predictions.jsonl")
    items = {x["question_id"]: x for x in fx["items"]}
    assert len(items) == 4 and len(preds) == 2 * 4 and {r["question_id"] for r in preds} == set(items)
    res = json.loads((out / "results.json").read_text())
    assert res["complete"] and res["breakdown"] == BREAKDOWN[name] and res["judge"]["kind"] == "choice"
    for r in preds:
        want = items[r["question_id"]]
        assert not r["error"] and r["answer"] == want["answer"] and r["options"] == want["options"]
        assert r["breakdown"] == want["breakdown"]
        # the record's verdict, recomputed from its prediction text
        assert r["correct"] == (match_option_text(r["prediction"], want["options"]) == want["answer"])
    shown = []
    for cfg in ("full", "video@0.1"):
        rs = [r for r in preds if r["config"] == cfg]
        m = res["metrics"][cfg]
        assert m["answered"] == 4 and m["errored"] == 0 and m["correct"] == sum(r["correct"] for r in rs)
        assert m["accuracy"] == pytest.approx(sum(r["correct"] for r in rs) / len(rs))
        for key in BREAKDOWN[name]:
            groups = {}
            for r in rs:
                groups.setdefault(str(r["breakdown"][key]), []).append(r["correct"])
            assert set(m["per_breakdown"][key]) == set(groups)
            for value, got in groups.items():
                cell = m["per_breakdown"][key][value]
                assert cell["answered"] == len(got) and cell["accuracy"] == pytest.approx(sum(got) / len(got))
        extra = ""
        if BENCHMARKS[name].macro:  # MLVU's M-Avg: the mean of the per-task accuracies
            per_task = {}
            for r in rs:
                per_task.setdefault(r["breakdown"]["task"], []).append(r["correct"])
            m_avg = sum(sum(v) / len(v) for v in per_task.values()) / len(per_task)
            assert macro_accuracy(m["per_breakdown"]["task"]) == pytest.approx(m_avg)
            assert res["macro"] == "task" and m["macro_accuracy"] == pytest.approx(m_avg)  # in results.json
            extra = f", M-Avg {m_avg:.3f}"
        shown.append(f"{cfg} {m['accuracy']:.3f} ({m['correct']}/{m['answered']}{extra})")
    assert res["metrics"]["video@0.1"]["mean_equivalent_tokens"] < res["metrics"]["full"]["mean_equivalent_tokens"]
    print(f"\n[test-bed accuracy] {name}: " + "; ".join(shown))

    assert main(["report", str(out), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "multiple choice, no judge" in md
    for key in BREAKDOWN[name]:
        assert f"| {key} | full | video@0.1 |" in md
    assert (tmp_path / "rep" / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
