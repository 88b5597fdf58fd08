"""The embedded test bed: a small trained Video-LLaVA shipped inside the package.

* ``videosparse.testbed.synthetic``: the procedural video-QA generator it was trained on (numpy only).
* ``videosparse.testbed.model``: tokenizer/config builders, ``load_testbed()``, ``evaluate()``.
* ``path()``: the directory of the shipped checkpoint. ``VideoQA.from_pretrained("testbed")`` and
  ``videosparse ask --model testbed`` load it by name (``NAME``).

Importing this package imports nothing heavy (no torch, no transformers).
"""

from __future__ import annotations

import os

NAME = "testbed"

__all__ = ["NAME", "path", "resolve"]


def path() -> str:
    """Directory of the test-bed checkpoint shipped inside the package (``videosparse/assets/testbed``)."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.path.join(here, "assets", "testbed")


def resolve(model_id_or_path: str) -> str:
    """``"testbed"`` -> the embedded checkpoint's directory; anything else is returned unchanged.

    A local directory that happens to be called ``testbed`` is reached as ``./testbed``.
    """
    if model_id_or_path == NAME:
        p = path()
        if not os.path.isfile(os.path.join(p, "config.json")):
            raise FileNotFoundError(f"the embedded test-bed model is missing at {p} (broken installation?)")
        return p
    return model_id_or_path
