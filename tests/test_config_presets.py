"""Presets against real input sizes: defaults fit any input, `layers` are the layers that run,
'rank' is sane everywhere, budgets are described truthfully, float budgets are unchanged."""

from __future__ import annotations

import logging

import pytest

from videosparse.config import PRESETS, SparseConfig

TESTBED_VISUAL = 296  # 8 frames x 37 tokens
LONG_VISUAL = 2056  # 8 frames x 257 tokens (Video-LLaVA-7B)
TABLE_PRESETS = ("sparsevlm-v1.5", "sparsevlm-v2")
DEPTHS = (2, 3, 4, 8, 16, 32, 40)


# ----------------------------------------------------------------------------- 1. defaults fit any input
@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("nv", (37, TESTBED_VISUAL, 576, LONG_VISUAL))
def test_preset_default_budget_fits_any_input(name, depth, nv):
    cfg = SparseConfig.preset(name, num_layers=depth)
    counts = cfg.stage_counts(nv)  # raised "300 tokens requested ... only 296" for v1.5/v2 before
    assert len(counts) == len(cfg.layers)
    assert all(c is None or 1 <= c <= nv for c in counts)


@pytest.mark.parametrize(
    "name, seed", [("sparsevlm-v1.5", [300, 200, 110]), ("sparsevlm-v2", [300, 200, 118])]
)
def test_table_default_is_seed_fractions_of_the_input(name, seed):
    cfg = SparseConfig.preset(name)  # 32 layers
    assert cfg.stage_counts(576) == seed  # exactly the seed's counts on 576 tokens
    assert cfg.stage_counts(TESTBED_VISUAL) == [round(c * TESTBED_VISUAL / 576) for c in seed]
    assert cfg.stage_counts(LONG_VISUAL) == [round(c * LONG_VISUAL / 576) for c in seed]
    assert SparseConfig.preset("sparsevlm-v1.5").stage_counts(TESTBED_VISUAL) == [154, 103, 57]
    assert SparseConfig.preset("sparsevlm-v1.5").stage_counts(LONG_VISUAL) == [1071, 714, 393]
    assert SparseConfig.preset("sparsevlm-v2").stage_counts(LONG_VISUAL) == [1071, 714, 421]
    # shallow decoder: stages dropped, the final fraction kept
    assert SparseConfig.preset(name, num_layers=4).stage_counts(576) == [300, seed[-1]]


def test_table_key_int_keeps_seed_counts_and_explains_misfit():
    assert SparseConfig.preset("sparsevlm-v1.5", budget=192).stage_counts(576) == [300, 200, 110]
    assert SparseConfig.preset("sparsevlm-v1.5", budget=64).stage_counts(576) == [66, 30, 17]
    assert SparseConfig.preset("sparsevlm-v2", budget=128).stage_counts(576) == [238, 108, 60]
    with pytest.raises(ValueError) as e:
        SparseConfig.preset("sparsevlm-v1.5", budget=192).stage_counts(TESTBED_VISUAL)
    msg = str(e.value)
    assert msg.startswith("SparseConfig.budget: the seed's counts [300, 200, 110] for budget 192 are for 576")
    assert "this input has 296" in msg and "0.33" in msg and "<= 296" in msg
    with pytest.raises(ValueError, match=r"\[300, 118\] for budget 192 \(\[300, 200, 118\] fitted to 2 stages\)"):
        SparseConfig.preset("sparsevlm-v2", budget=192, num_layers=4).stage_counts(TESTBED_VISUAL)
    # a table key whose counts fit the input runs verbatim
    assert SparseConfig.preset("sparsevlm-v1.5", budget=64, num_layers=4).stage_counts(TESTBED_VISUAL) == [66, 17]
    # the suggested fraction works
    assert SparseConfig.preset("sparsevlm-v1.5", budget=0.33).stage_counts(TESTBED_VISUAL) == [153, 102, 56]
    # a plain config over budget keeps the generic message
    with pytest.raises(ValueError, match=r"SparseConfig.budget: 300 tokens requested but the input has only 296"):
        SparseConfig(budget=300).stage_counts(TESTBED_VISUAL)


