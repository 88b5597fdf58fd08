"""What `run` refuses before it writes anything, and how it writes: the transformers version, configs
that cannot run on the model, other package versions on resume, a second process on the same rank,
write errors, file modes, progress and quiet output. On the embedded test-bed model, in process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.eval.fixtures import make_fixture_dataset
from video_eval.cli import main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("guards")
    return make_fixture_dataset(root / "data", "msvd", n_videos=2, questions_per_video=2, seed=11)


def _run(fx, out, configs="full", *extra):
    return ["run", "--dataset", "msvd", "--root", str(fx["root"]), "--model", "testbed", "--configs", configs,
            "--out", str(out), "--max-new-tokens", "4", "--batch-size", "2", *extra]


def _one_line_error(argv, capsys):
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_unsupported_transformers_is_refused_before_anything_is_written(small, tmp_path, capsys, monkeypatch):
    import transformers

    monkeypatch.setattr(transformers, "__version__", "4.46.0")
    out = tmp_path / "run"
    err = _one_line_error(_run(small, out, "full,video@0.1", "--quiet"), capsys)
    assert "transformers 4.46.0" in err
    assert not out.exists()


def test_a_config_the_model_cannot_run_is_never_recorded(small, tmp_path, capsys):
    out = tmp_path / "run"
    # the test bed has 296 visual tokens at 8 frames
    err = _one_line_error(_run(small, out, "full,video@5000", "--quiet"), capsys)
    assert "video@5000" in err and "296" in err
    assert not out.exists()
    assert main(_run(small, out, "full", "--quiet")) == 0
    spec = (out / "run.json").read_text()
    assert "5000" in _one_line_error(_run(small, out, "full,video@5000", "--quiet"), capsys)
    assert (out / "run.json").read_text() == spec  # not recorded: the run stays complete
    assert main(["merge", str(out)]) == 0


def test_quiet_silences_transformers_loading_and_files_follow_the_umask(small, tmp_path, capfd):
    from transformers.utils import logging as hf_logging

    old = os.umask(0o022)
    try:
        out = tmp_path / "run"
        assert main(_run(small, out, "full", "--quiet")) == 0
    finally:
        os.umask(old)
    err = capfd.readouterr().err
    assert "Loading weights" not in err and "%|" not in err, err
    assert hf_logging.is_progress_bar_enabled()  # restored after loading
    for name in ("run.json", "predictions.jsonl", "predictions.rank0.jsonl"):
        assert (out / name).stat().st_mode & 0o777 == 0o644, name


def test_resume_on_other_versions_needs_the_override(small, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_run(small, out, "full", "--quiet")) == 0
    spec = json.loads((out / "run.json").read_text())
    assert {"videosparse", "torch", "transformers"} <= set(spec["versions"])
    spec["versions"]["torch"] = "1.0.0-elsewhere"
    (out / "run.json").write_text(json.dumps(spec))
    rank0 = (out / "predictions.rank0.jsonl").read_bytes()
    err = _one_line_error(_run(small, out, "full,fastv@0.1", "--quiet"), capsys)
    assert "torch 1.0.0-elsewhere" in err and "--allow-version-change" in err
    assert (out / "predictions.rank0.jsonl").read_bytes() == rank0
    assert json.loads((out / "run.json").read_text())["configs"] == ["full"]
    assert main(_run(small, out, "full,fastv@0.1", "--quiet", "--allow-version-change")) == 0
    spec = json.loads((out / "run.json").read_text())
    assert spec["versions"]["torch"] == "1.0.0-elsewhere"
    assert spec["version_changes"][0]["versions"]["torch"] != "1.0.0-elsewhere"
    assert spec["version_changes"][0]["records_before"] == 4


def test_a_second_run_into_the_same_out_is_refused(small, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    code = ("import sys, pathlib\nfrom video_eval.runner import rank_lock\n"
            "with rank_lock(pathlib.Path(sys.argv[1]), 0):\n    print('locked', flush=True)\n    sys.stdin.read()\n")
    p = subprocess.Popen([sys.executable, "-c", code, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True, cwd=REPO)
    try:
        assert p.stdout.readline().strip() == "locked"
        err = _one_line_error(_run(small, out, "full", "--quiet"), capsys)
        assert f"pid {p.pid} on host {socket.gethostname()}" in err and "in use" in err
        assert not list(out.glob("predictions*"))
    finally:
        p.stdin.close()
        p.wait(timeout=60)
    assert main(_run(small, out, "full", "--quiet")) == 0


def test_unwritable_out_and_results_are_one_line_naming_the_path(small, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" / "run"
    err = _one_line_error(_run(small, out, "full", "--quiet"), capsys)
    assert f"cannot create the run directory {out}" in err
    out = tmp_path / "run"
    assert main(_run(small, out, "full", "--quiet")) == 0
    (out / "results.offline.json").mkdir()
    capsys.readouterr()
    assert main(["judge", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    err = [line for line in err.splitlines() if "error" in line]
    assert len(err) == 1
    err = err[0]
    assert f"cannot write {out / 'results.offline.json'}: " in err and ".tmp" not in err


def test_progress_lines_name_the_processs_own_rank(small, tmp_path, capsys):
    from video_eval.datasets import load_dataset
    from video_eval.runner import RunOptions, parse_configs, run
    from videosparse import VideoQA

    qa = VideoQA.from_pretrained("testbed", sparsity=None)
    ds = load_dataset("msvd", small["root"])
    opts = RunOptions(model="testbed", configs=parse_configs("full"), batch_size=2, max_new_tokens=4,
                      progress=True, log_every=1e9)
    s = run(ds, opts, tmp_path / "run", qa=qa, rank=1, world=2)
    assert s.computed == 2
    err = capsys.readouterr().err
    assert "[rank 1/2] answering: 2/2 answered" in err and "rank 0" not in err, err
