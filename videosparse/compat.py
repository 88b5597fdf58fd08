"""transformers feature detection: the only place that knows how releases differ.

Every supported release is handled by reading what the installed transformers offers (signatures,
output dataclass fields), never by comparing version numbers, except for the coarse range check in
`check_transformers_version`, which only names the releases known to work or known to break.

Differences handled here:
* 5.24 renamed the decoder's and the decoder layers' ``past_key_values`` keyword to ``cache`` (the old
  name stays a deprecated alias on the outer models until 5.40; when both are given, ``cache`` wins),
  renamed the ``past_key_values`` field of the output dataclasses to ``cache``, and renamed the 4th
  parameter of ``create_causal_mask`` (still the 4th positional one).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

# The lowest release the model tests run on in CI, and the first release known to break: 5.40 removes
# the deprecated ``past_key_values`` alias that 5.24 kept for callers (ours pass whichever name the
# installed release declares, but the range stays honest about what was tested against).
MIN_TRANSFORMERS = (5, 20)
BREAKS_AT = (5, 40)
SUPPORTED_SPEC = f">={MIN_TRANSFORMERS[0]}.{MIN_TRANSFORMERS[1]},<{BREAKS_AT[0]}.{BREAKS_AT[1]}"

CACHE_NAMES = ("cache", "past_key_values")  # new name first: when both are passed, `cache` wins


def _parse(version: str) -> tuple[int, int] | None:
    parts = version.split(".")
    try:
        return int(parts[0]), int("".join(ch for ch in parts[1] if ch.isdigit()) or "x")
    except (ValueError, IndexError):
        return None


def check_transformers_version(version: str | None = None) -> None:
    """Raise RuntimeError naming the installed transformers and what to install when it is outside
    the supported range (``SUPPORTED_SPEC``); also when a required feature is missing."""
    if version is None:
        import transformers

        version = transformers.__version__
    parsed = _parse(version)
    if parsed is None or not (MIN_TRANSFORMERS <= parsed < BREAKS_AT):
        raise RuntimeError(
            f"videosparse supports transformers {SUPPORTED_SPEC}; found transformers {version}. "
            f"Install a supported release: pip install 'transformers{SUPPORTED_SPEC}'"
        )


@functools.lru_cache(maxsize=None)
def _cache_param(fn: Callable) -> str:
    """The keyword `fn` takes its cache by: 'cache' (5.24+) or 'past_key_values' (older)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return "past_key_values"
    for name in CACHE_NAMES:
        if name in params and params[name].kind is not inspect.Parameter.VAR_KEYWORD:
            return name
    return "past_key_values"


def cache_keyword(module: Any) -> str:
    """The keyword a module's (or module class's) forward declares for the KV cache: 'cache' (5.24+)
    or 'past_key_values'. Signature-preserving wrappers are followed."""
    cls = module if isinstance(module, type) else type(module)
    return _cache_param(cls.forward)


def get_cache(kwargs: dict) -> Any:
    """The cache passed in `kwargs` under either name (``cache`` wins when both are given)."""
    for name in CACHE_NAMES:
        value = kwargs.get(name)
        if value is not None:
            return value
    return None


def causal_mask(config: Any, inputs_embeds: Any, attention_mask: Any, cache: Any, position_ids: Any = None,
                layer_idx: int | None = None) -> Any:
    """`transformers.masking_utils.create_causal_mask` with the cache passed positionally (its 4th
    parameter in every supported release, whatever its name)."""
    from transformers.masking_utils import create_causal_mask

    kwargs: dict = {"position_ids": position_ids}
    if layer_idx is not None:
        kwargs["layer_idx"] = layer_idx
    return create_causal_mask(config, inputs_embeds, attention_mask, cache, **kwargs)


def output_cache(output: Any) -> Any:
    """The cache of a model output under either field name."""
    for name in CACHE_NAMES:
        value = getattr(output, name, None)
        if value is not None:
            return value
    return None


def load_kwargs() -> dict:
    """Extra keyword arguments for ``PreTrainedModel.from_pretrained`` on the installed release.

    5.25 turned hub kernels on by default and then fails to load any model when the ``kernels`` package is
    missing (it is a dependency of 5.25 that some indexes lack, so 5.25 is installed with ``--no-deps``).
    Kernels only replace layers by faster GPU implementations, so without the package they are turned off
    (``use_kernels`` is accepted, default off, by every supported release)."""
    import importlib.util

    if importlib.util.find_spec("kernels") is None:
        return {"use_kernels": False}
    return {}
