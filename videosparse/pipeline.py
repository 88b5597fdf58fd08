"""VideoQA: load a Video-LLaVA checkpoint and answer questions about videos, pruned.

    qa = VideoQA.from_pretrained("LanguageBind/Video-LLaVA-7B-hf", sparsity=SparseConfig.preset("video"))
    ans = qa.ask("clip.mp4", "What is the man doing?")
    ans.text, ans.counts, ans.equivalent_tokens, ans.prefill_seconds, ans.trace

Decoded frames and vision-tower features of a video are computed once and reused for every question
about it (the question-guided selection itself runs per question, inside the decoder).
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "LanguageBind/Video-LLaVA-7B-hf"
DEFAULT_TEMPLATE = "USER: <video>\n{question} ASSISTANT:"


@dataclass
class Answer:
    """One answered question.

    text: the generated answer (special tokens stripped); question; video (path or "<array>");
    timestamps: seconds of the sampled frames (sorted); frame_indices: source frame indices;
    visual_tokens: visual tokens before pruning; counts: visual tokens after each stage (empty when
    unpruned); equivalent_tokens: mean over decoder layers of the visual tokens each layer sees;
    prefill_seconds / decode_seconds: wall time of the first forward and of the decode steps;
    new_tokens: tokens generated before the end-of-sequence token; sequences: all returned sequences
    (``num_return_sequences``; ``text`` is the first); trace: RetentionTrace of this sample (None when unpruned);
    error: set (and text empty) when `ask_many(..., on_error="record")` skipped a failing item.
    """

    text: str
    question: str
    video: str
    timestamps: list = field(default_factory=list)
    frame_indices: list = field(default_factory=list)
    visual_tokens: int = 0
    counts: list = field(default_factory=list)
    equivalent_tokens: float = 0.0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    new_tokens: int = 0
    trace: Any = None
    error: str | None = None
    sequences: list = field(default_factory=list)  # every returned sequence (num_return_sequences), best first
    frames: Any = None  # the decoded frames (uint8 (T, H, W, 3)), for heatmaps; not serialised

    def to_dict(self) -> dict:
        return {
            "text": self.text,
            "question": self.question,
            "video": self.video,
            "timestamps": [float(t) for t in self.timestamps],
            "frame_indices": [int(i) for i in self.frame_indices],
            "visual_tokens": self.visual_tokens,
            "counts": list(self.counts),
            "equivalent_tokens": self.equivalent_tokens,
            "prefill_seconds": self.prefill_seconds,
            "decode_seconds": self.decode_seconds,
            "new_tokens": self.new_tokens,
            "sequences": list(self.sequences),
            "error": self.error,
        }


@dataclass
class EncodedVideo:
    """A decoded clip and its projected vision features, reusable across questions.

    clip: videosparse.video.Clip; features: (T, P, D) projected visual tokens (decoder input).
    """

    clip: Any
    features: Any
    key: str
    source: Any = None  # keeps an in-memory video alive while it is cached (its id is the key)


class VideoQA:
    """Question answering over videos with a (optionally sparsified) Video-LLaVA model."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        spec: Any = None,
        sparsity: Any = None,
        num_frames: int = 8,
        prompt_template: str = DEFAULT_TEMPLATE,
        cache_size: int = 8,
        frame_strategy: str = "uniform",
    ) -> None:
        from videosparse.video import VideoProcessorSpec

        if "<video>" not in prompt_template or "{question}" not in prompt_template:
            raise ValueError("prompt_template must contain '<video>' and '{question}'")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.spec = spec if spec is not None else VideoProcessorSpec()
        self.num_frames = _positive_int(num_frames, "num_frames")
        self.frame_strategy = frame_strategy
        self.prompt_template = prompt_template
        self._cache: OrderedDict = OrderedDict()
        self._cache_size = cache_size
        vcfg = model.config.vision_config
        self.tokens_per_frame = tokens_per_frame(model.config)
        # positions the decoder was built for; prompts (+ new tokens) beyond it are refused
        self.max_positions = getattr(model.config.text_config, "max_position_embeddings", None)
        crop = self.spec.crop_hw
        if tuple(crop) != (vcfg.image_size, vcfg.image_size):
            raise ValueError(
                f"preprocessing crops {tuple(crop)} but the vision tower expects {vcfg.image_size}x{vcfg.image_size}"
            )
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        tokenizer.padding_side = "left"
        self.handle = None
        self.sparsity = None
        self.on_step = None  # set to callable(step, max_new_tokens) to follow generation (the CLI's bar)
        if sparsity is not None:
            self.set_sparsity(sparsity)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(
        cls,
        model_id_or_path: str = DEFAULT_MODEL,
        sparsity: Any = "video",
        device: str | None = None,
        dtype: Any = None,
        attn_implementation: str = "sdpa",
        num_frames: int = 8,
        tokenizer: Any = None,
        **kwargs: Any,
    ) -> "VideoQA":
        """Load a Video-LLaVA checkpoint the normal Hugging Face way, after checking everything that can
        be checked without its weights.

        model_id_or_path: ``"testbed"`` (the embedded test-bed model shipped in the package), a local
            checkpoint directory, or a hub id. The config is read first: another architecture, a path
            that does not exist, or an unreachable hub with the model not cached fail in well under a
            second (``videosparse.loading.CheckpointError``, a ValueError).
        sparsity: a SparseConfig, a preset name (rescaled to the model's depth), or None (full model);
            checked against the model's depth and the visual tokens of ``num_frames`` frames.
        device: "cpu" (default), "cuda", "cuda:1", "mps" -- checked to exist here.
        dtype: torch dtype or its name ("float16", "bf16", ...); None = the checkpoint's.
        tokenizer: an already loaded tokenizer of this checkpoint (None: loaded here).
        """
        from videosparse.loading import resolve_checkpoint, resolve_device, resolve_dtype

        nf = _positive_int(num_frames, "num_frames")
        ckpt = resolve_checkpoint(model_id_or_path)
        dtype = resolve_dtype(dtype)
        device = resolve_device(device)
        if attn_implementation not in (None, "eager", "sdpa", "flash_attention_2"):
            raise ValueError(f"attn_implementation must be eager, sdpa or flash_attention_2, got {attn_implementation!r}")
        config = ckpt.load_config()
        sparsity = _resolve_sparsity(sparsity, config, nf)
        from transformers import AutoTokenizer, VideoLlavaForConditionalGeneration

        from videosparse.video import VideoProcessorSpec

        local = {"local_files_only": True} if ckpt.local_files_only else {}
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(ckpt.source, **local)
        spec = VideoProcessorSpec.from_pretrained(_preprocessor_file(ckpt.source, ckpt.local_files_only))
        load_kw: dict = {"attn_implementation": attn_implementation, "config": config, **local}
        if dtype is not None:
            load_kw["dtype"] = dtype
        model = VideoLlavaForConditionalGeneration.from_pretrained(ckpt.source, **load_kw)
        if device != "cpu":
            model = model.to(device)
        return cls(model, tokenizer, spec=spec, sparsity=sparsity, num_frames=nf, **kwargs)

    def set_sparsity(self, sparsity: Any) -> None:
        """Switch the pruning config (None = full model). Removes the previous patch first."""
        from videosparse import SparseConfig, sparsify

        if self.handle is not None:
            self.handle.remove()
            self.handle = None
        if sparsity is None:
            self.sparsity = None
            return
        sparsity = _resolve_sparsity(sparsity, self.model.config, self.num_frames)
        self.sparsity = sparsity
        self.handle = sparsify(self.model, sparsity)

    # ------------------------------------------------------------------ video
    def load(self, video: Any) -> Any:
        """A Clip from a path, a Clip, or a uint8 frame array (T, H, W, 3)."""
        from videosparse.video import Clip, load_video

        if isinstance(video, Clip):
            return video
        if isinstance(video, (str, os.PathLike)):
            return load_video(video, num_frames=self.num_frames, strategy=self.frame_strategy)
        arr = video
        if hasattr(arr, "detach"):
            arr = arr.detach().cpu().numpy()
        arr = np.asarray(arr)
        if arr.ndim != 4 or arr.shape[-1] != 3:
            raise ValueError(f"a frame array must be (T, H, W, 3), got shape {arr.shape}")
        if arr.dtype != np.uint8:
            raise ValueError(f"a frame array must be uint8 RGB, got {arr.dtype}")
        return Clip.from_array(arr)

    def encode(self, video: Any) -> EncodedVideo:
        """Decode (if needed) and run the vision tower + projector once; cached per video.

        An EncodedVideo is returned as it is, so a caller that encoded a video once (e.g. the
        evaluation runner, for several sparsity configs) can pass it to ``ask``/``ask_many``."""
        import torch

        from videosparse.video import preprocess_frames

        if isinstance(video, EncodedVideo):
            return video
        key = _video_key(video, self.num_frames, self.frame_strategy)
        if key is not None and key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        clip = self.load(video)
        pv = preprocess_frames(clip.frames, self.spec).to(self.model.device, self.model.dtype)
        with torch.no_grad():
            feats = self.model.model.get_video_features(pixel_values_videos=pv[None]).pooler_output
        enc = EncodedVideo(clip=clip, features=feats, key=key or "", source=video)
        if key is not None:
            self._cache[key] = enc
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return enc

    # ------------------------------------------------------------------ questions
    def ask(self, video: Any, question: str, **generation: Any) -> Answer:
        """Answer one question about one video. Generation kwargs go to `model.generate`
        (default: greedy, max_new_tokens=64)."""
        return self.ask_many([(video, question)], batch_size=1, on_error="raise", **generation)[0]

    def ask_many(
        self,
        pairs: Iterable[tuple],
        batch_size: int = 4,
        on_error: str = "raise",
        progress: Callable | None = None,
        **generation: Any,
    ) -> list:
        """Answer (video, question) pairs in batches with left padding.

        on_error: "raise" (default) or "record": a failing video or question becomes an Answer with
        `error` set and the run goes on. progress: optional callable(done, total).
        """
        from videosparse.video import VideoError

        pairs = list(pairs)
        if on_error not in ("raise", "record"):
            raise ValueError("on_error must be 'raise' or 'record'")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        results: list = [None] * len(pairs)
        ready: list = []
        max_new = int(generation.get("max_new_tokens", 64))
        for i, (video, question) in enumerate(pairs):
            try:
                _check_question(question)
                self.check_prompt(question, self._expected_frames(video), max_new)  # before any compute
                ready.append((i, self.encode(video), question))
            except (VideoError, ValueError, OSError) as e:
                if on_error == "raise":
                    raise
                results[i] = Answer(text="", question=str(question), video=_video_name(video), error=_one_line(e))
        done = len(pairs) - len(ready)
        for s in range(0, len(ready), batch_size):
            chunk = ready[s : s + batch_size]
            try:
                answers = self._generate(chunk, generation)
            except ValueError as e:
                if on_error == "raise":
                    raise
                answers = [Answer(text="", question=q, video=_video_name(enc.clip), error=_one_line(e))
                           for _, enc, q in chunk]
            for (i, _, _), a in zip(chunk, answers):
                results[i] = a
            done += len(chunk)
            if progress is not None:
                progress(done, len(pairs))
        return results

    def prompt_length(self, question: str, num_frames: int) -> int:
        """Tokens of the full prompt (text + ``num_frames`` x ``tokens_per_frame`` visual tokens)."""
        return prompt_length(self.tokenizer, question, num_frames, self.tokens_per_frame, self.prompt_template)

    def check_prompt(self, question: str, num_frames: int, max_new_tokens: int = 64) -> None:
        """Raise ValueError when the question is empty, mostly unknown to the tokenizer, or when the
        prompt for ``num_frames`` frames plus ``max_new_tokens`` does not fit ``max_positions``."""
        check_prompt(self.tokenizer, question, num_frames, self.tokens_per_frame, self.max_positions,
                     max_new_tokens, self.prompt_template)

    def _expected_frames(self, video: Any) -> int:
        """Frames the video will contribute: known without decoding for paths (uniform/segments)."""
        from videosparse.video import Clip

        if isinstance(video, EncodedVideo):
            return int(video.features.shape[0])
        if isinstance(video, Clip):
            return video.num_frames
        if isinstance(video, (str, os.PathLike)):
            return self.num_frames
        shape = getattr(video, "shape", None)
        return int(shape[0]) if shape is not None and len(shape) == 4 else self.num_frames

    def _generate(self, chunk: list, generation: dict) -> list:
        import torch
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        from videosparse.video import expand_video_prompt

        frames = {enc.features.shape[0] for _, enc, _ in chunk}
        if len(frames) != 1:
            raise ValueError(f"videos in one batch must have the same number of frames, got {sorted(frames)}")
        T = frames.pop()
        prompts = [
            expand_video_prompt(self.prompt_template.format(question=q.strip()), T, self.tokens_per_frame)
            for _, _, q in chunk
        ]
        # verbose=False: the length is checked against the model's context below, not the tokenizer's
        enc_in = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=True, verbose=False)
        dev = self.model.device
        input_ids = enc_in["input_ids"].to(dev)
        attention_mask = enc_in["attention_mask"].to(dev)
        feats = torch.cat([enc.features for _, enc, _ in chunk], dim=0)
        gen = {"max_new_tokens": 64, "do_sample": False}
        gen.update(generation)
        if not gen.get("do_sample"):
            for k in ("temperature", "top_p", "top_k"):
                gen.pop(k, None)
        if gen.get("pad_token_id") is None:
            gen["pad_token_id"] = self.tokenizer.pad_token_id
        from videosparse.loading import context_error

        err = context_error(int(input_ids.shape[1]), int(gen["max_new_tokens"]), self.max_positions, T,
                            self.tokens_per_frame)
        if err:
            raise ValueError(err)
        vision: dict
        if int(gen.get("num_beams", 1)) > 1 or int(gen.get("num_return_sequences", 1)) > 1:
            # expanded batches need tensors generate can repeat: re-run the (cheap) projector path
            from videosparse.video import preprocess_frames

            pv = torch.stack([preprocess_frames(enc.clip.frames, self.spec) for _, enc, _ in chunk]).to(dev, self.model.dtype)
            vision = {"pixel_values_videos": pv}
        else:
            vision = {"mm_encoder_outputs": {"video": BaseModelOutputWithPooling(pooler_output=feats)}}
        times: list = []
        on_step = getattr(self, "on_step", None)  # optional callable(step, max_new_tokens), e.g. a progress bar

        def pre(mod: Any, args: Any, kwargs: Any) -> None:
            times.append([time.perf_counter(), None])

        def post(mod: Any, args: Any, kwargs: Any, out: Any) -> None:
            times[-1][1] = time.perf_counter()
            if on_step is not None:
                on_step(len(times), int(gen.get("max_new_tokens", 0)))

        h1 = self.model.register_forward_pre_hook(pre, with_kwargs=True)
        h2 = self.model.register_forward_hook(post, with_kwargs=True)
        try:
            with torch.no_grad():
                out = self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **vision, **gen)
        finally:
            h1.remove()
            h2.remove()
        new = out[:, input_ids.shape[1]:]
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        durations = [t1 - t0 for t0, t1 in times if t1 is not None]
        prefill = durations[0] if durations else 0.0
        decode = float(sum(durations[1:]))
        trace = self.handle.trace if self.handle is not None else None
        answers = []
        nrs = int(gen.get("num_return_sequences", 1))
        beams = int(gen.get("num_beams", 1))
        expand = beams if beams > 1 else nrs  # how generate expanded the batch (trace rows per sample)
        for j, (_, enc, q) in enumerate(chunk):
            clip = enc.clip
            t = trace.select(j * expand) if trace is not None else None
            seqs = [texts[j * nrs + r].strip() for r in range(nrs)]
            answers.append(Answer(
                text=seqs[0],
                question=q,
                video=_video_name(clip),
                timestamps=[float(x) for x in clip.timestamps],
                frame_indices=[int(x) for x in clip.indices],
                visual_tokens=T * self.tokens_per_frame,
                counts=t.counts if t is not None else [],
                equivalent_tokens=t.equivalent_tokens if t is not None else float(T * self.tokens_per_frame),
                prefill_seconds=prefill,
                decode_seconds=decode,
                new_tokens=self._content_tokens(new[j * nrs]),
                trace=t,
                frames=clip.frames,
                sequences=seqs,
            ))
        return answers

    def _content_tokens(self, row: Any) -> int:
        """Generated tokens before the first end-of-sequence (or padding) token."""
        stop = {self.tokenizer.pad_token_id, self.tokenizer.eos_token_id}
        eos = getattr(self.model.generation_config, "eos_token_id", None)
        stop.update(eos if isinstance(eos, (list, tuple)) else [eos])
        stop.discard(None)
        for k, tok in enumerate(row.tolist()):
            if tok in stop:
                return k
        return int(row.shape[0])

    def close(self) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
        self._cache.clear()


