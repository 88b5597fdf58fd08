"""Model adapters and the public entry point `sparsify`."""

from __future__ import annotations

from typing import Any

from videosparse.models.base import SparseHandle, find_adapter, registered_adapters
from videosparse.models import llava_onevision as _llava_onevision  # noqa: F401  (registers the adapter)
from videosparse.models import qwen_vl as _qwen_vl  # noqa: F401  (registers the adapters)
from videosparse.models import video_llava as _video_llava  # noqa: F401  (registers the adapter)


def sparsify(model: Any, config: Any = None) -> SparseHandle:
    """Patch `model` in place so its prefill prunes visual tokens according to `config`.

    Returns a SparseHandle: `handle.remove()` (or leaving a `with` block) restores the model exactly;
    `handle.trace` is the RetentionTrace of the last pruned prefill. The user's own
    `model(**inputs)` / `model.generate(**inputs)` then run pruned, with the KV cache.
    `config` defaults to the `video` preset for the model's depth.
    """
    from videosparse.config import SparseConfig

    adapter_cls = find_adapter(model)
    if config is None:
        layers = len(adapter_cls.decoder_layers(model)) if hasattr(adapter_cls, "decoder_layers") else 32
        config = SparseConfig.preset("video", num_layers=layers)
    if isinstance(config, str):
        raise ValueError("sparsify: pass a SparseConfig (e.g. SparseConfig.preset(name)), not a string")
    if not isinstance(config, SparseConfig):
        raise ValueError(f"sparsify: config must be a SparseConfig, got {type(config).__name__}")
    adapter = adapter_cls(model, config)
    handle = SparseHandle(model, config, adapter)
    adapter.install(handle)
    return handle


__all__ = ["sparsify", "SparseHandle", "registered_adapters"]
