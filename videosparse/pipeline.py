"""VideoQA: load a video-LLM checkpoint and answer questions about videos, pruned.

    qa = VideoQA.from_pretrained("LanguageBind/Video-LLaVA-7B-hf", sparsity=SparseConfig.preset("video"))
    ans = qa.ask("clip.mp4", "What is the man doing?")
    ans.text, ans.counts, ans.equivalent_tokens, ans.prefill_seconds, ans.trace

Decoded frames and vision-tower features of a video are computed once and reused for every question
about it (the question-guided selection itself runs per question, inside the decoder).

Family-agnostic: what only a model family knows above its decoder (the class to load, the prompt template
and its video placeholder, preprocessing, tokens per frame, the context limit, how features reach
``generate``) is asked of its front end (``videosparse.frontends``, keyed by config.json ``model_type``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

from videosparse.frontends import frontend_for, get_frontend
from videosparse.frontends import tokens_per_frame as tokens_per_frame  # noqa: F401 (re-exported)
from videosparse.frontends.video_llava import TEMPLATE as DEFAULT_TEMPLATE  # noqa: F401 (re-exported)
from videosparse.core.trace import round_time
from videosparse.runtime import hf_output

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "LanguageBind/Video-LLaVA-7B-hf"


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
    pool_tokens: int = 0  # long-video path: visual tokens that entered the decoder (the pool); 0 = whole frames
    # decoding the frames (shared by the questions of one video); None = not measured here (the caller passed
    # frames it decoded itself: a Clip or an array)
    video_decode_seconds: float | None = 0.0
    vision_seconds: float = 0.0  # vision tower + projector (shared likewise)
    preselect_seconds: float = 0.0  # long-video pre-selection (0 on the short path)

    @property
    def kept_timestamps(self) -> list:
        """Seconds of the source video of every visual token the decoder kept to the end (the pool when
        unpruned), in token order; empty without a trace."""
        return self.trace.kept_timestamps() if self.trace is not None else []

    def to_dict(self) -> dict:
        return {
            "text": self.text,
            "question": self.question,
            "video": self.video,
            "timestamps": [round_time(t) for t in self.timestamps],
            "frame_indices": [int(i) for i in self.frame_indices],
            "visual_tokens": self.visual_tokens,
            "counts": list(self.counts),
            "equivalent_tokens": self.equivalent_tokens,
            "prefill_seconds": self.prefill_seconds,
            "decode_seconds": self.decode_seconds,
            "new_tokens": self.new_tokens,
            "sequences": list(self.sequences),
            "error": self.error,
            "pool_tokens": self.pool_tokens,
            "video_decode_seconds": self.video_decode_seconds,
            "vision_seconds": self.vision_seconds,
            "preselect_seconds": self.preselect_seconds,
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
    seconds: dict = field(default_factory=dict)  # video_decode / vision wall time
    # what the family needs besides the tokens (a dynamic-grid family's grid, times, deepstack features; see
    # FrontEnd.encode_frames); features are then (temporal groups, tokens per group, D)
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Sampling:
    """Which frames of a video are used: ``num_frames`` (None: no cap, for ``fps``), ``strategy``
    (uniform / fps / segments / all), ``fps`` (frames per second for strategy ``fps``), time window."""

    num_frames: int | None = 8
    strategy: str = "uniform"
    fps: float = 1.0
    start: float | None = None
    end: float | None = None


class VideoQA:
    """Question answering over videos with a (optionally sparsified) video LLM of a family that has a
    front end (``videosparse.frontends``: Video-LLaVA, LLaVA-OneVision, Qwen2.5-VL, Qwen3-VL).

    num_frames / prompt_template: None = the front end's (its default frames; its chat template)."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        spec: Any = None,
        sparsity: Any = None,
        num_frames: int | None = None,
        prompt_template: str | None = None,
        cache_size: int = 8,
        frame_strategy: str = "uniform",
    ) -> None:
        self.frontend = fe = frontend_for(model.config)
        prompt_template = fe.prompt_template if prompt_template is None else prompt_template
        fe.check_template(prompt_template)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.spec = spec if spec is not None else fe.default_spec()
        self.default_frames = fe.default_frames(self.spec)  # the checkpoint's, else the family's
        self.num_frames = _positive_int(self.default_frames if num_frames is None else num_frames, "num_frames")
        self.frame_strategy = frame_strategy
        self.prompt_template = prompt_template
        self._cache: OrderedDict = OrderedDict()
        self._cache_size = cache_size
        self.tokens_per_frame = fe.tokens_per_frame(model.config)
        # positions the decoder was built for; prompts (+ new tokens) beyond it are refused
        self.max_positions = fe.max_positions(model.config)
        fe.check_spec(model.config, self.spec)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        tokenizer.padding_side = "left"
        self.handle = None
        self.sparsity = None
        self.on_step = None  # set to callable(step, max_new_tokens) to follow generation (the CLI's bar)
        # progress bar of long sequential decodes (files without a seek index): None = on a terminal, False = never
        self.decode_progress = None
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
        num_frames: int | None = None,
        tokenizer: Any = None,
        progress: bool = True,
        **kwargs: Any,
    ) -> "VideoQA":
        """Load a checkpoint the normal Hugging Face way (the class its front end names), after checking
        everything that can be checked without its weights.

        model_id_or_path: ``"testbed"`` (the embedded test-bed model shipped in the package), a local
            checkpoint directory, or a hub id. The config is read first: another architecture, a path
            that does not exist, or an unreachable hub with the model not cached fail in well under a
            second (``videosparse.loading.CheckpointError``, a ValueError).
        sparsity: a SparseConfig, a preset name (rescaled to the model's depth), or None (full model);
            checked against the model's depth and the visual tokens of ``num_frames`` frames (None: the
            front end's default, 8 for Video-LLaVA).
        device: "cpu" (default), "cuda", "cuda:1", "mps" -- checked to exist here.
        dtype: torch dtype or its name ("float16", "bf16", ...); None = the checkpoint's.
        tokenizer: an already loaded tokenizer of this checkpoint (None: loaded here).
        progress: False silences transformers' weight-loading progress bar (and the hub's download bars)
            while this call loads, through transformers' own switch; the previous setting is restored after.
        """
        from videosparse.loading import resolve_checkpoint, resolve_device, resolve_dtype

        if num_frames is not None:
            _positive_int(num_frames, "num_frames")
        ckpt = resolve_checkpoint(model_id_or_path)
        dtype = resolve_dtype(dtype)
        device = resolve_device(device)
        if attn_implementation not in (None, "eager", "sdpa", "flash_attention_2"):
            raise ValueError(f"attn_implementation must be eager, sdpa or flash_attention_2, got {attn_implementation!r}")
        config = ckpt.load_config()
        fe = frontend_for(config)
        spec = fe.preprocessor_spec(ckpt.source, ckpt.local_files_only)
        default_frames = fe.default_frames(spec)
        nf = default_frames if num_frames is None else int(num_frames)
        sparsity = _resolve_sparsity(sparsity, config, nf, default_frames)
        from transformers import AutoTokenizer

        local = {"local_files_only": True} if ckpt.local_files_only else {}
        with hf_output(progress=progress):
            if tokenizer is None:
                tokenizer = AutoTokenizer.from_pretrained(ckpt.source, **local)
            from videosparse.compat import load_kwargs

            load_kw: dict = {"attn_implementation": attn_implementation, "config": config, **local, **load_kwargs()}
            if dtype is not None:
                load_kw["dtype"] = dtype
            model = fe.load_model(ckpt.source, **load_kw)
        if device != "cpu":
            model = model.to(device)
        return cls(model, tokenizer, spec=spec, sparsity=sparsity, num_frames=nf, **kwargs)

    def set_sparsity(self, sparsity: Any) -> None:
        """Switch the pruning config (None = full model). Removes the previous patch first."""
        from videosparse import sparsify

        if sparsity is not None:  # checked before the current patch is touched: a bad config changes nothing
            sparsity = _resolve_sparsity(sparsity, self.model.config, self.num_frames, self.default_frames)
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
        if sparsity is None:
            self.sparsity = None
            return
        self.sparsity = sparsity
        self.handle = sparsify(self.model, sparsity)

    # ------------------------------------------------------------------ video
    def load(self, video: Any, sampling: "Sampling | None" = None) -> Any:
        """A Clip from a path (frames chosen by ``sampling``, default the instance's), a Clip, or a uint8
        frame array (T, H, W, 3)."""
        from videosparse.video import Clip, load_video

        if isinstance(video, Clip):
            return video
        if isinstance(video, (str, os.PathLike)):
            sp = sampling or self._default_sampling()
            return load_video(video, num_frames=sp.num_frames, strategy=sp.strategy, start=sp.start, end=sp.end,
                              sample_fps=sp.fps, progress=self.decode_progress)
        arr = video
        if hasattr(arr, "detach"):
            arr = arr.detach().cpu().numpy()
        arr = np.asarray(arr)
        if arr.ndim != 4 or arr.shape[-1] != 3:
            raise ValueError(f"a frame array must be (T, H, W, 3), got shape {arr.shape}")
        if arr.dtype != np.uint8:
            raise ValueError(f"a frame array must be uint8 RGB, got {arr.dtype}")
        return Clip.from_array(arr)

    def _features(self, frames: np.ndarray) -> Any:
        """Vision tower + projector on uint8 frames (T, H, W, 3) -> (T, P, D) projected visual tokens."""
        from videosparse.video import preprocess_frames

        pv = preprocess_frames(frames, self.spec).to(self.model.device, self.model.dtype)
        return self.frontend.video_features(self.model, pv)

    def encode(self, video: Any, sampling: "Sampling | None" = None) -> EncodedVideo:
        """Decode (if needed) and run the vision tower + projector once; cached per video.

        An EncodedVideo is returned as it is, so a caller that encoded a video once (e.g. the
        evaluation runner, for several sparsity configs) can pass it to ``ask``/``ask_many``.
        sampling: which frames of a video file (default: the instance's ``num_frames`` / ``frame_strategy``)."""
        import torch

        if isinstance(video, EncodedVideo):
            return video
        sampling = sampling or self._default_sampling()
        key = _video_key(video, sampling)
        if key is not None and key in self._cache:
            self._cache.move_to_end(key)
            # the same features; this call decoded and encoded nothing (a Clip / array: nothing measured)
            hit = self._cache[key]
            decode = 0.0 if hit.seconds.get("video_decode") is not None else None
            return dataclasses.replace(hit, seconds={"video_decode": decode, "vision": 0.0})
        t0 = time.perf_counter()
        clip = self.load(video, sampling)
        t1 = time.perf_counter()
        with torch.no_grad():
            if self.frontend.dynamic_grid:
                feats, extra = self.frontend.encode_frames(self.model, clip.frames, self.spec, clip)
            else:
                feats, extra = self._features(clip.frames), {}
        # a path is decoded here (timed); a Clip or an array was decoded by the caller: not measured (None)
        decoded_here = isinstance(video, (str, os.PathLike))
        enc = EncodedVideo(clip=clip, features=feats, key=key or "", source=video,
                           seconds={"video_decode": t1 - t0 if decoded_here else None,
                                    "vision": time.perf_counter() - t1}, extra=extra)
        if key is not None:
            self._cache[key] = enc
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return enc

    # ------------------------------------------------------------------ questions
    def ask(self, video: Any, question: str, *, num_frames: int | None = None, strategy: str | None = None,
            fps: float | None = None, start: float | None = None, end: float | None = None,
            pre_budget: int | None = None, keep_frames: bool = True, **generation: Any) -> Answer:
        """Answer one question about one video. Generation kwargs go to `model.generate`
        (default: greedy, max_new_tokens=64).

        num_frames / strategy / fps / start / end: which frames (default: the instance's ``num_frames``
        uniform frames). When they hold more visual tokens than ``pre_budget`` (default: the sparsity
        config's ``long.budget``, else 8 frames' worth), or with ``strategy="fps"``, the long-video path runs:
        frames are decoded and encoded in chunks and a question-guided pool of at most ``pre_budget`` tokens
        enters the decoder. keep_frames: keep frames for heatmaps (long path: small thumbnails)."""
        return self.ask_many([(video, question)], batch_size=1, on_error="raise", num_frames=num_frames,
                             strategy=strategy, fps=fps, start=start, end=end, pre_budget=pre_budget,
                             keep_frames=keep_frames, **generation)[0]

    def ask_many(
        self,
        pairs: Iterable[tuple],
        batch_size: int = 4,
        on_error: str = "raise",
        progress: Callable | None = None,
        *,
        num_frames: int | None = None,
        strategy: str | None = None,
        fps: float | None = None,
        start: float | None = None,
        end: float | None = None,
        pre_budget: int | None = None,
        keep_frames: bool = True,
        on_batch: Callable | None = None,
        **generation: Any,
    ) -> list:
        """Answer (video, question) pairs in batches with left padding.

        on_error: "raise" (default) or "record": a failing video or question becomes an Answer with
        `error` set and the run goes on. progress: optional callable(done, total). Frame sampling and
        ``pre_budget`` as in `ask`; the questions of one long video share one chunked pass over it.
        on_batch: optional callable(indices) called before each ``generate`` with the indices (into ``pairs``)
        of the questions it answers, in batch-row order: batches are grouped by geometry, not by input order,
        so this is how a caller maps per-row generation data (e.g. a logits processor's rows) to questions.
        """
        from videosparse.video import VideoError

        pairs = _as_pairs(pairs)
        if on_error not in ("raise", "record"):
            raise ValueError("on_error must be 'raise' or 'record'")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        sampling = self._sampling(num_frames, strategy, fps, start, end)
        capacity = self._pre_budget(pre_budget)
        results: list = [None] * len(pairs)
        short: list = []
        long: "OrderedDict[Any, list]" = OrderedDict()  # video -> [(i, question)], one pass per video
        max_new = int(generation.get("max_new_tokens", 64))
        _positive_int(max_new, "max_new_tokens")

        def fail(i: int, video: Any, question: Any, e: BaseException) -> None:
            if on_error == "raise":
                raise e
            results[i] = Answer(text="", question=str(question), video=_video_name(video), error=_one_line(e))

        asked = [q for _, q in pairs]  # as the caller wrote them (Answer.question)
        pairs = [(v, model_question(self.tokenizer, q) if isinstance(q, str) else q) for v, q in pairs]
        for i, (video, question) in enumerate(pairs):
            try:
                _check_question(question)
                if self._is_long(video, sampling, capacity):
                    # the prompt holds at most `capacity` pooled tokens: check it (and the budget against the
                    # pool) before anything is decoded
                    self._check_long(question, capacity, max_new, self._expected_frames(video, sampling))
                    long.setdefault(_group_key(video, sampling), []).append((i, video, question))
                else:
                    self.check_prompt(question, self._expected_frames(video, sampling), max_new)  # before any compute
                    short.append((i, video, question))
            except (VideoError, ValueError, OSError) as e:
                fail(i, video, question, e)
        ready: list = []  # (batch key, index, encoded or pooled, question)
        for i, video, question in short:
            try:
                enc = self.encode(video, sampling)
                if self.frontend.dynamic_grid:  # the video's own token count, known now: checked before batching
                    self._check_encoded(enc, question, max_new)
                # a dynamic-grid family batches videos of any size (the engine's per-sample geometry)
                key = ("short", "any") if self.frontend.dynamic_grid else ("short", int(enc.features.shape[0]))
                ready.append((key, i, enc, question))
            except (VideoError, ValueError, OSError) as e:
                fail(i, video, question, e)
        for items in long.values():
            video = items[0][1]
            try:
                pools = self._encode_long(video, [q for _, _, q in items], sampling, capacity, keep_frames)
            except (VideoError, ValueError, OSError) as e:
                for i, _, question in items:
                    fail(i, video, question, e)
                continue
            for (i, _, question), pool in zip(items, pools):
                ready.append((("long", pool.num_tokens, pool.num_frames), i, pool, question))
        groups: "OrderedDict[Any, list]" = OrderedDict()
        for key, i, enc, question in ready:
            groups.setdefault(key, []).append((i, enc, question))
        done = len(pairs) - len(ready)
        for key, items in groups.items():
            for s in range(0, len(items), batch_size):
                chunk = items[s : s + batch_size]
                try:
                    if on_batch is not None:
                        on_batch([i for i, _, _ in chunk])
                    answers = self._generate(chunk, generation, keep_frames, pooled=key[0] == "long")
                except ValueError as e:
                    if on_error == "raise":
                        raise
                    answers = [Answer(text="", question=q, video=_video_name(enc), error=_one_line(e))
                               for _, enc, q in chunk]
                for (i, _, _), a in zip(chunk, answers):
                    results[i] = a
                done += len(chunk)
                if progress is not None:
                    progress(done, len(pairs))
        for a, q in zip(results, asked):
            if a is not None and isinstance(q, str):
                a.question = q
        return results

    # ------------------------------------------------------------------ long videos
    def _default_sampling(self) -> Sampling:
        return Sampling(num_frames=self.num_frames, strategy=self.frame_strategy)

    def _sampling(self, num_frames: Any, strategy: Any, fps: Any, start: Any, end: Any) -> Sampling:
        """The call's frame sampling, validated (ValueError naming the argument)."""
        from videosparse.longvideo import MAX_FRAMES
        from videosparse.video import STRATEGIES

        if strategy is None:
            strategy = "fps" if fps is not None else self.frame_strategy
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {list(STRATEGIES)}, got {strategy!r}")
        if num_frames is None:
            num_frames = None if strategy in ("fps", "all") else self.num_frames
            if num_frames is None and self.frontend.dynamic_grid:
                # no long-video pool for these families: the checkpoint's own frame cap (its processor's max_frames)
                num_frames = min(int(getattr(self.spec, "max_frames", MAX_FRAMES)), MAX_FRAMES)
        else:
            num_frames = _positive_int(num_frames, "num_frames")
        if num_frames is not None and num_frames > MAX_FRAMES:
            raise ValueError(f"num_frames={num_frames} is more than the {MAX_FRAMES} frames videosparse samples from "
                             f"one video; sample fewer frames (or strategy='fps' with a lower fps)")
        if fps is None:
            fps = 1.0
        if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not np.isfinite(fps) or fps <= 0:
            raise ValueError(f"fps must be a number > 0, got {fps!r}")
        for name, v in (("start", start), ("end", end)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or v < 0):
                raise ValueError(f"{name} must be a number of seconds >= 0, got {v!r}")
        if start is not None and end is not None and end <= start:
            raise ValueError(f"the time window is empty: end={end} <= start={start}")
        return Sampling(num_frames=num_frames, strategy=strategy, fps=float(fps), start=start, end=end)

    def _pre_config(self) -> Any:
        from videosparse import SparseConfig

        return self.sparsity if self.sparsity is not None else SparseConfig()

    def _pre_budget(self, pre_budget: Any) -> int:
        """The pool size: the call's, else the sparsity config's, else the front end's default frames' worth of
        tokens (8 frames for Video-LLaVA)."""
        if pre_budget is None:
            pre_budget = self._pre_config().long.budget
        if self.frontend.dynamic_grid:  # per-video token counts: a pool only when its size is given
            return None if pre_budget is None else _positive_int(pre_budget, "pre_budget")
        if pre_budget is None:
            return self.default_frames * self.tokens_per_frame
        return _positive_int(pre_budget, "pre_budget")

    def _is_long(self, video: Any, sampling: Sampling, capacity: int) -> bool:
        """Long path: fps sampling, or more sampled tokens than the pool holds (never for an EncodedVideo)."""
        if isinstance(video, EncodedVideo):
            return False
        if self.frontend.dynamic_grid:
            return capacity is not None
        frames = self._expected_frames(video, sampling)
        if sampling.strategy in ("fps", "all") or frames is None:
            return True
        return frames * self.tokens_per_frame > capacity

    def _check_long(self, question: str, capacity: int, max_new: int, frames: int | None) -> None:
        """Prompt and budget checks of the long path, before any decoding: text + pool + new tokens must fit
        the context, and the in-decoder budget must fit the pool."""
        per_frame = self.tokens_per_frame if self.tokens_per_frame is not None else "its own number of"
        check_prompt(self.tokenizer, question, frames, per_frame, self.max_positions, max_new,
                     self.prompt_template, pool=capacity, frontend=self.frontend)
        if self.sparsity is not None:
            try:
                self.sparsity.describe(capacity, self.frontend.num_layers(self.model.config))
            except ValueError as e:
                raise ValueError(f"{e} (the decoder sees a pool of pre_budget={capacity} tokens)") from None

    def _encode_long(self, video: Any, questions: list, sampling: Sampling, capacity: int,
                     keep_frames: bool) -> list:
        """One chunked pass over the video: one PooledVideo per question."""
        import torch

        from videosparse.longvideo import MAX_FRAMES, build_pools, question_text_tokens, thumbnails
        from videosparse.video import ChunkedVideo, Clip

        cfg = self._pre_config()
        with contextlib.ExitStack() as stack:
            if isinstance(video, (str, os.PathLike)):
                # opened once: the sampled frames are known before any is decoded; the long path never
                # repeats a frame (a video shorter than num_frames gives fewer frames)
                chunks = stack.enter_context(ChunkedVideo(
                    video, cfg.long.chunk_frames, num_frames=sampling.num_frames, strategy=sampling.strategy,
                    start=sampling.start, end=sampling.end, sample_fps=sampling.fps, distinct=True,
                    progress=self.decode_progress))
                T = int(chunks.indices.size)
                if sampling.num_frames is not None and T < sampling.num_frames:
                    logger.info("%s: %d distinct frames sampled (%d asked for)", os.fspath(video), T,
                                sampling.num_frames)
            else:
                clip = video if isinstance(video, Clip) else self.load(video)
                T = clip.num_frames
                chunks = _clip_chunks(clip, cfg.long.chunk_frames)
            if T > MAX_FRAMES:
                raise ValueError(f"{_video_name(video)}: {T} frames sampled, more than the {MAX_FRAMES} videosparse "
                                 f"accepts from one video; lower fps or pass num_frames")
            if self.frontend.dynamic_grid:
                meta = chunks.metadata() if isinstance(video, (str, os.PathLike)) else clip
                return self._pool_dynamic(video, meta, chunks, questions, capacity, keep_frames, cfg)
            dev = self.model.device
            text, valid = question_text_tokens(self.tokenizer, self.prompt_template, questions,
                                               self.model.get_input_embeddings(),
                                               video_token=self.frontend.video_placeholder)
            with torch.no_grad():
                pools = build_pools(chunks, self._features, text.to(dev), valid.to(dev), T, self.tokens_per_frame,
                                    capacity, cfg, thumbnail=(lambda f: thumbnails(f, self.spec)) if keep_frames else None)
            if not isinstance(video, (str, os.PathLike)):  # frames decoded by the caller: not measured here
                for pv in pools:
                    pv.seconds["video_decode"] = None
            return pools

    def _check_encoded(self, enc: "EncodedVideo", question: str, max_new: int) -> None:
        """A video of a dynamic-grid family, once encoded: its prompt fits the context and the pruning config fits
        its visual tokens (ValueError naming the video, the count and the limit)."""
        from videosparse.loading import context_error

        T, P = int(enc.features.shape[0]), int(enc.features.shape[1])
        name = _video_name(enc)
        if self.sparsity is not None:
            try:
                self.sparsity.describe(T * P, self.frontend.num_layers(self.model.config))
            except ValueError as e:
                raise ValueError(f"{name}: {e} ({T} temporal groups x {P} tokens at its size)") from None
        prompt = self.frontend.prompt(question, T, P, self.prompt_template, enc.extra)
        n = len(self.tokenizer(prompt, add_special_tokens=True, verbose=False)["input_ids"])
        err = context_error(n, max_new, self.max_positions, T, P)
        if err:
            raise ValueError(f"{name}: {err}")

    def _pool_dynamic(self, video: Any, meta: Any, chunks: Iterable, questions: list, capacity: int,
                      keep_frames: bool, cfg: Any) -> list:
        """The long path of a family whose grid is per video (Qwen-VL): the clip's size and grid from its first
        frame's size and frame count (every chunk is resized to it), chunks regrouped into whole temporal groups,
        the pool over groups (a trace frame), the deepstack features gathered with the pooled tokens."""
        import torch

        from videosparse.longvideo import build_pools, question_text_tokens, thumbnails

        fe, spec = self.frontend, self.spec
        step = fe.frames_per_step
        n = int(len(meta.indices))
        H, W = int(meta.frames.shape[1]), int(meta.frames.shape[2])
        size = fe.clip_size(spec, n, H, W)
        rows, cols = size[0] // spec.factor, size[1] // spec.factor
        groups = -(-n // step)
        m = spec.merge_size
        extra = fe.clip_extra(meta, spec, (groups, rows * m, cols * m))

        def regroup() -> Iterable:
            """Chunks of whole temporal groups (the last may be short: the processor repeats its last frame)."""
            carry = None
            done = 0
            for c in chunks:
                frames = c.frames if carry is None else np.concatenate([carry, c.frames])
                cut = frames.shape[0] - frames.shape[0] % step
                carry = frames[cut:] if cut < frames.shape[0] else None
                if cut:
                    yield self._group_chunk(frames[:cut], extra, done, step, getattr(c, "path", None))
                    done += cut // step
            if carry is not None:
                yield self._group_chunk(carry, extra, done, step, None)

        dev = self.model.device
        text, valid = question_text_tokens(self.tokenizer, self.prompt_template, questions,
                                           self.model.get_input_embeddings(), video_token=fe.video_placeholder)
        thumb = (lambda f: thumbnails(f[::step], spec)) if keep_frames else None
        with torch.no_grad():
            pools = build_pools(regroup(), fe.pool_encoder(self.model, spec, size), text.to(dev), valid.to(dev),
                                groups, rows * cols, capacity, cfg, thumbnail=thumb)
        first = np.asarray(meta.indices)[::step]
        for pv in pools:
            pv.grid, pv.extra = (rows, cols), extra
            pv.frame_indices = first.astype(np.int64)
            if not isinstance(video, (str, os.PathLike)):  # frames decoded by the caller: not measured here
                pv.seconds["video_decode"] = None
        return pools

    @staticmethod
    def _group_chunk(frames: np.ndarray, extra: dict, first_group: int, step: int, path: Any) -> Any:
        import types

        g = -(-frames.shape[0] // step)
        sl = slice(first_group, first_group + g)
        return types.SimpleNamespace(frames=frames, timestamps=extra["times"][sl],
                                     indices=list(range(first_group, first_group + g)), path=path)

    def prompt_length(self, question: str, num_frames: int) -> int:
        """Tokens of the full prompt (text + ``num_frames`` x ``tokens_per_frame`` visual tokens)."""
        return prompt_length(self.tokenizer, question, num_frames, self.tokens_per_frame, self.prompt_template,
                             frontend=self.frontend)

    def check_prompt(self, question: str, num_frames: int, max_new_tokens: int = 64) -> None:
        """Raise ValueError when the question is empty, mostly unknown to the tokenizer, or when the
        prompt for ``num_frames`` frames plus ``max_new_tokens`` does not fit ``max_positions``."""
        fe = self.frontend
        if fe.dynamic_grid:  # tokens per frame known once the video is encoded: the least any video can have
            if num_frames is None:
                _check_question(question)
                return
            groups = -(-int(num_frames) // fe.frames_per_step)
            check_prompt(self.tokenizer, question, groups, fe.min_tokens_per_frame(self.model.config, self.spec),
                         self.max_positions, max_new_tokens, self.prompt_template, frontend=fe)
            return
        check_prompt(self.tokenizer, question, num_frames, self.tokens_per_frame, self.max_positions,
                     max_new_tokens, self.prompt_template, frontend=fe)

    def _expected_frames(self, video: Any, sampling: "Sampling | None" = None) -> int | None:
        """Frames the video will contribute, known without decoding: the frames of an array / Clip /
        EncodedVideo, ``num_frames`` for a path (the cap for fps sampling), None for a path sampled at an
        uncapped rate (known only once the file is open)."""
        from videosparse.video import Clip

        if isinstance(video, EncodedVideo):
            return video.clip.num_frames if self.frontend.dynamic_grid else int(video.features.shape[0])
        if isinstance(video, Clip):
            return video.num_frames
        sp = sampling or self._default_sampling()
        if isinstance(video, (str, os.PathLike)):
            return sp.num_frames
        shape = getattr(video, "shape", None)
        return int(shape[0]) if shape is not None and len(shape) == 4 else sp.num_frames

    def _generate(self, chunk: list, generation: dict, keep_frames: bool = True, pooled: bool = False) -> list:
        """Generate for a batch of (index, video, question): whole frames (EncodedVideo, the same frame count)
        or, ``pooled``, long-video pools (PooledVideo, the same pool size and frame count)."""
        import torch

        gen = self._generation_kwargs(generation)
        expand = self._expansion(gen)  # how generate expands the batch (trace rows per sample)
        if self.frontend.dynamic_grid:
            if pooled:
                return self._generate_pooled_dynamic(chunk, gen, expand, keep_frames)
            return self._generate_dynamic(chunk, gen, expand, keep_frames)
        nrs = int(gen.get("num_return_sequences", 1))
        P = self.tokens_per_frame
        pixels = offsets = None
        ctx: Any = contextlib.nullcontext()
        if pooled:
            # the prompt holds one "frame" of K pooled tokens; the handle learns where they came from
            K, T = chunk[0][1].num_tokens, chunk[0][1].num_frames
            feats = torch.stack([pv.features for _, pv, _ in chunk]).to(self.model.device, self.model.dtype)
            feats = feats.repeat_interleave(expand, dim=0)
            ids = torch.stack([pv.ids for _, pv, _ in chunk])
            if self._pre_config().long.positions == "time":
                from videosparse.core.pool import time_positions

                offsets = time_positions(ids, T, P, K)
            if self.handle is not None:
                ctx = self.handle.pooled(ids, T)
            layout = (1, K)
        else:
            frames = {enc.features.shape[0] for _, enc, _ in chunk}
            if len(frames) != 1:
                raise ValueError(f"videos in one batch must have the same number of frames, got {sorted(frames)}")
            T = frames.pop()
            feats = torch.stack([enc.features for _, enc, _ in chunk]).flatten(1, 2)  # (B, T*P, D)
            if expand > 1:
                # expanded batches need tensors generate can repeat: re-run the (cheap) projector path
                from videosparse.video import preprocess_frames

                pixels = torch.stack([preprocess_frames(enc.clip.frames, self.spec) for _, enc, _ in chunk])
            layout = (T, P)
        with ctx:
            texts, new, prefill, decode, trace = self._run_generate([q for _, _, q in chunk], *layout, feats, gen,
                                                                    pixels, visual_offsets=offsets)
        answers = []
        for j, (_, item, q) in enumerate(chunk):
            t = trace.select(j * expand) if trace is not None else None
            if pooled:
                t = self._pool_trace(item, t)
                video, frames_kept = item.video, item.thumbnails if keep_frames else None
                stamps, indices, pool_tokens = item.timestamps, item.frame_indices, item.num_tokens
            else:
                clip = item.clip
                video, frames_kept, stamps, indices, pool_tokens = (_video_name(clip), clip.frames, clip.timestamps,
                                                                    clip.indices, 0)
            answers.append(self._answer(q, t, [texts[j * nrs + r].strip() for r in range(nrs)], new[j * nrs],
                                        prefill, decode, video=video, timestamps=stamps, frame_indices=indices,
                                        visual_tokens=T * P, frames=frames_kept, seconds=item.seconds,
                                        pool_tokens=pool_tokens))
        return answers

    def _answer(self, question: str, t: Any, seqs: list, new_row: Any, prefill: float, decode: float, *, video: str,
                timestamps: Any, frame_indices: Any, visual_tokens: int, frames: Any, seconds: dict,
                pool_tokens: int = 0, spans: Any = None) -> Answer:
        """The Answer of one sample of a generated batch: ``t`` its trace (None when unpruned; it gets the
        timestamps, and ``spans`` when a trace frame is a group of frames), ``seqs`` its returned sequences,
        ``new_row`` its first sequence's new token ids (1-D), ``seconds`` the video's shared phase times."""
        stamps = [float(x) for x in timestamps]
        if t is not None:
            t.timestamps = list(stamps)
            if spans is not None:
                t.time_spans = [tuple(x) for x in spans]
        return Answer(
            text=seqs[0], question=question, video=video, timestamps=stamps,
            frame_indices=[int(x) for x in frame_indices], visual_tokens=int(visual_tokens),
            counts=t.counts if t is not None else [],
            equivalent_tokens=t.equivalent_tokens if t is not None else float(visual_tokens),
            prefill_seconds=prefill, decode_seconds=decode, new_tokens=self._content_tokens(new_row), trace=t,
            frames=frames, sequences=seqs, pool_tokens=pool_tokens,
            video_decode_seconds=seconds.get("video_decode", 0.0), vision_seconds=seconds.get("vision", 0.0),
            preselect_seconds=seconds.get("preselect", 0.0))

    def _generate_dynamic(self, chunk: list, gen: dict, expand: int, keep_frames: bool) -> list:
        """`_generate` for a family whose videos each have their own grid (Qwen2.5-VL / Qwen3-VL): one prompt per
        video's geometry, the batch's videos may differ in size (the trace is then per sample, ``ragged``).
        A trace "frame" is a temporal group of ``frames_per_step`` sampled frames: the answer's timestamps are the
        groups' (mean of their first and last frame), its frames and frame indices the groups' first."""
        fe = self.frontend
        nrs = int(gen.get("num_return_sequences", 1))
        encs = [enc for _, enc, _ in chunk]
        feats = [enc.features for enc in encs]
        extras = [enc.extra for enc in encs]
        prompts = [fe.prompt(q, int(f.shape[0]), int(f.shape[1]), self.prompt_template, e)
                   for (_, _, q), f, e in zip(chunk, feats, extras)]
        pixels = [fe.pixels(enc.clip.frames, self.spec) for enc in encs] if expand > 1 else None

        def vision(input_ids: Any) -> dict:
            return fe.video_inputs(self.model, feats, extras, input_ids, pixels=pixels)

        biggest = max(range(len(feats)), key=lambda j: feats[j].shape[0] * feats[j].shape[1])
        T, P = int(feats[biggest].shape[0]), int(feats[biggest].shape[1])
        texts, new, prefill, decode, trace = self._run_generate([q for _, _, q in chunk], T, P, None, gen,
                                                                prompts=prompts, vision_fn=vision)
        step = fe.frames_per_step
        answers = []
        for j, (_, enc, q) in enumerate(chunk):
            t = trace.select(j * expand) if trace is not None else None
            clip = enc.clip
            answers.append(self._answer(
                q, t, [texts[j * nrs + r].strip() for r in range(nrs)], new[j * nrs], prefill, decode,
                video=_video_name(clip), timestamps=enc.extra["times"], frame_indices=clip.indices[::step],
                visual_tokens=feats[j].shape[0] * feats[j].shape[1],
                frames=clip.frames[::step] if keep_frames else None, seconds=enc.seconds, spans=enc.extra["spans"]))
        return answers

    def _generate_pooled_dynamic(self, chunk: list, gen: dict, expand: int, keep_frames: bool) -> list:
        """`_generate` for long-video pools of a family whose grid is per video (Qwen-VL): the pooled prompt is the
        whole-video prompt without the tokens outside the pool, every token at its whole-video 3-axis position
        (the model's own `get_rope_index` of the whole prompt, handed to `generate` for this call)."""
        import torch

        fe = self.frontend
        pools = [pv for _, pv, _ in chunk]
        questions = [q for _, _, q in chunk]
        nrs = int(gen.get("num_return_sequences", 1))
        input_ids, mask, vision, pos, deltas = fe.pooled_inputs(self.model, self.tokenizer, self.prompt_template,
                                                                questions, pools)
        if expand > 1:  # generate expands the text rows; the pooled features are given per row
            out = vision["mm_encoder_outputs"]["video"]
            out.pooler_output = tuple(f for f in out.pooler_output for _ in range(expand))
            if getattr(out, "deepstack_features", None):
                out.deepstack_features = [tuple(f for f in layer for _ in range(expand))
                                          for layer in out.deepstack_features]
        T, (rows, cols) = pools[0].num_frames, pools[0].grid
        P = rows * cols
        ids = torch.stack([pv.ids for pv in pools])
        ctx = self.handle.pooled(ids, T, (rows, cols)) if self.handle is not None else contextlib.nullcontext()
        with ctx, _positions_given(self.model, input_ids, pos, deltas):
            texts, new, prefill, decode, trace = self._run_generate(questions, T, P, None, gen, inputs=(input_ids, mask),
                                                                    vision_fn=lambda _ids: vision)
        answers = []
        for j, (_, pv, q) in enumerate(chunk):
            t = self._pool_trace(pv, trace.select(j * expand) if trace is not None else None)
            answers.append(self._answer(
                q, t, [texts[j * nrs + r].strip() for r in range(nrs)], new[j * nrs], prefill, decode,
                video=pv.video, timestamps=pv.timestamps, frame_indices=pv.frame_indices, visual_tokens=T * P,
                frames=pv.thumbnails if keep_frames else None, seconds=pv.seconds, pool_tokens=pv.num_tokens,
                spans=pv.extra["spans"]))
        return answers

    def _pool_trace(self, pv: Any, t: Any) -> Any:
        """The trace of a pooled answer: the decoder's (a trace without stages when unpruned), with the pool's
        pre-selection recorded as ``t.pool``."""
        import torch

        from videosparse.core.trace import RetentionTrace, StageRecord

        K = pv.num_tokens
        if t is None:
            grid = pv.grid if pv.grid is not None else self.frontend.frame_grid(self.model.config)
            t = RetentionTrace(num_frames=pv.num_frames, tokens_per_frame=pv.tokens_per_frame,
                               has_cls=self.frontend.has_cls, grid=tuple(grid),
                               num_layers=self.frontend.num_layers(self.model.config), batch_size=1, decoder_visual=K)
        t.pool = StageRecord(layer=-1, kept=pv.ids[None].clone(), merged=torch.zeros(1, K, dtype=torch.bool),
                             scores=pv.scores[None].clone(), redundant=pv.redundant[None].clone())
        return t

    def _generation_kwargs(self, generation: dict) -> dict:
        gen = {"max_new_tokens": 64, "do_sample": False}
        gen.update(generation)
        if not gen.get("do_sample"):
            for k in ("temperature", "top_p", "top_k"):
                gen.pop(k, None)
        if gen.get("pad_token_id") is None:
            gen["pad_token_id"] = self.tokenizer.pad_token_id
        return gen

    @staticmethod
    def _expansion(gen: dict) -> int:
        """Rows `generate` makes of each sample: beams, else returned sequences."""
        beams = int(gen.get("num_beams", 1))
        return beams if beams > 1 else int(gen.get("num_return_sequences", 1))

    def _run_generate(self, questions: list, T: int, P: int, feats: Any, gen: dict, pixels: Any = None,
                      visual_offsets: Any = None, prompts: list | None = None, vision_fn: Any = None,
                      inputs: tuple | None = None) -> tuple:
        """Tokenize the prompts (T x P video tokens each), run `generate` with the given visual features
        (or pixels), time prefill and decode steps. Returns (texts, new ids, prefill s, decode s, trace).

        visual_offsets: optional (B, T*P) long RoPE position offsets of the video tokens from the first one
        (the long path's time-aligned layout); other tokens keep their sequence index.
        prompts / vision_fn: the prompts as built by the caller and callable(input_ids) -> generate's visual
        keyword arguments (dynamic-grid families; T x P is then the largest video's, for the context message);
        inputs: (input_ids, attention_mask) made by the caller instead of tokenizing prompts."""
        import torch

        from videosparse.loading import context_error

        fe = self.frontend
        dev = self.model.device
        if inputs is None:
            if prompts is None:
                prompts = [fe.prompt(q, T, P, self.prompt_template) for q in questions]
            # verbose=False: the length is checked against the model's context below, not the tokenizer's
            enc_in = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=True, verbose=False)
            input_ids = enc_in["input_ids"].to(dev)
            attention_mask = enc_in["attention_mask"].to(dev)
        else:
            input_ids, attention_mask = (x.to(dev) for x in inputs)
        err = context_error(int(input_ids.shape[1]), int(gen["max_new_tokens"]), self.max_positions, T, P)
        if err:
            raise ValueError(err)
        if vision_fn is not None:
            vision = vision_fn(input_ids)
        elif pixels is not None:
            vision = fe.pixel_inputs(pixels.to(dev, self.model.dtype))
        else:
            vision = fe.feature_inputs(self.model, feats)
        extra: dict = {}
        if visual_offsets is not None:
            vm = input_ids == fe.video_token_id(self.model.config)
            N = input_ids.shape[1]
            pos = torch.arange(N, device=dev).expand(input_ids.shape[0], N).clone()
            start = vm.float().argmax(dim=1)
            offs = visual_offsets.to(dev)
            rows = torch.arange(input_ids.shape[0], device=dev)[:, None]
            pos[rows, start[:, None] + torch.arange(offs.shape[1], device=dev)[None]] = start[:, None] + offs
            extra["position_ids"] = pos
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
                out = self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **vision, **extra, **gen)
        finally:
            h1.remove()
            h2.remove()
        new = out[:, input_ids.shape[1]:]
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        durations = [t1 - t0 for t0, t1 in times if t1 is not None]
        prefill = durations[0] if durations else 0.0
        decode = float(sum(durations[1:]))
        trace = self.handle.trace if self.handle is not None else None
        return texts, new, prefill, decode, trace

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
                  template: str | None = None, frontend: Any = None) -> int:
    """Tokens of the full prompt: the template's text + ``num_frames x tokens_per_frame`` video tokens.
    frontend: the model family's (``videosparse.frontends``; None: Video-LLaVA's); template: None = its own."""
    fe = frontend if frontend is not None else get_frontend("video_llava")
    prompt = fe.prompt(question, num_frames, tokens_per_frame, template)
    return len(tokenizer(prompt, add_special_tokens=True, verbose=False)["input_ids"])


