"""Shared fixtures: tiny random Video-LLaVA models built from configs (no downloads)."""

from __future__ import annotations

import pytest
import torch

VIDEO_TOKEN = 5
IMAGE_TOKEN = 6
PAD = 0


def pad_batch(seqs, left=True):
    """Token lists -> (input_ids, attention_mask) padded with PAD to the longest, on the left by default."""
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), PAD, dtype=torch.long)
    mask = torch.zeros(len(seqs), L, dtype=torch.long)
    for i, s in enumerate(seqs):
        cols = slice(L - len(s), L) if left else slice(0, len(s))
        ids[i, cols] = torch.tensor(s, dtype=torch.long)
        mask[i, cols] = 1
    return ids, mask


def make_model(attn="sdpa", layers=4, image_size=16, patch=4, hidden=64, heads=4, kv_heads=2, vocab=64, seed=0):
    from transformers import CLIPVisionConfig, LlamaConfig, VideoLlavaConfig, VideoLlavaForConditionalGeneration

    torch.manual_seed(seed)
    vcfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                            image_size=image_size, patch_size=patch, projection_dim=32)
    tcfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=1024,
                       pad_token_id=PAD, bos_token_id=1, eos_token_id=2)
    cfg = VideoLlavaConfig(vision_config=vcfg, text_config=tcfg, video_token_id=VIDEO_TOKEN,
                           image_token_id=IMAGE_TOKEN, vision_feature_layer=-1,
                           vision_feature_select_strategy="full")
    cfg._attn_implementation = attn
    model = VideoLlavaForConditionalGeneration(cfg).eval()
    model.set_attn_implementation(attn) if hasattr(model, "set_attn_implementation") else None
    # larger init so attention is not uniform (random models otherwise score near-ties)
    with torch.no_grad():
        for p in model.model.language_model.parameters():
            if p.ndim == 2:
                p.mul_(3.0)
    return model


def make_ov_model(attn="sdpa", layers=4, image_size=16, patch=4, hidden=64, heads=4, kv_heads=2, vocab=64, seed=0):
    """A tiny random LLaVA-OneVision (SigLIP tower without CLS, Qwen2 decoder with q/k/v biases and GQA);
    16 px frames of 4 px patches: a 4 x 4 grid pooled to 2 x 2 = 4 tokens per frame, plus the newline."""
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, Qwen2Config, \
        SiglipVisionConfig

    torch.manual_seed(seed)
    vcfg = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                              image_size=image_size, patch_size=patch)
    tcfg = Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=1024,
                       rope_theta=1000000.0, pad_token_id=PAD, bos_token_id=1, eos_token_id=2)
    cfg = LlavaOnevisionConfig(vision_config=vcfg, text_config=tcfg, video_token_id=VIDEO_TOKEN,
                               image_token_id=IMAGE_TOKEN, vision_feature_layer=-1,
                               vision_feature_select_strategy="full")
    cfg._attn_implementation = attn
    model = LlavaOnevisionForConditionalGeneration(cfg).eval()
    model.set_attn_implementation(attn) if hasattr(model, "set_attn_implementation") else None
    with torch.no_grad():  # larger init so attention is not uniform (biases included)
        for p in model.model.language_model.parameters():
            if p.ndim == 2:
                p.mul_(3.0)
        for layer in model.model.language_model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj):
                proj.bias.normal_(0.0, 0.5)
        model.model.image_newline.normal_(0.0, 1.0)
    return model


