"""The trained test beds: small real video LLMs on synthetic video QA, one per model family.

* ``"video_llava"`` (``testbed``, ``videosparse/assets/testbed/``): `VideoLlavaForConditionalGeneration`,
  CLIP tower with CLS (37 tokens per frame), Llama decoder.
* ``"llava_onevision"`` (``testbed-onevision``, ``videosparse/assets/testbed_onevision/``):
  `LlavaOnevisionForConditionalGeneration`, SigLIP tower without CLS (12 x 12 patches pooled to 6 x 6 = 36
  tokens per frame), one ``image_newline`` token closing the video, Qwen2 decoder (GQA, q/k/v biases).

* ``build_tokenizer(family)`` / ``build_config(tokenizer, family=...)``: the word-level tokenizer and model
  config the training script uses (``scripts/train_testbed.py``).
* ``load_testbed(path=None)``: model + tokenizer + frame spec from a shipped checkpoint through the same
  code path as the real checkpoints (the class named by config.json's ``model_type``
  ``.from_pretrained`` + ``AutoTokenizer.from_pretrained``); no argument: the Video-LLaVA test bed.
* ``build_inputs(tokenizer, samples, config)``: a left-padded batch in the family's prompt format (its
  front end's template).
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

ONEVISION_MEAN = (0.5, 0.5, 0.5)
ONEVISION_STD = (0.5, 0.5, 0.5)

PAD, BOS, EOS, UNK, VIDEO, IMAGE = "<pad>", "<s>", "</s>", "<unk>", "<video>", "<image>"
SPECIALS = (PAD, BOS, EOS, UNK, VIDEO, IMAGE)
# LLaVA-OneVision (Qwen2 chat template): answers end with <|im_end|>, the EOS of that test bed
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
CHAT_SPECIALS = (IM_START, IM_END)
CHAT_WORDS = ("user", "assistant")

PROMPT = TEMPLATE  # the Video-LLaVA chat template (its front end's)

VIDEO_LLAVA, LLAVA_ONEVISION = "video_llava", "llava_onevision"
FAMILIES = (VIDEO_LLAVA, LLAVA_ONEVISION)
DEFAULT_FAMILY = VIDEO_LLAVA
# the test-bed name of each family (``videosparse.testbed.NAMES``)
FAMILY_NAMES = {VIDEO_LLAVA: "testbed", LLAVA_ONEVISION: "testbed-onevision"}


def check_family(family: str) -> str:
    if family not in FAMILIES:
        raise ValueError(f"unknown test-bed family {family!r}; choose one of {', '.join(FAMILIES)}")
    return family


def family_of(config) -> str:
    """The test-bed family of a model config (its ``model_type``)."""
    return check_family(getattr(config, "model_type", None) or VIDEO_LLAVA)


def default_path(family: str = DEFAULT_FAMILY) -> str:
    """Directory of the family's checkpoint shipped inside the package."""
    from videosparse.testbed import path

    return path(FAMILY_NAMES[check_family(family)])


def eos_token(family: str = DEFAULT_FAMILY) -> str:
    """The token that ends an answer: ``</s>`` (Video-LLaVA) or ``<|im_end|>`` (OneVision)."""
    return EOS if check_family(family) == VIDEO_LLAVA else IM_END


# ----------------------------------------------------------------------------- tokenizer / config
def build_tokenizer(family: str = DEFAULT_FAMILY):
    """Word-level ``PreTrainedTokenizerFast`` over the synthetic vocabulary (left padding).

    Video-LLaVA: BOS added, EOS ``</s>``. LLaVA-OneVision: the same words plus the chat template's
    ``<|im_start|>`` / ``<|im_end|>`` (special) and ``user`` / ``assistant``; no BOS (as Qwen2's tokenizer),
    EOS ``<|im_end|>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    family = check_family(family)
    specials = SPECIALS + (CHAT_SPECIALS if family == LLAVA_ONEVISION else ())
    vocab = {tok: i for i, tok in enumerate(specials)}
    for w in syn.vocabulary():
        vocab.setdefault(w, len(vocab))
    if family == LLAVA_ONEVISION:
        for w in CHAT_WORDS:
            vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if family == VIDEO_LLAVA:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
        )
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    from tokenizers import AddedToken

    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS if family == VIDEO_LLAVA else None,
        eos_token=eos_token(family),
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
    text_kv_heads: int | None = None  # None: text_heads (no grouped-query attention)


# LLaVA-OneVision test bed: as the Video-LLaVA one, with Qwen2's grouped-query attention (2 KV heads)
ONEVISION_SIZE = ModelSize(text_kv_heads=2)


def default_size(family: str = DEFAULT_FAMILY) -> ModelSize:
    return ONEVISION_SIZE if check_family(family) == LLAVA_ONEVISION else ModelSize()


def _vision_kwargs(size: ModelSize, gen: syn.GenConfig) -> dict:
    """The vision-tower config fields both families' test beds share."""
    return dict(hidden_size=size.vision_hidden, intermediate_size=4 * size.vision_hidden,
                num_hidden_layers=size.vision_layers, num_attention_heads=size.vision_heads, image_size=gen.size)


