"""The trained test bed: a small real `VideoLlavaForConditionalGeneration` on synthetic video QA.

* ``build_tokenizer()`` / ``build_config(tokenizer)``: the word-level tokenizer and model config the
  training script uses (``scripts/train_testbed.py``).
* ``load_testbed(path=None)``: model + tokenizer + frame spec from the shipped checkpoint
  (``videosparse/assets/testbed/``) through the same code path as the real checkpoint
  (``VideoLlavaForConditionalGeneration.from_pretrained`` + ``AutoTokenizer.from_pretrained``).
* ``build_inputs(tokenizer, samples, ...)``: a left-padded batch in Video-LLaVA's prompt format.
* ``evaluate(model, tokenizer, samples, batch_size)``: greedy ``generate``, exact match, overall and
  per question type. Wrap it in ``with sparsify(model, cfg): ...`` to evaluate a pruning method.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from videosparse.frontends.video_llava import TEMPLATE
from videosparse.testbed import synthetic as syn

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

PAD, BOS, EOS, UNK, VIDEO, IMAGE = "<pad>", "<s>", "</s>", "<unk>", "<video>", "<image>"
SPECIALS = (PAD, BOS, EOS, UNK, VIDEO, IMAGE)

PROMPT = TEMPLATE  # the Video-LLaVA chat template (its front end's)


def default_path() -> str:
    """Directory of the checkpoint shipped inside the package."""
    from videosparse.testbed import path

    return path()


# ----------------------------------------------------------------------------- tokenizer / config
def build_tokenizer():
    """Word-level ``PreTrainedTokenizerFast`` over the synthetic vocabulary (BOS added, left padding)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for w in syn.vocabulary():
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    from tokenizers import AddedToken

    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        padding_side="left",
        model_max_length=1024,
    )
    return fast


@dataclass(frozen=True)
class ModelSize:
    vision_hidden: int = 64
    vision_layers: int = 2
    vision_heads: int = 4
    text_hidden: int = 128
    text_layers: int = 4
    text_heads: int = 4
    text_intermediate: int = 256


def build_config(tokenizer, gen: syn.GenConfig = syn.GenConfig(), size: ModelSize = ModelSize()):
    from transformers import CLIPVisionConfig, LlamaConfig, VideoLlavaConfig

    vision = CLIPVisionConfig(
        hidden_size=size.vision_hidden,
        intermediate_size=4 * size.vision_hidden,
        num_hidden_layers=size.vision_layers,
        num_attention_heads=size.vision_heads,
        image_size=gen.size,
        patch_size=gen.cell,
        projection_dim=size.vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=size.text_hidden,
        intermediate_size=size.text_intermediate,
        num_hidden_layers=size.text_layers,
        num_attention_heads=size.text_heads,
        num_key_value_heads=size.text_heads,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    config = VideoLlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE),
        video_token_index=tokenizer.convert_tokens_to_ids(VIDEO),
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        tie_word_embeddings=True,
    )
    per_frame = tokens_per_frame(config)  # the front end's geometry of this config
    config.image_seq_length = per_frame
    config.video_seq_length = per_frame * gen.num_frames
    return config