def ov_tokens_per_frame(model):
    import math

    v = model.config.vision_config
    return math.ceil((v.image_size // v.patch_size) / 2) ** 2


def make_ov_inputs(model, frames=4, prefix=(1, 7, 8), questions=((9, 10, 11, 12),), seed=1):
    """LLaVA-OneVision prompts: prefix + frames x P video tokens + the closing newline + question, left padded."""
    g = torch.Generator().manual_seed(seed)
    vcfg = model.config.vision_config
    n = frames * ov_tokens_per_frame(model) + 1
    seqs = [list(prefix) + [VIDEO_TOKEN] * n + list(q) for q in questions]
    ids, mask = pad_batch(seqs)
    pix = torch.randn(len(seqs), frames, 3, vcfg.image_size, vcfg.image_size, generator=g)
    return {"input_ids": ids, "attention_mask": mask, "pixel_values_videos": pix}


def ov_visual_mask(model, inp):
    """The visual tokens of LLaVA-OneVision inputs: each video run without its closing newline."""
    run = inp["input_ids"] == VIDEO_TOKEN
    return run & (run.long().cumsum(1) < run.sum(1, keepdim=True))


# ----------------------------------------------------------------------------- Qwen2.5-VL / Qwen3-VL
QWEN_VS, QWEN_VE = 3, 4  # vision_start / vision_end (the tiny models' ids)
QWEN_MERGE = 2


def make_qwen_model(kind="qwen2_5_vl", attn="sdpa", layers=4, hidden=64, heads=4, kv_heads=2, vocab=64, seed=0):
    """A tiny random Qwen2.5-VL or Qwen3-VL (mrope; Qwen3-VL: interleaved mrope, q/k norms, deepstack after
    layers 0 and 1). 4 px patches, temporal patch 2, 2 x 2 merge: a video of grid (t, h, w) patches holds
    t x (h/2) x (w/2) tokens. Weights at unit scale and norm weights away from 1, so a wrong position, a
    missing q/k norm or a missing deepstack input changes the scores."""
    torch.manual_seed(seed)
    rope = {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0}
    text = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=1024,
                pad_token_id=PAD, bos_token_id=1, eos_token_id=2)
    ids = dict(video_token_id=VIDEO_TOKEN, image_token_id=IMAGE_TOKEN, vision_start_token_id=QWEN_VS,
               vision_end_token_id=QWEN_VE)
    if kind == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig as Config, Qwen2_5_VLForConditionalGeneration as Model

        vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=hidden,
                      patch_size=4, spatial_merge_size=QWEN_MERGE, temporal_patch_size=2, window_size=16,
                      fullatt_block_indexes=[0])
    else:
        from transformers import Qwen3VLConfig as Config, Qwen3VLForConditionalGeneration as Model

        rope["mrope_interleaved"] = True
        text["head_dim"] = hidden // heads
        vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=hidden,
                      patch_size=4, spatial_merge_size=QWEN_MERGE, temporal_patch_size=2, num_position_embeddings=16,
                      deepstack_visual_indexes=[0, 1])
    text["rope_parameters"] = rope
    cfg = Config(text_config=text, vision_config=vision, **ids)
    cfg.text_config.bos_token_id, cfg.text_config.eos_token_id, cfg.text_config.pad_token_id = 1, 2, PAD
    cfg._attn_implementation = attn
    model = Model(cfg).eval()
    model.set_attn_implementation(attn) if hasattr(model, "set_attn_implementation") else None
    model.generation_config.bos_token_id, model.generation_config.eos_token_id = 1, 2
    model.generation_config.pad_token_id = PAD
    with torch.no_grad():
        lm = model.model.language_model
        for name, p in lm.named_parameters():
            if p.ndim == 2:
                p.mul_(3.0)
            elif name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.5)
        model.lm_head.weight.mul_(5.0)  # peaked next-token distributions: generation depends on the prompt
    return model


QWEN_GRID = (4, 4, 4)  # (t, h, w) patches: 4 temporal groups of 2 x 2 = 4 tokens