def test_table_preset_defaults_run_on_the_testbed(testbed_qa):
    qa, sample = testbed_qa
    # v1.5 adds the seed's merged tokens on top (154 + 5, 57 + 4); v2 does not recycle
    for name, expected in (("sparsevlm-v1.5", [159, 61]), ("sparsevlm-v2", [154, 61])):
        qa.set_sparsity(SparseConfig.preset(name, num_layers=4))
        qa.ask(sample.frames, sample.question, max_new_tokens=4)
        assert qa.handle.trace.counts == expected


# ----------------------------------------------------------------------------- 2. layers == what runs
@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("depth", DEPTHS)
def test_layers_are_the_stage_layers_and_roundtrip(name, depth):
    budgets = [None, 0.25]
    if name in TABLE_PRESETS:
        budgets += [64, 128, 192]
    if PRESETS[name]["method"] == "sparsevlm":
        budgets.append("rank")
    for budget in budgets:
        cfg = SparseConfig.preset(name, budget=budget, num_layers=depth)
        assert cfg.layers == cfg.stage_layers
        if isinstance(cfg.budget, tuple):
            assert cfg.layers == tuple(layer for layer, _ in cfg.budget)
        assert all(0 <= layer <= depth - 2 for layer in cfg.layers)
        back = SparseConfig.from_dict(cfg.to_dict())
        assert back == cfg and back.layers == cfg.layers
        for nv in (TESTBED_VISUAL, 576, LONG_VISUAL):
            try:
                expected = cfg.stage_counts(nv)
            except ValueError:  # seed counts for 576 on a smaller input: same error after the round trip
                with pytest.raises(ValueError, match="SparseConfig.budget"):
                    back.stage_counts(nv)
                continue
            assert back.stage_counts(nv) == expected


def test_reported_layers_on_a_4_layer_decoder():
    assert SparseConfig.preset("sparsevlm-v1.5", num_layers=4).layers == (1, 2)  # reported (2, 6, 15) before
    assert SparseConfig.preset("sparsevlm-v2", num_layers=2).layers == (0,)


def test_schedule_budget_normalises_layers():
    # documented choice: a schedule defines the stage layers; `layers` is normalised to them
    cfg = SparseConfig(budget=[(2, 100), (5, 20)], layers=(1,))
    assert cfg.layers == (2, 5) == cfg.stage_layers
    assert SparseConfig.from_dict({"budget": [[3, 0.5]], "layers": [1, 2, 7]}).layers == (3,)
    assert SparseConfig.preset("sparsevlm-v1.5", num_layers=4).replace(budget=((0, 10),)).layers == (0,)
    # a scalar budget keeps `layers` as given
    assert SparseConfig(budget=0.2, layers=(1, 3)).layers == (1, 3)


# ----------------------------------------------------------------------------- 3. rank
@pytest.mark.parametrize("name", [n for n in sorted(PRESETS) if PRESETS[n]["method"] == "sparsevlm"])
def test_rank_budget_takes_v1_lambda(name):
    assert SparseConfig.preset(name, budget="rank").rank_lambda == 0.5
    assert SparseConfig.preset(name, budget="rank", rank_lambda=0.8).rank_lambda == 0.8
    assert SparseConfig(budget="rank").rank_lambda == 0.5


@pytest.mark.parametrize("name", ["fastv", "random", "uniform"])
def test_rank_budget_rejected_without_rater_attention(name):
    with pytest.raises(ValueError, match="SparseConfig.budget: 'rank' needs method='sparsevlm'"):
        SparseConfig.preset(name, budget="rank")


