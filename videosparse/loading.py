"""Everything that can be checked before a model's weights are loaded, checked before loading them.

* :func:`resolve_checkpoint`: ``"testbed"`` | local directory | hub id -> a :class:`Checkpoint`
  whose ``model_type`` is supported, read from ``config.json`` alone (no weights). A path that does
  not exist, a directory without ``config.json``, an unreachable hub with the model not cached, and a
  checkpoint of another architecture all fail in well under a second with one line saying what to do.
* :func:`resolve_dtype` / :func:`resolve_device`: names validated (and the device's availability
  checked) before loading.
* :func:`context_error` / :func:`vocabulary_problem`: the prompt must fit the model's positions and
  the question must be made of tokens the model knows.

Nothing here reads environment variables itself; ``HF_HUB_OFFLINE`` is honoured through
``huggingface_hub``'s own setting.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from typing import Any

from videosparse.frontends import registered_frontends

logger = logging.getLogger(__name__)

# model_type (config.json) -> what is supported: one entry per front end (`tests` check every one also has a
# family adapter)
SUPPORTED_MODEL_TYPES = {key: fe.description for key, fe in sorted(registered_frontends().items())}
# families the engine prunes (an adapter) that have no front end yet: `sparsify` only
ENGINE_ONLY_MODEL_TYPES: tuple = ()

DTYPES = {
    "float32": "float32", "fp32": "float32", "float": "float32",
    "float16": "float16", "fp16": "float16", "half": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
}

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")

WHAT_TO_DO = ("use the embedded test bed (model 'testbed'), a local checkpoint directory, or download the "
              "model where there is network (`hf download {repo}`) and set HF_HUB_OFFLINE=1")


class CheckpointError(ValueError):
    """The model argument cannot be used: missing path, not a checkpoint, unsupported or unreachable."""


@dataclass(frozen=True)
class Checkpoint:
    """A model source that passed the pre-load checks.

    name: what the user asked for; source: local directory or hub repo id handed to ``from_pretrained``;
    local_files_only: load without network (local directory, or hub files already in the HF cache while
    the hub is unreachable/offline); model_type: from config.json; config_dict: config.json's content.
    """

    name: str
    source: str
    local_files_only: bool
    model_type: str
    config_dict: dict

    def load_config(self) -> Any:
        """The transformers config object (``AutoConfig``), without network when the source is local."""
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(self.source, local_files_only=self.local_files_only)


def _looks_like_path(name: str) -> bool:
    """A filesystem path rather than a hub id (``name`` or ``owner/name``)."""
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1 or not _HUB_ID.match(name)


def _hub_unreachable(timeout: float) -> str | None:
    """None when the hub answers; otherwise the reason, in one line. One request, no retries."""
    try:
        from huggingface_hub import constants
        from huggingface_hub.utils import get_session
    except ImportError as e:  # pragma: no cover - transformers depends on huggingface_hub
        return f"huggingface_hub is not importable ({e})"
    try:
        get_session().head(constants.ENDPOINT, timeout=timeout)
    except Exception as e:  # any transport error: DNS, refused, timeout, proxy
        msg = str(e).strip().splitlines()
        return f"cannot reach {constants.ENDPOINT} ({msg[0] if msg else type(e).__name__})"
    return None


def _hub_offline() -> bool:
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover
        return False
    return bool(constants.HF_HUB_OFFLINE)


def check_model_type(model_type: str | None, name: str, architectures: Any = None) -> None:
    """Raise :class:`CheckpointError` unless ``model_type`` has an adapter."""
    if model_type in SUPPORTED_MODEL_TYPES:
        return
    arch = f" ({', '.join(architectures)})" if architectures else ""
    supported = "; ".join(f"{k}: {v}" for k, v in SUPPORTED_MODEL_TYPES.items())
    if model_type in ENGINE_ONLY_MODEL_TYPES:
        raise CheckpointError(
            f"{name} is a {model_type!r} checkpoint{arch}: videosparse prunes it through `sparsify(model, cfg)` on a "
            f"model you load with transformers, but VideoQA, the CLI and the evaluation runner do not support it "
            f"yet. They support: {supported}")
    raise CheckpointError(
        f"{name} is a {model_type!r} checkpoint{arch}, which videosparse does not support. Supported: {supported}"
    )


def resolve_checkpoint(name: "str | Checkpoint", *, offline: bool | None = None, network_timeout: float = 3.0) -> Checkpoint:
    """Resolve and validate a model argument without loading weights.

    name: ``"testbed"`` (the embedded test-bed model), a local checkpoint directory, or a hub repo id
        (``owner/name``). A local directory called ``testbed`` is reached as ``./testbed``.
    offline: None = huggingface_hub's setting (``HF_HUB_OFFLINE``); True = never touch the network.
    network_timeout: seconds for the one reachability request made for hub ids.

    Raises CheckpointError (a ValueError) with one line that says what to do, and RuntimeError naming the
    installed transformers and the range to install when it is unsupported (before anything is loaded).
    """
    from videosparse import testbed
    from videosparse.compat import check_transformers_version

    check_transformers_version()

    if isinstance(name, Checkpoint):
        return name
    if not isinstance(name, str) or not name.strip():
        raise CheckpointError("the model is empty: pass 'testbed', a checkpoint directory or a hub id")
    if testbed.is_name(name):  # "testbed", "testbed-onevision": the embedded test-bed models
        try:
            source = testbed.resolve(name)
        except FileNotFoundError as e:
            raise CheckpointError(str(e)) from None
        return _from_dir(name, source)
    expanded = os.path.expanduser(name)
    if os.path.isdir(expanded):
        return _from_dir(name, expanded)
    if os.path.exists(expanded):
        raise CheckpointError(f"{name} is a file; the model must be a checkpoint directory (with config.json), "
                              f"a hub id or 'testbed'")
    if _looks_like_path(name):
        raise CheckpointError(f"{name}: no such directory (a local checkpoint directory must exist; a hub id "
                              f"looks like owner/name; 'testbed' is the embedded test-bed model)")
    return _from_hub(name, offline, network_timeout)


def _from_dir(name: str, path: str) -> Checkpoint:
    cfg_file = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_file):
        raise CheckpointError(f"{name}: not a Hugging Face checkpoint directory (no config.json in it)")
    d = _read_json(cfg_file, name)
    check_model_type(d.get("model_type"), name, d.get("architectures"))
    return Checkpoint(name=name, source=path, local_files_only=True, model_type=d["model_type"], config_dict=d)


def _read_json(path: str, name: str) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            d = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{name}: config.json is unreadable ({type(e).__name__}: {e})") from None
    if not isinstance(d, dict):
        raise CheckpointError(f"{name}: config.json is not a JSON object")
    return d


def _from_hub(repo: str, offline: bool | None, timeout: float) -> Checkpoint:
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(repo, "config.json")
    cached = cached if isinstance(cached, str) else None
    offline = _hub_offline() if offline is None else offline
    reason = "offline mode (HF_HUB_OFFLINE)" if offline else _hub_unreachable(timeout)
    if reason is None:  # the hub answers: normal download/cache behaviour
        from huggingface_hub import hf_hub_download

        try:
            cfg_file = hf_hub_download(repo, "config.json")
        except Exception as e:
            msg = str(e).strip().splitlines()
            raise CheckpointError(f"{repo}: cannot fetch config.json from the hub "
                                  f"({type(e).__name__}: {msg[0] if msg else ''})") from None
        d = _read_json(cfg_file, repo)
        check_model_type(d.get("model_type"), repo, d.get("architectures"))
        return Checkpoint(name=repo, source=repo, local_files_only=False, model_type=d["model_type"], config_dict=d)
    if cached is None:
        raise CheckpointError(f"{reason}, and {repo} is not in the local Hugging Face cache: "
                              + WHAT_TO_DO.format(repo=repo))
    logger.info("%s; using the cached copy of %s", reason, repo)
    d = _read_json(cached, repo)
    check_model_type(d.get("model_type"), repo, d.get("architectures"))
    return Checkpoint(name=repo, source=repo, local_files_only=True, model_type=d["model_type"], config_dict=d)


def resolve_dtype(dtype: Any) -> Any:
    """None -> None (checkpoint's dtype); a name (``float16``, ``bf16``, ...) or torch dtype -> torch dtype."""
    if dtype is None:
        return None
    import torch

    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point type, got {dtype}")
        return dtype
    if isinstance(dtype, str) and dtype.lower() in DTYPES:
        return getattr(torch, DTYPES[dtype.lower()])
    raise ValueError(f"unknown dtype {dtype!r}; expected one of float32, float16, bfloat16 (or fp32, fp16, bf16)")


def resolve_device(device: Any) -> Any:
    """None -> "cpu"; otherwise the device, checked to exist on this machine (CUDA/MPS availability)."""
    if device is None:
        return "cpu"
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"unknown device {device!r}; expected cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA" if torch.version.cuda is None else "no GPU is visible"
            raise ValueError(f"device {device!r}: CUDA is not available on this machine ({why}); use cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ValueError(f"device {device!r}: MPS is not available on this machine; use cpu")
    elif dev.type != "cpu":
        raise ValueError(f"device {device!r}: unsupported device type {dev.type!r}; expected cpu, cuda or mps")
    return device if isinstance(device, str) else str(dev)


def context_error(prompt_tokens: int, max_new_tokens: int, limit: int | None, num_frames: int,
                  tokens_per_frame: int) -> str | None:
    """The message when a prompt of ``prompt_tokens`` (incl. ``num_frames x tokens_per_frame`` visual
    tokens) plus ``max_new_tokens`` does not fit ``limit`` positions; None when it fits or limit is None."""
    if not limit:
        return None
    need = prompt_tokens + max_new_tokens
    if need <= limit:
        return None
    visual = num_frames * tokens_per_frame
    text = prompt_tokens - visual
    room = limit - text - max_new_tokens
    fit = max(0, room // tokens_per_frame) if tokens_per_frame > 0 else 0
    hint = (f"use at most {fit} frames" if fit >= 1 else
            "even 1 frame does not fit: shorten the question or lower max_new_tokens")
    return (f"the prompt does not fit the model's context: {num_frames} frames x {tokens_per_frame} visual tokens "
            f"= {visual} + {text} text tokens + {max_new_tokens} new tokens = {need} positions, but the model has "
            f"{limit} (max_position_embeddings); {hint}")


def vocabulary_problem(tokenizer: Any, question: str, max_unknown_share: float = 0.5) -> str | None:
    """A message when most of ``question``'s tokens are the tokenizer's unknown token; None otherwise.

    Byte-level tokenizers (Llama's) never produce unknown tokens, so this only fires for closed
    vocabularies such as the test bed's word-level tokenizer. A minority of unknown words is logged.
    """
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None:
        return None
    try:
        enc = tokenizer(question, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        offsets = enc.get("offset_mapping")
    except (NotImplementedError, TypeError, ValueError):  # slow tokenizers have no offsets
        enc = tokenizer(question, add_special_tokens=False, verbose=False)
        offsets = None
    ids = list(enc["input_ids"])
    if not ids:
        return None
    bad = [i for i, t in enumerate(ids) if t == unk]
    if not bad:
        return None
    words = [question[offsets[i][0]:offsets[i][1]] for i in bad[:5]] if offsets else []
    shown = f" ({', '.join(repr(w) for w in words)}{', ...' if len(bad) > 5 else ''})" if words else ""
    msg = f"{len(bad)} of the question's {len(ids)} tokens are unknown to the model's tokenizer{shown}"
    if len(bad) / len(ids) > max_unknown_share:
        vocab = getattr(tokenizer, "vocab_size", None)
        return f"{msg}: the model cannot read this question (its vocabulary has {vocab} tokens)"
    logger.warning("%s", msg)
    return None
