"""Qwen2.5-VL and Qwen3-VL through the whole package: a tiny random checkpoint of each family saved with
save_pretrained (model, word-level tokenizer with the chat and vision tokens, the processor's config) is loaded by
VideoQA, the CLI and the evaluation runner like a real one. Full-model answers equal the stock model's on the
same inputs (a hand-written prompt and the stock pixel path), videos of different sizes share a batch and
answer as they do alone, heatmaps draw one panel per temporal group on each video's own grid."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.conftest import chat_tokenizer, make_qwen_model

FAMILIES = ("qwen2_5_vl", "qwen3_vl")
WORDS = ["what", "is", "the", "red", "blue", "object", "where", "when", "does", "appear", "user", "assistant",
         "system", "you", "are", "a", "helpful", "assistant.", "square", "circle", "early", "late", "of", "man",
         "doing", "top", "left", "seconds>", "<0.5", "<1.5", "<2.5", "<3.5", "<4.5", "<5.5"]
SPECIALS = ["<pad>", "<|im_end|>", "<unk>", "<|video_pad|>", "<|image_pad|>", "<|im_start|>", "<|vision_start|>",
            "<|vision_end|>"]


def _tokenizer():
    return chat_tokenizer(SPECIALS, WORDS)


def _save_checkpoint(kind, d):
    tok = _tokenizer()
    model = make_qwen_model(kind, vocab=len(tok), seed=5)
    c = model.config
    for name, t in (("video_token_id", "<|video_pad|>"), ("image_token_id", "<|image_pad|>"),
                    ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")):
        setattr(c, name, tok.convert_tokens_to_ids(t))
    for cc in (c.text_config, model.generation_config):
        cc.eos_token_id, cc.pad_token_id = tok.eos_token_id, tok.pad_token_id
    model.generation_config.bos_token_id = None
    model.save_pretrained(d)
    tok.save_pretrained(d)
    if kind == "qwen2_5_vl":  # the 7B ships only preprocessor_config.json; per-frame pixels in [64, 1024]
        (d / "preprocessor_config.json").write_text(json.dumps({
            "image_processor_type": "Qwen2VLImageProcessor", "min_pixels": 64, "max_pixels": 1024, "patch_size": 4,
            "merge_size": 2, "temporal_patch_size": 2, "image_mean": [0.48145466, 0.4578275, 0.40821073],
            "image_std": [0.26862954, 0.26130258, 0.27577711]}))
    else:  # Qwen3-VL: clip pixels (t x h x w) in [64, 4096], 2 fps, at most 16 frames
        (d / "video_preprocessor_config.json").write_text(json.dumps({
            "video_processor_type": "Qwen3VLVideoProcessor", "size": {"shortest_edge": 64, "longest_edge": 4096},
            "patch_size": 4, "merge_size": 2, "temporal_patch_size": 2, "image_mean": [0.5] * 3,
            "image_std": [0.5] * 3, "fps": 2, "min_frames": 4, "max_frames": 16}))
    return str(d)


@pytest.fixture(scope="module", params=FAMILIES)
def ckpt(request, tmp_path_factory):
    return request.param, _save_checkpoint(request.param, tmp_path_factory.mktemp(request.param))


def _frames(n, seed=0, h=40, w=56):
    rng = np.random.default_rng(seed)
    f = (rng.random((n, h, w, 3)) * 255).astype(np.uint8)
    f[:, 8:20, 10:30] = (230, 20, 20)
    return f


def _write_mp4(path, frames, rate=4):
    import av

    with av.open(path, "w") as out:
        s = out.add_stream("libx264", rate=rate)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return path


def _stock_inputs(qa, kind, frames, question):
    """The stock model on the same frames: the prompt written out by hand (the chat template rendered, the video
    placeholder expanded the way the family's processor expands it) and the pixels through the model's own
    vision path (pixel_values_videos), not the features VideoQA hands over."""
    from videosparse.video.qwen import preprocess_video

    tok, model = qa.tokenizer, qa.model
    inp = preprocess_video(frames, qa.spec)
    t, h, w = inp["video_grid_thw"][0].tolist()
    per = h * w // 4
    if kind == "qwen2_5_vl":
        video = "<|video_pad|>" * (t * per)
        prompt = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|vision_start|>"
                  + video + "<|vision_end|>" + question + "<|im_end|>\n<|im_start|>assistant\n")
    else:  # frames of an array are 1 s apart: group g spans frames 2g, 2g+1 -> its time is 2g + 0.5
        video = "".join(f"<{2 * g + 0.5:.1f} seconds><|vision_start|>" + "<|video_pad|>" * per + "<|vision_end|>"
                        for g in range(t))
        prompt = ("<|im_start|>user\n<|vision_start|>" + video + "<|vision_end|>" + question
                  + "<|im_end|>\n<|im_start|>assistant\n")
    enc = tok([prompt], return_tensors="pt")
    vid = model.config.video_token_id
    kw = {"pixel_values_videos": inp["pixel_values_videos"], "video_grid_thw": inp["video_grid_thw"],
          "mm_token_type_ids": (enc["input_ids"] == vid).long() * 2}
    if kind == "qwen2_5_vl":  # 2 frames per temporal patch sampled at 1 frame/s (every frame of the array)
        kw["second_per_grid_ts"] = torch.tensor([2.0])
    return {**enc, **kw}


def _stock_answer(qa, kind, frames, question, **gen):
    tok = qa.tokenizer
    inp = _stock_inputs(qa, kind, frames, question)
    with torch.no_grad():
        out = qa.model.generate(**inp, do_sample=False, pad_token_id=tok.pad_token_id, **gen)
    return tok.batch_decode(out[:, inp["input_ids"].shape[1]:], skip_special_tokens=True)


def _prefill_logits(qa, call):
    """The next-token logits of the prefill (the first lm_head call) while `call()` runs."""
    seen = []
    h = qa.model.lm_head.register_forward_hook(lambda m, a, out: seen.append(out[:, -1].detach().clone()))
    try:
        result = call()
    finally:
        h.remove()
    return seen[0], result


def test_loaded_through_its_front_end_with_its_preprocessing(ckpt):
    from videosparse import VideoQA
    from videosparse.video.qwen import QwenVideoSpec

    kind, path = ckpt
    qa = VideoQA.from_pretrained(path, sparsity=None, num_frames=4, progress=False)
    assert type(qa.model).__name__ == {"qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
                                       "qwen3_vl": "Qwen3VLForConditionalGeneration"}[kind]
    assert qa.frontend.name == kind and qa.frontend.dynamic_grid and qa.tokens_per_frame is None
    assert qa.spec == QwenVideoSpec.from_pretrained(path, family=kind)
    assert (qa.spec.patch_size, qa.spec.max_pixels) == (4, 1024 if kind == "qwen2_5_vl" else 4096)


def test_full_model_answers_equal_the_stock_model_on_the_same_inputs(ckpt):
    """Two videos of different sizes in one batch (left padding, different grids) vs the stock model on each."""
    from videosparse import VideoQA

    kind, path = ckpt
    qa = VideoQA.from_pretrained(path, sparsity=None, num_frames=4, progress=False)
    vids = [_frames(4, seed=1), _frames(4, seed=2, h=64, w=40)]
    qs = ["where is the red object", "what is the man doing"]
    logits, many = _prefill_logits(qa, lambda: qa.ask_many(list(zip(vids, qs)), max_new_tokens=5, batch_size=2))
    for j, (a, v, q) in enumerate(zip(many, vids, qs)):
        assert a.text == _stock_answer(qa, kind, v, q, max_new_tokens=5)[0].strip()
        assert a.counts == [] and a.trace is None
        with torch.no_grad():  # logits: sensitive to every position (temporal spacing, timestamps) and feature
            ref = qa.model(**_stock_inputs(qa, kind, v, q)).logits[0, -1]
        torch.testing.assert_close(logits[j], ref, atol=1e-4, rtol=1e-4)
    assert many[0].visual_tokens != many[1].visual_tokens  # two grids in one batch
    # beam search: generate expands the batch, the pixels go in instead of features (the stock expansion)
    beam = qa.ask(vids[0], qs[0], max_new_tokens=4, num_beams=2)
    assert beam.text == _stock_answer(qa, kind, vids[0], qs[0], max_new_tokens=4, num_beams=2)[0].strip()


def test_pruned_batch_of_different_sizes_equals_each_video_alone(ckpt):
    from videosparse import SparseConfig, VideoQA

    kind, path = ckpt
    qa = VideoQA.from_pretrained(path, sparsity=SparseConfig.preset("video", budget=0.25, num_layers=4),
                                 num_frames=4, progress=False)
    vids = [_frames(4, seed=3), _frames(6, seed=4, h=64, w=40)]
    qs = ["where is the red object", "what is the man doing"]
    many = qa.ask_many(list(zip(vids, qs)), max_new_tokens=4, batch_size=2)
    alone = [qa.ask(v, q, max_new_tokens=4) for v, q in zip(vids, qs)]
    for a, b in zip(many, alone):
        assert a.text == b.text and a.counts == b.counts
        for sa, sb in zip(a.trace.stages, b.trace.stages):
            assert torch.equal(sa.kept, sb.kept)
        t = a.trace
        assert t.batch_size == 1 and not t.ragged
        assert t.num_frames * t.tokens_per_frame == a.visual_tokens
        assert a.counts[-1] == round(0.25 * a.visual_tokens)  # the budget is each video's own share
        assert len(a.timestamps) == t.num_frames == len(t.time_spans) == len(a.frames) == len(a.frame_indices)
    g0, g1 = many[0].trace, many[1].trace
    assert (g0.num_frames, tuple(g0.grid)) != (g1.num_frames, tuple(g1.grid))
    assert g1.num_frames == 3  # 6 frames = 3 temporal groups
    # frames from an array are 1 s apart: group g spans seconds 2g .. 2g + 1, labelled at its middle
    assert g1.time_spans == [(0.0, 1.0), (2.0, 3.0), (4.0, 5.0)] and g1.timestamps == [0.5, 2.5, 4.5]


def test_heatmap_on_each_videos_grid_with_time_spans(ckpt, tmp_path):
    from PIL import Image

    from videosparse import SparseConfig, VideoQA, heatmap

    kind, path = ckpt
    qa = VideoQA.from_pretrained(path, sparsity=SparseConfig.preset("video", budget=0.25, num_layers=4),
                                 num_frames=4, progress=False)
    ans = qa.ask(_frames(4, seed=5, h=40, w=72), "where is the red object", max_new_tokens=3)
    rows, cols = ans.trace.grid
    assert cols > rows  # a wide video: a wide grid
    paths = heatmap.write_all(ans.frames, ans.trace, str(tmp_path / "h"), spec=qa.spec, title="t")
    with Image.open(paths["png"]) as im:
        assert im.size[0] > im.size[1]
    tiles = heatmap.render_frames(ans.frames, ans.trace, cell=60, spec=qa.spec)
    assert tiles[0].shape[1] == round(60 * cols / rows)  # the tile keeps the grid's aspect
    back, doc = heatmap.trace_from_json(paths["json"])
    assert back.time_spans == ans.trace.time_spans and doc["time_spans"] == [[0.0, 1.0], [2.0, 3.0]]
    assert heatmap.frame_label(1, 2, 6, 2.5, True, span=(2.0, 3.0)).startswith("#1 2.00-3.00s")


def test_refusals_name_the_problem(ckpt):
    from videosparse import SparseConfig, VideoQA

    kind, path = ckpt
    qa = VideoQA.from_pretrained(path, sparsity=SparseConfig.preset("video", budget=20, num_layers=4), num_frames=4,
                                 progress=False)
    with pytest.raises(ValueError, match="pre_budget=8"):  # the in-decoder budget (20 tokens) exceeds the pool
        qa.ask(_frames(8), "where is the red object", pre_budget=8, max_new_tokens=2)
    with pytest.raises(ValueError, match="mrope"):
        qa.set_sparsity(SparseConfig.preset("sparsevlm-v1.5", num_layers=4))
    # an absolute budget larger than a small video's tokens: that item's error, the others answered
    out = qa.ask_many([(_frames(4), "where is the red object"), (_frames(4, h=16, w=16), "where is the red object")],
                      on_error="record", max_new_tokens=2)
    assert out[0].error is None and out[0].counts[-1] == 20
    assert "20 tokens requested but the input has only 8 visual tokens" in out[1].error and "2 temporal groups x 4" in out[1].error
    with pytest.raises(ValueError, match="question is empty"):
        qa.ask(_frames(4), "  ")
    # a bad item in a long run is recorded and the rest answered
    out = qa.ask_many([(_frames(4), "where is the red object"), (_frames(4), "")], on_error="record",
                      max_new_tokens=2)
    assert out[0].error is None and "empty" in out[1].error


def test_cli_answers_with_this_checkpoint(ckpt, tmp_path):
    kind, path = ckpt
    video = _write_mp4(str(tmp_path / "v.mp4"), _frames(12, seed=6))
    base = [sys.executable, "-m", "videosparse", "ask", "--model", path, video, "where is the red object",
            "--max-new-tokens", "3", "--quiet"]
    r = subprocess.run(base + ["--frames", "4", "--budget", "0.5", "--json"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["visual_tokens"] == 2 * 12 and d["counts"][-1] == 12  # 2 groups of 3 x 4 tokens (40 x 56 px)
    assert len(d["timestamps"]) == 2 and d["per_frame_kept"] and sum(d["per_frame_kept"]) == 12
    # --fps: the checkpoint's way of sampling (12 frames at 4 frames/s = 3 s; at 2 frames/s: 6 frames, 3 groups)
    r = subprocess.run(base + ["--fps", "2", "--heatmap", str(tmp_path / "heat")], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert "frame 2 " in r.stdout and (tmp_path / "heat" / "retention.png").is_file()
    r = subprocess.run(base + ["--pre-budget", "4", "--budget", "10"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "--budget: 10 tokens requested but the input has only 4 visual tokens" in r.stderr  # the pool's 4
    assert "Traceback" not in r.stderr


def test_eval_runner_with_this_model(ckpt, tmp_path):
    from tests.eval.fixtures import make_fixture_dataset
    from video_eval.cli import main

    kind, path = ckpt
    fx = make_fixture_dataset(tmp_path / "data", "msvd", n_videos=2, questions_per_video=2, seed=1, missing=0)
    out = tmp_path / "run"
    rc = main(["run", "--dataset", "msvd", "--root", str(fx["root"]), "--model", path, "--frames", "4",
               "--configs", "full,video@0.25", "--out", str(out), "--quiet", "--max-new-tokens", "3"])
    assert rc == 0
    preds = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines() if x.strip()]
    assert len(preds) == 2 * len(fx["items"]) and not any(r["error"] for r in preds)
    for r in preds:
        assert r["visual_tokens"] > 0
        assert (r["counts"] == []) if r["config"] == "full" else (r["counts"][-1] == round(0.25 * r["visual_tokens"]))


# ----------------------------------------------------------------------------- the long-video pool
def _capture_positions(model):
    """Forward pre-hook on the text decoder recording the position_ids of every call (prefill, then decode)."""
    seen = []
    lm = model.model.language_model
    h = lm.register_forward_pre_hook(lambda m, a, k: seen.append(k["position_ids"].detach().clone()), with_kwargs=True)
    return seen, h


def test_pool_keeps_whole_video_positions_and_features(ckpt):
    """A pool of K tokens over 20 frames: the prefill logits equal the stock model run on the whole-video prompt
    (whole-clip features, the model's own positions) with every token outside the pool masked out, and the
    decode steps get the stock whole-video positions."""
    from videosparse import VideoQA

    kind, path = ckpt
    qa = VideoQA.from_pretrained(path, sparsity=None, num_frames=20, progress=False)
    model, tok = qa.model, qa.tokenizer
    v = _frames(20, seed=7)
    q = "where is the red object"
    K = 17 if kind == "qwen2_5_vl" else 7  # Qwen3-VL: 10 groups x 2 tokens here, so some groups lose every token
    seen, h = _capture_positions(model)
    try:
        logits, ans = _prefill_logits(qa, lambda: qa.ask(v, q, num_frames=20, pre_budget=K, max_new_tokens=3))
    finally:
        h.remove()
    pooled_next = seen[0].shape[-1] + model.model.rope_deltas  # where a later call on this cache would continue
    ids = ans.trace.pool.kept[0]
    assert ans.pool_tokens == ids.numel() == K and ans.visual_tokens > K
    # the reference: whole clip encoded at once (the short path), whole-video prompt, tokens outside the pool masked
    enc = qa.encode(v)
    T, P = enc.features.shape[:2]
    assert (T, P) == (ans.trace.num_frames, ans.trace.tokens_per_frame) == (10, ans.visual_tokens // 10)
    full = tok([qa.frontend.prompt(q, T, P, qa.prompt_template, enc.extra)], return_tensors="pt")["input_ids"]
    vid = model.config.video_token_id
    types = (full == vid).long() * 2
    grid = torch.tensor([enc.extra["grid"]])
    kw = {"mm_token_type_ids": types, "video_grid_thw": grid}
    if kind == "qwen2_5_vl":
        kw["second_per_grid_ts"] = torch.tensor([enc.extra["second_per_grid_ts"]])
    pos, _ = model.model.get_rope_index(full, attention_mask=torch.ones_like(full), **kw)
    keep = torch.ones_like(full, dtype=torch.bool)
    vpos = (full[0] == vid).nonzero()[:, 0]
    drop = torch.ones(T * P, dtype=torch.bool)
    drop[ids] = False
    keep[0, vpos[drop]] = False
    if kind == "qwen3_vl":  # a group without pooled tokens: its "<t seconds><|vision_start|> ... <|vision_end|>" too
        vs = (full[0] == model.config.vision_start_token_id).nonzero()[:, 0]
        ve = (full[0] == model.config.vision_end_token_id).nonzero()[:, 0]
        assert len(set((ids // P).tolist())) < T
        for g in range(T):
            if not bool(((ids // P) == g).any()):
                keep[0, (int(ve[g - 1]) + 1 if g else int(vs[0]) + 1): int(ve[g]) + 1] = False
    out = model.model.get_video_features(
        pixel_values_videos=__import__("videosparse.video.qwen", fromlist=["x"]).preprocess_video(v, qa.spec)[
            "pixel_values_videos"], video_grid_thw=grid, return_dict=True)
    with torch.no_grad():
        ref = model(input_ids=full, attention_mask=keep.long(), position_ids=pos, mm_encoder_outputs={"video": out},
                    **kw).logits[0, -1]
    torch.testing.assert_close(logits[0], ref, atol=1e-4, rtol=1e-4)
    # decode steps: the positions the stock model gives the whole-video prompt's continuation
    seen_full, h = _capture_positions(model)
    try:
        qa.ask(enc, q, max_new_tokens=3)
    finally:
        h.remove()
    assert len(seen) == len(seen_full) == 3
    for a, b in zip(seen[1:], seen_full[1:]):
        assert torch.equal(a[-3:], b[-3:])
    # the rope delta left on the model continues the whole-video positions from the shorter pooled cache
    assert seen[0].shape[-1] < seen_full[0].shape[-1]
    assert torch.equal(pooled_next, seen_full[0].shape[-1] + model.model.rope_deltas)
    assert ans.trace.time_spans[0] == (0.0, 1.0) and len(ans.timestamps) == T and ans.frames.shape[0] == T


def test_pool_chunks_encode_as_the_whole_clip(ckpt):
    """Chunked along time (the long path, each chunk resized to the clip's size) == the whole clip at once."""
    from videosparse import VideoQA

    kind, path = ckpt
    qa = VideoQA.from_pretrained(path, sparsity=None, num_frames=12, progress=False)
    v = _frames(12, seed=8)
    enc = qa.encode(v)
    fe = qa.frontend
    size = fe.clip_size(qa.spec, 12, 40, 56)
    encode = fe.pool_encoder(qa.model, qa.spec, size)
    parts = [encode(v[s:s + 4]) for s in range(0, 12, 4)]
    with torch.no_grad():
        if kind == "qwen3_vl":
            feats = torch.cat([p[0] for p in parts])
            aux = torch.cat([p[1] for p in parts])
            deep = torch.cat([d.reshape(enc.features.shape[0], enc.features.shape[1], -1) for d in enc.extra["deepstack"]], -1)
            torch.testing.assert_close(aux, deep, atol=1e-5, rtol=1e-5)
        else:
            feats = torch.cat(parts)
    torch.testing.assert_close(feats, enc.features, atol=1e-5, rtol=1e-5)


def test_pruned_pool_batch_trace_and_cli(ckpt, tmp_path):
    from videosparse import SparseConfig, VideoQA

    kind, path = ckpt
    qa = VideoQA.from_pretrained(path, sparsity=SparseConfig.preset("video", budget=0.5, num_layers=4),
                                 num_frames=4, progress=False)
    v = _frames(16, seed=9)
    qs = ["where is the red object", "what is the man doing"]
    many = qa.ask_many([(v, qs[0]), (v, qs[1])], num_frames=16, pre_budget=12, max_new_tokens=3)
    alone = [qa.ask(v, q, num_frames=16, pre_budget=12, max_new_tokens=3) for q in qs]
    for a, b in zip(many, alone):
        assert a.text == b.text and a.counts == b.counts == [12, 6]
        assert torch.equal(a.trace.pool.kept, b.trace.pool.kept)
        kept = a.trace.stages[0].kept[0]
        assert bool(torch.isin(kept, a.trace.pool.kept[0]).all())  # the decoder kept pooled tokens only
    beam = qa.ask(v, qs[0], num_frames=16, pre_budget=12, max_new_tokens=3, num_beams=2)
    assert beam.counts == [12, 6] and beam.text
    video = _write_mp4(str(tmp_path / "v.mp4"), _frames(24, seed=10))
    r = subprocess.run([sys.executable, "-m", "videosparse", "ask", "--model", path, video, "where is the red object",
                        "--frames", "16", "--pre-budget", "12", "--budget", "0.5", "--max-new-tokens", "3", "--quiet", "--json",
                        "--heatmap", str(tmp_path / "heat")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["pool_tokens"] == 12 and d["counts"] == [12, 6] and len(d["timestamps"]) == 8
    assert (tmp_path / "heat" / "retention.png").is_file()


def test_eval_runner_long_path_with_this_model(ckpt, tmp_path):
    from tests.eval.fixtures import make_fixture_dataset
    from video_eval.cli import main

    kind, path = ckpt
    fx = make_fixture_dataset(tmp_path / "data", "msvd", n_videos=1, questions_per_video=2, seed=2, missing=0)
    out = tmp_path / "run"
    assert main(["run", "--dataset", "msvd", "--root", str(fx["root"]), "--model", path, "--frames", "8",
                 "--pre-budget", "12", "--configs", "video@0.5", "--out", str(out), "--quiet",
                 "--max-new-tokens", "3"]) == 0
    preds = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines() if x.strip()]
    assert len(preds) == 2 and not any(r["error"] for r in preds)
    for r in preds:  # 8 frames = 4 temporal groups; the pool of 12 enters the decoder, half of it kept
        assert r["frames"] == 4 and r["pool_tokens"] == 12 and r["visual_tokens"] > 12 and r["counts"][-1] == 6