def check_prompt(tokenizer: Any, question: str, num_frames: int | None, tokens_per_frame: int, max_positions: Any,
                 max_new_tokens: int = 64, template: str | None = None, *, pool: int | None = None,
                 frontend: Any = None) -> None:
    """Everything about a question that can be checked with the tokenizer alone (no model, no video):
    not empty, mostly known tokens, and prompt + ``max_new_tokens`` within ``max_positions``.

    Whole frames (``pool`` None): the prompt holds ``num_frames x tokens_per_frame`` visual tokens. The
    long-video path (``pool`` = pre_budget): the decoder sees a pool of at most ``pool`` visual tokens picked
    from ``num_frames`` frames (0 or None: not known before the file is opened).
    Raises ValueError naming the problem (frames, tokens and the limit for an overlong prompt).
    frontend / template: as in `prompt_length`."""
    from videosparse.loading import context_error

    _check_question(question)
    _positive_int(max_new_tokens, "max_new_tokens")
    question = model_question(tokenizer, question)
    _check_vocabulary(tokenizer, question)
    if pool is None:
        err = context_error(prompt_length(tokenizer, question, num_frames, tokens_per_frame, template, frontend),
                            max_new_tokens, max_positions, num_frames, tokens_per_frame)
        if err:
            raise ValueError(err)
        return
    n = prompt_length(tokenizer, question, 1, pool, template, frontend)
    if max_positions and n + max_new_tokens > max_positions:
        text = n - pool
        room = max_positions - text - max_new_tokens
        raise ValueError(
            f"the prompt does not fit the model's context: a pool of pre_budget={pool} visual tokens "
            + (f"(picked from {num_frames} frames x {tokens_per_frame} tokens)" if num_frames else
               f"(picked from the sampled frames, {tokens_per_frame} tokens each)")
            + f" + {text} text tokens + {max_new_tokens} new "
            f"tokens = {n + max_new_tokens} positions, but the model has {max_positions} (max_position_embeddings); "
            + (f"use pre_budget <= {room}" if room >= 1 else "shorten the question or lower max_new_tokens"))


