"""The short (8-frame) path is unchanged by the long-video work.

``tests/data/short_path_reference.json`` was written by ``scripts/make_short_path_reference.py`` from
commit a7c9942 (before the long-video path). Here the same computations run with the current code and
must match: texts, counts, kept ids, frame indices, timestamps and token counts exactly; stage scores
within 1e-4 absolute; equivalent tokens within 1e-6.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "tests", "data", "short_path_reference.json")
SCORE_ATOL = 1e-4
EQUIV_ATOL = 1e-6


@pytest.fixture(scope="module")
def reference() -> dict:
    with open(FIXTURE) as fh:
        return json.load(fh)


@pytest.fixture(scope="module")
def current() -> dict:
    spec = importlib.util.spec_from_file_location("make_short_path_reference",
                                                  os.path.join(ROOT, "scripts", "make_short_path_reference.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    try:
        spec.loader.exec_module(mod)
        return mod.compute_reference()
    finally:
        sys.modules.pop(spec.name, None)


def _diff(path: str, want, got, out: list) -> None:
    """Every difference between two JSON values, as 'path: want != got' lines."""
    leaf = path.rsplit(".", 1)[-1].split("[", 1)[0]
    if isinstance(want, dict) and isinstance(got, dict):
        for k in sorted(set(want) | set(got)):
            if k not in got or k not in want:
                out.append(f"{path}.{k}: {'missing' if k not in got else 'unexpected'}")
            else:
                _diff(f"{path}.{k}", want[k], got[k], out)
    elif isinstance(want, list) and isinstance(got, list):
        if len(want) != len(got):
            out.append(f"{path}: length {len(want)} != {len(got)}")
            return
        if leaf == "scores":
            bad = [i for i, (a, b) in enumerate(zip(want, got))
                   if (a is None) != (b is None) or (a is not None and abs(a - b) > SCORE_ATOL)]
            if bad:
                worst = max((abs(want[i] - got[i]) for i in bad if want[i] is not None and got[i] is not None),
                            default=float("nan"))
                out.append(f"{path}: {len(bad)} of {len(want)} scores differ (first at {bad[0]}: "
                           f"{want[bad[0]]} != {got[bad[0]]}; max abs diff {worst:.3g})")
            return
        if leaf == "kept" and want != got:
            out.append(f"{path}: kept ids differ ({len(set(want) ^ set(got))} ids in only one of them; "
                       f"reference {want[:8]}... current {got[:8]}...)")
            return
        for i, (a, b) in enumerate(zip(want, got)):
            _diff(f"{path}[{i}]", a, b, out)
    elif leaf == "equivalent_tokens" and isinstance(want, (int, float)) and isinstance(got, (int, float)):
        if not math.isclose(want, got, rel_tol=0.0, abs_tol=EQUIV_ATOL):
            out.append(f"{path}: {want} != {got}")
    elif want != got or type(want) is not type(got) and not (isinstance(want, (int, float)) and isinstance(got, (int, float))):
        out.append(f"{path}: {want!r} != {got!r}")


def _check(section: str, reference: dict, current: dict) -> None:
    out: list = []
    _diff(section, reference[section], current[section], out)
    assert not out, f"{len(out)} difference(s) from the pre-long-video reference:\n" + "\n".join(out[:50])


def test_fixture_is_from_before_the_long_video_work(reference):
    assert reference["source"].get("commit", "").startswith("a7c9942")
    assert not reference["source"].get("package_modified")


def test_same_inputs(reference, current):
    _check("inputs", reference, current)


@pytest.mark.parametrize("section", ["single", "batched", "beams", "file", "full"])
def test_short_path_unchanged(section, reference, current):
    _check(section, reference, current)
