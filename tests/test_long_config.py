"""LongVideoConfig: the long-video settings split out of SparseConfig (``cfg.long``), and the compatibility of
the flat spelling of earlier releases (pre_budget=, ..., chunk_frames=): keywords, attributes, config files,
traces and pickles."""

from __future__ import annotations

import copy
import dataclasses
import glob
import inspect
import json
import os
import pickle
import warnings

import pytest

from videosparse import LongVideoConfig, SparseConfig
from videosparse.config import LEGACY_LONG_FIELDS
from videosparse.core.trace import RetentionTrace

DATA = os.path.join(os.path.dirname(__file__), "data")

# old flat name -> (new field, a non-default value)
LEGACY = {
    "pre_budget": ("budget", 500),
    "pre_method": ("method", "random"),
    "pre_temporal_tau": ("temporal_tau", None),
    "pre_temporal_penalty": ("temporal_penalty", 2.0),
    "pre_frame_floor": ("frame_floor", 3),
    "pre_floor_share": ("floor_share", 0.5),
    "pre_positions": ("positions", "time"),
    "chunk_frames": ("chunk_frames", 4),
}
NON_DEFAULT = LongVideoConfig(**{new: v for new, v in LEGACY.values()})


@pytest.fixture
def no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def test_legacy_table_and_defaults():
    assert LEGACY_LONG_FIELDS == {old: new for old, (new, _) in LEGACY.items()}
    assert {f.name for f in dataclasses.fields(LongVideoConfig)} == set(LEGACY_LONG_FIELDS.values())
    for old, (new, v) in LEGACY.items():
        assert getattr(LongVideoConfig(), new) != v  # the test values are not the defaults
    assert LongVideoConfig() == LongVideoConfig(budget=None, method="relevance", temporal_tau=0.9, temporal_penalty=1.0,
                                                frame_floor=1, floor_share=0.25, positions="compact", chunk_frames=8)
    assert SparseConfig().long == LongVideoConfig()


def test_fields_and_help_text():
    names = [f.name for f in dataclasses.fields(SparseConfig)]
    assert "long" in names and not set(LEGACY_LONG_FIELDS) & set(names)
    assert "long" in inspect.signature(SparseConfig).parameters
    assert "pre_budget" not in inspect.signature(SparseConfig).parameters
    helps = {f.name: f.metadata["help"] for f in dataclasses.fields(LongVideoConfig)}
    assert all(len(h) > 20 for h in helps.values())
    text = " ".join(helps.values()).replace("VideoQA.ask(pre_budget=...)", "")  # the per-call keyword stays
    assert "pool" in helps["budget"] and not any(old in text for old in LEGACY_LONG_FIELDS if old != "chunk_frames")
    assert "LongVideoConfig" in {f.name: f.metadata["help"] for f in dataclasses.fields(SparseConfig)}["long"]


# ----------------------------------------------------------------------------- (de)serialisation
def test_to_dict_writes_the_nested_form_and_round_trips(no_warnings):
    cfg = SparseConfig.preset("video", num_layers=4, long=NON_DEFAULT)
    d = cfg.to_dict()
    assert d["long"] == NON_DEFAULT.to_dict() and not set(LEGACY_LONG_FIELDS) & set(d)
    back = SparseConfig.from_dict(json.loads(json.dumps(d)))
    assert back == cfg and back.long == NON_DEFAULT
    assert LongVideoConfig.from_dict(NON_DEFAULT.to_dict()) == NON_DEFAULT


def test_from_dict_reads_the_flat_form_without_warning(no_warnings):
    flat = SparseConfig.preset("video", num_layers=4).to_dict()
    del flat["long"]
    flat.update({old: v for old, (_, v) in LEGACY.items()})
    cfg = SparseConfig.from_dict(flat)
    assert cfg.long == NON_DEFAULT
    assert cfg == SparseConfig.preset("video", num_layers=4, long=NON_DEFAULT)
    assert SparseConfig.from_dict(cfg.to_dict()) == cfg  # flat in, nested out, same config
    # a part of the flat keys: the rest are defaults
    assert SparseConfig.from_dict({"chunk_frames": 4}).long == LongVideoConfig(chunk_frames=4)


def test_from_dict_unknown_keys_are_named():
    with pytest.raises(ValueError, match=r"SparseConfig.from_dict: unknown field\(s\) \['pre_bogus'\]"):
        SparseConfig.from_dict({"pre_bogus": 1})
    with pytest.raises(ValueError, match=r"LongVideoConfig.from_dict: unknown field\(s\) \['pre_budget'\]"):
        SparseConfig.from_dict({"long": {"pre_budget": 5}})
    with pytest.raises(ValueError, match=r"LongVideoConfig.from_dict: unknown field\(s\) \['nope', 'zzz'\]"):
        LongVideoConfig.from_dict({"nope": 1, "zzz": 2, "budget": 5})


