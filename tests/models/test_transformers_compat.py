"""transformers release differences handled by feature detection (videosparse.compat).

5.24 renamed the decoder's and the decoder layers' `past_key_values` keyword to `cache` (the old name is a
deprecated alias on the outer models until 5.40; `cache` wins when both are given) and the output
dataclasses' field. These tests pin the detection on stand-ins for both releases, and on the installed
release check that the pruned prefill/decode passes the cache by the keyword the layers declare. CI runs
the model tests on the oldest supported and the newest installable release with FutureWarnings as errors.
"""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch

from conftest import make_inputs
from videosparse import SparseConfig, sparsify
from videosparse import compat


@pytest.mark.parametrize("version,ok", [
    ("5.20.0", True), ("5.23.0", True), ("5.24.0", True), ("5.25.0", True), ("5.39.2", True),
    ("5.40.0", False), ("5.19.0", False), ("4.57.6", False), ("6.0.0", False), ("5.25.0.dev0", True),
    ("nonsense", False),
])
def test_version_range(version, ok):
    if ok:
        compat.check_transformers_version(version)
    else:
        with pytest.raises(RuntimeError, match=rf"found transformers {version}\..*pip install 'transformers>="):
            compat.check_transformers_version(version)


def test_cache_keyword_follows_the_signature():
    class Old(torch.nn.Module):
        def forward(self, hidden_states, attention_mask=None, past_key_values=None, **kwargs):
            return hidden_states

    class New(torch.nn.Module):
        def forward(self, hidden_states, attention_mask=None, cache=None, **kwargs):
            return hidden_states

    class KwargsOnly(torch.nn.Module):
        def forward(self, hidden_states, **cache):  # a **kwargs named like the new keyword does not count
            return hidden_states

    assert compat.cache_keyword(Old()) == "past_key_values"
    assert compat.cache_keyword(New) == "cache"
    assert compat.cache_keyword(KwargsOnly()) == "past_key_values"


def test_cache_read_under_either_name_new_name_wins():
    a, b = object(), object()
    assert compat.get_cache({"past_key_values": a}) is a
    assert compat.get_cache({"cache": b}) is b
    assert compat.get_cache({"cache": b, "past_key_values": a}) is b
    assert compat.get_cache({"cache": None, "past_key_values": a}) is a


def test_output_cache_read_under_either_field():
    @dataclasses.dataclass
    class OldOut:
        last_hidden_state: object = None
        past_key_values: object = None

    @dataclasses.dataclass
    class NewOut:
        last_hidden_state: object = None
        cache: object = None

    c = object()
    assert compat.output_cache(OldOut(past_key_values=c)) is c and compat.output_cache(NewOut(cache=c)) is c


def test_layers_receive_the_cache_by_their_own_keyword(tiny_models):
    """Every decoder layer call of a pruned prefill and of a decode step gets the (same) cache object under
    the keyword its signature declares; on 5.24+ a cache passed as `past_key_values` would land in
    **kwargs and the layer would run without one (decode read the wrong cache)."""
    model = tiny_models["sdpa"]
    layers = model.model.get_decoder().layers
    name = compat.cache_keyword(layers[0])
    other = "past_key_values" if name == "cache" else "cache"
    seen = []

    def hook(module, args, kwargs):
        seen.append((kwargs.get(name), other in kwargs))

    hooks = [layer.register_forward_pre_hook(hook, with_kwargs=True) for layer in layers]
    inp = make_inputs(model, frames=4, questions=((9, 10, 11),))
    try:
        with sparsify(model, SparseConfig(budget=12, layers=(1,))), warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)  # no deprecated alias on the way
            out = model.generate(**inp, max_new_tokens=3, do_sample=False)
    finally:
        for h in hooks:
            h.remove()
    assert out.shape[1] == inp["input_ids"].shape[1] + 3
    assert len(seen) == 3 * len(layers)  # prefill + 2 decode steps
    caches = {id(c) for c, _ in seen}
    assert None not in {c for c, _ in seen} and len(caches) == 1
    assert not any(misplaced for _, misplaced in seen)