def _check_question(question: Any) -> None:
    if not isinstance(question, str):
        raise ValueError(f"a question must be a str, got {type(question).__name__} {_short_repr(question)}")
    if not question.strip():
        raise ValueError("the question is empty")


def _short_repr(x: Any, n: int = 60) -> str:
    r = repr(x)
    return r if len(r) <= n else r[: n - 3] + "..."


def _as_pairs(pairs: Any) -> list:
    """``ask_many``'s input as a list of (video, question) pairs; TypeError naming the first item that is not one
    (a list of paths without questions, a single pair instead of a list of pairs, ...)."""
    if isinstance(pairs, (str, bytes, os.PathLike)):
        raise TypeError(f"ask_many takes a list of (video, question) pairs, got a single {type(pairs).__name__} "
                        f"{_short_repr(pairs)}: pass [(video, question), ...] or use ask(video, question)")
    try:
        items = list(pairs)
    except TypeError:
        raise TypeError(f"ask_many takes a list of (video, question) pairs, got {type(pairs).__name__}") from None
    for i, item in enumerate(items):
        if isinstance(item, (str, bytes, os.PathLike)) or not isinstance(item, (tuple, list)) or len(item) != 2:
            what = (f"a {type(item).__name__} of {len(item)} items" if isinstance(item, (tuple, list)) else
                    f"a {type(item).__name__} ({_short_repr(item)})")
            raise TypeError(f"ask_many takes (video, question) pairs; item {i} is {what}, not a pair: pass "
                            f"[(video, question), ...], e.g. [('clip.mp4', 'what happens?')], or use ask(video, question)")
    return [tuple(it) for it in items]


