"""lmms-eval model ``videosparse``: any lmms-eval video task on a pruned video LLM.

    lmms-eval --model videosparse --model_args pretrained=<hub id or dir>,preset=video,budget=0.1 --tasks videomme

lmms-eval (0.7.3) finds the model through the ``lmms_eval.models`` entry point of this package
(``pyproject.toml``): the entry point names :func:`manifest`, which returns lmms-eval's ``ModelManifest``
pointing at :class:`VideoSparse`. The model answers with :class:`videosparse.VideoQA`, so it runs every family
``VideoQA.from_pretrained`` loads (Video-LLaVA, LLaVA-OneVision, Qwen2.5-VL, Qwen3-VL, the embedded test beds
``pretrained=testbed`` / ``testbed-onevision``) with any preset and budget, and the long-video options.

Nothing here runs at import: this module imports neither lmms-eval nor torch. ``VideoSparse`` (a subclass
of ``lmms_eval.api.model.lmms``) and ``VideoTokenCounts`` are defined on first access, when lmms-eval is
importable (PEP 562 module ``__getattr__``).

model_args (``key=value`` pairs separated by commas)::

    pretrained           hub id, local checkpoint directory, or testbed (required)
    preset               a videosparse preset (default video); none = the full model, no pruning
    budget               the preset's budget: 0.1 (fraction), 194 (tokens), 194eq (equivalent tokens), rank
    num_frames           frames sampled uniformly per video (default: the model family's);
                         max_frames_num is an alias (lmms-eval's wrappers' name)
    fps                  sample this many frames per second instead (long-video path; num_frames caps it)
    pre_budget           long videos: the most visual tokens entering the decoder (the pool)
    dtype, device, attn_implementation   as in VideoQA.from_pretrained (default sdpa)
    batch_size           questions per generate call (also lmms-eval's --batch_size)
    max_new_tokens       when a task does not set it (default 128)
    on_error             record (default: a failing question gets an empty answer, logged) or raise
    log_file             also write one JSON line per answer to this file (per rank: .rank<R> before the suffix)

Per-sample logging: every answer's frames, preset, budget, visual tokens, kept counts per stage and equivalent
tokens travel with the answer to lmms-eval as its per-request token counts (``GenerationResult.token_counts``):
with ``--log_samples`` they are in lmms-eval's samples file, ``token_counts[0]["videosparse"]``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from dataclasses import dataclass
from typing import Any

__all__ = ["CLASS_PATH", "MODEL_ID", "ModelArgError", "Settings", "VideoSparse", "VideoTokenCounts", "manifest",
           "parse_model_args"]

MODEL_ID = "videosparse"
CLASS_PATH = "videosparse.integrations.lmms_eval.VideoSparse"
FULL_NAMES = ("none", "full")
ATTN = ("eager", "sdpa", "flash_attention_2")
ON_ERROR = ("record", "raise")
DEFAULT_MAX_NEW_TOKENS = 128

logger = logging.getLogger(__name__)


def manifest() -> Any:
    """The entry point's object: lmms-eval's ``ModelManifest`` for ``--model videosparse``."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=CLASS_PATH)


class ModelArgError(ValueError):
    """A ``--model_args`` value (or the checkpoint it names) cannot be used; the message is one line."""


# ----------------------------------------------------------------------------- model_args
@dataclass(frozen=True)
class Settings:
    """The checked model_args."""

    pretrained: str
    preset: str | None = "video"  # None: the full model
    budget: Any = None  # None: the preset's default
    num_frames: int | None = None  # None: the family's default
    fps: float | None = None
    pre_budget: int | None = None
    dtype: str | None = None
    device: str | None = None
    attn_implementation: str = "sdpa"
    batch_size: int = 1
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    on_error: str = "record"
    log_file: str | None = None

    def ask_kwargs(self) -> dict:
        """Frame sampling and pool size of every question (``VideoQA.ask_many``)."""
        return {"num_frames": self.num_frames, "fps": self.fps, "pre_budget": self.pre_budget}


KNOWN_ARGS = ("pretrained", "preset", "budget", "num_frames", "max_frames_num", "fps", "pre_budget", "dtype", "device",
              "attn_implementation", "batch_size", "max_batch_size", "max_new_tokens", "on_error", "log_file")


