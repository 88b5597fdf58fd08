"""Budget (the typed budget value) and Schedule (the one owner of stage layers and counts)."""

from __future__ import annotations

import pytest
import torch

from conftest import make_inputs, make_model
from videosparse import SparseConfig, sparsify
from videosparse.config import PRESETS, Budget, Schedule, Stage, equivalent_tokens


@pytest.mark.parametrize("raw,kind,value", [
    (194, "kept", 194), (0.1, "fraction", 0.1), ("194eq", "equivalent", 194.0), ("0.094eq", "equivalent", 0.094),
    ("rank", "rank", "rank"), (((1, 100), (8, 50)), "schedule", ((1, 100), (8, 50))),
])
def test_budget_kinds(raw, kind, value):
    b = Budget.of(raw)
    assert (b.kind, b.value, b.raw) == (kind, value, raw)
    assert SparseConfig(budget=raw if kind != "schedule" else raw).budget_value.kind == kind


@pytest.mark.parametrize("text,raw", [("194", 194), ("0.1", 0.1), ("194EQ", "194eq"), ("rank", "rank")])
def test_budget_parse(text, raw):
    assert Budget.parse(text).raw == raw


@pytest.mark.parametrize("bad,msg", [
    (0, "must be > 0 tokens"), (-5, "must be > 0 tokens"), (1.5, r"a fraction must be in \(0, 1\]"),
    (True, "a bool is not a budget"), ("lots", "a string budget is 'rank' or equivalent tokens"),
    (((2, 10), (1, 5)), "strictly increasing"), ([], "at least one"),
])
def test_budget_errors_name_the_field(bad, msg):
    with pytest.raises(ValueError, match=rf"SparseConfig\.budget: .*{msg}"):
        Budget.of(bad)
    with pytest.raises(ValueError, match=msg):
        SparseConfig(budget=bad)


def test_budget_parse_refuses_what_is_not_a_budget():
    with pytest.raises(ValueError, match="is not a token count"):
        Budget.parse("abc")


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("nv,layers", [(2056, 32), (296, 4)])
def test_schedule_is_what_every_reader_sees(name, nv, layers):
    cfg = SparseConfig.preset(name, num_layers=layers)
    sch = cfg.schedule(nv, layers)
    assert sch is cfg.schedule(nv, layers)  # resolved once per (config, input size, depth)
    assert sch.layers == cfg.layers
    assert cfg.stage_plan(nv, layers) == [(s.layer, s.selected, s.merged) for s in sch.stages]
    assert cfg.stage_counts(nv, layers) == [s.selected for s in sch.stages]
    if sch.adaptive:
        assert sch.tokens_per_layer() is None and sch.equivalent_tokens is None
        return
    seen = sch.tokens_per_layer()
    assert len(seen) == layers and seen[0] == nv
    # layers up to the first stage see every token; after stage s, the tokens it leaves
    first = sch.stages[0].layer
    assert seen[: first + 1] == [nv] * (first + 1) and seen[first + 1] == sch.stages[0].after
    assert sch.equivalent_tokens == pytest.approx(sum(seen) / layers)
    assert sch.equivalent_tokens == pytest.approx(cfg.equivalent_tokens(nv, layers))
    assert sch.equivalent_tokens == pytest.approx(
        equivalent_tokens(nv, layers, cfg.layers, [s.after for s in sch.stages]))
    assert f"equivalent tokens {sch.equivalent_tokens:.1f}" in cfg.describe(nv, layers)


def test_equivalent_budget_is_solved_into_the_schedule():
    cfg = SparseConfig.preset("video", budget="194eq", num_layers=32)
    sch = cfg.schedule(2056, 32)
    assert abs(sch.equivalent_tokens - 194) <= 1.0
    assert [s.layer for s in sch.stages] == [1, 8]


def test_stage_after_counts_merged_tokens_on_top():
    assert Stage(1, 8, 62).after == 70 and Stage(1, None, None).after is None
    sch = Schedule(2056, 32, (Stage(1, 8, 62),))
    assert sch.equivalent_tokens == pytest.approx((2 * 2056 + 30 * 70) / 32)


@pytest.mark.parametrize("preset", ["video", "sparsevlm-v1.5", "fastv"])
def test_the_engine_runs_the_schedule(preset):
    model = make_model("sdpa", seed=2)
    inp = make_inputs(model, frames=4, questions=((9, 10, 11),))
    nv = int((inp["input_ids"] == 5).sum())
    cfg = SparseConfig.preset(preset, budget=0.2, num_layers=4)
    with torch.no_grad(), sparsify(model, cfg) as h:
        model(**inp)
    sch = cfg.schedule(nv, 4)
    assert [s.layer for s in h.trace.stages] == list(sch.layers)
    assert h.trace.counts == [s.after for s in sch.stages]
    assert h.trace.equivalent_tokens == pytest.approx(sch.equivalent_tokens)
