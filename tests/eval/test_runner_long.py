"""The long-video path in the evaluation runner (`--pre-budget`, `--fps`): a question-guided pool enters the
decoder, the frames and the pool size are recorded per prediction, the settings are part of the run (a resume
with others is refused), and a pooled run agrees with VideoQA asked directly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.eval.mc_fixtures import make_longvideobench, make_videomme
from video_eval.cli import main


def _records(path):
    return [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]


def test_pooled_run_records_frames_and_pool_and_equals_videoqa(tmp_path, capsys):
    fx = make_videomme(tmp_path / "data", n_videos=2, questions_per_video=2, seed=3)
    out = tmp_path / "run"
    args = ["run", "--dataset", "videomme", "--root", str(fx["root"]), "--model", "testbed", "--configs",
            "full,video@0.25", "--out", str(out), "--quiet", "--max-new-tokens", "6", "--frames", "16",
            "--pre-budget", "64"]
    assert main(args) == 0
    spec = json.loads((out / "run.json").read_text())
    assert spec["pre_budget"] == 64 and spec["num_frames"] == 16
    recs = _records(out / "predictions.jsonl")
    assert len(recs) == 2 * 4 and not any(r["error"] for r in recs)
    for r in recs:
        assert r["frames"] == 16 and r["pool_tokens"] == 64 and r["visual_tokens"] == 16 * 37
        assert r["counts"] == [] if r["config"] == "full" else r["counts"][-1] == 16  # 25 % of the 64 pooled
    res = json.loads((out / "results.json").read_text())
    assert set(res["metrics"]) == {"full", "video@0.25"}
    # the same answers as VideoQA asked directly (same frames, same pool, same prompt)
    from video_eval.benchmarks import load_mc
    from video_eval.mcq import model_question
    from videosparse import SparseConfig, VideoQA
    from videosparse.video import load_video

    ds = load_mc("videomme", fx["root"])
    qa = VideoQA.from_pretrained("testbed", sparsity=SparseConfig.preset("video", budget=0.25, num_layers=4).replace(
        long=SparseConfig().long.replace(budget=64)), progress=False)
    it = ds.items[0]
    clip = load_video(ds.video_path(it), num_frames=16)
    ans = qa.ask(clip, model_question(it, "text"), pre_budget=64, max_new_tokens=6)
    rec = next(r for r in recs if r["question_id"] == it.question_id and r["config"] == "video@0.25")
    assert rec["prediction"] == ans.text and rec["counts"] == ans.counts and ans.pool_tokens == 64
    # a resume with another pool size is refused before any work
    capsys.readouterr()
    assert main(args[:-1] + ["32"]) == 2
    assert "different pre_budget (64 vs now 32)" in capsys.readouterr().err


def test_fps_sampling_on_a_long_benchmark(tmp_path):
    fx = make_longvideobench(tmp_path / "data", n_videos=2, questions_per_video=1, seed=4)
    out = tmp_path / "run"
    assert main(["run", "--dataset", "longvideobench", "--root", str(fx["root"]), "--model", "testbed", "--configs",
                 "video@0.5", "--out", str(out), "--quiet", "--max-new-tokens", "4", "--fps", "2", "--frames", "12",
                 "--pre-budget", "48"]) == 0
    recs = _records(out / "predictions.jsonl")
    assert recs and not any(r["error"] for r in recs)
    spec = json.loads((out / "run.json").read_text())
    assert spec["fps"] == 2.0
    for r in recs:
        assert 1 <= r["frames"] <= 12  # 2 frames/s, at most 12
        assert r["pool_tokens"] == min(48, r["frames"] * 37)
        assert r["counts"][-1] == round(0.5 * r["pool_tokens"])


@pytest.mark.parametrize("bad", [["--pre-budget", "0"], ["--fps", "-1"]])
def test_bad_long_options_fail_before_work(tmp_path, capsys, bad):
    fx = make_videomme(tmp_path / "data", n_videos=1, questions_per_video=1, seed=5)
    with pytest.raises(SystemExit) as e:
        main(["run", "--dataset", "videomme", "--root", str(fx["root"]), "--model", "testbed", "--out",
              str(tmp_path / "run"), "--quiet", *bad])
    assert e.value.code == 2 and not (tmp_path / "run").exists()


def test_likelihood_rows_follow_the_generated_batch_order_not_the_input_order():
    """ask_many batches by geometry (the long path by pool, Qwen-VL by nothing), so the rows a logits processor sees
    need not follow the input order: the runner maps them through ask_many's on_batch report."""
    import types

    import torch

    from video_eval.runner import RunOptions, _answer_batch

    items = [types.SimpleNamespace(question_id=f"q{i}", video_name=f"v{i}", question="what", answer=ans,
                                   options=("a", "b", "c"), breakdown=(("task", "t"),), index=i, type=None,
                                   prompt="what\nA. a\nB. b\nC. c")
             for i, ans in enumerate("CA")]

    class QA:
        _video_eval_letter_ids = [[10], [11], [12]]

        def ask_many(self, pairs, on_batch=None, logits_processor=None, **kw):
            on_batch([1])  # the second question is generated first (another batch), then the first
            for winner in (10, 12):  # q1's row prefers A, q0's row prefers C
                scores = torch.zeros(1, 20)
                scores[0, winner] = 5.0
                logits_processor[0](None, scores)
            on_batch([0])
            return [types.SimpleNamespace(text="x", error=None, visual_tokens=4, counts=[], equivalent_tokens=4.0,
                                          new_tokens=1, prefill_seconds=0.0, decode_seconds=0.0)
                    for _ in pairs]

    recs = _answer_batch(QA(), items, {"v0": object(), "v1": object()}, "full",
                         RunOptions(model="m", configs=[], mc_scoring="likelihood"))
    assert [r["pred_letter"] for r in recs] == ["C", "A"] and all(r["correct"] for r in recs)