def _positive_int(name: str, v: Any) -> int | None:
    if v is None:
        return None
    if isinstance(v, bool):
        raise ModelArgError(f"{name} must be a positive integer, got {v!r}")
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, str) and v.strip().isdigit():
        v = int(v.strip())
    if not isinstance(v, int) or v < 1:
        raise ModelArgError(f"{name} must be a positive integer, got {v!r}")
    return v


def _positive_float(name: str, v: Any) -> float | None:
    if v is None:
        return None
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            raise ModelArgError(f"{name} must be a number > 0, got {v!r}") from None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise ModelArgError(f"{name} must be a number > 0, got {v!r}")
    return float(v)


def _opt_str(name: str, v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, bool):
        raise ModelArgError(f"{name} must be a name, got {v!r}")
    s = str(v).strip()
    return s or None


def parse_model_args(**kwargs: Any) -> Settings:
    """model_args (as lmms-eval parses them: ints, floats, bools or strings) -> Settings, every value checked
    without loading anything. ModelArgError (one line) names the first problem."""
    unknown = sorted(k for k in kwargs if k not in KNOWN_ARGS)
    if unknown:
        raise ModelArgError(f"unknown model_args {', '.join(unknown)}; known: {', '.join(KNOWN_ARGS)}")
    pretrained = kwargs.get("pretrained")
    if pretrained is None or isinstance(pretrained, bool) or not str(pretrained).strip():
        raise ModelArgError("pretrained is required: pretrained=<hub id or checkpoint dir> (or pretrained=testbed)")
    from videosparse.config import PRESETS, Budget, parse_budget

    preset = kwargs.get("preset", "video")
    preset = "video" if preset is None else preset
    if not isinstance(preset, str) or not preset.strip():
        raise ModelArgError(f"preset must be a name, got {preset!r}")
    preset = preset.strip()
    if preset in FULL_NAMES:
        preset = None
    elif preset not in PRESETS:
        raise ModelArgError(f"unknown preset {preset!r}; known: none, {', '.join(sorted(PRESETS))}")
    budget = kwargs.get("budget")
    if budget is not None:
        if preset is None:
            raise ModelArgError("budget needs a preset: preset=none is the full model, which prunes nothing")
        if isinstance(budget, bool):
            raise ModelArgError(f"budget must be a fraction (0.1), a token count (194), equivalent tokens (194eq) or "
                                f"rank, got {budget!r}")
        try:  # lmms-eval turned "0.1" into 0.1 and "64" into 64: parsed again from the text, as video_eval does
            budget = Budget.of(parse_budget(str(budget))).raw
        except ValueError as e:
            raise ModelArgError(f"budget: {str(e).replace('SparseConfig.budget: ', '')}") from None
    nf = _positive_int("num_frames", kwargs.get("num_frames"))
    mf = _positive_int("max_frames_num", kwargs.get("max_frames_num"))
    if nf is not None and mf is not None and nf != mf:
        raise ModelArgError(f"num_frames={nf} and max_frames_num={mf} disagree (max_frames_num is an alias): give one")
    attn = _opt_str("attn_implementation", kwargs.get("attn_implementation")) or "sdpa"
    if attn not in ATTN:
        raise ModelArgError(f"attn_implementation must be one of {', '.join(ATTN)}, got {attn!r}")
    bs = kwargs.get("batch_size", 1)
    if isinstance(bs, str) and bs.strip().lower().startswith("auto"):
        raise ModelArgError(f"batch_size={bs} is not supported: give a number of questions per batch")
    on_error = _opt_str("on_error", kwargs.get("on_error")) or "record"
    if on_error not in ON_ERROR:
        raise ModelArgError(f"on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
    _positive_int("max_batch_size", kwargs.get("max_batch_size"))  # accepted (lmms-eval passes it), not used
    return Settings(
        pretrained=str(pretrained).strip(), preset=preset, budget=budget, num_frames=nf if nf is not None else mf,
        fps=_positive_float("fps", kwargs.get("fps")), pre_budget=_positive_int("pre_budget", kwargs.get("pre_budget")),
        dtype=_opt_str("dtype", kwargs.get("dtype")), device=_opt_str("device", kwargs.get("device")),
        attn_implementation=attn, batch_size=_positive_int("batch_size", 1 if bs is None else bs),
        max_new_tokens=_positive_int("max_new_tokens", kwargs.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)),
        on_error=on_error, log_file=_opt_str("log_file", kwargs.get("log_file")))


