"""The embedded test beds: small trained video LLMs shipped inside the package.

* ``videosparse.testbed.synthetic``: the procedural video-QA generator they were trained on (numpy only).
* ``videosparse.testbed.model``: tokenizer/config builders, ``load_testbed()``, ``evaluate()``.
* ``path(name)``: the directory of a shipped checkpoint. ``VideoQA.from_pretrained(name)`` and
  ``videosparse ask --model <name>`` load them by name (``NAMES``):

  - ``"testbed"`` (``NAME``): Video-LLaVA geometry (``videosparse/assets/testbed``);
  - ``"testbed-onevision"`` (``ONEVISION_NAME``): LLaVA-OneVision geometry
    (``videosparse/assets/testbed_onevision``).

Importing this package imports nothing heavy (no torch, no transformers).
"""

from __future__ import annotations

import os

NAME = "testbed"
ONEVISION_NAME = "testbed-onevision"
# test-bed name -> directory under videosparse/assets
NAMES = {NAME: "testbed", ONEVISION_NAME: "testbed_onevision"}

__all__ = ["NAME", "NAMES", "ONEVISION_NAME", "is_name", "path", "resolve"]


def is_name(model_id_or_path: str) -> bool:
    """True for the name of an embedded test bed (``"testbed"``, ``"testbed-onevision"``)."""
    return isinstance(model_id_or_path, str) and model_id_or_path in NAMES


def path(name: str = NAME) -> str:
    """Directory of a test-bed checkpoint shipped inside the package (default: ``videosparse/assets/testbed``)."""
    if name not in NAMES:
        raise ValueError(f"unknown test bed {name!r}; choose one of {', '.join(NAMES)}")
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.path.join(here, "assets", NAMES[name])


def resolve(model_id_or_path: str) -> str:
    """A test-bed name (``"testbed"``, ``"testbed-onevision"``) -> the embedded checkpoint's directory;
    anything else is returned unchanged.

    A local directory that happens to be called ``testbed`` is reached as ``./testbed``.
    """
    if is_name(model_id_or_path):
        p = path(model_id_or_path)
        if not os.path.isfile(os.path.join(p, "config.json")):
            raise FileNotFoundError(f"the embedded test-bed model {model_id_or_path!r} is missing at {p} "
                                    f"(broken installation?)")
        return p
    return model_id_or_path
