"""The contract every model family passes (tiny random models built from configs, both attention backends).

A new family gets the whole suite by adding one `Family` to FAMILIES:
* keep-all is exact: with every visual token kept, forward logits and greedy generation (batch 1 and 2, left
  padding) equal the stock model's;
* scores equal the stock model's eager attention of the rater rows at the stage layer;
* a pruned prefill equals a slow reference that drives the stock decoder layers by hand, without a cache, on
  the gathered rows (its own causal mask and gathered rotary tables; nothing of the engine);
* cached decoding equals a recompute without a cache; beam search and sampling equal the stock model's with
  every token kept, and a reference beam search / sampler built on cached or cache-free pruned log-probs when
  pruned;
* a batch equals each sample alone (kept sets and generated tokens);
* `remove()` restores the model bit-exactly (hooks, attributes, logits, generation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import pytest
import torch

from tests.conftest import (VIDEO_TOKEN, make_inputs, make_model, make_ov_inputs, make_ov_model,
                            make_qwen_inputs, make_qwen_model, ov_visual_mask, qwen_extend, qwen_repeat,
                            qwen_single)
from videosparse import SparseConfig, sparsify
from videosparse.compat import cache_keyword, output_cache

ATTN = ["eager", "sdpa"]


@dataclass(frozen=True)
class Family:
    name: str
    build: Callable[..., Any]  # (attn, seed) -> model in eval mode
    inputs: Callable[..., dict]  # (model, questions, seed) -> generate/forward kwargs, left padded
    visual_mask: Callable[..., torch.Tensor]  # (model, inputs) -> (B, N) bool, the visual tokens
    decoder: Callable[..., Any]  # model -> the language model (layers, norm)
    lm_head: Callable[..., Any]  # model -> the output projection
    single: Callable[..., dict]  # (inputs, b) -> sample b alone, unpadded
    num_layers: int = 4
    # (inputs, ids, mask) -> forward kwargs of the prompt followed by generated tokens, without a cache
    extend: Callable[..., dict] | None = None
    # (inputs, rep) -> inputs with every sample repeated rep times
    repeat: Callable[..., dict] | None = None
    mrope: bool = False  # multi-axis rotary positions: no renumbering


def _vl_single(inp: dict, b: int) -> dict:
    L = int(inp["attention_mask"][b].sum())
    return {"input_ids": inp["input_ids"][b : b + 1, -L:], "attention_mask": inp["attention_mask"][b : b + 1, -L:],
            "pixel_values_videos": inp["pixel_values_videos"][b : b + 1]}


def _vl_extend(inp: dict, ids: torch.Tensor, mask: torch.Tensor) -> dict:
    pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    rest = {k: v for k, v in inp.items() if k not in ("input_ids", "attention_mask")}
    return {"input_ids": ids, "attention_mask": mask, "position_ids": pos, **rest}


def _vl_repeat(inp: dict, rep: int) -> dict:
    return {k: v.repeat_interleave(rep, 0) for k, v in inp.items()}


def _qwen_family(kind: str) -> Family:
    return Family(
        name=kind,
        build=lambda attn, seed=0: make_qwen_model(kind, attn, seed=seed),
        inputs=lambda model, questions, seed=1: make_qwen_inputs(model, questions=questions, seed=seed),
        visual_mask=lambda model, inp: inp["input_ids"] == VIDEO_TOKEN,
        decoder=lambda model: model.model.language_model,
        lm_head=lambda model: model.lm_head,
        single=qwen_single,
        extend=qwen_extend,
        repeat=qwen_repeat,
        mrope=True,
    )


FAMILIES = {
    "video_llava": Family(
        name="video_llava",
        build=lambda attn, seed=0: make_model(attn, seed=seed),
        inputs=lambda model, questions, seed=1: make_inputs(model, questions=questions, seed=seed),
        visual_mask=lambda model, inp: inp["input_ids"] == VIDEO_TOKEN,
        decoder=lambda model: model.model.language_model,
        lm_head=lambda model: model.lm_head,
        single=_vl_single,
    ),
    "llava_onevision": Family(
        name="llava_onevision",
        build=lambda attn, seed=0: make_ov_model(attn, seed=seed),
        inputs=lambda model, questions, seed=1: make_ov_inputs(model, questions=questions, seed=seed),
        visual_mask=ov_visual_mask,
        decoder=lambda model: model.model.language_model,
        lm_head=lambda model: model.lm_head,
        single=_vl_single,
    ),
    "qwen2_5_vl": _qwen_family("qwen2_5_vl"),
    "qwen3_vl": _qwen_family("qwen3_vl"),
}


def _extend(family, inp, ids, mask):
    return (family.extend or _vl_extend)(inp, ids, mask)


def _repeat(family, inp, rep):
    return (family.repeat or _vl_repeat)(inp, rep)
QUESTIONS = ((9, 10, 11, 12, 13), (14, 15))  # different lengths -> left padding


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
    return FAMILIES[request.param]


@pytest.fixture(scope="module")
def models(family):
    return {attn: family.build(attn, seed=0) for attn in ATTN}


def _gen(model, inp, n=6):
    out = model.generate(**inp, max_new_tokens=n, do_sample=False, output_logits=True,
                         return_dict_in_generate=True, pad_token_id=0)
    return out.sequences, torch.stack(out.logits, 1)


def _hooks_and_attrs(model):
    return {name: (tuple(m._forward_pre_hooks), tuple(m._forward_hooks), frozenset(m.__dict__),
                   m.__dict__.get("forward")) for name, m in model.named_modules()}


# ----------------------------------------------------------------------------- keep-all is exact
@pytest.mark.parametrize("attn", ATTN)
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("layers", [(1,), (0, 2)])
def test_keep_all_equals_the_stock_model(family, models, attn, batch, layers):
    model = models[attn]
    inp = family.inputs(model, QUESTIONS[:batch])
    nv = int(family.visual_mask(model, inp)[0].sum())
    with torch.no_grad():
        ref = model(**inp).logits
        ref_seq, ref_logits = _gen(model, inp)
        cfg = SparseConfig(budget=1.0, layers=layers, recycle=True, temporal_tau=0.9, frame_floor=1)
        with sparsify(model, cfg) as h:
            out = model(**inp).logits
            seq, logits = _gen(model, inp)
            assert h.trace.counts == [nv] * len(layers)
    assert (out - ref).abs().max().item() <= 1e-6
    assert (logits - ref_logits).abs().max().item() <= 1e-6
    assert torch.equal(seq, ref_seq)


# ----------------------------------------------------------------------------- scores
@pytest.mark.parametrize("layer", [0, 1, 2])
def test_scores_equal_the_stock_eager_attention_of_the_rater_rows(family, layer):
    model = family.build("eager", seed=4)
    inp = family.inputs(model, QUESTIONS)
    vm = family.visual_mask(model, inp)
    with torch.no_grad():
        att = model(**inp, output_attentions=True).attentions[layer]  # (B, H, N, N)
        with sparsify(model, SparseConfig(budget=0.3, layers=(layer,))) as h:
            model(**inp)
    st = h.trace.stages[0]
    for b in range(vm.shape[0]):
        vis = vm[b].nonzero()[:, 0]
        rpos = h.trace.raters_text_positions[b][st.raters[b]]
        ref = att[b][:, rpos][:, :, vis].float().mean(0).mean(0)  # heads, then raters
        assert (st.scores[b] - ref).abs().max().item() < 1e-5


# ----------------------------------------------------------------------------- pruned == slow reference
def _reference_logits(family, model, inp, stages):
    """Drive the stock layers by hand, without a cache: layers 0..L on every row, then only the rows a stage
    keeps (the text rows and its kept visual tokens), each layer with a causal mask and rotary tables built
    here for those rows. stages: [(layer, kept (B, K) visual indices)]. Returns (B, N_last, V) logits and
    the rows (B, N_last) they belong to."""
    dec = family.decoder(model)
    grab = {}

    def capture(module, args, kwargs):
        grab["x"] = args[0] if args else kwargs["hidden_states"]
        grab["pe"] = kwargs["position_embeddings"]
        raise StopIteration  # the stock inputs of layer 0 are all the reference needs

    def side_inputs(module, args, kwargs):  # Qwen3-VL's deepstack features, added after the first layers
        grab["deepstack"] = kwargs.get("deepstack_visual_embeds")

    hooks = [dec.layers[0].register_forward_pre_hook(capture, with_kwargs=True),
             dec.register_forward_pre_hook(side_inputs, with_kwargs=True)]
    try:
        model(**inp)
    except StopIteration:
        pass
    finally:
        for hook in hooks:
            hook.remove()
    x, (cos, sin) = grab["x"], grab["pe"]
    B, N, _ = x.shape
    vm = family.visual_mask(model, inp)
    vis_pos = torch.stack([vm[b].nonzero()[:, 0] for b in range(B)])  # (B, Nv)
    mask2d = inp["attention_mask"].bool()
    rows = torch.arange(N).expand(B, N)
    h = x
    kept_after = dict(stages)
    for i, layer in enumerate(dec.layers):
        n = rows.shape[1]
        allowed = (rows[:, None, :] <= rows[:, :, None]) & mask2d.gather(1, rows)[:, None, :]
        allowed |= torch.eye(n, dtype=torch.bool)[None]  # padded query rows attend to themselves (no NaN)
        m4 = torch.zeros(B, 1, n, n, dtype=h.dtype).masked_fill(~allowed[:, None], torch.finfo(h.dtype).min)
        pe = (cos.expand(B, -1, -1).gather(1, rows[..., None].expand(-1, -1, cos.shape[-1])),
              sin.expand(B, -1, -1).gather(1, rows[..., None].expand(-1, -1, sin.shape[-1])))
        out = layer(h, attention_mask=m4, position_embeddings=pe, position_ids=None)
        h = out[0] if isinstance(out, tuple) else out
        ds = grab.get("deepstack")
        if ds is not None and i < len(ds):  # the stock decoder adds them to the visual rows, here to those alive
            feats = ds[i].view(B, -1, ds[i].shape[-1])  # equal visual counts per sample
            order = (vm.long().cumsum(1) - 1).clamp(min=0).gather(1, rows)
            is_vis = vm.gather(1, rows)
            h = h + feats.gather(1, order[..., None].expand(-1, -1, h.shape[-1])) * is_vis[..., None]
        if i in kept_after:
            keep_pos = vis_pos.gather(1, kept_after[i])  # original positions of the kept visual tokens
            alive = ~vm.clone()
            alive.scatter_(1, keep_pos, True)
            alive = alive.gather(1, rows)  # among the current rows
            sel = torch.stack([alive[b].nonzero()[:, 0] for b in range(B)])
            h = h.gather(1, sel[..., None].expand(-1, -1, h.shape[-1]))
            rows = rows.gather(1, sel)
    return family.lm_head(model)(dec.norm(h)), rows


@pytest.mark.parametrize("attn", ATTN)
@pytest.mark.parametrize("layers", [(1,), (0, 2)])
def test_pruned_prefill_equals_a_slow_reference_on_the_stock_layers(family, models, attn, layers):
    model = models[attn]
    inp = family.inputs(model, QUESTIONS, seed=3)
    cfg = SparseConfig(budget=0.25, layers=layers, recycle=False, temporal_tau=None, frame_floor=1)
    with torch.no_grad():
        with sparsify(model, cfg) as h:
            pruned = model(**inp, use_cache=False).logits
        stages = [(s.layer, s.kept) for s in h.trace.stages]
        ref, rows = _reference_logits(family, model, inp, stages)
    assert pruned.shape == ref.shape
    valid = inp["attention_mask"].bool().gather(1, rows)  # compare real tokens (padding rows are free)
    err = (pruned - ref).abs().amax(-1)[valid].max().item()
    assert err < 1e-4, err
    # and the pruned run really dropped tokens
    assert rows.shape[1] < inp["input_ids"].shape[1]


# ----------------------------------------------------------------------------- cached decode == recompute
@pytest.mark.parametrize("attn", ATTN)
@pytest.mark.parametrize("positions", ["original", "renumber"])
def test_cached_decoding_equals_a_recompute_without_cache(family, models, attn, positions):
    """Greedy generation's logits (pruned prefill, then decode steps on the pruned cache) equal one forward
    of prompt + generated tokens without a cache, the selection forced to the prompt's own."""
    model = models[attn]
    inp = family.inputs(model, QUESTIONS, seed=9)
    cfg = SparseConfig(budget=0.2, layers=(0, 2), positions=positions)
    if family.mrope and positions == "renumber":  # 1-D renumbering is not defined on 3-axis positions
        with pytest.raises(ValueError, match="mrope"):
            sparsify(model, cfg)
        return
    with torch.no_grad(), sparsify(model, cfg) as h:
        seq, logits = _gen(model, inp)
        kept = [s.kept for s in h.trace.stages]
        n_new = logits.shape[1]
        B = seq.shape[0]
        mask = torch.cat([inp["attention_mask"], torch.ones(B, n_new - 1, dtype=torch.long)], 1)
        with h.override_selection(kept):
            ref = model(**_extend(family, inp, seq[:, :-1], mask), use_cache=False).logits
    ref = ref[:, -n_new:]
    live = torch.ones(B, n_new, dtype=torch.bool)  # steps before each row's EOS (the batch pads after it)
    for b in range(B):
        eos = (seq[b, -n_new:] == 2).nonzero()
        if len(eos):
            live[b, int(eos[0]) + 1:] = False
    err = (ref - logits).abs().amax(-1)[live].max().item()
    assert err < 1e-4, err