def test_video_rank_on_testbed_keeps_a_sensible_count(testbed_qa, caplog):
    qa, sample = testbed_qa
    qa.set_sparsity(SparseConfig.preset("video", budget="rank", num_layers=4))
    with caplog.at_level(logging.WARNING, logger="videosparse"):
        qa.ask(sample.frames, sample.question, max_new_tokens=4)
    count = qa.handle.trace.counts[0]
    assert count == 149  # 296 - round(0.5 x (296 - rank)), rank 2; was 2 with lambda 1.0
    assert not [r for r in caplog.records if "rank-adaptive" in r.getMessage()]

    caplog.clear()
    qa.set_sparsity(SparseConfig.preset("video", budget="rank", num_layers=4, rank_lambda=1.0))
    with caplog.at_level(logging.WARNING, logger="videosparse"):
        qa.ask(sample.frames, sample.question, max_new_tokens=4)
    count = qa.handle.trace.counts[0]  # the user's rule still decides the count ...
    assert count <= 8
    warnings = [r.getMessage() for r in caplog.records if "rank-adaptive" in r.getMessage()]
    assert len(warnings) == len(qa.handle.trace.counts)  # ... but every degenerate stage is flagged
    w = warnings[0]
    assert f"keeps {count} of 296" in w and "relevance rank" in w and "layer 1" in w and "fixed budget" in w


def test_rank_count_warning_thresholds():
    import torch

    from videosparse.core.budget import rank_count_warning

    r = torch.tensor([3])
    assert rank_count_warning(8, r, 1, 8, 296, 1.0) is None
    assert "keeps 7 of 296" in rank_count_warning(7, r, 1, 8, 296, 1.0)  # fewer than the frames
    w = rank_count_warning(20, r, 2, 8, 2056, 1.0)  # < 1 % of 2056
    assert w.startswith("videosparse: the rank-adaptive stage at layer 2 keeps 20 of 2056 visual tokens (8 frames)")
    assert "relevance rank 3" in w and "rank_lambda 1 " in w and "fixed budget" in w
    assert rank_count_warning(21, r, 2, 8, 2056, 1.0) is None


# ----------------------------------------------------------------------------- 4. semantics, describe()
def test_budget_help_states_per_preset_semantics():
    import dataclasses

    help_text = {f.name: f.metadata["help"] for f in dataclasses.fields(SparseConfig)}["budget"]
    assert "after the last stage" in help_text
    assert "64 -> 66, 30, 17" in help_text and "table key" in help_text
    doc = SparseConfig.preset.__doc__
    assert "the *last* stage keeps fewer tokens" in doc and "[154, 103, 57]" in doc


def test_describe_one_line():
    s = SparseConfig.preset("sparsevlm-v1.5", budget=64).describe(576, 32)
    assert "\n" not in s
    assert "after layers 2, 6, 15" in s and "66+16 -> 30+2 -> 17+1 tokens" in s and "3.1% after the last stage" in s
    assert "seed rule" in s and "added on top after the kept tokens" in s  # the seed's recycling
    assert "(<= 6, 3)" in SparseConfig.preset("video", budget=30, num_layers=4).describe(TESTBED_VISUAL, 4)
    eq = SparseConfig.preset("sparsevlm-v1.5", budget=64).equivalent_tokens(576, 32)
    assert f"equivalent tokens {eq:.1f}" in s
    s = SparseConfig.preset("sparsevlm-v1.5", num_layers=4).describe(TESTBED_VISUAL, 4)
    assert "154+5 -> 57+4 tokens" in s and "after layers 1, 2" in s and "equivalent tokens 203.0" in s
    s = SparseConfig.preset("video", num_layers=4).describe(TESTBED_VISUAL, 4)
    assert "2 stages (after layers 1, 2) keep 60 -> 30 tokens" in s and "(<= 6, 3)" in s and "equivalent tokens 170.5" in s
    assert "no recycling" in SparseConfig.preset("sparsevlm-v2", num_layers=4).describe(TESTBED_VISUAL, 4)
    s = SparseConfig.preset("sparsevlm-v1", num_layers=4).describe(TESTBED_VISUAL, 4)
    assert "rank-adaptive" in s and "min(int(rank x 13.5 + 0), N - 1)" in s and "decided per input" in s
    s = SparseConfig.preset("sparsevlm-v1", num_layers=4, rank_rule="lambda").describe(TESTBED_VISUAL, 4)
    assert "round(0.5 x (N - rank))" in s
    with pytest.raises(ValueError, match="SparseConfig.budget"):
        SparseConfig.preset("sparsevlm-v1.5", budget=192).describe(TESTBED_VISUAL, 32)
    with pytest.raises(ValueError, match="SparseConfig.layers"):
        SparseConfig.preset("sparsevlm-v1.5").describe(576, 8)  # written for 32 layers