def _normalise_words(text: str) -> str:
    """Lower case, punctuation -> spaces, spaces collapsed ("Where is the RED object?" -> "where is the red object")."""
    import unicodedata

    t = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in text.lower())
    return " ".join(t.split())


def _unknown_ids(tokenizer: Any, text: str) -> int:
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None or not text:
        return 0
    return sum(1 for t in tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"] if t == unk)


def model_question(tokenizer: Any, question: str) -> str:
    """The question as the model's tokenizer reads it. Closed word-level vocabularies (the test bed's: lower-case
    words, no punctuation) turn "Where is the RED object?" into unknown tokens. Every whitespace-separated word
    the tokenizer does not know is replaced by its lower-cased, punctuation-free form when that form is known;
    words the tokenizer knows are never changed, so this is lossless for the vocabulary (logged at INFO when
    it changes anything). Tokenizers without unknown tokens (byte-level BPE, Llama's) get the question as is.
    Not a str: returned unchanged (the checks name the problem)."""
    if not isinstance(question, str):
        return question
    q = question.strip()
    if _unknown_ids(tokenizer, q) == 0:
        return q
    words = []
    for w in q.split():
        if _unknown_ids(tokenizer, w):
            norm = _normalise_words(w)
            if norm and _unknown_ids(tokenizer, norm) == 0:
                w = norm
            elif not norm:  # punctuation alone ("?" as its own word): nothing the model could read
                continue
        words.append(w)
    out = " ".join(words)
    if out != q and out:
        logger.info("question %r read as %r (words the model's tokenizer knows)", q, out)
        return out
    return q


def _check_vocabulary(tokenizer: Any, question: str) -> None:
    """ValueError when most of the question's tokens are unknown to the tokenizer; a closed vocabulary's words are
    listed in the message (a minority of unknown words is logged by `vocabulary_problem`)."""
    from videosparse.loading import vocabulary_problem

    problem = vocabulary_problem(tokenizer, question.strip())
    if problem:
        words = _plain_vocabulary(tokenizer)
        if words:
            problem += f"; it reads lower-case words without punctuation from: {', '.join(words)}"
        raise ValueError(problem)


def _plain_vocabulary(tokenizer: Any, limit: int = 200) -> list:
    """The words of a small closed vocabulary (special tokens excluded); [] for real LLM vocabularies."""
    try:
        n = len(tokenizer)
    except TypeError:
        return []
    if n > limit:
        return []
    special = set(getattr(tokenizer, "all_special_tokens", []) or [])
    return sorted(w for w in tokenizer.get_vocab() if w not in special and not w.startswith("<"))


def _video_key(video: Any, sampling: Sampling) -> str | None:
    sp = sampling
    where = f"{sp.num_frames}|{sp.strategy}" + ("" if (sp.start, sp.end, sp.strategy) == (None, None, "uniform")
                                                 else f"|{sp.fps}|{sp.start}|{sp.end}")
    if isinstance(video, (str, os.PathLike)):
        p = os.fspath(video)
        try:
            st = os.stat(p)
        except OSError:
            return None
        return f"{os.path.abspath(p)}|{st.st_size}|{st.st_mtime_ns}|{where}"
    # a Clip or an array: the same object asked about again reuses its features (the cache entry
    # holds a reference, so the id cannot be recycled while cached)
    return f"obj:{id(video)}|{where}"


def _group_key(video: Any, sampling: Sampling) -> Any:
    """Questions about the same long video share one chunked pass."""
    if isinstance(video, (str, os.PathLike)):
        return ("path", os.path.abspath(os.fspath(video)))
    return ("obj", id(video))


@contextlib.contextmanager
def _positions_given(model: Any, input_ids: Any, positions: Any, deltas: Any) -> Any:
    """While ``generate`` runs on ``input_ids``: the model's `get_rope_index` returns ``positions`` (3, B, N) and
    ``deltas`` (B, 1) (rows repeated when generate expanded the batch) instead of computing them from the prompt,
    so the prefill uses them and the decode steps continue from the deltas. An instance attribute shadows the
    method for the call and is removed after it."""
    inner = model.model

    def get_rope_index(ids: Any, *args: Any, **kwargs: Any) -> tuple:
        B, N = input_ids.shape
        if ids.ndim != 2 or ids.shape[1] != N or ids.shape[0] % B:
            raise ValueError(f"videosparse: positions were prepared for input of shape {(B, N)}, the model was given "
                             f"{tuple(ids.shape)}")
        r = ids.shape[0] // B
        return positions.repeat_interleave(r, dim=1), deltas.repeat_interleave(r, dim=0)

    inner.get_rope_index = get_rope_index
    try:
        yield
    finally:
        del inner.get_rope_index


def _clip_chunks(clip: Any, chunk_frames: int) -> Iterable:
    """Chunks of an in-memory Clip (for the long path on arrays / Clips)."""
    from videosparse.video import Clip

    for s in range(0, clip.num_frames, chunk_frames):
        sl = slice(s, s + chunk_frames)
        yield Clip(frames=clip.frames[sl], indices=np.asarray(clip.indices)[sl],
                   timestamps=np.asarray(clip.timestamps)[sl], fps=clip.fps, num_source_frames=clip.num_source_frames,
                   duration=clip.duration, backend=clip.backend, path=clip.path, rotation=clip.rotation)


def _video_name(video: Any) -> str:
    if isinstance(video, EncodedVideo):
        video = video.clip
    if hasattr(video, "capacity") and hasattr(video, "video"):  # a PooledVideo
        return str(video.video)
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


def _resolve_sparsity(sparsity: Any, config: Any, num_frames: int, default_frames: int | None = None) -> Any:
    """A preset name -> SparseConfig for the model's depth; any config is checked against the model's
    depth and the visual tokens of ``num_frames`` frames (ValueError naming the field); ``default_frames``:
    the checkpoint's default frames (the long-video pool's default size), None = the family's."""
    from videosparse import SparseConfig

    if sparsity is None:
        return None
    fe = frontend_for(config)
    layers = fe.num_layers(config)
    if isinstance(sparsity, str):
        sparsity = SparseConfig.preset(sparsity, num_layers=layers)
    if not isinstance(sparsity, SparseConfig):
        raise ValueError(f"sparsity must be a SparseConfig, a preset name or None, got {type(sparsity).__name__}")
    from videosparse.models.base import check_positions

    check_positions(getattr(config, "model_type", ""), sparsity)  # mrope families: no renumbering, no gravity
    if fe.dynamic_grid:  # the visual tokens are known per video: the depth now, the budget on each video (or pool)
        if sparsity.long.budget is not None:
            sparsity.describe(sparsity.long.budget, layers)
        else:
            sparsity.check_layers(layers)
        return sparsity
    sparsity.describe(decoder_visual_tokens(config, num_frames, sparsity.long.budget, default_frames),
                      layers)  # as a run would
    return sparsity


def decoder_visual_tokens(config: Any, num_frames: int, pre_budget: int | None = None,
                          default_frames: int | None = None) -> int:
    """Visual tokens the decoder sees for ``num_frames`` frames: all of them, or the long-video pool
    (``pre_budget``, default ``default_frames``' worth: the checkpoint's or the family's default frames, 8 for
    Video-LLaVA) when they are more."""
    fe = frontend_for(config)
    P = fe.tokens_per_frame(config)
    default_frames = fe.default_num_frames if default_frames is None else default_frames
    return min(num_frames * P, pre_budget if pre_budget is not None else default_frames * P)
