"""The command line through a subprocess: success paths, one-line errors with exit code 2, light --help."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

CLI = [sys.executable, "-m", "videosparse"]


def run(*args, timeout=300):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def one_line_error(res):
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    # progress lines ([videosparse] ..., transformers' weight-loading bar) may precede the error
    err = [ln for ln in res.stderr.splitlines()
           if ln.strip() and not ln.startswith("[videosparse]") and not ln.startswith("Loading weights")]
    assert len(err) == 1, res.stderr
    assert "Traceback" not in res.stderr
    assert err[0].startswith("videosparse: error: ")
    return err[0]


@pytest.mark.parametrize("argv", [["--help"], ["ask", "--help"], ["heatmap", "--help"], ["demo", "--help"]])
def test_help_imports_no_torch(argv):
    code = ("import sys; sys.argv = ['videosparse'] + %r\n"
            "from videosparse import cli\n"
            "try:\n    cli.main(sys.argv[1:])\nexcept SystemExit as e:\n    assert e.code == 0\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')") % (argv,)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "NO-TORCH"
    assert "usage:" in out.stdout


def test_ask_json_and_heatmap_then_rerender(tiny_checkpoint, tiny_video, tmp_path):
    heat = tmp_path / "heat"
    res = run("ask", tiny_video, "where is the red object", "--model", tiny_checkpoint, "--frames", "4",
              "--budget", "0.25", "--max-new-tokens", "3", "--heatmap", str(heat), "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["counts"] == [2 * round(0.25 * 4 * 17), round(0.25 * 4 * 17)]  # video: two stages
    assert sum(doc["per_frame_kept"]) == doc["counts"][-1]
    assert doc["timestamps"] == sorted(doc["timestamps"])
    for kind in ("png", "json", "npz", "mp4"):
        assert os.path.getsize(doc["heatmap"][kind]) > 0
    saved = json.load(open(doc["heatmap"]["json"]))
    assert sum(saved["tokens"]["kept"]) == doc["counts"][-1]
    res2 = run("heatmap", doc["heatmap"]["json"], "--video", tiny_video, "--out", str(tmp_path / "again"))
    assert res2.returncode == 0, res2.stderr
    again = json.load(open(tmp_path / "again" / "retention.json"))
    assert again["tokens"]["kept"] == saved["tokens"]["kept"]
    # plain text output: kept tokens per frame
    res3 = run("ask", tiny_video, "where is the red object", "--model", tiny_checkpoint, "--frames", "4",
               "--preset", "fastv", "--budget", "10", "--max-new-tokens", "2", "--quiet")
    assert res3.returncode == 0, res3.stderr
    assert res3.stderr == ""
    frames = [ln for ln in res3.stdout.splitlines() if ln.strip().startswith("frame ")]
    assert len(frames) == 4 and sum(int(ln.split("kept")[1].split("/")[0]) for ln in frames) == 10


def test_bad_inputs_one_line_exit_2(tiny_checkpoint, tiny_video, tmp_path):
    missing = one_line_error(run("ask", str(tmp_path / "nope.mp4"), "what is it", "--model", tiny_checkpoint))
    assert "nope.mp4" in missing
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(open(tiny_video, "rb").read()[:300])
    msg = one_line_error(run("ask", str(corrupt), "what is it", "--model", tiny_checkpoint, "--frames", "4"))
    assert "corrupt.mp4" in msg
    assert "empty" in one_line_error(run("ask", tiny_video, "   ", "--model", tiny_checkpoint))
    msg = one_line_error(run("ask", tiny_video, "what is it", "--model", tiny_checkpoint, "--frames", "4",
                             "--budget", "5000"))
    assert "budget" in msg
    assert "budget" in one_line_error(run("ask", tiny_video, "what is it", "--model", tiny_checkpoint,
                                          "--budget", "0"))
    assert "preset" in one_line_error(run("ask", tiny_video, "what is it", "--model", tiny_checkpoint,
                                          "--preset", "magic"))
    assert "no such file" in one_line_error(run("heatmap", str(tmp_path / "x.json"), "--video", tiny_video,
                                                "--out", str(tmp_path)))
    res = run("ask", tiny_video, "   ", "--model", tiny_checkpoint, "--debug")
    assert res.returncode != 0 and "Traceback" in res.stderr


def test_demo_runs_offline_and_writes_heatmaps(tmp_path):
    res = run("demo", "--out", str(tmp_path / "demo"), "--json", "--quiet")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["text"] == doc["expected"]  # the test-bed model answers the seeded demo question
    assert doc["counts"] == [2 * round(0.1 * 8 * 37), round(0.1 * 8 * 37)]
    assert sum(doc["per_frame_kept"]) == doc["counts"][-1]
    saved = json.load(open(doc["heatmap"]["json"]))
    kept_cells = {(f, r, c) for f, r, c, k in zip(saved["tokens"]["frame"], saved["tokens"]["row"],
                                                   saved["tokens"]["col"], saved["tokens"]["kept"]) if k}
    target = {tuple(t) for t in saved["meta"]["target_cells"]}
    assert target & kept_cells  # question-guided selection keeps the asked-about object
    for kind in ("png", "mp4", "npz"):
        assert os.path.getsize(doc["heatmap"][kind]) > 0
