"""Front ends: what `VideoQA` needs to know about one model family, one file per family.

``frontend_for(config)`` returns the front end of a checkpoint's config (keyed by config.json
``model_type``); ``register_frontend`` adds one. Importing this package imports neither torch nor
transformers.
"""

from __future__ import annotations

from videosparse.frontends.base import (
    FrontEnd,
    frontend_for,
    get_frontend,
    register_frontend,
    registered_frontends,
    tokens_per_frame,
)
from videosparse.frontends import llava_onevision as _llava_onevision  # noqa: F401  (registers the front end)
from videosparse.frontends import qwen_vl as _qwen_vl  # noqa: F401  (registers the front ends)
from videosparse.frontends import video_llava as _video_llava  # noqa: F401  (registers the front end)

__all__ = ["FrontEnd", "frontend_for", "get_frontend", "register_frontend", "registered_frontends",
           "tokens_per_frame"]