def merge_args(model_args: dict, additional: dict | None) -> dict:
    """``--model_args`` plus lmms-eval's own ``--batch_size`` / ``--device`` (``additional_config``), which lmms-eval
    passes to every model: the same key in both is accepted when the values agree or when ``--batch_size`` is its
    default 1; otherwise ModelArgError."""
    out = dict(model_args)
    for k, v in (additional or {}).items():
        if v is None:
            continue
        if k in out:
            if str(out[k]) == str(v) or (k == "batch_size" and str(v) == "1"):
                continue
            raise ModelArgError(f"{k} is given twice: {k}={out[k]} in --model_args and --{k} {v}; give one")
        out[k] = v
    return out


def _one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def _flagged(msg: str) -> str:
    """Library messages name Python fields; an lmms-eval user knows model_args."""
    for old, new in (("SparseConfig.budget: ", "budget: "), ("SparseConfig.preset: ", "preset: "),
                     ("SparseConfig.layers: ", "preset/budget: "), ("LongVideoConfig.budget: ", "pre_budget: ")):
        msg = msg.replace(old, new)
    return msg


def _under_lmms_eval_command() -> bool:
    """True in the ``lmms-eval`` command (which imports ``lmms_eval.__main__``) and in ``python -m lmms_eval``."""
    main_spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return "lmms_eval.__main__" in sys.modules or getattr(main_spec, "name", "") == "lmms_eval.__main__"


