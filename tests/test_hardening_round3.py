"""Hardening round 3: inputs a user gives by mistake, and the speed and output a user feels.

Each test failed before its fix (see the report of the round): traces drawn on another video, tiny integer
budgets kept silently, `demo --preset none`, the test-bed tokenizer's case and punctuation, numpy's message for
a negative seed, ask_many on bare paths, threads, mistakes reported only after importing torch, transformers'
loading bar under --quiet, a decode time of 0.0 that was never measured, float noise in timestamps.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from videosparse import cli
from videosparse.testbed import synthetic as syn


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def other_clip(tmp_path_factory):
    """Another 8-frame test-bed clip: same geometry, different content."""
    p = tmp_path_factory.mktemp("other") / "other.mp4"
    syn.write_video(syn.make_sample(8, 1).frames, str(p))
    return str(p)


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory):
    s = syn.make_sample(5, 0, syn.GenConfig(num_frames=64))
    p = tmp_path_factory.mktemp("long") / "long.mp4"
    syn.write_video(s.frames, str(p))
    return str(p), s


@pytest.fixture(scope="module")
def traced(tmp_path_factory, clip_file):
    """`ask --heatmap` on clip_file: the retention JSON."""
    out = tmp_path_factory.mktemp("heat")
    rc = cli.main(["ask", clip_file, "where is the cyan object", "--model", "testbed", "--quiet", "--threads", "1",
                   "--max-new-tokens", "4", "--heatmap", str(out)])
    assert rc == 0
    return str(out / "retention.json")


def _err_lines(err: str) -> list:
    return [ln for ln in err.splitlines() if ln.strip()]


# ----------------------------------------------------------------------------- a trace drawn on another video
def test_trace_records_its_video(traced, clip_file):
    src = json.load(open(traced))["meta"]["source"]
    assert src["size"] == os.path.getsize(clip_file) and len(src["head_sha256"]) == 64
    assert src["num_frames"] == 8 and src["duration"] == 2.0 and src["name"] == "clip.mp4"


def test_heatmap_refuses_another_video_unless_forced(traced, other_clip, tmp_path, capsys):
    rc = cli.main(["heatmap", traced, "--video", other_clip, "--out", str(tmp_path / "a")])
    err = _err_lines(capsys.readouterr().err)
    assert rc == 2 and len(err) == 1 and err[0].startswith("videosparse: error: ")
    assert "is not the video this trace was made on" in err[0] and "--force" in err[0]
    assert not (tmp_path / "a" / "retention.png").exists()
    rc = cli.main(["heatmap", traced, "--video", other_clip, "--out", str(tmp_path / "b"), "--force", "--no-video"])
    captured = capsys.readouterr()
    assert rc == 0 and (tmp_path / "b" / "retention.png").is_file()
    assert "videosparse: warning:" in captured.err and "--force" in captured.err


def test_heatmap_accepts_the_same_video_moved(traced, clip_file, tmp_path, capsys):
    moved = tmp_path / "renamed.mp4"
    shutil.copy(clip_file, moved)
    rc = cli.main(["heatmap", traced, "--video", str(moved), "--out", str(tmp_path / "r"), "--no-video"])
    captured = capsys.readouterr()
    assert rc == 0 and captured.err == "", captured.err
    again = json.load(open(tmp_path / "r" / "retention.json"))
    assert again["meta"]["source"] == json.load(open(traced))["meta"]["source"]  # still the trace's own video


def test_source_mismatch_api(clip_file, other_clip, tmp_path):
    from videosparse import heatmap

    fp = heatmap.video_fingerprint(clip_file)
    assert heatmap.source_mismatch(fp, clip_file) is None
    msg = heatmap.source_mismatch(fp, other_clip)
    assert msg and "SHA-256" in msg
    same_size = tmp_path / "same_size.mp4"  # same size, other bytes: the content hash tells them apart
    data = bytearray(open(clip_file, "rb").read())
    data[len(data) // 2] ^= 0xFF
    same_size.write_bytes(bytes(data))
    assert "SHA-256" in heatmap.source_mismatch(fp, str(same_size))


# ----------------------------------------------------------------------------- tiny integer budgets
@pytest.fixture
def fresh_budget_warnings():
    from videosparse.config import tiny_budget_warning

    tiny_budget_warning.cache_clear()
    yield
    tiny_budget_warning.cache_clear()


def test_tiny_int_budget_is_logged_by_the_library(caplog, fresh_budget_warnings):
    from videosparse import SparseConfig

    with caplog.at_level(logging.WARNING, logger="videosparse.config"):
        SparseConfig.preset("video", budget=1, num_layers=4).describe(296, 4)
        SparseConfig.preset("video", budget=1, num_layers=4).describe(296, 4)  # once per budget and input
    msgs = [r.getMessage() for r in caplog.records if "token count" in r.getMessage()]
    assert len(msgs) == 1
    assert "1 of the input's 296 visual tokens" in msgs[0] and "1.0" in msgs[0] and "decimal point" in msgs[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="videosparse.config"):
        SparseConfig.preset("video", budget=30, num_layers=4).describe(296, 4)  # 10 %: meant
        SparseConfig.preset("video", budget=0.1, num_layers=4).describe(296, 4)
        SparseConfig.preset("video", budget=20, num_layers=4).describe(2056, 32)  # < 1 % of 2056: logged
    assert [r.getMessage() for r in caplog.records if "token count" in r.getMessage()] == [
        next(r.getMessage() for r in caplog.records if "20 of the input's 2056" in r.getMessage())]


def test_tiny_budget_warned_by_the_eval_runner(caplog, fresh_budget_warnings):
    from videosparse.loading import resolve_checkpoint
    from video_eval.runner import parse_configs

    (rc,) = parse_configs("video@01")
    config = resolve_checkpoint("testbed").load_config()
    with caplog.at_level(logging.WARNING, logger="videosparse.config"):
        rc.sparsity(config, 8)
    assert any("1 is a token count" in r.getMessage() for r in caplog.records)


def test_tiny_budget_warned_once_by_the_cli(clip_file, capsys, fresh_budget_warnings):
    rc = cli.main(["ask", clip_file, "where is the cyan object", "--model", "testbed", "--budget", "1",
                   "--threads", "1", "--max-new-tokens", "2"])
    err = capsys.readouterr().err
    warn = [ln for ln in err.splitlines() if ln.startswith("videosparse: warning:")]
    assert rc == 0 and len(warn) == 1, err
    assert warn[0].startswith("videosparse: warning: --budget: 1 is a token count") and "1.0" in warn[0]


# ----------------------------------------------------------------------------- --preset none
def test_demo_preset_none_runs_and_says_why_there_is_no_heatmap(tmp_path, capsys):
    rc = cli.main(["demo", "--preset", "none", "--out", str(tmp_path / "d"), "--quiet", "--threads", "1"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "full model, no pruning" in out and "no heatmap written" in out and "none is pruned" in out


def test_ask_preset_none_heatmap_on_whole_frames_says_why(clip_file, tmp_path, capsys):
    rc = cli.main(["ask", clip_file, "where is the cyan object", "--model", "testbed", "--preset", "none", "--json",
                   "--quiet", "--threads", "1", "--max-new-tokens", "2", "--heatmap", str(tmp_path / "h")])
    d = json.loads(capsys.readouterr().out)
    assert rc == 0 and d["heatmap"] is None and "no heatmap written" in d["heatmap_note"]


def test_preset_none_on_the_long_path_says_what_the_pool_dropped(long_clip, tmp_path, capsys):
    path, s = long_clip
    heat = tmp_path / "h"
    rc = cli.main(["ask", path, s.question, "--model", "testbed", "--preset", "none", "--frames", "64",
                   "--threads", "1", "--max-new-tokens", "3", "--heatmap", str(heat)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    flow = next(ln for ln in out.splitlines() if ln.startswith("visual tokens"))
    assert "->  ;" not in flow and "-> ;" not in flow and not flow.rstrip().endswith("->")
    assert "pool 296" in flow and "87.5% of the sampled frames' tokens dropped" in flow
    assert "no pruning inside the decoder" in flow
    assert "long-video pool still keeps only --pre-budget=296 tokens" in err  # said before the work starts
    doc = json.load(open(heat / "retention.json"))  # the pool's retention is drawn
    assert sum(doc["tokens"]["pooled"]) == 296 and sum(doc["tokens"]["kept"]) == 296


# ----------------------------------------------------------------------------- the test-bed tokenizer
def test_case_and_punctuation_are_normalised_for_a_closed_vocabulary(qa, sample):
    shouted = qa.ask(sample.frames, "Where is the CYAN object?", max_new_tokens=4)
    assert shouted.text == sample.answer and shouted.question == "Where is the CYAN object?"
    assert shouted.trace.stages[-1].kept.tolist() == qa.ask(sample.frames, sample.question,
                                                             max_new_tokens=4).trace.stages[-1].kept.tolist()
    from videosparse.pipeline import model_question

    assert model_question(qa.tokenizer, "Where is the CYAN object?") == "where is the cyan object"
    assert model_question(qa.tokenizer, "  where is the cyan object ") == "where is the cyan object"
    # a word the vocabulary knows is never changed; an unknown one only when its normal form is known
    assert model_question(qa.tokenizer, "Where is the cyan zebra?") == "where is the cyan zebra?"


def test_byte_level_tokenizers_get_the_question_unchanged():
    from videosparse.pipeline import model_question

    class ByteLevel:  # never produces its unknown token (Llama's)
        unk_token_id = 0

        def __call__(self, text, **kw):
            return {"input_ids": [b + 3 for b in text.encode()]}

    assert model_question(ByteLevel(), "Where is the RED object?") == "Where is the RED object?"


def test_unknown_words_error_lists_the_vocabulary(qa, sample):
    with pytest.raises(ValueError, match=r"unknown to the model's tokenizer.*reads lower-case words.*cyan"):
        qa.ask(sample.frames, "zebra giraffe lion where", max_new_tokens=4)


def test_unknown_word_warning_printed_once_and_not_with_quiet(clip_file):
    """A subprocess, as a user runs it (in-process, pytest's log capture would take the warnings)."""
    args = [sys.executable, "-m", "videosparse", "ask", clip_file, "where is the cyan object please", "--model",
            "testbed", "--threads", "1", "--max-new-tokens", "2"]
    res = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    warned = [ln for ln in res.stderr.splitlines() if "unknown to the model's tokenizer" in ln]
    assert len(warned) == 1 and warned[0].startswith("videosparse: warning: 1 of the question's"), res.stderr
    quiet = subprocess.run(args + ["--quiet"], capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 0 and quiet.stderr == ""


# ----------------------------------------------------------------------------- seeds and ask_many's input
def test_negative_seed_is_refused_by_name(capsys, tmp_path):
    with pytest.raises(SystemExit) as ei:
        cli.main(["demo", "--seed", "-1", "--out", str(tmp_path)])
    err = _err_lines(capsys.readouterr().err)
    assert ei.value.code == 2 and len(err) == 1 and "--seed: must be an integer >= 0, got -1" in err[0]
    from videosparse.demo import run_demo

    with pytest.raises(ValueError, match="seed must be an integer >= 0, got -1"):
        run_demo(out_dir=str(tmp_path), seed=-1)


@pytest.mark.parametrize("pairs,expected", [
    (["v.mp4"], "item 0 is a str ('v.mp4'), not a pair"),
    (["a.mp4", "b.mp4"], "item 0 is a str"),
    ([("v.mp4", "q", 3)], "item 0 is a tuple of 3 items"),
    ("v.mp4", "got a single str"),
])
def test_ask_many_names_input_that_is_not_pairs(qa, pairs, expected):
    with pytest.raises(TypeError, match=r"\(video, question\) pairs") as ei:
        qa.ask_many(pairs)
    assert expected in str(ei.value)


# ----------------------------------------------------------------------------- threads
@pytest.mark.parametrize("cpus,load,expected", [
    (2, 0.0, 2), (2, 0.49, 2), (2, 0.5, 1), (2, 1.0, 1), (2, 5.0, 1), (1, 0.0, 1), (64, 0.4, 64), (64, 10.0, 54)])
def test_default_threads_rule(cpus, load, expected):
    from videosparse.runtime import default_threads

    assert default_threads(cpus=cpus, load=load) == expected


def test_cgroup_quota_caps_the_cpus(tmp_path):
    from videosparse.runtime import _cgroup_cpus

    f = tmp_path / "cpu.max"
    f.write_text("150000 100000\n")
    assert _cgroup_cpus(str(f)) == 2
    f.write_text("max 100000\n")
    assert _cgroup_cpus(str(f)) is None
    assert _cgroup_cpus(str(tmp_path / "missing")) is None


def test_cli_threads_set_for_the_run_and_restored(clip_file, capsys, monkeypatch):
    import torch

    from videosparse import pipeline

    seen = []
    real_ask = pipeline.VideoQA.ask

    def ask(self, *a, **k):
        seen.append(torch.get_num_threads())
        return real_ask(self, *a, **k)

    monkeypatch.setattr(pipeline.VideoQA, "ask", ask)
    before = torch.get_num_threads()
    other = 2 if before == 1 else 1
    assert cli.main(["ask", clip_file, "where is the cyan object", "--model", "testbed", "--quiet",
                     "--threads", str(other), "--max-new-tokens", "2"]) == 0
    assert seen == [other] and torch.get_num_threads() == before
    from videosparse import runtime

    monkeypatch.setattr(runtime, "default_threads", lambda: other)  # no --threads: the rule's choice
    assert cli.main(["ask", clip_file, "where is the cyan object", "--model", "testbed",
                     "--max-new-tokens", "2"]) == 0
    assert seen[-1] == other and torch.get_num_threads() == before
    assert f"{other} torch thread" in capsys.readouterr().err


# ----------------------------------------------------------------------------- mistakes before imports
PROBE = """
import sys
from videosparse import cli
try:
    rc = cli.main(sys.argv[1:])
except SystemExit as e:
    rc = e.code
heavy = sorted(m for m in ("torch", "transformers", "av") if m in sys.modules)
print("RC", rc, "HEAVY", ",".join(heavy) or "-")
"""


@pytest.mark.parametrize("argv,expected", [
    (["ask", "{missing}", "what happens", "--model", "testbed"], "no such file"),
    (["ask", "{clip}", "   ", "--model", "testbed"], "the question is empty"),
    (["ask", "{clip}", "what happens", "--budget", "abc"], "--budget: expected a token count"),
    (["ask", "{clip}", "what happens", "--budget", "0"], "--budget: must be > 0"),
    (["ask", "{clip}", "what happens", "--preset", "nope"], "--preset: unknown preset 'nope'"),
    (["demo", "--seed", "-1"], "--seed: must be an integer >= 0"),
    (["demo", "--preset", "nope"], "--preset: unknown preset 'nope'"),
    (["heatmap", "{missing}", "--video", "{clip}", "--out", "{tmp}"], "no such file"),
])
def test_mistakes_are_reported_before_torch_or_transformers_is_imported(argv, expected, clip_file, tmp_path):
    argv = [a.format(missing=str(tmp_path / "missing.mp4"), clip=clip_file, tmp=str(tmp_path)) for a in argv]
    res = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=120)
    last = res.stdout.strip().splitlines()[-1]
    assert last.startswith("RC 2 "), (res.stdout, res.stderr)
    assert last.endswith("HEAVY -"), last  # neither torch, transformers nor PyAV was imported
    err = _err_lines(res.stderr)
    assert len(err) == 1 and err[0].startswith("videosparse: error: ") and expected in err[0], res.stderr


# ----------------------------------------------------------------------------- transformers' loading bar
def test_from_pretrained_progress_false_hides_the_loading_bar_and_restores(capfd):
    from transformers.utils import logging as hf_logging

    from videosparse.pipeline import VideoQA

    assert hf_logging.is_progress_bar_enabled()
    VideoQA.from_pretrained("testbed", progress=False).close()
    assert "Loading weights" not in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled()  # restored after loading
    VideoQA.from_pretrained("testbed").close()
    assert "Loading weights" in capfd.readouterr().err


# ----------------------------------------------------------------------------- measured times, timestamps
def test_decode_time_is_measured_or_none(qa, sample, clip_file):
    from_path = qa.ask(clip_file, sample.question, max_new_tokens=2)
    assert from_path.video_decode_seconds > 0 and from_path.vision_seconds > 0
    again = qa.ask(clip_file, sample.question, max_new_tokens=2)  # cached features: nothing decoded by this ask
    assert again.video_decode_seconds == 0.0 and again.vision_seconds == 0.0
    frames = qa.ask(sample.frames.copy(), sample.question, max_new_tokens=2)  # decoded by the caller: not measured
    assert frames.video_decode_seconds is None and frames.to_dict()["video_decode_seconds"] is None
    assert frames.vision_seconds > 0


def test_cli_json_reports_the_decode_and_vision_times(clip_file, capsys):
    rc = cli.main(["ask", clip_file, "where is the cyan object", "--model", "testbed", "--json", "--quiet",
                   "--threads", "1", "--max-new-tokens", "2"])
    d = json.loads(capsys.readouterr().out)
    assert rc == 0 and d["video_decode_seconds"] > 0 and d["vision_seconds"] > 0


def test_timestamps_are_serialised_without_float_noise(tmp_path):
    from videosparse.heatmap import clean_time, round_time
    from videosparse.pipeline import Answer

    noisy = [0.1 * k for k in range(8)]  # 0.30000000000000004, 0.6000000000000001, ...
    assert any(len(repr(t)) > 10 for t in noisy)
    d = Answer(text="", question="q", video="v", timestamps=noisy).to_dict()
    assert d["timestamps"] == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    assert json.dumps(d["timestamps"]) == "[0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]"
    assert clean_time(0.1 * 3) == 0.3 and round_time(None) is None and np.isnan(round_time(float("nan")))
    assert round_time(1 / 3) == 0.333333  # microseconds: finer than any video clock


def test_quiet_turns_off_the_decode_progress_bar(clip_file, long_clip, monkeypatch, capsys):
    """--quiet reaches the video reader: sequential decodes of files without a seek index show no bar, on the
    short path (load_video), the long path (VideoQA's ChunkedVideo) and in `heatmap` alike."""
    import videosparse.video as video

    seen = []
    real_load, real_chunked = video.load_video, video.ChunkedVideo

    def load(*a, **k):
        seen.append(("load", k.get("progress", "unset")))
        return real_load(*a, **k)

    def chunked(*a, **k):
        seen.append(("chunks", k.get("progress", "unset")))
        return real_chunked(*a, **k)

    monkeypatch.setattr(video, "load_video", load)
    monkeypatch.setattr(video, "ChunkedVideo", chunked)
    for f, extra in ((clip_file, []), (long_clip[0], ["--frames", "64"])):
        assert cli.main(["ask", f, "where is the red object", "--model", "testbed", "--quiet",
                         "--max-new-tokens", "2", *extra]) == 0
    assert ("load", False) in seen and ("chunks", False) in seen
    assert all(p is False for _, p in seen), seen
    seen.clear()
    monkeypatch.setattr(cli, "_isatty", lambda stream: True)  # stderr a terminal, no --quiet: the reader decides
    assert cli.main(["ask", clip_file, "where is the red object", "--model", "testbed", "--max-new-tokens", "2"]) == 0
    assert seen and all(p is None for _, p in seen), seen
    capsys.readouterr()
