"""Qwen2.5-VL / Qwen3-VL beyond the shared contract: batches of videos with different grids (each sample its
own token count, geometry, budget and kept count; filler rows in the batch), the stock decode positions,
the grid found in generate (no video_grid_thw there) and the inputs that are refused."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import VIDEO_TOKEN, _qwen_video_ids, make_qwen_inputs, make_qwen_model, qwen_single, qwen_tokens
from videosparse import SparseConfig, sparsify

KINDS = ["qwen2_5_vl", "qwen3_vl"]
ATTN = ["eager", "sdpa"]
GRIDS = [(4, 4, 4), (3, 4, 8)]  # 4 groups of 2 x 2 = 16 tokens; 3 groups of 2 x 4 = 24 tokens
QUESTIONS = ((9, 10, 11, 12, 13), (14, 15))


@pytest.fixture(scope="module", params=KINDS)
def kind(request):
    return request.param


@pytest.fixture(scope="module")
def models(kind):
    return {attn: make_qwen_model(kind, attn, seed=0) for attn in ATTN}


def _gen(model, inp, n=5):
    out = model.generate(**inp, max_new_tokens=n, do_sample=False, output_logits=True, return_dict_in_generate=True,
                         pad_token_id=0, suppress_tokens=[2])
    return out.sequences, torch.stack(out.logits, 1)


@pytest.mark.parametrize("attn", ATTN)
def test_keep_all_on_videos_of_different_grids_equals_the_stock_model(models, attn):
    model = models[attn]
    inp = make_qwen_inputs(model, QUESTIONS, grids=GRIDS)
    with torch.no_grad():
        ref = model(**inp).logits
        ref_seq, ref_logits = _gen(model, inp)
        with sparsify(model, SparseConfig(budget=1.0, layers=(0, 2), frame_floor=1)) as h:
            out = model(**inp).logits
            assert h.trace.sample_counts == [[16, 16], [24, 24]]
            seq, logits = _gen(model, inp)
    assert (out - ref).abs().max().item() <= 1e-6
    assert (logits - ref_logits).abs().max().item() <= 1e-6
    assert torch.equal(seq, ref_seq)


@pytest.mark.parametrize("attn", ATTN)
@pytest.mark.parametrize("preset", ["video", "sparsevlm-v2-original", "fastv", "random", "uniform"])
def test_videos_of_different_grids_in_one_batch_equal_each_alone(models, attn, preset):
    """Each sample keeps its own budget of its own tokens; the batch (filler rows on the shorter samples)
    selects and generates what each sample does alone, through the pruned cache's decode steps."""
    model = models[attn]
    if preset == "sparsevlm-v2-original":  # seed stage schedule, gravity off (1-D only)
        cfg = SparseConfig.preset("sparsevlm-v2", budget=0.25, num_layers=4).replace(gravity=None)
    else:
        cfg = SparseConfig.preset(preset, budget=0.25, num_layers=4)
    inp = make_qwen_inputs(model, QUESTIONS, grids=GRIDS, seed=5)
    with torch.no_grad(), sparsify(model, cfg) as h:
        seq, logits = _gen(model, inp)
        trace = h.trace
        assert trace.ragged and [s[:2] for s in trace.samples] == [(4, 4), (3, 8)]
        counts = trace.sample_counts
        assert counts[0] != counts[1]  # different budgets: the batch carries filler rows
        N = inp["input_ids"].shape[1]
        for b in range(2):
            alone = qwen_single(inp, b)
            seq1, logits1 = _gen(model, alone)
            one = h.trace
            assert counts[b] == one.counts == [cfg.schedule(qwen_tokens(GRIDS[b]), 4).stages[i].selected
                                               for i in range(len(one.counts))]
            for st_b, st_1 in zip(trace.select(b).stages, one.stages):
                assert torch.equal(st_b.kept, st_1.kept)
            assert torch.equal(seq[b, N:], seq1[0, alone["input_ids"].shape[1]:])
            assert (logits[b] - logits1[0]).abs().max().item() < 1e-4


def test_unpadded_batch_of_different_grids_masks_its_filler_rows(models):
    """Two prompts of equal length (no padding, no attention mask from the caller) whose videos keep different
    counts: the decode steps must still mask the filler rows of the shorter one."""
    model = models["sdpa"]
    la, lb = (len(_qwen_video_ids(model, g)) for g in GRIDS)
    inp = make_qwen_inputs(model, ((9,) * (4 + max(0, lb - la)), (14,) * (4 + max(0, la - lb))), grids=GRIDS, seed=2)
    if not bool(inp["attention_mask"].all()):
        pytest.fail("the test prompts are meant to have equal lengths")  # the fixture's layout changed
    inp.pop("attention_mask")
    cfg = SparseConfig.preset("video", budget=0.25, num_layers=4)
    with torch.no_grad(), sparsify(model, cfg) as h:
        seq, logits = _gen(model, inp)
        assert h.trace.sample_counts[0] != h.trace.sample_counts[1]
        N = inp["input_ids"].shape[1]
        for b in range(2):
            alone = qwen_single({**inp, "attention_mask": torch.ones_like(inp["input_ids"])}, b)
            alone.pop("attention_mask")
            seq1, logits1 = _gen(model, alone)
            assert torch.equal(seq[b, N:], seq1[0, N:])
            assert (logits[b] - logits1[0]).abs().max().item() < 1e-4