def _text_kwargs(tokenizer, size: ModelSize) -> dict:
    """The decoder config fields both families' test beds share (everything but the BOS token)."""
    return dict(vocab_size=len(tokenizer), hidden_size=size.text_hidden, intermediate_size=size.text_intermediate,
                num_hidden_layers=size.text_layers, num_attention_heads=size.text_heads,
                num_key_value_heads=size.text_kv_heads or size.text_heads, max_position_embeddings=1024,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)


def build_config(tokenizer, gen: syn.GenConfig = syn.GenConfig(), size: ModelSize | None = None,
                 family: str = DEFAULT_FAMILY):
    """The model config of a family's test bed for ``tokenizer`` (``build_tokenizer(family)``).

    Video-LLaVA: CLIP ViT with one ``gen.cell`` px patch per cell (+ CLS). LLaVA-OneVision: SigLIP with
    ``gen.cell / 2`` px patches (2 x 2 per cell), pooled by transformers back to one token per cell."""
    family = check_family(family)
    size = default_size(family) if size is None else size
    if family == LLAVA_ONEVISION:
        return _build_onevision_config(tokenizer, gen, size)
    from transformers import CLIPVisionConfig, LlamaConfig, VideoLlavaConfig

    vision = CLIPVisionConfig(**_vision_kwargs(size, gen), patch_size=gen.cell, projection_dim=size.vision_hidden)
    text = LlamaConfig(**_text_kwargs(tokenizer, size), bos_token_id=tokenizer.bos_token_id)
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


def _build_onevision_config(tokenizer, gen: syn.GenConfig, size: ModelSize):
    from transformers import LlavaOnevisionConfig, Qwen2Config, SiglipVisionConfig

    if gen.cell % 2:
        raise ValueError(f"the OneVision test bed needs an even cell size (2 x 2 patches per cell), got {gen.cell}")
    vision = SiglipVisionConfig(**_vision_kwargs(size, gen), patch_size=gen.cell // 2,
                                vision_use_head=False)  # as the OneVision checkpoints: no pooling head
    text = Qwen2Config(**_text_kwargs(tokenizer, size), bos_token_id=None, use_sliding_window=False)
    config = LlavaOnevisionConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE),
        video_token_index=tokenizer.convert_tokens_to_ids(VIDEO),
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        image_grid_pinpoints=[[gen.size, gen.size]],
        tie_word_embeddings=True,
    )
    if tokens_per_frame(config) != gen.grid * gen.grid:  # pooled grid = the generator's cells
        raise ValueError(f"OneVision geometry mismatch: {tokens_per_frame(config)} tokens per frame for a "
                         f"{gen.grid} x {gen.grid} cell grid")
    return config


def preprocessor_config(gen: syn.GenConfig = syn.GenConfig(), family: str = DEFAULT_FAMILY) -> dict:
    """The preprocessor config's content (file name: ``preprocessor_file(family)``).

    Video-LLaVA: a CLIP image processor at the frame size. LLaVA-OneVision: a
    ``LlavaOnevisionVideoProcessor`` config as the real checkpoints write it (exact resize to the tower's
    size, bicubic, mean/std 0.5, no crop)."""
    if check_family(family) == LLAVA_ONEVISION:
        return {
            "video_processor_type": "LlavaOnevisionVideoProcessor",
            "processor_class": "LlavaOnevisionProcessor",
            "do_resize": True,
            "size": {"height": gen.size, "width": gen.size},
            "resample": 3,
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": list(ONEVISION_MEAN),
            "image_std": list(ONEVISION_STD),
            "do_convert_rgb": True,
            "do_sample_frames": False,
            "num_frames": gen.num_frames,
        }
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


def preprocessor_file(family: str = DEFAULT_FAMILY) -> str:
    """``preprocessor_config.json`` (Video-LLaVA) or ``video_preprocessor_config.json`` (OneVision)."""
    return "video_preprocessor_config.json" if check_family(family) == LLAVA_ONEVISION else "preprocessor_config.json"


def save_preprocessor_config(out_dir: str, gen: syn.GenConfig = syn.GenConfig(), family: str = DEFAULT_FAMILY) -> str:
    path = os.path.join(out_dir, preprocessor_file(family))
    save_json(preprocessor_config(gen, family), path)
    return path