def prompt_length(tokenizer: Any, question: str, num_frames: int, tokens_per_frame: int,
                  template: str = DEFAULT_TEMPLATE) -> int:
    """Tokens of the full prompt: the template's text + ``num_frames x tokens_per_frame`` video tokens."""
    from videosparse.video import expand_video_prompt

    prompt = expand_video_prompt(template.format(question=question.strip()), num_frames, tokens_per_frame)
    return len(tokenizer(prompt, add_special_tokens=True, verbose=False)["input_ids"])


def check_prompt(tokenizer: Any, question: str, num_frames: int, tokens_per_frame: int, max_positions: Any,
                 max_new_tokens: int = 64, template: str = DEFAULT_TEMPLATE) -> None:
    """Everything about a question that can be checked with the tokenizer alone (no model, no video):
    not empty, mostly known tokens, and prompt + ``max_new_tokens`` within ``max_positions``.
    Raises ValueError naming the problem (frames, tokens and the limit for an overlong prompt)."""
    from videosparse.loading import context_error, vocabulary_problem

    _check_question(question)
    _positive_int(max_new_tokens, "max_new_tokens")
    problem = vocabulary_problem(tokenizer, question.strip())
    if problem:
        raise ValueError(problem)
    err = context_error(prompt_length(tokenizer, question, num_frames, tokens_per_frame, template),
                        max_new_tokens, max_positions, num_frames, tokens_per_frame)
    if err:
        raise ValueError(err)