def _cli_exit(e: ModelArgError) -> None:
    """Under the lmms-eval command, a bad model_arg ends the run like a bad command-line flag: one line on stderr,
    exit code 2 (lmms-eval would print a traceback and exit 0). From Python the ModelArgError is raised."""
    if _under_lmms_eval_command():
        print(f"lmms-eval: error: --model {MODEL_ID}: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2)


# ----------------------------------------------------------------------------- loading
def load_videoqa(s: Settings, device: str | None) -> tuple:
    """(VideoQA, SparseConfig or None) for the settings; ModelArgError (one line) for a checkpoint, config or
    budget that cannot be used, before any weight is loaded where it can be checked without them."""
    from videosparse import SparseConfig, VideoQA
    from videosparse.compat import check_transformers_version
    from videosparse.frontends import frontend_for
    from videosparse.loading import resolve_checkpoint, resolve_device, resolve_dtype

    try:
        check_transformers_version()
        resolve_dtype(s.dtype)
        resolve_device(device)
    except (ValueError, RuntimeError) as e:
        raise ModelArgError(_one_line(e)) from None
    try:
        ckpt = resolve_checkpoint(s.pretrained)
        config = ckpt.load_config()
        fe = frontend_for(config)
    except (ValueError, OSError) as e:
        raise ModelArgError(f"pretrained={s.pretrained}: {_one_line(e)}") from None
    sparsity = None
    if s.preset is not None:
        try:
            sparsity = SparseConfig.preset(s.preset, budget=s.budget, num_layers=fe.num_layers(config))
            if s.pre_budget is not None:
                sparsity = sparsity.replace(long=sparsity.long.replace(budget=s.pre_budget))
        except ValueError as e:
            raise ModelArgError(_flagged(_one_line(e))) from None
    try:
        qa = VideoQA.from_pretrained(ckpt, sparsity=sparsity, device=device, dtype=s.dtype,
                                     attn_implementation=s.attn_implementation, num_frames=s.num_frames,
                                     progress=False)
    except ValueError as e:
        raise ModelArgError(_flagged(_one_line(e))) from None
    qa.decode_progress = False
    return qa, qa.sparsity


# ----------------------------------------------------------------------------- request helpers
def video_input(visual: Any, num_frames: int) -> Any:
    """What a task's ``doc_to_visual`` returned -> a video for VideoQA: a file path, or the frames of a list of
    images as a uint8 array (T, H, W, 3) sampled uniformly to ``num_frames`` (every image resized to the
    first one's size). ValueError for anything else (no visual, several videos, audio)."""
    if visual is None:
        raise ValueError("the task gives no video for this question (text-only questions are not supported)")
    if isinstance(visual, (str, os.PathLike)):
        return os.fspath(visual)
    if isinstance(visual, dict) or not hasattr(visual, "__iter__"):
        raise ValueError(f"unsupported visual input {type(visual).__name__}: videosparse takes a video file or a list "
                         "of frames")
    items = list(visual)
    if not items:
        raise ValueError("the task gives no video for this question (text-only questions are not supported)")
    if all(isinstance(x, (str, os.PathLike)) for x in items):
        if len(items) > 1:
            raise ValueError(f"{len(items)} videos for one question: videosparse answers about one video")
        return os.fspath(items[0])
    if all(hasattr(x, "convert") and hasattr(x, "size") for x in items):  # PIL images: the frames of one video
        if len(items) == 1:
            raise ValueError("one image for this question: videosparse answers about videos (image tasks are not "
                             "supported)")
        import numpy as np

        from videosparse.video.sampling import uniform_indices

        if len(items) > num_frames:
            items = [items[int(i)] for i in uniform_indices(len(items), num_frames)]
        size = items[0].size
        frames = [np.asarray((im if im.size == size else im.resize(size)).convert("RGB"), dtype=np.uint8)
                  for im in items]
        return np.stack(frames)
    kinds = sorted({type(x).__name__ for x in items})
    raise ValueError(f"unsupported visual input (a list of {', '.join(kinds)}): videosparse takes a video file or a "
                     "list of frames")


def question_text(context: Any) -> str:
    """The task's prompt as the question: image placeholders (``<image>``, ``<image N>``) removed, since the video
    is placed by the model family's own template."""
    import re

    text = str(context)
    return re.sub(r"<image(?: \d+)?>", "", text).strip()


def generation_kwargs(gen_kwargs: dict | None, default_max_new: int) -> tuple:
    """lmms-eval's generation kwargs -> (``generate`` kwargs, stop strings, ignored keys). Greedy unless
    ``temperature`` > 0 (or ``do_sample`` true without a temperature); ``top_p`` and ``temperature`` only when
    sampling; ``num_beams`` > 1 is beam search; ``until``: stop strings cut from the answer."""
    g = dict(gen_kwargs or {})
    until = g.pop("until", None)
    if until is None:
        until = []
    elif isinstance(until, str):
        until = [until]
    elif not isinstance(until, (list, tuple)):
        raise ValueError(f"gen_kwargs['until'] must be a string or a list of strings, got {type(until).__name__}")
    until = [u for u in until if isinstance(u, str) and u]
    max_new = g.pop("max_new_tokens", None)
    max_new = default_max_new if max_new is None else int(max_new)
    temperature = g.pop("temperature", None)
    do_sample = g.pop("do_sample", None)
    top_p = g.pop("top_p", None)
    top_k = g.pop("top_k", None)
    num_beams = int(g.pop("num_beams", 1) or 1)
    if temperature is not None:
        sample = float(temperature) > 0
    else:
        sample = bool(do_sample)
    out: dict = {"max_new_tokens": max_new, "do_sample": sample}
    if sample:
        if temperature is not None:
            out["temperature"] = float(temperature)
        if top_p is not None:
            out["top_p"] = float(top_p)
        if top_k is not None:
            out["top_k"] = int(top_k)
    if num_beams > 1:
        out["num_beams"] = num_beams
    return out, until, sorted(g)


def cut_at_stops(text: str, until: list) -> str:
    """The answer up to the first occurrence of each stop string (as lmms-eval's own models apply ``until``)."""
    for term in until:
        text = text.split(term)[0]
    return text


def continuation_ids(tokenizer: Any, template: str, placeholder: str, question: str, continuation: str) -> list:
    """Token ids of ``continuation`` as it follows the prompt: the prompt's text after the video placeholder is
    tokenized with and without it and the difference taken (the tokenizer's merges across the boundary are then
    the ones the model sees); the continuation alone when the prompt's tokens change."""
    tail = template.format(question=question.strip()).split(placeholder, 1)[-1]
    a = tokenizer(tail, add_special_tokens=False)["input_ids"]
    b = tokenizer(tail + continuation, add_special_tokens=False)["input_ids"]
    if len(b) > len(a) and b[: len(a)] == a:
        return [int(t) for t in b[len(a):]]
    return [int(t) for t in tokenizer(continuation, add_special_tokens=False)["input_ids"]]


class ForcedContinuation:
    """A logits processor that teacher-forces one continuation per row through ``generate``: at step k it adds
    each row's log-probability of its k-th continuation token (log-softmax of the scores ``generate`` computed),
    records whether that token was the greedy choice, and lets only that token be generated. The prefill (and
    so the pruning, chosen by the prompt alone) and the KV cache are exactly those of generation."""

    def __init__(self, continuations: list) -> None:
        self.continuations = [list(c) for c in continuations]
        self.logprob = [0.0] * len(continuations)
        self.greedy = [True] * len(continuations)
        self.step = 0

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        logp = torch.log_softmax(scores.float(), dim=-1)
        best = scores.argmax(dim=-1)
        forced = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)
        for b, cont in enumerate(self.continuations):
            if self.step < len(cont):
                t = cont[self.step]
                self.logprob[b] += float(logp[b, t])
                self.greedy[b] = self.greedy[b] and int(best[b]) == t
                forced[b] = t
            else:  # this row's continuation is complete: any token, not scored
                forced[b] = cont[-1]
        self.step += 1
        out = torch.full_like(scores, float("-inf"))
        out[torch.arange(scores.shape[0], device=scores.device), forced] = 0.0
        return out


