"""videosparse: question-guided spatio-temporal visual token sparsification for video LLMs.

Public API (imported lazily so that ``import videosparse`` and ``videosparse --help`` do not
import torch or transformers)::

    from videosparse import LongVideoConfig, SparseConfig, sparsify
    handle = sparsify(model, SparseConfig.preset("video", budget=0.1))
    out = model.generate(**inputs)      # pruned prefill, pruned KV cache
    handle.trace                        # RetentionTrace of the last prefill
    handle.remove()                     # model restored exactly
    SparseConfig(long=LongVideoConfig(budget=2056))  # long videos: the pool before the decoder
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "SparseConfig": "videosparse.config",
    "LongVideoConfig": "videosparse.config",
    "PRESETS": "videosparse.config",
    "sparsify": "videosparse.models",
    "SparseHandle": "videosparse.models.base",
    "RetentionTrace": "videosparse.core.trace",
    "StageRecord": "videosparse.core.trace",
    "VideoQA": "videosparse.pipeline",
    "Answer": "videosparse.pipeline",
    "load_video": "videosparse.video",
    "Clip": "videosparse.video",
    "VideoError": "videosparse.video",
}

__all__ = sorted(_LAZY) + ["__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from videosparse.config import PRESETS, LongVideoConfig, SparseConfig
    from videosparse.core.trace import RetentionTrace, StageRecord
    from videosparse.models import sparsify
    from videosparse.models.base import SparseHandle


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'videosparse' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
