"""LLaVA-OneVision through the whole package: a tiny random checkpoint saved with save_pretrained (model,
word-level tokenizer with the chat tokens, the video processor's config) is loaded by VideoQA and the CLI
like a real one, answers equal the stock model's on the same inputs, and the long-video pool, batching,
heatmaps and the trace work on its geometry (no CLS, a newline closing the video block)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.conftest import chat_tokenizer, make_ov_model

WORDS = ["what", "is", "the", "red", "blue", "object", "where", "when", "does", "appear", "user", "assistant",
         "a", "square", "circle", "early", "late", "of", "man", "doing", "top", "left"]
SIZE = 32  # frames of 32 px, 8 px patches: 4 x 4 patches pooled to 2 x 2 = 4 tokens per frame


def _tokenizer():
    return chat_tokenizer(["<pad>", "<|im_end|>", "<unk>", "<video>", "<image>", "<|im_start|>"], WORDS)


@pytest.fixture(scope="module")
def ov_checkpoint(tmp_path_factory):
    tok = _tokenizer()
    model = make_ov_model("sdpa", image_size=SIZE, patch=8, vocab=len(tok), seed=21)
    model.config.video_token_id = tok.convert_tokens_to_ids("<video>")
    model.config.image_token_id = tok.convert_tokens_to_ids("<image>")
    for c in (model.config.text_config, model.generation_config):
        c.eos_token_id = tok.eos_token_id
        c.pad_token_id = tok.pad_token_id
    c.bos_token_id = None
    d = tmp_path_factory.mktemp("tiny_ov")
    model.save_pretrained(d)
    tok.save_pretrained(d)
    (d / "video_preprocessor_config.json").write_text(json.dumps({
        "video_processor_type": "LlavaOnevisionVideoProcessor", "do_resize": True,
        "size": {"height": SIZE, "width": SIZE}, "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "do_convert_rgb": True}))
    return str(d)


def _frames(n, seed=0, h=40, w=56):
    rng = np.random.default_rng(seed)
    f = (rng.random((n, h, w, 3)) * 255).astype(np.uint8)
    f[:, 8:20, 10:30] = (230, 20, 20)
    return f


@pytest.fixture(scope="module")
def qa_full(ov_checkpoint):
    from videosparse import VideoQA

    return VideoQA.from_pretrained(ov_checkpoint, sparsity=None, num_frames=4, progress=False)


def test_loaded_through_its_front_end_with_its_preprocessing(qa_full):
    from videosparse.video import VideoProcessorSpec

    assert type(qa_full.model).__name__ == "LlavaOnevisionForConditionalGeneration"
    assert qa_full.frontend.name == "llava_onevision" and qa_full.tokens_per_frame == 4
    assert qa_full.spec == VideoProcessorSpec.llava_onevision().__class__.from_pretrained(
        {"size": {"height": SIZE, "width": SIZE}, "resample": 3, "image_mean": [0.5] * 3, "image_std": [0.5] * 3,
         "video_processor_type": "LlavaOnevisionVideoProcessor"})


def test_full_model_answer_equals_the_stock_model_on_the_same_inputs(qa_full):
    from videosparse.video import preprocess_frames

    frames = _frames(4)
    ans = qa_full.ask(frames, "where is the red object", max_new_tokens=5)
    tok, model = qa_full.tokenizer, qa_full.model
    prompt = "<|im_start|>user " + "<video>" * (4 * 4 + 1) + "\nwhere is the red object<|im_end|>\n<|im_start|>assistant\n"
    enc = tok([prompt], return_tensors="pt")
    pix = preprocess_frames(frames, qa_full.spec)[None]
    with torch.no_grad():
        out = model.generate(**enc, pixel_values_videos=pix, max_new_tokens=5, do_sample=False,
                             pad_token_id=tok.pad_token_id)
    ref = tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)[0].strip()
    assert ans.text == ref
    assert ans.visual_tokens == 16 and ans.counts == []


def test_pruned_answers_trace_batch_and_heatmap(ov_checkpoint, tmp_path):
    from videosparse import SparseConfig, VideoQA
    from videosparse.heatmap import render_grid

    qa = VideoQA.from_pretrained(ov_checkpoint, sparsity=SparseConfig.preset("video", budget=0.25, num_layers=4),
                                 num_frames=4, progress=False)
    vids = [_frames(4, seed=s) for s in (1, 2)]
    qs = ["where is the red object", "what is the man doing"]
    many = qa.ask_many(list(zip(vids, qs)), max_new_tokens=4, batch_size=2)
    alone = [qa.ask(v, q, max_new_tokens=4) for v, q in zip(vids, qs)]
    for a, b in zip(many, alone):
        assert a.text == b.text and a.counts == b.counts and a.counts[-1] == 4
        assert torch.equal(a.trace.stages[0].kept, b.trace.stages[0].kept)
    t = alone[0].trace
    assert (t.num_frames, t.tokens_per_frame, t.has_cls, tuple(t.grid)) == (4, 4, False, (2, 2))
    render_grid(alone[0].frames, t, str(tmp_path / "h.png"), spec=qa.spec)
    from PIL import Image

    with Image.open(tmp_path / "h.png") as im:
        assert im.size[0] > 0 and im.size[1] > 0


def test_long_video_pool_on_this_family(ov_checkpoint):
    from videosparse import SparseConfig, VideoQA

    qa = VideoQA.from_pretrained(ov_checkpoint, sparsity=SparseConfig.preset("video", budget=0.5, num_layers=4),
                                 num_frames=4, progress=False)
    ans = qa.ask(_frames(24, seed=3), "where is the red object", num_frames=24, pre_budget=12, max_new_tokens=3)
    assert ans.pool_tokens == 12 and ans.visual_tokens == 24 * 4
    assert ans.trace.pool is not None and ans.trace.pool.kept.shape == (1, 12)
    assert ans.counts[-1] == 6  # half of the pool, the newline not counted
    kept = ans.trace.stages[0].kept[0]
    assert bool(torch.isin(kept, ans.trace.pool.kept[0]).all())  # the decoder kept pooled tokens only


def test_cli_answers_with_this_checkpoint(ov_checkpoint, tmp_path):
    import av

    path = str(tmp_path / "v.mp4")
    with av.open(path, "w") as out:
        s = out.add_stream("libx264", rate=4)
        s.width, s.height, s.pix_fmt = 56, 40, "yuv420p"
        for f in _frames(8, seed=4):
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    r = subprocess.run([sys.executable, "-m", "videosparse", "ask", "--model", ov_checkpoint, path,
                        "where is the red object", "--frames", "4", "--budget", "0.5", "--max-new-tokens", "3",
                        "--quiet"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip()


def test_eval_runner_with_this_model(ov_checkpoint, tmp_path):
    from tests.eval.fixtures import make_fixture_dataset
    from video_eval.cli import main

    fx = make_fixture_dataset(tmp_path / "data", "msvd", n_videos=2, questions_per_video=2, seed=1, missing=0)
    out = tmp_path / "run"
    rc = main(["run", "--dataset", "msvd", "--root", str(fx["root"]), "--model", ov_checkpoint,
               "--configs", "full,video@0.25", "--out", str(out), "--quiet", "--max-new-tokens", "3"])
    assert rc == 0
    preds = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines() if x.strip()]
    assert len(preds) == 2 * len(fx["items"]) and not any(r["error"] for r in preds)
    T = 32  # the family's default frames
    for r in preds:
        assert r["visual_tokens"] == T * 4  # 2 x 2 pooled tokens per frame, the newline not counted
        assert (r["counts"] == []) if r["config"] == "full" else (r["counts"][-1] == round(0.25 * T * 4))