def test_flat_and_nested_conflict_is_an_error():
    with pytest.raises(ValueError, match=r"pre_method='random'.*conflicts with long.method='relevance'"):
        SparseConfig.from_dict({"pre_method": "random", "long": {"method": "relevance"}})
    with pytest.raises(ValueError, match=r"chunk_frames=4.*conflicts with long.chunk_frames=16"):
        SparseConfig.from_dict({"chunk_frames": 4, "long": {"chunk_frames": 16}})
    # the same value in both forms, or different settings in each, is fine
    cfg = SparseConfig.from_dict({"pre_method": "random", "chunk_frames": 4,
                                  "long": {"method": "random", "budget": 500}})
    assert cfg.long == LongVideoConfig(method="random", chunk_frames=4, budget=500)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with pytest.raises(ValueError, match=r"SparseConfig: pre_method='relevance'.*conflicts with long.method"):
            SparseConfig(long=LongVideoConfig(method="random"), pre_method="relevance")
        with pytest.raises(ValueError, match=r"conflicts with long.budget=7"):
            SparseConfig(long={"budget": 7}, pre_budget=8)
        with pytest.raises(ValueError, match=r"SparseConfig.replace: .*conflicts with long.positions"):
            SparseConfig().replace(long={"positions": "time"}, pre_positions="compact")
        with pytest.raises(ValueError, match=r"SparseConfig.preset: .*conflicts with long.chunk_frames"):
            SparseConfig.preset("video", long=LongVideoConfig(chunk_frames=2), chunk_frames=3)
        assert SparseConfig(long={"budget": 7}, pre_budget=7).long.budget == 7


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(DATA, "trace_*.json"))))
def test_old_trace_fixtures_load_with_the_nested_config(path, no_warnings):
    trace = RetentionTrace.load_json(path)
    cfg = SparseConfig.from_dict(trace.config)
    expected = {
        "trace_v1_demo_retention.json": SparseConfig.preset("video", num_layers=4),
    }.get(os.path.basename(path), SparseConfig(name="fixture", budget=0.2))
    assert cfg == expected
    assert cfg.to_dict()["long"] == LongVideoConfig().to_dict()
    assert SparseConfig.from_dict(cfg.to_dict()) == cfg


def test_old_trace_with_non_default_flat_values():
    """The demo trace's flat keys hold the defaults; the same document with other values keeps them."""
    with open(os.path.join(DATA, "trace_v1_demo_retention.json")) as fh:
        doc = json.load(fh)
    old = dict(RetentionTrace.from_dict(doc).config)
    assert set(LEGACY_LONG_FIELDS) <= set(old)
    old.update({k: v for k, (_, v) in LEGACY.items()})
    assert SparseConfig.from_dict(old) == SparseConfig.preset("video", num_layers=4, long=NON_DEFAULT)


def test_short_path_reference_config_loads(no_warnings):
    """The oldest config document in the repository (before any long-video field) still reads."""
    with open(os.path.join(DATA, "short_path_reference.json")) as fh:
        old = json.load(fh)["sparsity"]
    cfg = SparseConfig.from_dict(old)
    assert cfg.long == LongVideoConfig() and cfg.layers == (1,) and cfg.gravity is None


# ----------------------------------------------------------------------------- deprecated keywords
@pytest.mark.parametrize("old", sorted(LEGACY))
def test_constructor_keyword(old):
    new, v = LEGACY[old]
    with pytest.warns(DeprecationWarning) as rec:
        cfg = SparseConfig(budget=0.2, **{old: v})
    msg = str(rec[0].message)
    assert msg == (f"SparseConfig({old}=...) is deprecated: use long=LongVideoConfig({new}=...) "
                   f"or cfg.replace(long=cfg.long.replace({new}=...))")
    assert rec[0].filename == __file__  # points at the caller
    assert cfg == SparseConfig(budget=0.2, long=LongVideoConfig(**{new: v}))


@pytest.mark.parametrize("old", sorted(LEGACY))
def test_replace_keyword(old):
    new, v = LEGACY[old]
    base = SparseConfig(long=LongVideoConfig(chunk_frames=2) if new != "chunk_frames" else LongVideoConfig(budget=9))
    with pytest.warns(DeprecationWarning, match=rf"SparseConfig.replace\({old}=...\) is deprecated: use "
                                                rf"cfg.replace\(long=cfg.long.replace\({new}=...\)\)") as rec:
        cfg = base.replace(**{old: v})
    assert rec[0].filename == __file__
    assert cfg == base.replace(long=base.long.replace(**{new: v}))
    assert cfg.long != base.long  # the other long settings are kept, this one changed


@pytest.mark.parametrize("old", sorted(LEGACY))
def test_preset_keyword(old):
    new, v = LEGACY[old]
    with pytest.warns(DeprecationWarning, match=rf"SparseConfig.preset\(\.\.\., {old}=...\) is deprecated: use "
                                                rf"long=LongVideoConfig\({new}=...\)") as rec:
        cfg = SparseConfig.preset("fastv", budget=0.3, num_layers=8, **{old: v})
    assert rec[0].filename == __file__
    assert cfg == SparseConfig.preset("fastv", budget=0.3, num_layers=8, long=LongVideoConfig(**{new: v}))


