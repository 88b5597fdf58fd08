"""What broke when the package was tried as a new user would: each test failed before its fix.

Checkpoints of other architectures, the hub when it cannot be reached, arguments that can be
refused before a model loads, the model's context and vocabulary, output paths, and the small
things (token counts, returned sequences, progress bars, warnings in logs, package structure).
"""

from __future__ import annotations

import ast
import io
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from videosparse import cli, loading

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    """A small LlamaForCausalLM checkpoint: the wrong architecture for videosparse."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    d = tmp_path_factory.mktemp("llama")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    LlamaForCausalLM(cfg).save_pretrained(d)
    return str(d)


@pytest.fixture
def no_model_load(monkeypatch):
    """Any attempt to load weights fails the test: the check must come first."""
    from transformers import VideoLlavaForConditionalGeneration

    from videosparse.pipeline import VideoQA

    def boom(*a, **k):
        raise AssertionError("the model was loaded before the bad input was refused")

    monkeypatch.setattr(VideoLlavaForConditionalGeneration, "from_pretrained", boom)
    monkeypatch.setattr(VideoQA, "from_pretrained", boom)


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connections are refused at once
    return port


# ----------------------------------------------------------------------------- 1. unsupported models
def test_adapter_registry_matches_the_preload_check():
    from videosparse.models import registered_adapters

    types = {t for a in registered_adapters().values() for t in getattr(a, "model_types", ())}
    # every front end has an adapter; the adapters without one are named as engine-only (sparsify only)
    assert types == set(loading.SUPPORTED_MODEL_TYPES) | set(loading.ENGINE_ONLY_MODEL_TYPES)
    assert not set(loading.SUPPORTED_MODEL_TYPES) & set(loading.ENGINE_ONLY_MODEL_TYPES)


def test_engine_only_checkpoint_is_refused_by_videoqa_with_the_sparsify_route(monkeypatch):
    # a family the engine prunes before it has a front end (Qwen-VL was one until its front end landed)
    monkeypatch.setattr(loading, "ENGINE_ONLY_MODEL_TYPES", ("brand_new_vl",))
    with pytest.raises(loading.CheckpointError, match=r"'brand_new_vl' checkpoint.*sparsify\(model, cfg\).*not support it yet"):
        loading.check_model_type("brand_new_vl", "someone/Brand-New-VL")


def test_qwen_checkpoints_pass_the_preload_check():
    for t in ("qwen2_5_vl", "qwen3_vl"):
        loading.check_model_type(t, f"Qwen/{t}")  # a front end each: VideoQA, the CLI and the runner load them


def test_llama_checkpoint_refused_before_loading_api(llama_dir, no_model_load):
    with pytest.raises(loading.CheckpointError, match=r"'llama' checkpoint \(LlamaForCausalLM\).*Supported: llava_onevision: .*; video_llava: "):
        loading.resolve_checkpoint(llama_dir)


def test_llama_checkpoint_refused_by_from_pretrained(llama_dir, monkeypatch):
    from transformers import VideoLlavaForConditionalGeneration

    from videosparse.pipeline import VideoQA

    monkeypatch.setattr(VideoLlavaForConditionalGeneration, "from_pretrained",
                        lambda *a, **k: pytest.fail("weights loaded for an unsupported checkpoint"))
    with pytest.raises(ValueError, match="does not support.*Supported: .*video_llava: "):
        VideoQA.from_pretrained(llama_dir)  # config only; the old path built a 7B model


def test_llama_checkpoint_refused_by_cli(llama_dir, clip_file, capsys, no_model_load):
    rc = cli.main(["ask", clip_file, "what is this", "--model", llama_dir, "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert "'llama' checkpoint" in err[0] and "video_llava: Video-LLaVA" in err[0] and "llava_onevision: " in err[0]


# ----------------------------------------------------------------------------- 3. checked before loading
BAD_ARGS = [
    (["--preset", "nope"], "--preset: unknown preset 'nope'"),
    (["--budget", "0"], "--budget: must be > 0"),
    (["--budget", "-5"], "--budget: must be > 0"),
    (["--budget", "1.5"], "--budget: a fraction must be in (0, 1]"),
    (["--budget", "5000"], "5000 tokens requested but the input has only 296"),
    (["--max-new-tokens", "0"], "--max-new-tokens: must be a positive integer"),
    (["--dtype", "foo"], "--dtype: unknown dtype 'foo'"),
    (["--dtype", "nn"], "--dtype: unknown dtype 'nn'"),
    (["--frames", "-3"], "--frames: must be a positive integer, got -3"),
    (["--frames", "64", "--pre-budget", "2368"], "64 frames x 37 visual tokens"),
    (["--frames", "64", "--pre-budget", "2000"], "--pre-budget=2000 visual tokens (picked from 64 frames x 37 tokens)"),
    (["--fps", "0"], "--fps: expected a number > 0"),
    (["--frames", "512", "--budget", "400"], "400 tokens requested but the input has only 296"),
    (["--preset", "none", "--budget", "0.1"], "--budget given with --preset none"),
]


@pytest.mark.parametrize("extra,expected", BAD_ARGS, ids=[" ".join(a) for a, _ in BAD_ARGS])
def test_cli_refuses_before_loading(extra, expected, clip_file, capsys, no_model_load):
    try:
        rc = cli.main(["ask", clip_file, "where is the red object", "--model", "testbed", "--quiet", *extra])
    except SystemExit as e:  # argparse-level refusals
        rc = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err
    assert len(err) == 1 and err[0].startswith("videosparse: error: "), err
    assert expected in err[0], err[0]
    assert "module" not in err[0] and "num_frames" not in err[0]


def test_cuda_refused_before_loading(clip_file, capsys, no_model_load):
    import torch

    if torch.cuda.is_available():  # pragma: no cover - GPU machines: ask for a device that is not there
        dev = f"cuda:{torch.cuda.device_count()}"
    else:
        dev = "cuda"
    rc = cli.main(["ask", clip_file, "where is the red object", "--model", "testbed", "--quiet", "--device", dev])
    err = capsys.readouterr().err
    assert rc == 2 and "CUDA" in err and ("not available" in err or "visible" in err)


def test_unknown_preset_with_default_hub_model_is_named_as_such(clip_file, capsys, no_model_load, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    rc = cli.main(["ask", clip_file, "what happens", "--preset", "videoo", "--quiet"])  # default: the 7B hub id
    err = capsys.readouterr().err
    assert rc == 2 and "unknown preset 'videoo'" in err and "connect" not in err


# ----------------------------------------------------------------------------- 4. hub and paths
def test_unreachable_hub_fails_fast_with_what_to_do(monkeypatch):
    import huggingface_hub.utils
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    requests = []
    real = huggingface_hub.utils.get_session

    class Counting:
        def head(self, *a, **k):
            requests.append((a, k))
            return real().head(*a, **k)

    monkeypatch.setattr(huggingface_hub.utils, "get_session", Counting)
    with pytest.raises(loading.CheckpointError) as ei:
        loading.resolve_checkpoint("LanguageBind/Video-LLaVA-7B-hf")
    # one request with a timeout, no retries (the old path retried for 25-34 s)
    assert len(requests) == 1 and requests[0][1].get("timeout")
    msg = str(ei.value)
    assert "cannot reach" in msg and "not in the local Hugging Face cache" in msg
    assert "'testbed'" in msg and "local checkpoint directory" in msg and "HF_HUB_OFFLINE=1" in msg


def test_offline_mode_never_touches_the_network(monkeypatch):
    import huggingface_hub.utils

    monkeypatch.setattr(huggingface_hub.utils, "get_session", lambda: pytest.fail("network used offline"))
    with pytest.raises(loading.CheckpointError, match="offline mode"):
        loading.resolve_checkpoint("LanguageBind/Video-LLaVA-7B-hf", offline=True)


def test_unreachable_hub_uses_the_cached_copy(monkeypatch, tmp_path):
    import huggingface_hub
    from huggingface_hub import constants

    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"model_type": "video_llava", "architectures": ["VideoLlavaForConditionalGeneration"]}))
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, name: str(cfg))
    ck = loading.resolve_checkpoint("LanguageBind/Video-LLaVA-7B-hf")
    assert ck.local_files_only and ck.source == "LanguageBind/Video-LLaVA-7B-hf" and ck.model_type == "video_llava"


@pytest.mark.parametrize("name,expected", [
    ("./no_such_dir", "no such directory"),
    ("/no/such/dir", "no such directory"),
    ("a/b/c", "no such directory"),
    ("", "the model is empty"),
])
def test_bad_model_paths(name, expected):
    with pytest.raises(loading.CheckpointError, match=expected):
        loading.resolve_checkpoint(name)


def test_directory_without_config(tmp_path):
    with pytest.raises(loading.CheckpointError, match="no config.json"):
        loading.resolve_checkpoint(str(tmp_path))


def test_testbed_by_name_from_the_api(qa, sample):
    import videosparse.testbed

    assert loading.resolve_checkpoint("testbed").source == videosparse.testbed.path()
    ans = qa.ask(sample.frames, sample.question, max_new_tokens=4)
    assert ans.text == sample.answer


# ----------------------------------------------------------------------------- 5. context and vocabulary
def test_prompt_too_long_is_refused_before_any_compute(qa, monkeypatch):
    frames = np.zeros((64, 48, 48, 3), np.uint8)
    monkeypatch.setattr(qa, "encode", lambda *a, **k: pytest.fail("encoded a video whose prompt cannot fit"))
    monkeypatch.setattr(qa, "_encode_long", lambda *a, **k: pytest.fail("encoded a video whose prompt cannot fit"))
    # whole frames (a pool large enough to hold all 64 frames: the short path)
    with pytest.raises(ValueError) as ei:
        qa.ask(frames, "where is the red object", max_new_tokens=8, pre_budget=64 * 37)
    msg = str(ei.value)
    assert "64 frames x 37 visual tokens = 2368" in msg and "1024" in msg and "use at most 27 frames" in msg
    # the long path: the pool is what must fit
    with pytest.raises(ValueError) as ei:
        qa.ask(frames, "where is the red object", max_new_tokens=8, pre_budget=2000)
    msg = str(ei.value)
    assert "pre_budget=2000 visual tokens (picked from 64 frames x 37 tokens)" in msg and "1024" in msg
    text = qa.prompt_length("where is the red object", 1) - 37  # text tokens of the prompt
    assert f"use pre_budget <= {1024 - text - 8}" in msg
    # exactly at the limit passes the check, one more token fails it
    n = qa.prompt_length("where is the red object", 27)
    assert loading.context_error(n, 1024 - n, 1024, 27, 37) is None
    assert loading.context_error(n, 1024 - n + 1, 1024, 27, 37) is not None


def test_huge_question_is_refused(qa, sample):
    with pytest.raises(ValueError, match="does not fit the model's context"):
        qa.ask(sample.frames, " ".join(["where"] * 5000), max_new_tokens=4)


def test_question_of_unknown_words_is_refused(qa, sample, caplog):
    with pytest.raises(ValueError, match=r"3 of the question's 4 tokens are unknown.*'zebra'"):
        qa.ask(sample.frames, "zebra giraffe lion where", max_new_tokens=4)
    with caplog.at_level("WARNING", logger="videosparse.loading"):  # a minority: answered, with a warning
        qa.ask(sample.frames, sample.question + " please", max_new_tokens=4)
    assert any("1 of the question's" in r.message for r in caplog.records)


def test_ask_many_records_context_errors_and_goes_on(qa, sample):
    long = np.zeros((64, 48, 48, 3), np.uint8)
    out = qa.ask_many([(long, "where is the red object"), (sample.frames, sample.question)],
                      on_error="record", max_new_tokens=4, pre_budget=64 * 37)
    assert out[0].error and "context" in out[0].error
    assert out[1].error is None and out[1].text == sample.answer


# ----------------------------------------------------------------------------- 7. outputs
def test_answer_is_printed_even_when_heatmaps_fail(clip_file, tmp_path, capsys, monkeypatch):
    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(cli, "_write_heatmaps", broken)
    rc = cli.main(["ask", clip_file, "where is the red object", "--model", "testbed", "--quiet",
                   "--heatmap", str(tmp_path / "h")])
    out, err = capsys.readouterr()
    assert rc == 2
    assert "A: " in out and "disk full" in err and err.count("\n") == 1


def test_heatmap_dir_created_before_the_run(clip_file, tmp_path, capsys):
    d = tmp_path / "new" / "dir"
    rc = cli.main(["ask", clip_file, "where is the red object", "--model", "testbed", "--quiet",
                   "--heatmap", str(d), "--max-new-tokens", "4"])
    assert rc == 0 and (d / "retention.png").is_file()
    capsys.readouterr()


# ----------------------------------------------------------------------------- 8. small things
def test_new_tokens_excludes_end_of_sequence(qa, sample):
    ans = qa.ask(sample.frames, sample.question, max_new_tokens=8)
    words = len(qa.tokenizer(ans.text, add_special_tokens=False)["input_ids"])
    assert ans.new_tokens == words  # "top left" = 2 tokens; </s> is not counted


def test_num_return_sequences_are_all_returned(qa, sample):
    ans = qa.ask(sample.frames, sample.question, max_new_tokens=4, num_beams=3, num_return_sequences=3)
    assert len(ans.sequences) == 3 and ans.text == ans.sequences[0]
    assert len(set(ans.sequences)) == 3  # distinct beams
    assert ans.to_dict()["sequences"] == ans.sequences


def test_progress_bar_finishes_at_the_steps_taken(capsys):
    bar = cli._Bar("generating", enabled=True)
    bar.enabled = True  # as on a terminal
    for step in (1, 2, 3):
        bar(step, 64)
    bar.close()
    err = capsys.readouterr().err
    assert "3/3" in err.replace(" ", "") and "3/64" not in err.splitlines()[-1]


def test_logs_without_terminal_have_no_bars_or_warnings(clip_file):
    """stderr is a pipe here: no transformers weight-loading bar; with --quiet nothing at all."""
    base = [sys.executable, "-m", "videosparse", "ask", clip_file, "where is the red object", "--model", "testbed",
            "--max-new-tokens", "4"]
    res = subprocess.run(base, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "Loading weights" not in res.stderr and "\r" not in res.stderr
    quiet = subprocess.run(base + ["--quiet", "--frames", "27"], capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == ""


def test_budget_help_says_what_a_budget_is():
    h = cli.build_parser()._subparsers._group_actions[0].choices["ask"].format_help()
    assert "after the last stage" in " ".join(h.split()) and "ends at 17" in " ".join(h.split())


def test_repository_hygiene():
    ignored = open(os.path.join(ROOT, ".gitignore")).read().split()
    assert ".venv/" in ignored and "videosparse-demo/" in ignored
    readme = open(os.path.join(ROOT, "README.md")).read()
    assert "DESIGN" not in readme and "../shared" not in readme


# ----------------------------------------------------------------------------- 9. structure
def _imports(path: str) -> set:
    tree = ast.parse(open(path).read())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def test_videosparse_never_imports_video_eval_and_cli_demo_are_not_circular():
    pkg = os.path.join(ROOT, "videosparse")
    for dirpath, _, files in os.walk(pkg):
        for f in files:
            if f.endswith(".py"):
                mods = _imports(os.path.join(dirpath, f))
                assert not any(m == "video_eval" or m.startswith("video_eval.") for m in mods), f
    assert not any(m.startswith("videosparse.cli") for m in _imports(os.path.join(pkg, "demo.py")))


class _Terminal(io.StringIO):
    """A stream that says it is a terminal (what the CLI's stderr is when a person runs it)."""

    def isatty(self) -> bool:
        return True


def test_generation_bar_shown_on_a_terminal_only_and_not_under_quiet():
    for stream, enabled, shown in ((_Terminal(), True, True), (io.StringIO(), True, False),
                                   (_Terminal(), False, False)):  # terminal; a pipe or a log file; --quiet
        bar = cli._Bar("generating", enabled=enabled, stream=stream)
        for step in (1, 2, 3):
            bar(step, 64)
        bar.close()
        text = stream.getvalue()
        assert (("[videosparse] generating" in text) and "3/3" in text.replace(" ", "")) == shown, (stream, text)
        assert bool(text) == shown


def test_cli_bars_on_a_terminal_and_none_under_quiet(clip_file):
    """The real command with stderr on a pseudo-terminal: the generation bar and transformers' weight-loading bar
    are drawn; with --quiet nothing is written at all."""
    import fcntl
    import pty
    import struct
    import termios
    import threading

    def run(extra):
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal 100 columns wide
        chunks = []

        def read():
            while True:
                try:
                    data = os.read(master, 4096)
                except OSError:  # EIO: the child closed the terminal
                    return
                if not data:
                    return
                chunks.append(data)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        res = subprocess.run([sys.executable, "-m", "videosparse", "ask", clip_file, "where is the red object",
                              "--model", "testbed", "--max-new-tokens", "4", "--threads", "1", *extra],
                             stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL, text=True, timeout=300)
        os.close(slave)
        reader.join(timeout=10)
        os.close(master)
        return res, b"".join(chunks).decode("utf-8", "replace")

    res, err = run([])
    assert res.returncode == 0 and "A: " in res.stdout, err
    assert "[videosparse] generating" in err and "Loading weights" in err
    res, err = run(["--quiet"])
    assert res.returncode == 0 and "A: " in res.stdout
    assert err == "", err


def test_no_virtualenv_or_build_output_is_tracked():
    if not os.path.isdir(os.path.join(ROOT, ".git")):
        pytest.skip("not a git checkout (an sdist): nothing is tracked")
    files = subprocess.run(["git", "-C", ROOT, "ls-files"], capture_output=True, text=True, check=True).stdout.split()
    bad = [f for f in files if f.startswith((".venv/", ".ci-venv/", "videosparse-demo/")) or "__pycache__" in f
           or ".egg-info/" in f]
    assert not bad, bad[:5]
