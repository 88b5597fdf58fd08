"""Multiple-choice benchmarks end to end on the test-bed model, from fixtures in the official layouts:
check, run (text scoring), results.json with the benchmark's breakdown, report, resume after kill -9 or an
interruption, accelerate sharding, validation before any work."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.eval.mc_fixtures import make_egoschema, make_mvbench, make_videomme
from video_eval.cli import main
from video_eval.mcq import match_option_text

REPO = Path(__file__).resolve().parents[2]
TIMING = ("prefill_seconds", "decode_seconds")
MAKERS = {"videomme": make_videomme, "mvbench": make_mvbench, "egoschema": make_egoschema}
BREAKDOWN = {"videomme": ["duration", "domain", "sub_category", "task_type"], "mvbench": ["task"], "egoschema": []}


def _records(path):
    return [json.loads(x) for x in Path(path).read_text().splitlines()]


def _canonical(path):
    recs = [{k: v for k, v in r.items() if k not in TIMING} for r in _records(path)]
    recs.sort(key=lambda r: (r["question_id"], r["config"]))
    return "\n".join(json.dumps(r, sort_keys=True) for r in recs)


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _make(name, root, **kw):
    if name == "egoschema":
        kw.pop("questions_per_video", None)
        kw["n_videos"] = kw.get("n_videos", 3) * 2
    return MAKERS[name](root, **kw)


@pytest.mark.parametrize("name", ["videomme", "mvbench", "egoschema"])
def test_benchmark_end_to_end(tmp_path, name, capsys):
    fx = _make(name, tmp_path / "data", n_videos=3, questions_per_video=2, seed=1, missing=1)
    root = str(fx["root"])
    assert main(["check", "--dataset", name, "--root", root]) == 1  # one video is missing
    text = capsys.readouterr().out
    assert fx["missing"][0] in text and "NOT OK" in text
    out = tmp_path / "run"
    assert main(["run", "--dataset", name, "--root", root, "--model", "testbed", "--configs",
                 "full,video@0.25,video@0.1", "--out", str(out), "--quiet", "--max-new-tokens", "8"]) == 0
    printed = capsys.readouterr().out
    assert "no judge" in printed and "results.json" in printed
    preds = _records(out / "predictions.jsonl")
    items = {x["question_id"]: x for x in fx["items"]}
    assert len(preds) == 3 * len(items) and {r["question_id"] for r in preds} == set(items)
    spec = json.loads((out / "run.json").read_text())
    assert spec["mc_scoring"] == "text" and spec["dataset"]["kind"] == "multiple_choice"
    missing = set(fx["missing"])
    for r in preds:
        want = items[r["question_id"]]
        assert r["answer"] == want["answer"] and r["options"] == want["options"]
        assert r["breakdown"] == want["breakdown"] and r["scoring"] == "text"
        assert bool(r["error"]) == (r["video_name"] in missing)
        if not r["error"]:  # independent recomputation of the text scoring
            assert r["correct"] == (match_option_text(r["prediction"], want["options"]) == want["answer"])
    res = json.loads((out / "results.json").read_text())
    assert res["judge"]["kind"] == "choice" and res["breakdown"] == BREAKDOWN[name] and res["complete"]
    for cfg in ("full", "video@0.25", "video@0.1"):
        ok = [r for r in preds if r["config"] == cfg and not r["error"]]
        m = res["metrics"][cfg]
        assert m["answered"] == len(ok) and m["errored"] == len(preds) // 3 - len(ok)
        assert m["accuracy"] == pytest.approx(sum(r["correct"] for r in ok) / len(ok))
        for key in BREAKDOWN[name]:
            for value, cell in m["per_breakdown"][key].items():
                group = [r for r in ok if r["breakdown"][key] == value]
                assert cell["answered"] == len(group)
                if group:
                    assert cell["accuracy"] == pytest.approx(sum(r["correct"] for r in group) / len(group))
    assert res["metrics"]["video@0.1"]["mean_equivalent_tokens"] < res["metrics"]["full"]["mean_equivalent_tokens"]
    # the test bed answers well above chance with all its tokens
    assert res["metrics"]["full"]["accuracy"] >= 0.5

    assert main(["report", str(out), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "multiple choice, no judge" in md and "video@0.25" in md
    for key in BREAKDOWN[name]:
        assert f"| {key} | full | video@0.25 | video@0.1 |" in md
    assert (tmp_path / "rep" / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # `judge` on a multiple-choice run scores it without a judge
    assert main(["judge", str(out)]) == 0
    assert "without a judge" in capsys.readouterr().err


def test_validation_before_any_work(tmp_path, capsys):
    fx = make_videomme(tmp_path / "data", n_videos=1, questions_per_video=1, seed=2)
    out = tmp_path / "run"
    base = ["run", "--dataset", "videomme", "--root", str(fx["root"]), "--model", "testbed", "--out", str(out), "--quiet"]
    for extra, words in [(["--configs", "full,video@5000"], "video@5000"), (["--configs", "vidoe"], "unknown preset"),
                         (["--answers", "a.json"], "--answers"), (["--then-judge"], "without a judge")]:
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1, err
        assert not out.exists()
    from tests.eval.fixtures import make_fixture_dataset

    ms = make_fixture_dataset(tmp_path / "msvd", "msvd", n_videos=1, questions_per_video=1, seed=2)
    assert main(["run", "--dataset", "msvd", "--root", str(ms["root"]), "--model", "testbed", "--out", str(out),
                 "--mc-scoring", "text", "--quiet"]) == 2
    assert "open-ended" in capsys.readouterr().err and not out.exists()
    assert main(["check", "--dataset", "msvd", "--root", str(ms["root"]), "--subtitles"]) == 2


def test_videomme_subtitles_setting_is_recorded(tmp_path, capsys):
    fx = make_videomme(tmp_path / "data", n_videos=1, questions_per_video=2, seed=3)
    out = tmp_path / "run"
    argv = ["run", "--dataset", "videomme", "--root", str(fx["root"]), "--model", "testbed", "--configs", "full",
            "--out", str(out), "--quiet", "--max-new-tokens", "4", "--mc-scoring", "generate"]
    assert main(argv + ["--subtitles"]) == 0
    spec = json.loads((out / "run.json").read_text())
    assert spec["dataset"]["subtitles"] is True and spec["mc_scoring"] == "generate"
    # the same --out without subtitles is a different dataset: refused
    assert main(argv) == 2
    assert "different dataset" in capsys.readouterr().err
    # generate scoring on the test bed: its closed vocabulary cannot read the prompt; recorded, never crashes
    res = json.loads((out / "results.json").read_text())
    m = res["metrics"]["full"]
    assert m["n"] == 2 and m["answered"] + m["errored"] == 2


# ----------------------------------------------------------------------------- resume and sharding
def _vm_cmd(root, out):
    return ["run", "--dataset", "videomme", "--root", str(root), "--model", "testbed", "--configs",
            "full,video@0.25,video@0.1", "--out", str(out), "--batch-size", "2", "--max-new-tokens", "8",
            "--threads", "1"]


@pytest.fixture(scope="module")
def big_videomme(tmp_path_factory):
    return make_videomme(tmp_path_factory.mktemp("bigvm") / "data", n_videos=8, questions_per_video=3, seed=5)


@pytest.fixture(scope="module")
def vm_reference(big_videomme, tmp_path_factory):
    out = tmp_path_factory.mktemp("vmref") / "run"
    r = subprocess.run([sys.executable, "-m", "video_eval", *_vm_cmd(big_videomme["root"], out), "--quiet"],
                       env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return out


def _kill9_after(cmd, rank0: Path, lines: int) -> int:
    """Start ``cmd``, SIGKILL it once ``rank0`` holds ``lines`` records; the records written by then."""
    p = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None:
        if rank0.exists() and rank0.read_bytes().count(b"\n") >= lines:
            break
        time.sleep(0.002)
    assert p.poll() is None, "the run finished before it could be killed"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    p.stderr.close()
    return rank0.read_bytes().count(b"\n")


def _accelerate_cmd(argv):
    """``accelerate launch`` of ``python -m video_eval argv`` on 2 CPU processes."""
    acc = Path(sys.executable).with_name("accelerate")
    return [str(acc), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision",
            "no", "--dynamo_backend", "no", "-m", "video_eval", *argv, "--device", "cpu"]


def test_videomme_kill9_then_resume_equals_uninterrupted(big_videomme, vm_reference, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "video_eval", *_vm_cmd(big_videomme["root"], out), "--quiet"]
    total = 3 * len(big_videomme["items"])
    rank0 = out / "predictions.rank0.jsonl"
    n_before = _kill9_after(cmd, rank0, 8)
    assert 8 <= n_before < total
    with open(rank0, "ab") as f:
        f.write(b'{"index": 3, "question_id": "001-1", "config": "fu')
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "torn last line" in r.stderr and f"{n_before} already done" in r.stderr
    keys = [(x["question_id"], x["config"]) for x in _records(rank0)]
    assert len(keys) == len(set(keys)) == total
    assert _canonical(out / "predictions.jsonl") == _canonical(vm_reference / "predictions.jsonl")
    a = json.loads((out / "results.json").read_text())["metrics"]
    b = json.loads((vm_reference / "results.json").read_text())["metrics"]
    assert {c: (m["accuracy"], m["per_breakdown"]) for c, m in a.items()} == \
        {c: (m["accuracy"], m["per_breakdown"]) for c, m in b.items()}


def test_videomme_accelerate_two_processes_equal_one(big_videomme, vm_reference, tmp_path):
    out = tmp_path / "run"
    cmd = _accelerate_cmd([*_vm_cmd(big_videomme["root"], out), "--quiet"])
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    r0, r1 = _records(out / "predictions.rank0.jsonl"), _records(out / "predictions.rank1.jsonl")
    assert r0 and r1 and not ({x["video_name"] for x in r0} & {x["video_name"] for x in r1})
    assert _canonical(out / "predictions.jsonl") == _canonical(vm_reference / "predictions.jsonl")
    order = lambda p: [(x["question_id"], x["config"]) for x in _records(p)]  # noqa: E731
    assert order(out / "predictions.jsonl") == order(vm_reference / "predictions.jsonl")
    assert main(["report", str(out), "--out", str(tmp_path / "rep")]) == 0
    res = json.loads((out / "results.json").read_text())
    ref = json.loads((vm_reference / "results.json").read_text())
    assert res["metrics"]["full"]["per_breakdown"] == ref["metrics"]["full"]["per_breakdown"]


@pytest.mark.parametrize("name", ["mvbench", "egoschema"])
def test_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path, name, monkeypatch, capsys):
    from video_eval import runner

    fx = _make(name, tmp_path / "data", n_videos=3, questions_per_video=2, seed=6)
    argv = lambda out: ["run", "--dataset", name, "--root", str(fx["root"]), "--model", "testbed",  # noqa: E731
                        "--configs", "full,video@0.1", "--out", str(out), "--batch-size", "2", "--quiet",
                        "--max-new-tokens", "8"]
    assert main(argv(tmp_path / "ref")) == 0
    real = runner.PredictionWriter.write
    calls = {"n": 0}

    def write_then_stop(self, records):
        if calls["n"] == 2:
            raise KeyboardInterrupt  # stopped after two batches
        calls["n"] += 1
        real(self, records)

    monkeypatch.setattr(runner.PredictionWriter, "write", write_then_stop)
    assert main(argv(tmp_path / "run")) == 130
    monkeypatch.setattr(runner.PredictionWriter, "write", real)
    assert not (tmp_path / "run" / "predictions.jsonl").exists()
    assert len(_records(tmp_path / "run" / "predictions.rank0.jsonl")) == 4
    capsys.readouterr()
    assert main(argv(tmp_path / "run")) == 0
    assert "4 already done" in capsys.readouterr().err
    assert _canonical(tmp_path / "run" / "predictions.jsonl") == _canonical(tmp_path / "ref" / "predictions.jsonl")


# ----------------------------------------------------------------------------- likelihood scoring
@pytest.fixture(scope="module")
def letter_checkpoint(tmp_path_factory):
    """A tiny random Video-LLaVA whose word-level vocabulary holds the option letters and the test-bed
    question words (so the benchmark prompt reads as real tokens, and likelihood scoring can run)."""
    from tests.eval.mc_fixtures import make_letter_checkpoint

    return make_letter_checkpoint(tmp_path_factory.mktemp("letter_ckpt"))


def test_likelihood_scoring_on_a_model_with_option_letters(tmp_path, letter_checkpoint, capsys):
    fx = make_videomme(tmp_path / "data", n_videos=3, questions_per_video=2, seed=8, missing=1)
    out = tmp_path / "run"
    argv = ["run", "--dataset", "videomme", "--root", str(fx["root"]), "--model", letter_checkpoint, "--configs",
            "full,fastv@0.5", "--out", str(out), "--quiet", "--mc-scoring", "likelihood", "--batch-size", "3",
            "--device", "cpu", "--threads", "1"]
    assert main(argv) == 0
    preds = _records(out / "predictions.jsonl")
    items = {x["question_id"]: x for x in fx["items"]}
    assert len(preds) == 2 * len(items)
    ok = [r for r in preds if not r["error"]]
    assert len(ok) == 2 * 4 and all(r["video_name"] in fx["missing"] for r in preds if r["error"])
    for r in ok:
        lps = r["letter_logprobs"]
        assert list(lps) == ["A", "B", "C", "D"] and all(v <= 0 for v in lps.values())
        assert r["pred_letter"] == max(lps, key=lps.get)
        # the one generated token is restricted to the letters: the model's own greedy choice is the argmax row
        assert r["prediction"] == r["pred_letter"] and r["new_tokens"] <= 1
        assert r["correct"] == (r["pred_letter"] == items[r["question_id"]]["answer"])
    assert {len(r["counts"]) for r in ok if r["config"] == "fastv@0.5"} == {1}
    res = json.loads((out / "results.json").read_text())
    assert res["judge"]["model"].startswith("likelihood") and res["run"]["mc_scoring"] == "likelihood"
    m = res["metrics"]["full"]
    assert m["answered"] == 4 and m["unparsed"] == 0
    assert m["accuracy"] == pytest.approx(sum(r["correct"] for r in ok if r["config"] == "full") / 4)
    # the test bed has no option letters: refused in one line before anything is written
    capsys.readouterr()
    bad = ["run", "--dataset", "videomme", "--root", str(fx["root"]), "--model", "testbed", "--out",
           str(tmp_path / "tb"), "--quiet", "--mc-scoring", "likelihood"]
    assert main(bad) == 2
    assert "option letter" in capsys.readouterr().err and not (tmp_path / "tb").exists()


# ----------------------------------------------------------------------------- the other benchmarks, for real
def _bench_cmd(name, root, out):
    return ["run", "--dataset", name, "--root", str(root), "--model", "testbed", "--configs", "full,video@0.25",
            "--out", str(out), "--batch-size", "2", "--max-new-tokens", "6", "--threads", "1", "--quiet"]


def test_mvbench_accelerate_two_processes_equal_one(tmp_path):
    fx = _make("mvbench", tmp_path / "data", n_videos=1, questions_per_video=2, seed=9)
    ref, out = tmp_path / "ref", tmp_path / "run"
    assert main(_bench_cmd("mvbench", fx["root"], ref)) == 0
    r = subprocess.run(_accelerate_cmd(_bench_cmd("mvbench", fx["root"], out)), env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    r0, r1 = _records(out / "predictions.rank0.jsonl"), _records(out / "predictions.rank1.jsonl")
    assert r0 and r1 and not ({x["video_name"] for x in r0} & {x["video_name"] for x in r1})
    assert _canonical(out / "predictions.jsonl") == _canonical(ref / "predictions.jsonl")
    a = json.loads((out / "results.json").read_text())["metrics"]
    b = json.loads((ref / "results.json").read_text())["metrics"]
    assert {c: m["per_breakdown"] for c, m in a.items()} == {c: m["per_breakdown"] for c, m in b.items()}


def test_egoschema_kill9_then_resume_equals_uninterrupted(tmp_path):
    fx = _make("egoschema", tmp_path / "data", n_videos=8, seed=10)
    ref, out = tmp_path / "ref", tmp_path / "run"
    assert main(_bench_cmd("egoschema", fx["root"], ref)) == 0
    total = 2 * len(fx["items"])
    cmd = [sys.executable, "-m", "video_eval", *_bench_cmd("egoschema", fx["root"], out)]
    n_before = _kill9_after(cmd, out / "predictions.rank0.jsonl", 2)
    assert 2 <= n_before < total
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"{n_before} already done" in r.stderr
    assert _canonical(out / "predictions.jsonl") == _canonical(ref / "predictions.jsonl")