@pytest.mark.parametrize("old", sorted(LEGACY))
def test_attribute_alias(old):
    new, v = LEGACY[old]
    cfg = SparseConfig(long=NON_DEFAULT)
    with pytest.warns(DeprecationWarning, match=rf"SparseConfig.{old} is deprecated: use cfg.long.{new}"):
        assert getattr(cfg, old) == v
    with pytest.raises(AttributeError):
        setattr(cfg, old, v)


def test_new_spelling_does_not_warn(no_warnings):
    cfg = SparseConfig.preset("video", num_layers=4, long=LongVideoConfig(method="random"))
    cfg = cfg.replace(long=cfg.long.replace(chunk_frames=4), budget=0.2)
    cfg = SparseConfig.from_dict(cfg.to_dict())
    assert cfg.long == LongVideoConfig(method="random", chunk_frames=4)
    assert SparseConfig(long={"positions": "time"}).long.positions == "time"  # a dict is converted


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize("field, bad, text", [
    ("budget", 0, "must be a positive int or None"),
    ("budget", True, "must be a positive int or None"),
    ("budget", 2.5, "must be a positive int or None"),
    ("method", "best", "'best' is not one of ['relevance', 'random']"),
    ("temporal_tau", 1.5, "must be a cosine in [-1, 1] or None"),
    ("temporal_penalty", -1.0, "must be finite and >= 0"),
    ("temporal_penalty", float("inf"), "must be finite and >= 0"),
    ("frame_floor", -1, "must be an int >= 0"),
    ("floor_share", 1.5, "must be in [0, 1]"),
    ("positions", "absolute", "'absolute' is not one of ['time', 'compact']"),
    ("chunk_frames", 0, "must be a positive int"),
])
def test_validation_names_the_field(field, bad, text):
    msg = f"LongVideoConfig.{field}: {text}"
    for make in (lambda: LongVideoConfig(**{field: bad}),
                 lambda: SparseConfig(long={field: bad}),
                 lambda: SparseConfig.from_dict({"long": {field: bad}}),
                 lambda: SparseConfig.from_dict({next(o for o, (n, _) in LEGACY.items() if n == field): bad}),
                 lambda: SparseConfig().replace(long=SparseConfig().long.replace(**{field: bad}))):
        with pytest.raises(ValueError) as e:
            make()
        assert str(e.value).startswith(msg), str(e.value)


def test_long_must_be_a_long_video_config():
    with pytest.raises(ValueError, match=r"SparseConfig.long: expected a LongVideoConfig \(or a dict of its fields\), "
                                         r"got int"):
        SparseConfig(long=5)


def test_cli_names_the_flag():
    from videosparse.cli import _flagged

    with pytest.raises(ValueError) as e:
        LongVideoConfig(budget=-3)
    assert _flagged(str(e.value)) == "--pre-budget: must be a positive int or None, got -3"


# ----------------------------------------------------------------------------- value semantics
def test_equality_hash_and_cache_key():
    a = SparseConfig.preset("video", num_layers=4, long=LongVideoConfig(chunk_frames=4))
    b = SparseConfig.preset("video", num_layers=4, long=LongVideoConfig(chunk_frames=4))
    c = SparseConfig.preset("video", num_layers=4)
    assert a == b and hash(a) == hash(b) and a != c and a.long != c.long
    assert len({a, b, c}) == 2
    assert a.schedule(296, 4) == c.schedule(296, 4)  # the lru_cache key hashes the nested value
    assert hash(LongVideoConfig()) == hash(LongVideoConfig())
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.long.budget = 3  # type: ignore[misc]
    assert dataclasses.replace(a, budget=0.2).long == a.long  # dataclasses.replace keeps `long`


def test_pickle_and_copy():
    cfg = SparseConfig.preset("video", num_layers=4, long=NON_DEFAULT)
    for proto in range(2, pickle.HIGHEST_PROTOCOL + 1):
        back = pickle.loads(pickle.dumps(cfg, protocol=proto))
        assert back == cfg and hash(back) == hash(cfg) and type(back.long) is LongVideoConfig
    assert copy.deepcopy(cfg) == cfg and copy.copy(cfg) == cfg
    assert pickle.loads(pickle.dumps(NON_DEFAULT)) == NON_DEFAULT


def test_unpickle_a_config_of_an_earlier_release():
    """A pickle of an earlier release restores the instance __dict__ with the flat fields."""
    cfg = SparseConfig.preset("video", num_layers=4, long=NON_DEFAULT)
    state = {k: v for k, v in cfg.__dict__.items() if k != "long"}
    state.update({old: v for old, (_, v) in LEGACY.items()})
    obj = object.__new__(SparseConfig)
    obj.__setstate__(state)
    assert obj == cfg and "pre_budget" not in obj.__dict__
