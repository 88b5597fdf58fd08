"""End to end on the embedded test-bed model: fixture datasets in the releases' real layouts, the CLI,
resume after kill -9, accelerate sharding, the shell scripts, bad input."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.eval.fixtures import make_fixture_dataset
from video_eval.cli import main

REPO = Path(__file__).resolve().parents[2]
TIMING = ("prefill_seconds", "decode_seconds")


def _records(path):
    return [json.loads(x) for x in Path(path).read_text().splitlines()]


def _canonical(path):
    """Records without wall-clock fields, sorted by (question id, config), serialised."""
    recs = [{k: v for k, v in r.items() if k not in TIMING} for r in _records(path)]
    recs.sort(key=lambda r: (r["question_id"], r["config"]))
    return "\n".join(json.dumps(r, sort_keys=True) for r in recs)


def _norm(s):
    s = re.sub(r"[^a-z0-9 ]", " ", s.lower())
    return " ".join(w for w in s.split() if w not in ("a", "an", "the"))


def _offline_correct(answer, prediction):
    """An independent implementation of the offline judge's rule, for checking its numbers."""
    a, p = _norm(answer), _norm(prediction)
    return bool(a) and (a == p or re.search(rf"\b{re.escape(a)}\b", p) is not None)


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.mark.parametrize("name", ["msvd", "msrvtt", "activitynet", "tgif"])
def test_dataset_end_to_end_offline_judge(tmp_path, name, capsys):
    # TGIF as the original GIFs (the release's mp4/ copies are covered by the dataset tests)
    fx = make_fixture_dataset(tmp_path / "data", name, n_videos=3, questions_per_video=3, seed=1, missing=1,
                              gif=name == "tgif")
    out = tmp_path / "run"
    rc = main(["run", "--dataset", name, "--root", str(fx["root"]), "--model", "testbed",
               "--configs", "full,video@0.1,fastv@0.1", "--out", str(out), "--quiet", "--max-new-tokens", "8"])
    assert rc == 0
    preds = _records(out / "predictions.jsonl")
    items = fx["items"]
    assert len(preds) == 3 * len(items)
    # joined by id: every record carries its own question's answer
    by_id = {str(it["question_id"]): it for it in items}
    for r in preds:
        assert r["answer"] == by_id[r["question_id"]]["answer"]
        assert r["question"] == by_id[r["question_id"]]["question"]
    missing = set(fx["missing"])
    errs = [r for r in preds if r["error"]]
    assert errs and all(r["video_name"] in missing for r in errs)
    assert all("not found" in r["error"] for r in errs)
    ok = [r for r in preds if not r["error"]]
    assert ok and all(r["counts"] == [] for r in ok if r["config"] == "full")
    # the video preset prunes in two stages on the test bed (after layers 1 and 2), fastv in one
    assert all(len(r["counts"]) == (2 if r["config"].startswith("video") else 1)
               and r["equivalent_tokens"] < r["visual_tokens"] for r in ok if r["config"] != "full")

    assert main(["judge", str(out), "--judge", "offline"]) == 0
    text = capsys.readouterr().out
    assert "NOT comparable with GPT-judge" in text
    res = json.loads((out / "results.offline.json").read_text())
    assert res["judge"]["kind"] == "offline"
    for cfg in ("full", "video@0.1", "fastv@0.1"):
        rs = [r for r in ok if r["config"] == cfg]
        want = sum(_offline_correct(r["answer"], r["prediction"]) for r in rs) / len(rs)
        m = res["metrics"][cfg]
        assert m["accuracy"] == pytest.approx(want)
        assert m["errored"] == sum(1 for r in errs if r["config"] == cfg)
        assert m["answered"] == len(rs)
    assert res["run"]["dataset"]["name"] == name
    assert res["run"]["versions"]["torch"] and "git_commit" in res["run"]
    # the test bed answers these questions far above chance with all its tokens
    assert res["metrics"]["full"]["accuracy"] >= 0.5

    assert main(["report", str(out), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "offline match (not GPT-judge)" in md and "video@0.1" in md
    assert (tmp_path / "rep" / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _run_cmd(fx, out, configs="full,video@0.1,random@0.2", extra=()):
    return ["run", "--dataset", "msvd", "--root", str(fx["root"]), "--model", "testbed", "--configs", configs,
            "--out", str(out), "--batch-size", "2", "--max-new-tokens", "8", "--threads", "1", *extra]


@pytest.fixture(scope="module")
def big_msvd(tmp_path_factory):
    root = tmp_path_factory.mktemp("big")
    return make_fixture_dataset(root / "data", "msvd", n_videos=10, questions_per_video=4, seed=3, corrupt=1)


@pytest.fixture(scope="module")
def reference_run(big_msvd, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    r = subprocess.run([sys.executable, "-m", "video_eval", *_run_cmd(big_msvd, out), "--quiet"], env=_env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return out


def test_kill9_then_resume_equals_uninterrupted(big_msvd, reference_run, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "video_eval", *_run_cmd(big_msvd, out), "--quiet"]
    p = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    rank0 = out / "predictions.rank0.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None:
        if rank0.exists() and rank0.read_bytes().count(b"\n") >= 12:
            break
        time.sleep(0.005)
    assert p.poll() is None, "the run finished before it could be killed"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    p.stderr.close()
    n_before = rank0.read_bytes().count(b"\n")
    assert 12 <= n_before < 3 * 40
    assert not (out / "predictions.jsonl").exists()
    # and a torn write on top (what a kill in the middle of write() leaves)
    with open(rank0, "ab") as f:
        f.write(b'{"index": 39, "question_id": "39", "config": "fu')
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "torn last line" in r.stderr
    assert f"{n_before} already done" in r.stderr
    lines = _records(rank0)
    keys = [(x["question_id"], x["config"]) for x in lines]
    assert len(keys) == len(set(keys)) == 3 * 40  # no duplicates, nothing lost
    assert _canonical(out / "predictions.jsonl") == _canonical(reference_run / "predictions.jsonl")
    # a third run computes nothing
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "0 answered now" in r.stderr and "120 already done" in r.stderr


def test_accelerate_two_processes_equal_one(big_msvd, reference_run, tmp_path):
    out = tmp_path / "run"
    acc = Path(sys.executable).with_name("accelerate")
    cmd = [str(acc), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "video_eval",
           *_run_cmd(big_msvd, out), "--device", "cpu", "--quiet"]
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "rank 0/2" in r.stderr and "rank 1/2" in r.stderr
    r0, r1 = _records(out / "predictions.rank0.jsonl"), _records(out / "predictions.rank1.jsonl")
    assert r0 and r1 and len(r0) + len(r1) == 120
    # video-grouped: no video answered on both ranks
    assert not ({x["video_name"] for x in r0} & {x["video_name"] for x in r1})
    assert _canonical(out / "predictions.jsonl") == _canonical(reference_run / "predictions.jsonl")
    # the merged file is in the canonical order, identical in layout to the single-process one
    order = lambda p: [(x["question_id"], x["config"]) for x in _records(p)]  # noqa: E731
    assert order(out / "predictions.jsonl") == order(reference_run / "predictions.jsonl")


def test_corrupt_video_recorded_and_run_goes_on(big_msvd, reference_run):
    recs = _records(reference_run / "predictions.jsonl")
    bad = set(big_msvd["corrupt"])
    errs = [r for r in recs if r["error"]]
    assert bad and {r["video_name"] for r in errs} == bad
    assert sum(1 for r in recs if not r["error"]) == len(recs) - len(errs) > 0


def test_eval_script_runs_inference_judge_and_report(tmp_path):
    fx = make_fixture_dataset(tmp_path / "data", "tgif", n_videos=2, questions_per_video=2, seed=5)
    out = tmp_path / "run"
    # the --out=DIR form is accepted too
    r = subprocess.run(["bash", str(REPO / "scripts" / "eval_tgif.sh"), "--root", str(fx["root"]), f"--out={out}",
                        "--model", "testbed", "--configs", "full,video@0.1", "--gpus", "1", "--quiet",
                        "--judge", "offline"], env=_env(), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / "results.offline.json").exists() and (out / "report" / "report.png").exists()


# ----------------------------------------------------------------------------- bad input
def _err(argv, capsys):
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_bad_input_one_line_errors(tmp_path, capsys):
    fx = make_fixture_dataset(tmp_path / "data", "msvd", n_videos=2, questions_per_video=2, seed=2)
    base = ["run", "--root", str(fx["root"]), "--model", "testbed", "--out", str(tmp_path / "run"), "--quiet"]
    assert "unknown" in _err(["run", "--dataset", "nope", *base[1:]], capsys).lower()
    assert "unknown preset" in _err(["run", "--dataset", "msvd", *base[1:], "--configs", "full,vidoe@0.1"], capsys)
    # answers that do not join: the error names the unmatched ids
    qa = json.loads(Path(fx["answers"]).read_text())
    qa[0]["question_id"] = "no-such-id"
    Path(fx["answers"]).write_text(json.dumps(qa))
    assert "no-such-id" in _err(["run", "--dataset", "msvd", *base[1:]], capsys)
    # duplicate ids
    qs = json.loads(Path(fx["questions"]).read_text())
    Path(fx["questions"]).write_text(json.dumps(qs + qs[:1]))
    assert "duplicate" in _err(["run", "--dataset", "msvd", *base[1:]], capsys).lower()
    Path(fx["questions"]).write_text("[]")
    assert "empty" in _err(["run", "--dataset", "msvd", *base[1:]], capsys).lower()
    assert not (tmp_path / "run" / "predictions.jsonl").exists()


def test_judge_url_refusing_connections_keeps_predictions(tmp_path, capsys, monkeypatch):
    fx = make_fixture_dataset(tmp_path / "data", "msvd", n_videos=1, questions_per_video=2, seed=4)
    out = tmp_path / "run"
    assert main(["run", "--dataset", "msvd", "--root", str(fx["root"]), "--model", "testbed", "--configs", "full",
                 "--out", str(out), "--quiet", "--max-new-tokens", "8"]) == 0
    before = (out / "predictions.jsonl").read_bytes()
    capsys.readouterr()
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    monkeypatch.setenv("VS_TEST_KEY", "sk-test-not-a-real-key")
    err = _err(["judge", str(out), "--judge", "openai", "--judge-base-url", f"http://127.0.0.1:{port}/v1",
                "--judge-model", "judge-x", "--judge-api-key-env", "VS_TEST_KEY", "--judge-cache",
                str(tmp_path / "cache.sqlite"), "--judge-retries", "1"], capsys)
    assert f"127.0.0.1:{port}" in err
    assert (out / "predictions.jsonl").read_bytes() == before
    assert not list(out.glob("results.openai*"))


def test_cli_openai_judge_against_a_local_server(tmp_path, capsys, monkeypatch):
    from tests.eval.test_judges import FakeServer

    fx = make_fixture_dataset(tmp_path / "data", "activitynet", n_videos=2, questions_per_video=2, seed=6)
    out = tmp_path / "run"
    assert main(["run", "--dataset", "activitynet", "--root", str(fx["root"]), "--model", "testbed", "--configs",
                 "full,video@0.1", "--out", str(out), "--quiet", "--max-new-tokens", "8"]) == 0
    key = "sk-e2e-" + os.urandom(8).hex()
    monkeypatch.setenv("MY_JUDGE_KEY", key)
    server = FakeServer()
    try:
        argv = ["judge", str(out), "--judge", "openai", "--judge-base-url", server.url, "--judge-model", "judge-test-model",
                "--judge-api-key-env", "MY_JUDGE_KEY", "--judge-cache", str(tmp_path / "cache.sqlite")]
        assert main(argv) == 0
        n_requests = server.count()
        assert 0 < n_requests <= 8  # identical (question, answer, prediction) triples are sent once
        assert main(argv) == 0  # re-judging: everything from the cache
        assert server.count() == n_requests
    finally:
        server.close()
    res = json.loads((out / "results.openai-judge-test-model.json").read_text())
    assert res["judge"]["kind"] == "openai" and res["judge"]["model"] == "judge-test-model"
    assert len(res["judge"]["template_sha256"]) == 64
    assert res["metrics"]["full"]["judged"] == 4 and res["metrics"]["full"]["accuracy"] == 1.0
    assert all(r["auth"] == f"Bearer {key}" for r in server.log)
    for p in tmp_path.rglob("*"):
        if p.is_file():
            assert key.encode() not in p.read_bytes(), p
    # both judges side by side in one report: the table warns that they differ
    assert main(["judge", str(out), "--judge", "offline"]) == 0
    assert main(["report", str(out), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "judge-test-model" in md and "offline match (not GPT-judge)" in md and "Warning" in md


def test_check_command(tmp_path, capsys):
    fx = make_fixture_dataset(tmp_path / "data", "msrvtt", n_videos=4, questions_per_video=2, seed=8, missing=1,
                              corrupt=1)
    assert main(["check", "--dataset", "msrvtt", "--root", str(fx["root"])]) == 1
    text = capsys.readouterr().out
    assert fx["missing"][0] in text and fx["corrupt"][0] in text
    ok = make_fixture_dataset(tmp_path / "ok", "msrvtt", n_videos=2, questions_per_video=2, seed=8)
    assert main(["check", "--dataset", "msrvtt", "--root", str(ok["root"]), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