class _positions_seen:
    """Context collecting the position_ids every decoder call receives."""

    def __init__(self, family, model):
        self.dec, self.seen = family.decoder(model), []

    def __enter__(self):
        def grab(module, args, kwargs):
            self.seen.append(kwargs["position_ids"])

        self.hook = self.dec.register_forward_pre_hook(grab, with_kwargs=True)
        return self.seen

    def __exit__(self, *exc):
        self.hook.remove()


def _nv(family, model, inp):
    return int(family.visual_mask(model, inp)[0].sum())


# ----------------------------------------------------------------------------- beam search and sampling
EOS = 2  # the tiny models' eos_token_id: suppressed below, so every beam and sample runs to max_new_tokens
NEW = 4
BEAMS = 3
TOP_K = 5


class _ForcePrefix:
    """Logits processor that makes greedy decoding emit `prefix` (rows x s) first: teacher forcing through
    generate's own cached decode loop (output_logits are the raw logits, before this processor)."""

    def __init__(self, prompt_len, prefix):
        self.n, self.prefix = prompt_len, prefix

    def __call__(self, input_ids, scores):
        s = input_ids.shape[1] - self.n
        if s >= self.prefix.shape[1]:
            return scores
        return torch.full_like(scores, float("-inf")).scatter_(1, self.prefix[:, s : s + 1], 0.0)