# ----------------------------------------------------------------------------- 5. float budgets unchanged
# (stage layers, counts) recorded from the code before this change, at 32 and 4 layers
FLOAT_BASELINE = {
    ("sparsevlm-v1.5", 32, TESTBED_VISUAL): {0.5: [231, 154, 85], 0.25: [175, 64, 21], 0.1: [31, 14, 8], 0.05: [15, 7, 4]},
    ("sparsevlm-v1.5", 32, LONG_VISUAL): {0.5: [1606, 1071, 589], 0.25: [1217, 442, 145], 0.1: [212, 96, 55],
                                           0.05: [106, 48, 27]},
    ("sparsevlm-v2", 32, TESTBED_VISUAL): {0.5: [231, 154, 91], 0.25: [138, 62, 35], 0.1: [31, 16, 9], 0.05: [15, 8, 5]},
    ("sparsevlm-v2", 32, LONG_VISUAL): {0.5: [1606, 1071, 632], 0.25: [956, 434, 241], 0.1: [212, 109, 64],
                                         0.05: [106, 55, 32]},
    ("sparsevlm-v1.5", 4, TESTBED_VISUAL): {0.5: [231, 85], 0.25: [175, 21], 0.1: [31, 8], 0.05: [15, 4]},
    ("sparsevlm-v1.5", 4, LONG_VISUAL): {0.5: [1606, 589], 0.25: [1217, 145], 0.1: [212, 55], 0.05: [106, 27]},
    ("sparsevlm-v2", 4, TESTBED_VISUAL): {0.5: [231, 91], 0.25: [138, 35], 0.1: [31, 9], 0.05: [15, 5]},
    ("sparsevlm-v2", 4, LONG_VISUAL): {0.5: [1606, 632], 0.25: [956, 241], 0.1: [212, 64], 0.05: [106, 32]},
}


@pytest.mark.parametrize("key", sorted(FLOAT_BASELINE))
def test_float_budgets_give_the_same_counts_as_before(key):
    name, depth, nv = key
    for budget, counts in FLOAT_BASELINE[key].items():
        cfg = SparseConfig.preset(name, budget=budget, num_layers=depth)
        assert cfg.stage_layers == ((2, 6, 15) if depth == 32 else (1, 2))
        assert cfg.stage_counts(nv) == counts


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def testbed_qa():
    import videosparse.testbed
    from videosparse.pipeline import VideoQA
    from videosparse.testbed.synthetic import make_sample

    qa = VideoQA.from_pretrained(videosparse.testbed.path(), sparsity=None)
    yield qa, make_sample(0, 0)
    close = getattr(qa, "close", None)
    if close is not None:
        close()


