"""Multiple-choice machinery without a model: prompts, letter parsing, text mapping, loaders, metrics."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from video_eval.datasets import DatasetError, Item
from video_eval.mcq import build_prompt, match_option_text, model_question, parse_letter, score


def test_prompts_follow_the_reference_evaluations():
    p = build_prompt("videomme", "What is shown?", ["a cat", "a dog", "a car", "a tree"])
    lines = p.split("\n")
    assert lines[0].startswith("Select the best answer") and "(A, B, C, or D)" in lines[0]
    assert lines[1:6] == ["What is shown?", "A. a cat", "B. a dog", "C. a car", "D. a tree"]
    assert lines[6] == "The best answer is:"
    sub = build_prompt("videomme", "Q?", ["x", "y"], subtitles="hello\nworld")
    assert sub.startswith("This video's subtitles are listed below: \nhello\nworld\nSelect the best answer")
    assert "based on the video and the subtitles" in sub
    assert "No subtitles available" in build_prompt("videomme", "Q?", ["x", "y"], subtitles="")
    mv = build_prompt("mvbench", "What happens?", ["opening", "closing", "pushing"])
    assert mv == ("Question:What happens?\nOption:\n(A) opening\n(B) closing\n(C) pushing\n"
                  "Answer with the option's letter from the given choices directly.")
    ego = build_prompt("egoschema", "Why?", ["p", "q", "r", "s", "t"])
    assert ego.split("\n")[1:6] == ["A. p", "B. q", "C. r", "D. s", "E. t"]
    assert ego.endswith("Answer with the option's letter from the given choices directly.")


@pytest.mark.parametrize("text,want", [
    ("C", "C"), ("The best answer is: B", "B"), ("The answer is (D).", "D"), ("A. a cat", "A"),
    ("  b  ", None),  # lower case is not an option letter for Video-MME
    ("I think it is a cat because the video shows one running quickly across the field", None),  # > 10 words
    ("Best option: (C) car", "C"),
    ("", None), ("E", None),  # out of range for 4 options
    ("Because", "B"),  # the reference takes the first capital letter, also inside a word
])
def test_videomme_letter_parsing(text, want):
    assert parse_letter(text, 4, "videomme") == want


@pytest.mark.parametrize("text,want", [
    ("(B) closing", "B"), ("B", "B"), ("C. pushing", "C"), ("answer: b", "B"), ("'A'", "A"),
    ("Option (C).", "C"), ("the person is opening the door", None), ("E", None), ("", None),
])
def test_lmms_letter_parsing(text, want):
    assert parse_letter(text, 4, "mvbench") == want


def test_text_mapping_and_score():
    opts = ["top left", "top right", "bottom left", "bottom right"]
    assert match_option_text("top right", opts) == "B"
    assert match_option_text("The Bottom-Left.", opts) == "C"
    assert match_option_text("it is at the bottom right", opts) == "D"  # contained, unique
    assert match_option_text("top", opts) is None and match_option_text("unknown", opts) is None
    assert match_option_text("top left or top right", opts) is None  # ambiguous
    assert score("early", ["late", "early"], "B", "text") == ("B", True)
    assert score("The best answer is: A", ["late", "early"], "B", "generate", "videomme") == ("A", False)
    assert score("rambling", ["late", "early"], "b", "generate") == (None, False)
    it = Item("1", "v", "where is it", "A", None, 0, options=("x", "y"), prompt="PROMPT")
    assert model_question(it, "generate") == "PROMPT" and model_question(it, "text") == "where is it"


def test_loaders_read_the_release_layouts(tmp_path):
    from tests.eval.mc_fixtures import make_egoschema, make_mvbench, make_videomme
    from video_eval.benchmarks import load_mc

    vm = make_videomme(tmp_path / "vm", n_videos=2, questions_per_video=2, seed=3)
    ds = load_mc("videomme", vm["root"])
    assert [it.question_id for it in ds.items] == [x["question_id"] for x in vm["items"]]
    for it, want in zip(ds.items, vm["items"]):
        assert it.answer == want["answer"] and list(it.options) == want["options"]
        assert dict(it.breakdown) == want["breakdown"]
        assert it.prompt.endswith("The best answer is:") and "A. " + want["options"][0] in it.prompt
        assert ds.video_path(it) == vm["video_files"][it.video_name]
    subs = load_mc("videomme", vm["root"], subtitles=True, limit=1)
    assert len(subs.items) == 1 and subs.items[0].prompt.startswith("This video's subtitles are listed below: \nclip 0")
    assert "<font" not in subs.items[0].prompt
    mv = make_mvbench(tmp_path / "mv", n_videos=1, questions_per_video=2, seed=3)
    ds = load_mc("mvbench", mv["root"])
    assert [(it.question_id, it.answer, dict(it.breakdown)["task"]) for it in ds.items] == \
        [(x["question_id"], x["answer"], x["breakdown"]["task"]) for x in mv["items"]]
    assert all(ds.video_path(it) is not None for it in ds.items)
    assert ds.items[0].prompt.startswith("Question:")
    eg = make_egoschema(tmp_path / "eg", n_videos=3, seed=3, hidden=1)
    ds = load_mc("egoschema", eg["root"])
    assert len(ds.items) == 2 == len(eg["items"])  # the question without a public answer is left out
    assert [it.answer for it in ds.items] == [x["answer"] for x in eg["items"]]
    assert len(ds.items[0].options) == 5


def test_loader_errors_are_one_line_and_check_lists_problems(tmp_path):
    from tests.eval.mc_fixtures import make_mvbench, make_videomme
    from video_eval.benchmarks import check_mc, load_mc

    with pytest.raises(DatasetError, match="parquet"):
        load_mc("videomme", tmp_path)
    with pytest.raises(DatasetError, match="unknown multiple-choice"):
        load_mc("nope", tmp_path)
    mv = make_mvbench(tmp_path / "mv", n_videos=1, questions_per_video=1, seed=4, missing=1)
    f = mv["root"] / "json" / "action_sequence.json"
    rows = json.loads(f.read_text())
    rows[0]["answer"] = "not a candidate"
    f.write_text(json.dumps(rows))
    with pytest.raises(DatasetError, match="not one of its candidates"):
        load_mc("mvbench", mv["root"])
    rep = check_mc("mvbench", mv["root"], probe=True)
    assert not rep.ok
    kinds = {p.kind for p in rep.problems}
    assert {"invalid_entries", "missing_videos"} <= kinds
    assert mv["missing"][0] in rep.text()
    vm = make_videomme(tmp_path / "vm", n_videos=2, questions_per_video=1, seed=4)
    assert check_mc("videomme", vm["root"]).ok


def test_mc_metrics_and_breakdown():
    from video_eval.metrics import compute_mc_results, mc_results_document

    def rec(qid, cfg, correct, dur, err=None, letter="A"):
        return {"question_id": qid, "config": cfg, "type": None, "error": err, "visual_tokens": 10, "counts": [],
                "equivalent_tokens": 10.0, "new_tokens": 1, "prefill_seconds": 0.1, "decode_seconds": 0.1,
                "correct": correct, "pred_letter": None if err or letter is None else letter,
                "breakdown": {"duration": dur}}

    recs = [rec("1", "full", True, "short"), rec("2", "full", False, "long", letter=None),
            rec("3", "full", False, "long", err="boom"), rec("4", "full", True, "medium")]
    m = compute_mc_results(recs, ["full"], breakdown=["duration"])["full"]
    assert m["answered"] == 3 and m["correct"] == 2 and m["unparsed"] == 1 and m["errored"] == 1
    assert m["accuracy"] == pytest.approx(2 / 3) and m["mean_score"] is None
    assert m["per_breakdown"]["duration"]["long"] == {"n": 2, "answered": 1, "correct": 0, "unparsed": 1,
                                                       "accuracy": 0.0}
    spec = {"dataset": {"name": "videomme", "breakdown": ["duration"]}, "model": "m", "configs": ["full"],
            "mc_scoring": "generate"}
    doc = mc_results_document(spec, recs)
    assert doc["judge"]["kind"] == "choice" and "videomme" in doc["judge"]["model"]
    assert doc["breakdown"] == ["duration"] and doc["complete"]


def test_runner_scores_generated_letters_with_the_benchmark_parser():
    from video_eval.runner import RunOptions, _answer_batch

    class FakeQA:
        def __init__(self):
            self.asked = []

        def ask_many(self, pairs, **kw):
            self.asked += [q for _, q in pairs]
            return [SimpleNamespace(text=t, error=None, visual_tokens=8, counts=[], equivalent_tokens=8.0,
                                    new_tokens=2, prefill_seconds=0.0, decode_seconds=0.0)
                    for t in ("The best answer is: B", "I cannot tell from the video what is going on here at all")]

    items = [Item("q1", "v", "what?", "B", None, 0, options=("x", "y", "z", "w"), prompt="P1",
                  breakdown=(("duration", "short"),)),
             Item("q2", "v", "why?", "A", None, 1, options=("x", "y", "z", "w"), prompt="P2",
                  breakdown=(("duration", "long"),))]
    qa = FakeQA()
    opts = RunOptions(model="m", configs=[], mc_scoring="generate")
    recs = _answer_batch(qa, items, {"v": object()}, "full", opts, "videomme")
    assert qa.asked == ["P1", "P2"]  # the benchmark prompts
    assert [(r["pred_letter"], r["correct"]) for r in recs] == [("B", True), (None, False)]
    assert recs[0]["breakdown"] == {"duration": "short"} and recs[0]["options"] == ["x", "y", "z", "w"]
    qa = FakeQA()
    recs = _answer_batch(qa, items, {"v": object()}, "full", RunOptions(model="m", configs=[], mc_scoring="text"))
    assert qa.asked == ["what?", "why?"]