def _next_logprobs_cached(family, model, h, inp, rep, gen):
    """Next-token log-probs after prompt + `gen` (rows = sample x rep), by a pruned prefill of the prompt and
    pruned cached decode steps over `gen` (greedy, forced; no beam reordering, no sampling)."""
    from transformers import LogitsProcessorList

    x = _repeat(family, inp, rep)
    n = x["input_ids"].shape[1]
    out = model.generate(**x, max_new_tokens=gen.shape[1] + 1, do_sample=False, pad_token_id=0,
                         logits_processor=LogitsProcessorList([_ForcePrefix(n, gen)]), output_logits=True,
                         return_dict_in_generate=True)
    assert torch.equal(out.sequences[:, n:-1], gen)
    return out.logits[-1].float()


def _next_logprobs_no_cache(family, model, h, inp, rep, gen):
    """The same by one forward of prompt + `gen` without a cache, the selection forced to the prompt's own
    (raters are the prompt's text tokens only, so the pruned prefill selects the same tokens for every prefix)."""
    B = inp["input_ids"].shape[0]
    model(**inp)  # the prompt's selection
    kept = [s.kept.repeat_interleave(rep, 0) for s in h.trace.stages]
    x = _repeat(family, inp, rep)
    mask = torch.cat([x["attention_mask"], torch.ones(B * rep, gen.shape[1], dtype=torch.long)], 1)
    ids = torch.cat([x["input_ids"], gen], 1)
    with h.override_selection(kept):
        logits = model(**_extend(family, x, ids, mask), use_cache=False).logits
    return logits[:, -1].float()