def qwen_tokens(grid):
    t, h, w = grid
    return t * (h // QWEN_MERGE) * (w // QWEN_MERGE)


def _qwen_video_ids(model, grid):
    t, h, w = grid
    per = (h // QWEN_MERGE) * (w // QWEN_MERGE)
    if model.config.model_type == "qwen3_vl":  # "<t seconds>" text before every temporal group
        out = []
        for g in range(t):
            out += [30 + g % 20, 29, QWEN_VS] + [VIDEO_TOKEN] * per + [QWEN_VE]
        return out
    return [QWEN_VS] + [VIDEO_TOKEN] * (t * per) + [QWEN_VE]


def make_qwen_inputs(model, questions=((9, 10, 11, 12),), grids=None, prefix=(1, 7, 8), seed=1):
    """Qwen prompts, left padded: prefix + the video block (Qwen3-VL: timestamp text + one run per temporal
    group) + question; one video per sample, of grid `grids[b]` (default QWEN_GRID for every sample)."""
    g = torch.Generator().manual_seed(seed)
    grids = [tuple(gr) for gr in (grids or [QWEN_GRID] * len(questions))]
    seqs = [list(prefix) + _qwen_video_ids(model, gr) + list(q) for q, gr in zip(questions, grids)]
    ids, mask = pad_batch(seqs)
    v = model.config.vision_config
    dim = 3 * v.temporal_patch_size * v.patch_size ** 2
    pix = torch.cat([torch.randn(t * h * w, dim, generator=g) for t, h, w in grids])
    out = {"input_ids": ids, "attention_mask": mask, "mm_token_type_ids": (ids == VIDEO_TOKEN).long() * 2,
           "pixel_values_videos": pix, "video_grid_thw": torch.tensor(grids, dtype=torch.long)}
    if model.config.model_type == "qwen2_5_vl":
        out["second_per_grid_ts"] = torch.tensor([1.0 + 0.5 * b for b in range(len(seqs))])
    return out


def qwen_single(inp, b):
    """Sample b of Qwen inputs alone, unpadded."""
    L = int(inp["attention_mask"][b].sum())
    grid = inp["video_grid_thw"]
    sizes = (grid[:, 0] * grid[:, 1] * grid[:, 2]).tolist()
    start = sum(sizes[:b])
    out = {"input_ids": inp["input_ids"][b:b + 1, -L:], "attention_mask": inp["attention_mask"][b:b + 1, -L:],
           "mm_token_type_ids": inp["mm_token_type_ids"][b:b + 1, -L:],
           "pixel_values_videos": inp["pixel_values_videos"][start:start + sizes[b]], "video_grid_thw": grid[b:b + 1]}
    if "second_per_grid_ts" in inp:
        out["second_per_grid_ts"] = inp["second_per_grid_ts"][b:b + 1]
    return out


def qwen_repeat(inp, rep):
    """Qwen inputs with every sample repeated `rep` times (its video's patches included)."""
    grid = inp["video_grid_thw"]
    sizes = (grid[:, 0] * grid[:, 1] * grid[:, 2]).tolist()
    blocks = inp["pixel_values_videos"].split(sizes)
    out = {k: v.repeat_interleave(rep, 0) for k, v in inp.items() if k != "pixel_values_videos"}
    out["pixel_values_videos"] = torch.cat([blk for blk in blocks for _ in range(rep)])
    return out


def qwen_extend(inp, ids, mask):
    """Forward kwargs for prompt + generated tokens `ids` (mask `mask`) without a cache: the model computes
    its own 3-axis positions (the generated tokens are text)."""
    out = {k: v for k, v in inp.items() if k not in ("input_ids", "attention_mask", "mm_token_type_ids")}
    tt = torch.zeros_like(ids)
    tt[:, : inp["mm_token_type_ids"].shape[1]] = inp["mm_token_type_ids"]
    return {"input_ids": ids, "attention_mask": mask, "mm_token_type_ids": tt, **out}


def make_inputs(model, frames=4, prefix=(1, 7, 8), questions=((9, 10, 11, 12),), pad_left=True, seed=1):
    """Batch of prompts: prefix + video tokens + question; left-padded to a common length."""
    g = torch.Generator().manual_seed(seed)
    vcfg = model.config.vision_config
    P = (vcfg.image_size // vcfg.patch_size) ** 2 + 1
    seqs = [list(prefix) + [VIDEO_TOKEN] * (frames * P) + list(q) for q in questions]
    ids, mask = pad_batch(seqs, left=pad_left)
    pix = torch.randn(len(seqs), frames, 3, vcfg.image_size, vcfg.image_size, generator=g)
    return {"input_ids": ids, "attention_mask": mask, "pixel_values_videos": pix}


@pytest.fixture(scope="session")
def tiny_models():
    return {attn: make_model(attn) for attn in ("eager", "sdpa")}


WORDS = ["what", "is", "the", "red", "blue", "object", "where", "when", "does", "appear", "shape", "color",
         "a", "square", "circle", "early", "late", "USER:", "ASSISTANT:", "of", "man", "doing"]


def make_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>", "<video>", "<image>"]
    vocab = {w: i for i, w in enumerate(specials + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", additional_special_tokens=["<video>", "<image>"])
    return fast


def chat_tokenizer(specials, words):
    """A word-level fast tokenizer for tiny chat checkpoints: ``specials`` (first: pad, second: eos, third: unk)
    split out as special tokens, then whitespace-separated ``words``; left padding, no BOS."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(list(specials) + list(words))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=specials[2]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=specials[0], eos_token=specials[1],
                                   unk_token=specials[2], padding_side="left")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A tiny random Video-LLaVA saved with save_pretrained (model + tokenizer + preprocessor config)."""
    import json

    tok = make_tokenizer()
    model = make_model("sdpa", image_size=32, patch=8, vocab=len(tok), seed=11)
    model.config.video_token_id = tok.convert_tokens_to_ids("<video>")
    model.config.image_token_id = tok.convert_tokens_to_ids("<image>")
    model.config.text_config.eos_token_id = tok.eos_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    d = tmp_path_factory.mktemp("tiny_ckpt")
    model.save_pretrained(d)
    tok.save_pretrained(d)
    with open(d / "preprocessor_config.json", "w") as f:
        json.dump({"size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32},
                   "image_mean": [0.48145466, 0.4578275, 0.40821073],
                   "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3}, f)
    return str(d)


@pytest.fixture(scope="session")
def tiny_video(tmp_path_factory):
    """A 12-frame 40x56 H.264 video with moving blocks (resize + center crop are exercised)."""
    import av
    import numpy as np

    d = tmp_path_factory.mktemp("vid")
    path = str(d / "clip.mp4")
    rng = np.random.default_rng(0)
    with av.open(path, "w") as out:
        s = out.add_stream("libx264", rate=4)
        s.width, s.height, s.pix_fmt = 56, 40, "yuv420p"
        for t in range(12):
            f = (rng.random((40, 56, 3)) * 60).astype(np.uint8)
            f[8:20, 4 * t % 40 : 4 * t % 40 + 12] = (220, 30, 30)
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return path


# ----------------------------------------------------------------------------- test-bed fixtures (per module)
@pytest.fixture(scope="module")
def sample():
    """One synthetic test-bed sample (seed 7)."""
    from videosparse.testbed import synthetic as syn

    return syn.make_sample(7, 0)


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory, sample):
    """That sample written as an H.264 MP4."""
    from videosparse.testbed import synthetic as syn

    p = tmp_path_factory.mktemp("clip") / "clip.mp4"
    syn.write_video(sample.frames, str(p))
    return str(p)


@pytest.fixture(scope="module")
def qa():
    """The embedded test bed with the `video` preset."""
    from videosparse.pipeline import VideoQA

    q = VideoQA.from_pretrained("testbed", sparsity="video", progress=False)
    yield q
    q.close()