# ----------------------------------------------------------------------------- frames
def preprocess(frames: np.ndarray, spec: Any = None, family: str = DEFAULT_FAMILY):
    """(T, H, W, 3) uint8 -> torch (T, 3, H, W) float32 model input.

    With ``spec`` (a ``videosparse.video.VideoProcessorSpec``) this is the package's own
    ``preprocess_frames``; without, the family's equivalent normalisation of tower-sized frames (CLIP
    mean/std; OneVision: ``(x - 127.5) / 127.5`` as transformers fuses rescale and normalise).
    """
    import torch

    if spec is not None:
        from videosparse.video import preprocess_frames  # type: ignore

        return preprocess_frames(frames, spec)
    if check_family(family) == LLAVA_ONEVISION:
        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
        mean = torch.tensor([m * 255.0 for m in ONEVISION_MEAN], dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor([v * 255.0 for v in ONEVISION_STD], dtype=torch.float32).view(1, 3, 1, 1)
        return ((x - mean) / std).contiguous()
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
    """Visual tokens per frame from the family's front end (Video-LLaVA: patches + CLS; OneVision: the
    pooled grid, no CLS; the closing newline is not a visual token)."""
    from videosparse.frontends import tokens_per_frame as per_frame

    return per_frame(config)


def has_cls(config) -> bool:
    from videosparse.frontends import frontend_for

    return bool(frontend_for(config).has_cls)


def frame_grid(config) -> tuple:
    from videosparse.frontends import frontend_for

    return tuple(frontend_for(config).frame_grid(config))


def tail_tokens(config) -> int:
    """Placeholder tokens after the visual ones that close the video block (OneVision's newline: 1)."""
    from videosparse.frontends import frontend_for

    return int(frontend_for(config).tail_tokens)


def visual_index(t: int, r: int, c: int, per_frame: int, grid: int, cls: bool) -> int:
    """Index among the visual tokens (frame-major) of cell (row r, col c) of frame t: ``t*P + 1 + r*grid + c``
    with a CLS token at in-frame index 0 (Video-LLaVA), ``t*P + r*grid + c`` without (OneVision)."""
    return t * per_frame + (1 if cls else 0) + r * grid + c


def prompt(question: str, num_frames: int, per_frame: int, family: str = DEFAULT_FAMILY) -> str:
    """The family's prompt (its front end's template) with ``<video>`` expanded as the package (and
    transformers) expand it: frames x tokens per frame, plus OneVision's closing newline."""
    from videosparse.frontends import get_frontend

    return get_frontend(check_family(family)).prompt(question, num_frames, per_frame)


def build_inputs(tokenizer, samples: Sequence, config, spec: Any = None) -> dict:
    """Model inputs for a batch: left-padded ``input_ids`` / ``attention_mask`` and
    ``pixel_values_videos`` (B, T, 3, H, W)."""
    import torch

    family = family_of(config)
    per_frame = tokens_per_frame(config)
    pix = torch.stack([preprocess(s.frames, spec, family) for s in samples])
    texts = [prompt(s.question, pix.shape[1], per_frame, family) for s in samples]
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
    """Indices (frame-major) of the asked-about cells among the visual tokens: CLS at in-frame index 0
    for Video-LLaVA, no CLS for OneVision (whose closing newline is not a visual token)."""
    per_frame = tokens_per_frame(config)
    grid = frame_grid(config)[1]
    cls = has_cls(config)
    return [visual_index(t, r, c, per_frame, grid, cls) for (t, r, c) in sample.target]


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
    """(model, tokenizer, spec) from a test-bed checkpoint (eval mode, float32).

    ``path``: a checkpoint directory or a test-bed name (``"testbed"``, ``"testbed-onevision"``); None: the
    Video-LLaVA test bed. The class is the one the front end of config.json's ``model_type`` names."""
    from transformers import AutoTokenizer

    from videosparse.frontends import get_frontend
    from videosparse.testbed import resolve

    path = resolve(path) if path else default_path()
    with open(os.path.join(path, "config.json")) as fh:
        model_type = json.load(fh).get("model_type", VIDEO_LLAVA)
    cls = get_frontend(check_family(model_type)).model_class()
    from videosparse.compat import load_kwargs

    kw = load_kwargs() if attn_implementation is None else {"attn_implementation": attn_implementation, **load_kwargs()}
    model = cls.from_pretrained(path, **kw).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer, load_spec(path)


def fixed_questions_path(path: str | None = None) -> str:
    from videosparse.testbed import resolve

    return os.path.join(resolve(path) if path else default_path(), "fixed_questions.json")


def fixed_samples(path: str | None = None) -> list:
    """The checkpoint's fixed questions (``fixed_questions.json``) as samples, regenerated from their seeds (the
    frames are not stored); ValueError when a regenerated question or answer differs from the recorded one."""
    with open(fixed_questions_path(path)) as fh:
        recs = json.load(fh)
    samples = []
    for rec in recs:
        s = syn.make_sample(rec["seed"], rec["index"])
        if (s.question, s.answer) != (rec["question"], rec["answer"]):
            raise ValueError(f"fixed question {rec['seed']}/{rec['index']} regenerates as {s.question!r} -> "
                             f"{s.answer!r}, recorded {rec['question']!r} -> {rec['answer']!r}")
        samples.append(s)
    return samples


def save_json(obj: Any, path: str) -> None:
    with open(path, "w") as fh:
        json.dump(obj, fh, indent=1)