# "cached": the video preset as it is (recycling on: a selection override cannot reproduce merged tokens);
# "no_cache": the video preset without recycling, against a cache-free recompute
REFERENCES = {
    "cached": (_next_logprobs_cached, {}),
    "no_cache": (_next_logprobs_no_cache, {"recycle": False}),
}


def _logprobs(family, scorer, model, h, inp, rep, gen):
    lp = torch.log_softmax(scorer(family, model, h, inp, rep, gen), -1)
    lp[:, EOS] = float("-inf")  # suppress_tokens=[EOS]
    return lp


def _ref_beam_search(family, scorer, model, h, inp, nb, steps):
    """Plain beam search (length penalty 1, no EOS): keep the nb best (beam, token) continuations by summed
    log-prob; returns every sample's nb beams best first and their scores (sum / generated length)."""
    B = inp["input_ids"].shape[0]
    gen = torch.zeros(B * nb, 0, dtype=torch.long)
    scores = torch.full((B, nb), float("-inf"))
    scores[:, 0] = 0.0  # one live beam at the start
    for _ in range(steps):
        lp = _logprobs(family, scorer, model, h, inp, nb, gen).view(B, nb, -1) + scores[:, :, None]
        V = lp.shape[-1]
        scores, idx = lp.view(B, -1).topk(nb)
        rows = (torch.arange(B)[:, None] * nb + idx // V).reshape(-1)
        gen = torch.cat([gen[rows], (idx % V).reshape(-1, 1)], 1)
    return gen, scores.reshape(-1) / steps


def _ref_sample(family, scorer, model, h, inp, steps, top_k, seed):
    """Top-k sampling drawing from torch's global generator exactly as generate does: one
    multinomial(softmax(top-k filtered scores), 1) per step, nothing else consuming random numbers."""
    torch.manual_seed(seed)
    gen = torch.zeros(inp["input_ids"].shape[0], 0, dtype=torch.long)
    for _ in range(steps):
        lp = _logprobs(family, scorer, model, h, inp, 1, gen)
        lp = lp.masked_fill(lp < lp.topk(top_k).values[:, -1:], float("-inf"))
        gen = torch.cat([gen, torch.multinomial(torch.softmax(lp, -1), 1)], 1)
    return gen


def _beam(model, inp):
    return model.generate(**inp, max_new_tokens=NEW, num_beams=BEAMS, num_return_sequences=BEAMS, pad_token_id=0,
                          suppress_tokens=[EOS], output_scores=True, return_dict_in_generate=True)


def _sample(model, inp, seed):
    torch.manual_seed(seed)
    return model.generate(**inp, max_new_tokens=NEW, do_sample=True, top_k=TOP_K, pad_token_id=0,
                          suppress_tokens=[EOS])


def test_keep_all_beam_search_and_sampling_equal_the_stock_model(family, models):
    model = models["sdpa"]
    inp = family.inputs(model, QUESTIONS)
    with torch.no_grad():
        ref_beam, ref_samples = _beam(model, inp), [_sample(model, inp, seed) for seed in (0, 1)]
        with sparsify(model, SparseConfig(budget=1.0, layers=(1,))) as h:
            beam, samples = _beam(model, inp), [_sample(model, inp, seed) for seed in (0, 1)]
    assert h.trace.counts == [_nv(family, model, inp)]  # the pruned path ran (keeping everything)
    assert torch.equal(beam.sequences, ref_beam.sequences)  # every returned beam, token for token
    assert torch.allclose(beam.sequences_scores, ref_beam.sequences_scores, atol=1e-6)
    for got, ref in zip(samples, ref_samples):
        assert torch.equal(got, ref)
    assert not torch.equal(ref_samples[0], ref_samples[1])  # the seed matters, so equality above means something


@pytest.mark.parametrize("ref", sorted(REFERENCES))
def test_pruned_beam_search_equals_a_reference_beam_search(family, models, ref):
    model = models["sdpa"]
    inp = family.inputs(model, QUESTIONS)
    scorer, over = REFERENCES[ref]
    cfg = SparseConfig.preset("video", budget=0.1, num_layers=4).replace(**over)
    with torch.no_grad():
        stock = _beam(model, inp)
        with sparsify(model, cfg) as h:
            model(**inp)
            prompt_kept = [s.kept for s in h.trace.stages]
            out = _beam(model, inp)
            beam_kept = [s.kept for s in h.trace.stages]
            ref_gen, ref_scores = _ref_beam_search(family, scorer, model, h, inp, BEAMS, NEW)
    # real pruning: two stages, far fewer tokens than the video has
    assert h.trace.counts[-1] < _nv(family, model, inp) // 5
    # the beams' prefill (batch x beams rows) selects, per row, what the prompt alone selects
    for a, b in zip(prompt_kept, beam_kept):
        assert torch.equal(b, a.repeat_interleave(BEAMS, 0))
    n = inp["input_ids"].shape[1]
    assert torch.equal(out.sequences[:, :n], inp["input_ids"].repeat_interleave(BEAMS, 0))
    assert torch.equal(out.sequences[:, n:], ref_gen), (out.sequences[:, n:], ref_gen)
    assert torch.allclose(out.sequences_scores, ref_scores, atol=1e-4), (out.sequences_scores, ref_scores)
    assert not torch.allclose(out.sequences_scores, stock.sequences_scores, atol=1e-3)  # pruning changed them


@pytest.mark.parametrize("ref", sorted(REFERENCES))
def test_pruned_sampling_equals_a_reference_sampler_and_only_the_seed_changes_it(family, models, ref):
    model = models["sdpa"]
    inp = family.inputs(model, QUESTIONS)
    scorer, over = REFERENCES[ref]
    cfg = SparseConfig.preset("video", budget=0.1, num_layers=4).replace(**over)
    n = inp["input_ids"].shape[1]
    with torch.no_grad(), sparsify(model, cfg) as h:
        runs, kept = {}, {}
        for key in ((0, "a"), (0, "b"), (1, "a")):
            runs[key] = _sample(model, inp, key[0])
            kept[key] = [s.kept for s in h.trace.stages]
        refs = {seed: _ref_sample(family, scorer, model, h, inp, NEW, TOP_K, seed) for seed in (0, 1)}
    assert h.trace.counts[-1] < _nv(family, model, inp) // 5
    for key, seq in runs.items():
        assert torch.equal(seq[:, :n], inp["input_ids"])
        assert torch.equal(seq[:, n:], refs[key[0]]), (key, seq[:, n:], refs[key[0]])
        for a, b in zip(kept[key], kept[(0, "a")]):
            assert torch.equal(a, b)  # the selection never depends on the sampling seed
    assert torch.equal(runs[(0, "a")], runs[(0, "b")])  # same seed: same tokens
    assert not torch.equal(runs[(0, "a")][:, n:], runs[(1, "a")][:, n:])  # another seed: other tokens


@pytest.mark.parametrize("attn", ATTN)
def test_a_second_turn_continues_the_pruned_cache(family, models, attn):
    """Multi-turn: generate, append the next user turn, generate again on the same (pruned) cache. The second
    answer's logits equal one forward of the whole conversation without a cache, the selection forced to the
    first prompt's; the second turn does not prune again (its text only extends the cache)."""
    model = models[attn]
    inp = family.inputs(model, QUESTIONS, seed=11)
    B = inp["input_ids"].shape[0]
    cfg = SparseConfig(budget=0.25, layers=(0, 2))
    gen = dict(do_sample=False, pad_token_id=0, suppress_tokens=[EOS], return_dict_in_generate=True,
               output_logits=True, max_new_tokens=3)
    with torch.no_grad(), sparsify(model, cfg) as h:
        with _positions_seen(family, model) as seen:
            first = model.generate(**inp, **gen)
        kept = [s.kept for s in h.trace.stages]
        trace1 = h.trace
        turn2 = torch.tensor([[20, 21, 22]]).expand(B, 3)
        ids2 = torch.cat([first.sequences, turn2], 1)
        mask2 = torch.cat([inp["attention_mask"], torch.ones(B, ids2.shape[1] - inp["input_ids"].shape[1],
                                                            dtype=torch.long)], 1)
        cache = {cache_keyword(model): output_cache(first)}  # `cache` from transformers 5.24, else past_key_values
        with _positions_seen(family, model) as seen2:
            second = model.generate(input_ids=ids2, attention_mask=mask2, **cache, **gen)
        assert h.trace is trace1  # no new prefill: the second turn ran on the pruned cache
        logits2 = torch.stack(second.logits, 1)
        full = second.sequences[:, :-1]
        mask = torch.cat([mask2, torch.ones(B, full.shape[1] - mask2.shape[1], dtype=torch.long)], 1)
        x = _extend(family, inp, full, mask)
        if family.mrope:
            # the 3-axis positions the stock model gives a continued conversation are its own (Qwen2.5-VL's
            # differ from a fresh computation over the whole text even without videosparse): the reference
            # takes the ones both generate calls used (prompt, decode steps, second turn, its decode steps)
            # (a continued generate hands the decoder one row, text positions + rope_deltas, for every axis)
            x["position_ids"] = torch.cat([p.expand(4, *p.shape[1:]) for p in seen + seen2], -1)
            assert x["position_ids"].shape[-1] == full.shape[1]
        with h.override_selection(kept):
            ref = model(**x, use_cache=False).logits
    ref = ref[:, -logits2.shape[1]:]
    assert (ref - logits2).abs().max().item() < 1e-4


# ----------------------------------------------------------------------------- batch == alone
@pytest.mark.parametrize("attn", ATTN)
@pytest.mark.parametrize("preset", ["video", "sparsevlm-v1.5"])
def test_batch_equals_each_sample_alone(family, models, attn, preset):
    model = models[attn]
    inp = family.inputs(model, QUESTIONS, seed=7)
    cfg = SparseConfig.preset(preset, budget=0.2, num_layers=family.num_layers)
    if family.mrope and cfg.positions == "renumber":
        cfg = cfg.replace(positions="original")  # the seed preset's renumbering is 1-D only (refused under mrope)
    with torch.no_grad(), sparsify(model, cfg) as h:
        seq, _ = _gen(model, inp)
        kept_b = [s.kept for s in h.trace.stages]
        N = inp["input_ids"].shape[1]
        for b in range(seq.shape[0]):
            alone = family.single(inp, b)
            seq1, _ = _gen(model, alone)
            for sb, s1 in zip(kept_b, h.trace.stages):
                assert torch.equal(sb[b], s1.kept[0])
            new1 = seq1[0, alone["input_ids"].shape[1]:]  # stops at EOS; the batch pads after it
            assert len(new1) >= 1 and torch.equal(seq[b, N:N + len(new1)], new1)


# ----------------------------------------------------------------------------- remove() is bit-exact
@pytest.mark.parametrize("attn", ATTN)
def test_remove_restores_the_model_exactly(family, attn):
    model = family.build(attn, seed=3)
    inp = family.inputs(model, QUESTIONS)
    with torch.no_grad():
        ref = model(**inp).logits
        ref_seq, _ = _gen(model, inp)
        before = _hooks_and_attrs(model)  # after a first run (transformers adds its own hooks lazily)
        h = sparsify(model, SparseConfig.preset("video", budget=0.2, num_layers=family.num_layers))
        assert _hooks_and_attrs(model) != before
        assert model(**inp).logits.shape[1] < ref.shape[1]
        h.remove()
        h.remove()  # idempotent
        after = model(**inp).logits
        seq, _ = _gen(model, inp)
    assert _hooks_and_attrs(model) == before
    assert torch.equal(after, ref) and torch.equal(seq, ref_seq)