def _check_question(question: Any) -> None:
    if not isinstance(question, str) or not question.strip():
        raise ValueError("the question is empty")


def _video_key(video: Any, num_frames: int, strategy: str) -> str | None:
    if isinstance(video, (str, os.PathLike)):
        p = os.fspath(video)
        try:
            st = os.stat(p)
        except OSError:
            return None
        return f"{os.path.abspath(p)}|{st.st_size}|{st.st_mtime_ns}|{num_frames}|{strategy}"
    # a Clip or an array: the same object asked about again reuses its features (the cache entry
    # holds a reference, so the id cannot be recycled while cached)
    return f"obj:{id(video)}|{num_frames}|{strategy}"


def _video_name(video: Any) -> str:
    if isinstance(video, EncodedVideo):
        video = video.clip
    if isinstance(video, (str, os.PathLike)):
        return os.fspath(video)
    path = getattr(video, "path", None)
    return str(path) if path else "<array>"


def _one_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0] if msg else ''}"


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _resolve_sparsity(sparsity: Any, config: Any, num_frames: int) -> Any:
    """A preset name -> SparseConfig for the model's depth; any config is checked against the model's
    depth and the visual tokens of ``num_frames`` frames (ValueError naming the field)."""
    from videosparse import SparseConfig

    if sparsity is None:
        return None
    layers = int(config.text_config.num_hidden_layers)
    if isinstance(sparsity, str):
        sparsity = SparseConfig.preset(sparsity, num_layers=layers)
    if not isinstance(sparsity, SparseConfig):
        raise ValueError(f"sparsity must be a SparseConfig, a preset name or None, got {type(sparsity).__name__}")
    sparsity.describe(num_frames * tokens_per_frame(config), layers)  # raises what a run would raise
    return sparsity


def tokens_per_frame(config: Any) -> int:
    """Visual tokens per frame of a Video-LLaVA config: patches + CLS (257 for a 224 px, 14 px ViT)."""
    vcfg = config.vision_config
    return (vcfg.image_size // vcfg.patch_size) ** 2 + 1


def _preprocessor_file(model_id_or_path: str, local_files_only: bool = False) -> Any:
    """Local path (or dict) of the checkpoint's preprocessing config; hub ids go through the HF cache."""
    if os.path.isdir(model_id_or_path):
        return model_id_or_path
    from transformers.utils import cached_file

    for name in ("video_preprocessor_config.json", "preprocessor_config.json"):
        try:
            path = cached_file(model_id_or_path, name, _raise_exceptions_for_missing_entries=False,
                               local_files_only=local_files_only)
        except OSError:
            path = None
        if path:
            return path
    logger.warning("no preprocessor config found for %s; using CLIP defaults (224)", model_id_or_path)
    return {}