# ----------------------------------------------------------------------------- the lmms-eval classes
_CLASSES = ("VideoSparse", "VideoTokenCounts")


def __getattr__(name: str) -> Any:
    if name in _CLASSES:
        _define()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _log() -> Any:
    try:
        from loguru import logger as eval_logger

        return eval_logger
    except ImportError:  # pragma: no cover - lmms-eval installs loguru
        return logger


def _define() -> None:
    """Define VideoSparse and VideoTokenCounts on lmms-eval's base classes (ImportError without lmms-eval)."""
    if "VideoSparse" in globals():
        return
    try:
        from lmms_eval.api.instance import TokenCounts
        from lmms_eval.api.model import lmms
    except ImportError as e:
        raise ImportError(f"videosparse's lmms-eval model needs lmms-eval ({e}); install it as docs/lmms-eval.md "
                          "says: pip install -e '.[lmms]' then pip install --no-deps lmms-eval==0.7.3") from None
    try:
        from lmms_eval.api.instance import GenerationResult
    except ImportError:  # pragma: no cover - older lmms-eval: plain answers, no per-sample counts
        GenerationResult = None

    @dataclass
    class VideoTokenCounts(TokenCounts):
        """lmms-eval's per-request token counts plus this answer's videosparse record (``to_dict()["videosparse"]``)."""

        videosparse: dict | None = None

        def to_dict(self) -> dict:
            d = super().to_dict()
            if self.videosparse is not None:
                d["videosparse"] = dict(self.videosparse)
            return d

    class VideoSparse(lmms):
        """lmms-eval model: ``videosparse.VideoQA`` with a videosparse preset (see the module docstring)."""

        is_simple = True

        def __init__(self, pretrained: str | None = None, preset: str = "video", budget: Any = None,
                     num_frames: int | None = None, max_frames_num: int | None = None, fps: float | None = None,
                     pre_budget: int | None = None, dtype: str | None = None, device: str | None = None,
                     attn_implementation: str = "sdpa", batch_size: Any = 1, max_batch_size: Any = None,
                     max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, on_error: str = "record",
                     log_file: str | None = None, **kwargs: Any) -> None:
            super().__init__()
            args = dict(pretrained=pretrained, preset=preset, budget=budget, num_frames=num_frames,
                        max_frames_num=max_frames_num, fps=fps, pre_budget=pre_budget, dtype=dtype, device=device,
                        attn_implementation=attn_implementation, batch_size=batch_size, max_batch_size=max_batch_size,
                        max_new_tokens=max_new_tokens, on_error=on_error, log_file=log_file, **kwargs)
            self.settings = s = parse_model_args(**args)
            import torch
            from accelerate import Accelerator

            accelerator = Accelerator()
            dev = s.device
            if accelerator.num_processes > 1:
                # one model per process, as lmms-eval's own models: its GPU, or the CPU
                dev = f"cuda:{accelerator.local_process_index}" if torch.cuda.is_available() else "cpu"
                self.accelerator = accelerator
                self._rank = int(accelerator.process_index)
                self._world_size = int(accelerator.num_processes)
            else:
                dev = dev or ("cuda" if torch.cuda.is_available() else "cpu")
                self._rank, self._world_size = 0, 1
            self.qa, self.sparsity = load_videoqa(s, dev)
            self._device = self.qa.model.device
            self.records: list = []
            self._log_file = None
            self._warned: set = set()

        @classmethod
        def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> Any:
            """``--model_args`` + lmms-eval's ``--batch_size`` / ``--device``; a bad value is one line (under the
            lmms-eval command: on stderr, exit code 2)."""
            from lmms_eval import utils

            try:
                try:
                    args = utils.simple_parse_args_string(arg_string or "")
                except ValueError:
                    raise ModelArgError(f"model_args must be key=value pairs separated by commas, got {arg_string!r}") \
                        from None
                return cls(**merge_args(args, additional_config))
            except ModelArgError as e:
                _cli_exit(e)
                raise

        # ------------------------------------------------------------------ lmms-eval's properties
        @property
        def model(self) -> Any:
            return self.qa.model

        @property
        def tokenizer(self) -> Any:
            return self.qa.tokenizer

        @property
        def batch_size(self) -> int:
            return self.settings.batch_size

        @property
        def device(self) -> Any:
            return self._device

        @property
        def rank(self) -> int:
            return self._rank

        @property
        def world_size(self) -> int:
            return self._world_size

        # ------------------------------------------------------------------ requests
        def _visual(self, doc_to_visual: Any, doc_id: Any, task: str, split: str) -> Any:
            return video_input(doc_to_visual(self.task_dict[task][split][doc_id]), self.qa.num_frames)

        def _record(self, ans: Any, task: str, doc_id: Any, kind: str, error: str | None = None) -> dict:
            s = self.settings
            budget = s.budget if s.budget is not None else (
                getattr(self.sparsity, "budget", None) if self.sparsity is not None else None)
            if isinstance(budget, tuple):
                budget = [list(x) if isinstance(x, tuple) else x for x in budget]
            ok = ans is not None and not ans.error
            return {
                "task": task, "doc_id": doc_id, "request": kind, "pretrained": s.pretrained,
                "preset": s.preset or "none", "budget": budget, "pre_budget": s.pre_budget, "fps": s.fps,
                "num_frames": s.num_frames if s.num_frames is not None else (None if s.fps else self.qa.num_frames),
                "frames": len(ans.frame_indices) if ok else 0,
                "visual_tokens": int(ans.visual_tokens) if ok else 0,
                "pool_tokens": int(ans.pool_tokens) if ok else 0,
                "counts": [int(c) for c in ans.counts] if ok else [],
                "equivalent_tokens": round(float(ans.equivalent_tokens), 4) if ok else 0.0,
                "new_tokens": int(ans.new_tokens) if ok else 0,
                "prefill_seconds": round(float(ans.prefill_seconds), 6) if ok else 0.0,
                "decode_seconds": round(float(ans.decode_seconds), 6) if ok else 0.0,
                "error": error if error is not None else (ans.error if ans is not None else None),
            }

        def _emit(self, rec: dict) -> None:
            self.records.append(rec)
            path = self.settings.log_file
            if path is None:
                return
            if self._log_file is None:
                if self._world_size > 1:
                    root, ext = os.path.splitext(path)
                    path = f"{root}.rank{self._rank}{ext}"
                d = os.path.dirname(os.path.abspath(path))
                os.makedirs(d, exist_ok=True)
                self._log_file = open(path, "a", encoding="utf-8")
            self._log_file.write(json.dumps(rec, ensure_ascii=False, default=str) + "\n")
            self._log_file.flush()

        def _failed(self, task: str, doc_id: Any, error: str) -> None:
            if self.settings.on_error == "raise":
                raise RuntimeError(f"videosparse: {task} doc {doc_id}: {error}")
            _log().warning(f"videosparse: {task} doc {doc_id}: {error} (answered with an empty string; "
                           f"on_error=raise stops instead)")

        def _result(self, text: Any, rec: dict, output_tokens: int | None) -> Any:
            if GenerationResult is None:
                return text
            return GenerationResult(text=text, token_counts=VideoTokenCounts(output_tokens=output_tokens,
                                                                              videosparse=rec))

        def _progress(self, total: int, desc: str) -> Any:
            try:
                from tqdm import tqdm
            except ImportError:  # pragma: no cover
                return None
            return tqdm(total=total, disable=self._rank != 0, desc=desc)

        def _summary(self, kind: str, n: int) -> None:
            recs = [r for r in self.records[-n:] if not r["error"]] if n else []
            if not recs:
                return
            eq = sum(r["equivalent_tokens"] for r in recs) / len(recs)
            vt = sum(r["visual_tokens"] for r in recs) / len(recs)
            s = self.settings
            _log().info(f"videosparse {kind}: {len(recs)} answers, preset {s.preset or 'none'}"
                        + (f" budget {s.budget}" if s.budget is not None else "")
                        + f": mean equivalent tokens {eq:.1f} of {vt:.1f} visual tokens")

        def generate_until(self, requests: list) -> list:
            """Answers for (context, gen_kwargs, doc_to_visual, doc_id, task, split) requests, in order; consecutive
            requests with the same generation kwargs are batched ``batch_size`` at a time."""
            results: list = [None] * len(requests)
            groups: dict = {}
            for i, req in enumerate(requests):
                context, gen_kwargs, doc_to_visual, doc_id, task, split = req.args
                key = json.dumps(gen_kwargs, sort_keys=True, default=str)
                groups.setdefault(key, []).append(i)
            bar = self._progress(len(requests), "videosparse answering")
            for idx in groups.values():
                gen, until, ignored = generation_kwargs(requests[idx[0]].args[1], self.settings.max_new_tokens)
                for k in ignored:
                    if k not in self._warned:
                        self._warned.add(k)
                        _log().warning(f"videosparse: generation kwarg {k!r} is not used")
                for s in range(0, len(idx), self.batch_size):
                    chunk = idx[s : s + self.batch_size]
                    pairs, slots = [], []
                    for i in chunk:
                        context, _, doc_to_visual, doc_id, task, split = requests[i].args
                        try:
                            pairs.append((self._visual(doc_to_visual, doc_id, task, split), question_text(context)))
                            slots.append(i)
                        except (ValueError, OSError) as e:
                            rec = self._record(None, task, doc_id, "generate_until", error=_one_line(e))
                            self._emit(rec)
                            self._failed(task, doc_id, rec["error"])
                            results[i] = self._result("", rec, 0)
                    if pairs:
                        answers = self.qa.ask_many(pairs, batch_size=len(pairs), on_error="record",
                                                   **self.settings.ask_kwargs(), **gen)
                        for i, ans in zip(slots, answers):
                            _, _, _, doc_id, task, _ = requests[i].args
                            rec = self._record(ans, task, doc_id, "generate_until")
                            self._emit(rec)
                            if ans.error:
                                self._failed(task, doc_id, ans.error)
                                results[i] = self._result("", rec, 0)
                            else:
                                results[i] = self._result(cut_at_stops(ans.text, until), rec, int(ans.new_tokens))
                    if bar is not None:
                        bar.update(len(chunk))
            if bar is not None:
                bar.close()
            self._summary("generate_until", len(requests))
            return results

        def loglikelihood(self, requests: list) -> list:
            """(loss, is greedy) of each request's continuation after its context and video, where loss is the mean
            negative log-likelihood per continuation token: lmms-eval 0.7.3's convention (its own models return the
            Hugging Face loss and its multiple-choice scoring takes the argmin), not the log-probability its base
            class docstring names. The continuation is teacher-forced through ``generate``
            (:class:`ForcedContinuation`), so the pruning is chosen by the prompt alone, as when answering. Requests
            with the same context, video and task (a multiple-choice question's options) share one batch.

            Each result is a ``GenerationResult`` whose ``text`` is the (loss, is greedy) pair: lmms-eval 0.7.3 turns a
            plain tuple into its string (``unwrap_generation_output``), which its scoring cannot read."""
            from transformers import LogitsProcessorList

            from videosparse.pipeline import model_question

            results: list = [None] * len(requests)
            groups: dict = {}
            for i, req in enumerate(requests):
                context, continuation, doc_to_visual, doc_id, task, split = req.args
                groups.setdefault((str(context), str(doc_id), task, split), []).append(i)
            bar = self._progress(len(requests), "videosparse scoring")
            qa = self.qa
            for (context, doc_id_s, task, split), idx in groups.items():
                first = requests[idx[0]].args
                doc_to_visual, doc_id = first[2], first[3]
                question = question_text(context)
                try:
                    video = self._visual(doc_to_visual, doc_id, task, split)
                except (ValueError, OSError) as e:
                    video, err = None, _one_line(e)
                conts = []
                for i in idx:
                    cont = requests[i].args[1]
                    if callable(cont):  # output_type loglikelihood: the task's doc_to_target
                        cont = cont(self.task_dict[task][split][doc_id])
                    cont = cont[0] if isinstance(cont, (list, tuple)) and cont else cont
                    conts.append(continuation_ids(qa.tokenizer, qa.prompt_template, qa.frontend.video_placeholder,
                                                  model_question(qa.tokenizer, question), str(cont)))
                todo = [k for k, c in enumerate(conts) if c]
                for k, c in enumerate(conts):
                    if not c:  # an empty continuation: probability 1
                        rec = self._record(None, task, doc_id, "loglikelihood")
                        self._emit(rec)
                        results[idx[k]] = self._result((0.0, True), rec, None)
                if video is None:
                    for k in todo:
                        rec = self._record(None, task, doc_id, "loglikelihood", error=err)
                        self._emit(rec)
                        self._failed(task, doc_id, err)
                        results[idx[k]] = self._result((float("inf"), False), rec, None)
                    continue
                for s in range(0, len(todo), self.batch_size):
                    part = todo[s : s + self.batch_size]
                    proc = ForcedContinuation([conts[k] for k in part])
                    answers = qa.ask_many([(video, question)] * len(part), batch_size=len(part), on_error="record",
                                          **self.settings.ask_kwargs(), max_new_tokens=max(len(conts[k]) for k in part),
                                          do_sample=False, repetition_penalty=1.0,
                                          logits_processor=LogitsProcessorList([proc]))
                    for j, (k, ans) in enumerate(zip(part, answers)):
                        rec = self._record(ans, task, doc_id, "loglikelihood")
                        self._emit(rec)
                        if ans.error:
                            self._failed(task, doc_id, ans.error)
                            results[idx[k]] = self._result((float("inf"), False), rec, None)
                        else:
                            # lmms-eval's convention: the first value is the loss (mean negative log-likelihood per
                            # continuation token, as its own models return the HF loss); its scoring takes the argmin
                            loss = -proc.logprob[j] / len(conts[k])
                            rec["loglikelihood"] = round(proc.logprob[j], 6)
                            rec["loss"] = round(loss, 6)
                            results[idx[k]] = self._result((float(loss), bool(proc.greedy[j])), rec, None)
                if bar is not None:
                    bar.update(len(idx))
            if bar is not None:
                bar.close()
            self._summary("loglikelihood", len(requests))
            return results

        def generate_until_multi_round(self, requests: list) -> list:
            raise NotImplementedError("videosparse: multi-round generation (generate_until_multi_round) is not "
                                      "supported; it answers one question per video (generate_until) and scores "
                                      "options (loglikelihood)")

        def clean(self) -> None:
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None
            super().clean()

    VideoSparse.__module__ = __name__
    VideoTokenCounts.__module__ = __name__
    VideoTokenCounts.__qualname__ = "VideoTokenCounts"
    VideoSparse.__qualname__ = "VideoSparse"
    globals()["VideoTokenCounts"] = VideoTokenCounts
    globals()["VideoSparse"] = VideoSparse