def test_ragged_trace_is_padded_and_selects_each_sample(models):
    model = models["eager"]
    inp = make_qwen_inputs(model, QUESTIONS, grids=GRIDS, seed=3)
    cfg = SparseConfig(budget=0.25, layers=(1,), recycle=True)
    with torch.no_grad(), sparsify(model, cfg) as h:
        model(**inp)
    tr = h.trace
    with pytest.raises(ValueError, match="select"):
        tr.counts
    with pytest.raises(ValueError, match="different frame geometries"):
        tr.kept_mask()
    with pytest.raises(ValueError, match="select"):
        tr.to_dict()
    st = tr.stages[0]
    k0, k1 = tr.sample_counts[0][0], tr.sample_counts[1][0]
    assert st.kept.shape == (2, max(k0, k1)) and (st.kept[0, k0:] == -1).all() and (st.kept[0, :k0] >= 0).all()
    assert st.scores.shape == (2, 24) and torch.isnan(st.scores[0, 16:]).all()
    assert h.last_counts == [[k0], [k1]]
    for b, (T, P, grid) in enumerate([(4, 4, (2, 2)), (3, 8, (2, 4))]):
        one = tr.select(b)
        assert (one.num_frames, one.tokens_per_frame, one.grid) == (T, P, grid)
        assert one.counts == [tr.sample_counts[b][0]]
        assert one.kept_mask().shape == (1, T, P) and int(one.kept_mask().sum()) == one.counts[0]
        assert not torch.isnan(one.stages[0].scores).all()
        from videosparse import RetentionTrace

        back = RetentionTrace.from_dict(one.to_dict())  # one sample: an ordinary document
        assert back.grid == grid and torch.equal(back.stages[0].kept, one.stages[0].kept)


@pytest.mark.parametrize("grids", [None, GRIDS], ids=["same-grid", "different-grids"])
def test_decode_positions_equal_the_stock_models(models, grids):
    """The 3-axis positions of every decode step are the stock model's (rope_deltas + cache length), although
    the pruned cache is shorter."""
    model = models["sdpa"]
    inp = make_qwen_inputs(model, QUESTIONS, grids=grids, seed=4)
    dec = model.model.language_model

    def positions(run):
        seen = []
        hook = dec.register_forward_pre_hook(lambda m, a, k: seen.append(k["position_ids"].clone()), with_kwargs=True)
        try:
            run()
        finally:
            hook.remove()
        return seen

    with torch.no_grad():
        ref = positions(lambda: _gen(model, inp))
        with sparsify(model, SparseConfig.preset("video", budget=0.2, num_layers=4)) as h:
            got = positions(lambda: _gen(model, inp))
            assert (h.trace.sample_counts if h.trace.ragged else h.trace.counts)  # it pruned
    assert len(got) == len(ref) == 5
    for a, b in zip(got, ref):
        assert torch.equal(a, b)


def test_the_grid_found_in_generate_equals_video_grid_thw(models):
    """generate's prefill carries no video_grid_thw: the grid is read from the model's 3-axis positions."""
    model = models["sdpa"]
    inp = make_qwen_inputs(model, QUESTIONS, grids=GRIDS, seed=6)
    with sparsify(model, SparseConfig(budget=0.5, layers=(1,))) as h:
        adapter = h._adapter
        from_grid = adapter.locate((), {"input_ids": inp["input_ids"], "video_grid_thw": inp["video_grid_thw"]}, h)
        rope_kw = {k: inp[k] for k in ("video_grid_thw", "second_per_grid_ts", "attention_mask", "mm_token_type_ids")
                   if k in inp}
        pos, _ = model.model.get_rope_index(inp["input_ids"], **rope_kw)
        text = (inp["attention_mask"].cumsum(-1) - 1)[None]
        from_pos = adapter.locate((), {"input_ids": inp["input_ids"], "position_ids": torch.cat([text, pos])}, h)
    assert from_grid.samples == from_pos.samples == [(4, 4, (2, 2)), (3, 8, (2, 4))]
    assert torch.equal(from_grid.visual_mask, from_pos.visual_mask)


def test_disabled_runs_the_stock_model(models):
    model = models["eager"]
    inp = make_qwen_inputs(model, QUESTIONS, grids=GRIDS)
    with torch.no_grad():
        ref = model(**inp).logits
        with sparsify(model, SparseConfig.preset("video", budget=0.1, num_layers=4)) as h, h.disabled():
            out = model(**inp).logits
    assert torch.equal(out, ref)


def test_refused_inputs_and_configs_name_the_problem(models, kind):
    model = models["eager"]
    inp = make_qwen_inputs(model, QUESTIONS)
    for cfg in (SparseConfig.preset("sparsevlm-v1.5", budget=0.2, num_layers=4),
                SparseConfig.preset("sparsevlm-v2", budget=0.2, num_layers=4)):
        with pytest.raises(ValueError, match="mrope"):
            sparsify(model, cfg)
    with torch.no_grad(), sparsify(model, SparseConfig(budget=0.5, layers=(1,))) as h:
        with pytest.raises(ValueError, match="image"):
            model(**{**inp, "mm_token_type_ids": inp["mm_token_type_ids"].masked_fill(inp["input_ids"] == 9, 1)})
        two = dict(inp)
        two["video_grid_thw"] = torch.cat([inp["video_grid_thw"], inp["video_grid_thw"][:1]])
        with pytest.raises(ValueError, match="one video per sample"):
            h._adapter.locate((), {"input_ids": inp["input_ids"], "video_grid_thw": two["video_grid_thw"]}, h)
        with pytest.raises(ValueError, match="video grid"):
            h._adapter.locate((), {"input_ids": inp["input_ids"]}, h)
        text_only = inp["input_ids"].masked_fill(inp["input_ids"] == VIDEO_TOKEN, 9)
        with pytest.raises(ValueError, match="no video tokens"):
            h._adapter.locate((), {"input_ids": text_only}, h)