def preprocessor_config(gen: syn.GenConfig = syn.GenConfig()) -> dict:
    """``preprocessor_config.json`` content: a CLIP image processor at the frame size."""
    return {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": gen.size},
        "resample": 3,
        "do_center_crop": True,
        "crop_size": {"height": gen.size, "width": gen.size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(CLIP_MEAN),
        "image_std": list(CLIP_STD),
        "do_convert_rgb": True,
        "num_frames": gen.num_frames,
    }


# ----------------------------------------------------------------------------- frames
def preprocess(frames: np.ndarray, spec: Any = None):
    """(T, H, W, 3) uint8 -> torch (T, 3, H, W) float32 model input.

    With ``spec`` (a ``videosparse.video.VideoProcessorSpec``) this is the package's own
    ``preprocess_frames``; without, the equivalent CLIP normalisation of crop-sized frames.
    """
    import torch

    if spec is not None:
        from videosparse.video import preprocess_frames  # type: ignore

        return preprocess_frames(frames, spec)
    x = torch.from_numpy(np.ascontiguousarray(frames)).float().div_(255.0)
    x = x.permute(0, 3, 1, 2)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def load_spec(path: str):
    """``VideoProcessorSpec.from_pretrained(path)`` when ``videosparse.video`` provides it, else None."""
    try:
        from videosparse.video import VideoProcessorSpec  # type: ignore
    except ImportError:
        return None
    return VideoProcessorSpec.from_pretrained(path)


def tokens_per_frame(config) -> int:
    """Visual tokens per frame (patches + CLS), from the Video-LLaVA front end."""
    from videosparse.frontends import tokens_per_frame as per_frame

    return per_frame(config)


def prompt(question: str, num_frames: int, per_frame: int) -> str:
    """The Video-LLaVA prompt with ``<video>`` expanded as the package (and transformers) expand it."""
    from videosparse.video import expand_video_prompt

    return expand_video_prompt(PROMPT.format(question=question), num_frames, per_frame, video_token=VIDEO)


def build_inputs(tokenizer, samples: Sequence, config, spec: Any = None) -> dict:
    """Model inputs for a batch: left-padded ``input_ids`` / ``attention_mask`` and
    ``pixel_values_videos`` (B, T, 3, H, W)."""
    import torch

    per_frame = tokens_per_frame(config)
    pix = torch.stack([preprocess(s.frames, spec) for s in samples])
    texts = [prompt(s.question, pix.shape[1], per_frame) for s in samples]
    old = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        enc = tokenizer(texts, return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = old
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "pixel_values_videos": pix}


# ----------------------------------------------------------------------------- evaluation
def generate_answers(model, tokenizer, samples: Sequence, spec: Any = None, max_new_tokens: int = 4) -> list:
    import torch

    inputs = build_inputs(tokenizer, samples, model.config, spec)
    with torch.no_grad():
        out = model.generate(
            **inputs,
            do_sample=False,
            max_new_tokens=max_new_tokens,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    new = out[:, inputs["input_ids"].shape[1] :]
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in new]


def target_indices(sample, config) -> list:
    """Indices (frame-major, CLS at in-frame 0) of the asked-about patches among the visual tokens."""
    from videosparse.frontends import frontend_for

    per_frame = tokens_per_frame(config)
    grid = frontend_for(config).frame_grid(config)[1]
    return [t * per_frame + 1 + r * grid + c for (t, r, c) in sample.target]


def target_recall(trace, samples: Sequence, config) -> list:
    """Per sample: share of the asked-about patches among the tokens kept (not merged) by the last stage
    of a ``RetentionTrace`` (``trace.stages[-1].kept`` (B, K) original visual indices)."""
    stage = trace.stages[-1]
    kept = stage.kept.tolist()
    merged = stage.merged.tolist() if getattr(stage, "merged", None) is not None else [[False] * len(k) for k in kept]
    out = []
    for s, k, m in zip(samples, kept, merged):
        alive = {i for i, mm in zip(k, m) if not mm}
        tgt = target_indices(s, config)
        out.append(sum(t in alive for t in tgt) / len(tgt))
    return out


def evaluate(model, tokenizer, samples: Sequence, batch_size: int = 32, spec: Any = None,
             return_predictions: bool = False, handle: Any = None) -> dict:
    """Exact-match accuracy of greedy answers: ``{"accuracy", "n", "per_type": {type: acc}, ...}``.

    With ``handle`` (the ``SparseHandle`` of ``sparsify``, tracing on) also ``target_recall``: mean
    share of the asked-about patches that survived the last pruning stage (and ``per_type_recall``).
    """
    preds: list = []
    recall: list = []
    for i in range(0, len(samples), batch_size):
        chunk = samples[i : i + batch_size]
        preds.extend(generate_answers(model, tokenizer, chunk, spec))
        if handle is not None and getattr(handle, "trace", None) is not None and handle.trace.stages:
            recall.extend(target_recall(handle.trace, chunk, model.config))
    correct = [syn.exact_match(p, s.answer) for p, s in zip(preds, samples)]
    per_type: dict = {}
    for t in syn.QUESTION_TYPES:
        idx = [i for i, s in enumerate(samples) if s.qtype == t]
        if idx:
            per_type[t] = float(np.mean([correct[i] for i in idx]))
    res = {"accuracy": float(np.mean(correct)) if correct else float("nan"), "n": len(samples), "per_type": per_type}
    if recall and len(recall) == len(samples):
        res["target_recall"] = float(np.mean(recall))
        res["per_type_recall"] = {
            t: float(np.mean([r for r, s in zip(recall, samples) if s.qtype == t]))
            for t in syn.QUESTION_TYPES if any(s.qtype == t for s in samples)
        }
    if return_predictions:
        res["predictions"] = preds
        res["correct"] = correct
    return res


def load_testbed(path: str | None = None, attn_implementation: str | None = None):
    """(model, tokenizer, spec) from the shipped checkpoint (eval mode, float32)."""
    from transformers import AutoTokenizer, VideoLlavaForConditionalGeneration

    path = path or default_path()
    from videosparse.compat import load_kwargs

    kw = load_kwargs() if attn_implementation is None else {"attn_implementation": attn_implementation, **load_kwargs()}
    model = VideoLlavaForConditionalGeneration.from_pretrained(path, **kw).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer, load_spec(path)


def fixed_questions_path(path: str | None = None) -> str:
    return os.path.join(path or default_path(), "fixed_questions.json")


def save_json(obj: Any, path: str) -> None:
    with open(path, "w") as fh:
        json.dump(obj, fh, indent=1)