# ----------------------------------------------------------------------------- equivalent-token budgets
def test_equivalent_budget_parsing_and_solving():
    from videosparse.config import parse_budget

    assert parse_budget("194eq") == "194eq" and parse_budget(" 0.094EQ ") == "0.094eq"
    with pytest.raises(ValueError, match="equivalent tokens"):
        parse_budget("eq")
    with pytest.raises(ValueError, match="equivalent tokens such as '194eq'"):
        SparseConfig(budget="-3eq")
    # the paper's Video-LLaVA figure: 194 equivalent tokens = 70 tokens after layer 1 for a one-stage preset
    video = SparseConfig.preset("video", budget="194eq")  # two stages, 2 : 1
    assert video.stage_plan(2056, 32) == [(1, 113, 0), (8, 57, 0)]
    assert video.equivalent_tokens(2056, 32) == pytest.approx((2 * 2056 + 7 * 113 + 23 * 57) / 32)
    for name in ("random", "uniform"):
        cfg = SparseConfig.preset(name, budget="194eq")
        assert cfg.stage_plan(2056, 32) == [(1, 70, 0)]
        assert cfg.equivalent_tokens(2056, 32) == pytest.approx((2 * 2056 + 30 * 70) / 32)
    # a fraction of the visual tokens; the achieved value is the closest the integer counts allow
    cfg = SparseConfig.preset("sparsevlm-v2", budget="0.125eq")
    assert abs(cfg.equivalent_tokens(2056, 32) - 0.125 * 2056) < 1.0
    plan = cfg.stage_plan(2056, 32)
    assert [layer for layer, _, _ in plan] == [2, 6, 15] and all(m == 0 for _, _, m in plan)
    # the v2 shape (300 : 200 : 118) is kept while scaling
    ks = [k for _, k, _ in plan]
    assert ks[0] / ks[2] == pytest.approx(300 / 118, rel=0.05)
    # needs the decoder depth; unreachable targets name the reachable range
    with pytest.raises(ValueError, match="needs the decoder depth"):
        cfg.stage_counts(2056)
    lo, hi = SparseConfig.preset("sparsevlm-v1.5", budget="300eq").equivalent_range(2056, 32)
    assert 200 < lo < 205 and hi == pytest.approx(2056)
    with pytest.raises(ValueError, match=r"194 equivalent tokens cannot be reached .* reachable range is \[20"):
        SparseConfig.preset("sparsevlm-v1.5", budget="194eq").stage_plan(2056, 32)
    # round trip
    back = SparseConfig.from_dict(cfg.to_dict())
    assert back == cfg and back.stage_plan(2056, 32) == plan


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("eq", ["0.52eq", "0.6eq", "200eq"])
def test_equivalent_budget_within_one_token_on_the_testbed_geometry(name, eq):
    cfg = SparseConfig.preset(name, budget=eq, num_layers=4)
    target = 0.52 * TESTBED_VISUAL if eq == "0.52eq" else 0.6 * TESTBED_VISUAL if eq == "0.6eq" else 200
    assert abs(cfg.equivalent_tokens(TESTBED_VISUAL, 4) - target) <= 1.0


def test_gravity_options_and_seed_preset_fields():
    assert SparseConfig(gravity=True).gravity == "bounded" and SparseConfig(gravity=False).gravity is None
    assert SparseConfig(gravity="official").gravity == "official"
    with pytest.raises(ValueError, match="SparseConfig.gravity"):
        SparseConfig(gravity="strong")
    with pytest.raises(ValueError, match="SparseConfig.stage_shape"):
        SparseConfig(stage_shape=(0.5, 0.6), layers=(1, 2))
    with pytest.raises(ValueError, match="SparseConfig.recycle_rule"):
        SparseConfig(recycle_rule="paper")
    v = SparseConfig.preset("sparsevlm-video")
    assert (v.budget, v.layers, v.rank_rule, v.recycle_rule, v.recycle_place, v.positions, v.keep_cls) == (
        "rank", (1,), "rank", "seed", "after", "renumber", False)
    v1 = SparseConfig.preset("sparsevlm-v1", budget=128)
    assert (v1.budget, v1.rank_rule, v1.rank_scale, v1.rank_bias) == ("rank", "linear", 9.0, 6.0)
    assert SparseConfig.preset("sparsevlm-v1", budget=0.1).budget == 0.1  # fixed counts
    assert SparseConfig.preset("video").recycle_rule == "share"  # the package's own design is unchanged
    # a schedule on a shaped preset: the schedule's counts win, whatever its number of stages
    sched = SparseConfig.preset("video", budget=[(1, 90), (2, 60), (3, 30)], num_layers=8)
    assert sched.stage_shape is None and sched.stage_counts(296) == [90, 60, 30]
