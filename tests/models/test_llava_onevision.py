"""LLaVA-OneVision specifics beyond the contract suite (tests/models/test_contract.py runs it too): the
video block's closing newline token, the frame geometry without CLS, the front end's feature path, and
image inputs refused clearly."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import VIDEO_TOKEN, make_ov_inputs, make_ov_model, ov_tokens_per_frame, ov_visual_mask
from videosparse import SparseConfig, sparsify
from videosparse.frontends import frontend_for

QUESTIONS = ((9, 10, 11, 12, 13), (14, 15))


@pytest.fixture(scope="module")
def ov():
    return make_ov_model("eager", seed=5)


def _newline_positions(inp):
    run = inp["input_ids"] == VIDEO_TOKEN
    return run.long().cumsum(1).argmax(1)  # the last placeholder of each run


@pytest.mark.parametrize("preset", ["video", "sparsevlm-v1.5", "fastv"])
def test_the_newline_is_never_scored_pruned_or_a_rater(ov, preset):
    inp = make_ov_inputs(ov, questions=QUESTIONS, seed=2)
    vm = ov_visual_mask(ov, inp)
    nl = _newline_positions(inp)
    P = ov_tokens_per_frame(ov)
    nv = int(vm[0].sum())
    assert nv == 4 * P  # 4 frames of 2 x 2 pooled tokens; the newline is not visual
    cfg = SparseConfig.preset(preset, budget=0.25, num_layers=4)
    with torch.no_grad(), sparsify(ov, cfg) as h:
        ov(**inp)
    t = h.trace
    assert (t.num_frames, t.tokens_per_frame, t.has_cls, tuple(t.grid)) == (4, P, False, (2, 2))
    for st in t.stages:
        assert st.scores.shape == (2, nv)  # one score per visual token, none for the newline
        assert int(st.kept.max()) < nv
    if t.stages[0].raters is not None:
        for b in range(2):
            rpos = t.raters_text_positions[b][t.stages[0].raters[b]]
            assert len(rpos) and int(rpos.min()) > int(nl[b])  # question tokens only, after the newline


def test_pruning_keeps_the_newline_row(ov):
    """The newline's hidden state reaches the last layer: the pruned logits at its position equal a run in
    which the same visual tokens are kept by override, and dropping it would change the sequence length."""
    inp = make_ov_inputs(ov, questions=QUESTIONS[:1], seed=3)
    N = inp["input_ids"].shape[1]
    nv = int(ov_visual_mask(ov, inp)[0].sum())
    with torch.no_grad(), sparsify(ov, SparseConfig(budget=3, layers=(1,))) as h:
        out = ov(**inp, use_cache=False).logits
    assert out.shape[1] == N - (nv - 3)  # only visual rows dropped: the newline and all text remain
    assert h.trace.counts == [3]


def test_image_inputs_are_refused_with_a_clear_error(ov):
    inp = make_ov_inputs(ov, questions=QUESTIONS[:1])
    with sparsify(ov, SparseConfig(budget=3, layers=(1,))):
        with pytest.raises(ValueError, match=r"image inputs \(pixel_values\) are not supported"):
            ov(**inp, pixel_values=torch.zeros(1, 1, 3, 16, 16), image_sizes=torch.tensor([[16, 16]]))


def test_front_end_geometry_and_feature_path_equal_the_pixel_path(ov):
    fe = frontend_for(ov.config)
    P = fe.tokens_per_frame(ov.config)
    assert (fe.name, fe.has_cls, fe.tail_tokens, tuple(fe.frame_grid(ov.config)), P) == \
        ("llava_onevision", False, 1, (2, 2), ov_tokens_per_frame(ov))
    inp = make_ov_inputs(ov, questions=QUESTIONS, seed=4)
    with torch.no_grad():
        feats = torch.stack([fe.video_features(ov, pix) for pix in inp["pixel_values_videos"]])  # (B, T, P, D)
        assert tuple(feats.shape[1:3]) == (4, P)
        via_features = fe.feature_inputs(ov, feats.flatten(1, 2))
        rest = {"input_ids": inp["input_ids"], "attention_mask": inp["attention_mask"]}
        ref = ov(**inp).logits
        got = ov(**rest, **via_features).logits
        assert (got - ref).abs().max().item() < 1e-5
        with sparsify(ov, SparseConfig.preset("video", budget=0.3, num_layers=4)) as h:
            ref_p = ov(**inp).logits
            kept_ref = [s.kept for s in h.trace.stages]
            got_p = ov(**rest, **via_features).logits
            assert all(torch.equal(a, s.kept) for a, s in zip(kept_ref, h.trace.stages))
        assert (got_p - ref_p).abs().max().item() < 1e-5


def test_prompt_expands_frames_tokens_and_the_newline():
    from videosparse.frontends import get_frontend

    fe = get_frontend("llava_onevision")
    text = fe.prompt(" what is it ", 3, 4)
    assert text.count("<video>") == 3 * 4 + 1
    assert text.startswith("<|im_start|>user <video>") and text.endswith("what is it<|im_end|>\n<|im_start|>assistant\n")
