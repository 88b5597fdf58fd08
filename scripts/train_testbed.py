#!/usr/bin/env python
"""Train a test bed on synthetic video QA and save it to videosparse/assets/testbed[_onevision]/.

    python scripts/train_testbed.py                       # defaults: the shipped Video-LLaVA checkpoint
    python scripts/train_testbed.py --family llava_onevision --out videosparse/assets/testbed_onevision
    python scripts/train_testbed.py --steps 200 --out /tmp/tb   # quick smoke run

``--family video_llava`` (default): CLIP ViT 8 px patches + CLS, Llama decoder. ``--family llava_onevision``:
SigLIP 4 px patches (no CLS) pooled by transformers 2 x 2 to one token per cell, a closing
``image_newline`` token after the video (never a target, never dropped), Qwen2 decoder (2 KV heads,
q/k/v biases), Qwen2 chat turns ending with ``<|im_end|>``. Everything below applies to both; token
positions come from the family's geometry (``videosparse.testbed.model.visual_index``).

Recipe (see README "Test bed"): a real ``VideoLlavaForConditionalGeneration`` (CLIP ViT 2 x 64,
Llama 4 x 128, tied embeddings) trained from scratch with AdamW on these losses:

* QA: several question/answer turns packed after each clip, cross-entropy on every answer token;
* grounding: ``lm_head`` applied to every projected visual patch token predicts, each with its own
  softmax over the group's words, the colour and the shape of the object in that patch
  (``background`` otherwise) and, for object patches, ``top``/``bottom`` and ``left``/``right``
  (weight ``--pos-weight``); object and background patches are averaged separately;
* routing: at decoder layers 0 and 1, the question's colour token (and, at layer 1, the tokens after
  it up to ``ASSISTANT:``) put their head-mean attention over the visual tokens on the asked-about
  object's patches (-log of that attention share);
* rater alignment: projected patch tokens orthogonal to the non-key question words (and background
  patches to the colour words), so SparseVLM-style rater selection lands on the colour word;
* simulated pruning (attention masks, all layers after a random stage layer 0 or 1): 50-97% of the
  unasked patches removed (answers unchanged); the first question's own patches removed (answer
  ``unknown``); all but one of them removed (answer unchanged). Without it the question tokens
  read everything in layers 0-1 and pruning after layer 1 cost nothing, even at random.

Deterministic: data from ``numpy.random.default_rng([seed, step])``, weights from
``torch.manual_seed(seed)``, fixed thread count.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import time

# OpenMP threads sleep instead of spinning at barriers: on a shared machine (another job on one of the
# cores) spinning made 2-thread steps up to 10x slower; passive waiting costs ~nothing when idle. Must be
# set before torch loads its OpenMP runtime. Numerics are unchanged.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from videosparse.testbed import synthetic as syn  # noqa: E402
from videosparse.testbed import model as tb  # noqa: E402

log = logging.getLogger("train_testbed")

TRAIN_SEED_DOMAIN = 0x7EA1  # training rng: default_rng([TRAIN_SEED_DOMAIN, seed, step])
VAL_SEED = 1  # validation during training (in-memory frames)
HELDOUT_SEED = 20240  # final held-out evaluation (written as video files, read back)
TEST_SEED = 777  # fixed questions checked by tests/test_testbed.py


class Batcher:
    """Packed training sequences.

    Video-LLaVA: ``<s> USER: <video>*V q1 ASSISTANT: a1 </s> USER: q2 ASSISTANT: a2 </s> ...``;
    OneVision: ``<|im_start|> user <video>*(V+1) q1 <|im_end|> <|im_start|> assistant a1 <|im_end|>
    <|im_start|> user q2 ...`` (the word-level tokenizer drops the template's newlines)."""

    def __init__(self, tokenizer, gen: syn.GenConfig, per_frame: int, family: str = tb.VIDEO_LLAVA,
                 has_cls: bool = True, tail: int = 0):
        self.tok = tokenizer
        self.gen = gen
        self.per_frame = per_frame
        self.family = family
        self.has_cls = has_cls
        self.tail = tail  # placeholder tokens closing the video block (OneVision's newline), not visual
        self.vocab = tokenizer.get_vocab()
        self.video_id = self.vocab[tb.VIDEO]
        if family == tb.LLAVA_ONEVISION:
            self.prefix = [tb.IM_START, "user"]
            self.turn_open = [tb.IM_START, "user"]
            self.turn_close = [tb.IM_END, tb.IM_START, "assistant"]
        else:
            self.prefix = [tb.BOS, "USER:"]
            self.turn_open = ["USER:"]
            self.turn_close = ["ASSISTANT:"]
        self.eos = tb.eos_token(family)

    def pos(self, vis_start: int, t: int, r: int, c: int) -> int:
        """Sequence position of cell (r, c) of frame t."""
        return vis_start + tb.visual_index(t, r, c, self.per_frame, self.gen.grid, self.has_cls)

    def ids(self, words):
        return [self.vocab[w] for w in words]

    def make(self, rng: np.random.Generator, batch: int, qa_per_clip: int, unknown_prob: float = 0.0,
             drop_prob: float = 0.0, drop_layers: tuple = (1,), partial_prob: float = 0.0, count_weight: int = 2,
             route_answers: bool = False):
        """Also returns, per sequence, the visual positions removed from the layers after a random
        stage layer (``drop_keys``, ``drop_after``): with ``unknown_prob`` the first question's
        target patches (that question's answer becomes ``unknown``), with ``drop_prob`` a random
        50-97% of the patches no question asks about (the answers stay). ``route_answers``: the answer
        tokens followed by another answer word (``top`` of ``top left``) are routed too (layer 1)."""
        gen = self.gen
        items = syn.training_batch(rng, batch, qa_per_clip, gen, count_weight)
        drops, drop_after = [], []
        n_vis = gen.num_frames * self.per_frame
        seqs, labels, qpos, tmasks, pix, gcol = [], [], [], [], [], []
        vis_start = len(self.prefix)  # <s> USER: / <|im_start|> user
        for clip, qas in items:
            ids = self.ids(self.prefix) + [self.video_id] * (n_vis + self.tail)
            lab = [-100] * len(ids)
            qp, tm = [], []
            unknown_first = bool(rng.random() < unknown_prob)
            if unknown_first:  # later turns must not need the removed patches
                first = set(qas[0].target)
                qas = [qas[0]] + [q for q in qas[1:] if not (set(q.target) & first)]
            drop_random = bool(rng.random() < drop_prob)
            all_targets = set()
            for s in qas:
                all_targets.update(self.pos(vis_start, t, r, c) for (t, r, c) in s.target)
            dropped = set()
            if drop_random:
                others = [p for p in range(vis_start, vis_start + n_vis) if p not in all_targets]
                frac = rng.uniform(0.5, 0.97)
                dropped.update(int(x) for x in rng.choice(others, size=int(frac * len(others)), replace=False))
            if unknown_first:
                dropped.update(self.pos(vis_start, t, r, c) for (t, r, c) in qas[0].target)
            elif partial_prob > 0 and qas[0].qtype != "count" and rng.random() < partial_prob:
                # a pruner may keep only part of the object: one of its patches is enough to answer
                tgt = qas[0].target
                keep = int(rng.integers(len(tgt)))
                dropped.update(self.pos(vis_start, t, r, c) for i, (t, r, c) in enumerate(tgt) if i != keep)
            drops.append(sorted(dropped))
            drop_after.append(int(rng.choice(drop_layers)))
            for k, s in enumerate(qas):
                if k:
                    ids += self.ids(self.turn_open)
                    lab += [-100] * len(self.turn_open)
                qwords = s.question.split()
                cpos = len(ids) + qwords.index(s.color)
                ids += self.ids(qwords) + self.ids(self.turn_close)
                lab += [-100] * (len(qwords) + len(self.turn_close))
                apos_end = len(ids) - 1  # ASSISTANT: / assistant
                answer = syn.UNKNOWN_WORD if (k == 0 and unknown_first) else s.answer
                ans = self.ids(answer.split()) + [self.vocab[self.eos]]
                ids += ans
                lab += ans
                target = [self.pos(vis_start, t, r, c) for (t, r, c) in s.target]
                last = apos_end + (len(ans) - 2 if route_answers else 0)  # inputs predicting a 2nd+ answer word
                for p in range(cpos, last + 1):
                    qp.append((p, p == cpos))
                    tm.append(target)
            seqs.append(ids)
            labels.append(lab)
            qpos.append(qp)
            tmasks.append(tm)
            pix.append(tb.preprocess(clip.frames, None, self.family))
            cw, sw = syn.patch_labels(clip)
            half = gen.grid // 2
            rows = np.where(np.arange(gen.grid) < half, "top", "bottom")[None, :, None]
            cols = np.where(np.arange(gen.grid) < half, "left", "right")[None, None, :]
            obj = cw != syn.BACKGROUND_WORD
            vw = np.where(obj, np.broadcast_to(rows, cw.shape), syn.BACKGROUND_WORD)
            hw = np.where(obj, np.broadcast_to(cols, cw.shape), syn.BACKGROUND_WORD)
            words = np.stack([cw, sw, vw, hw], -1).reshape(gen.num_frames, -1, 4)  # (T, P, 4)
            gcol.append(np.vectorize(self.vocab.get)(words))
        L = max(len(s) for s in seqs)
        B = len(seqs)
        input_ids = torch.full((B, L), self.vocab[tb.PAD], dtype=torch.long)
        attn = torch.zeros((B, L), dtype=torch.long)
        lab_t = torch.full((B, L), -100, dtype=torch.long)
        Q = max(len(q) for q in qpos)
        q_index = torch.zeros((B, Q), dtype=torch.long)
        q_valid = torch.zeros((B, Q), dtype=torch.bool)
        q_is_color = torch.zeros((B, Q), dtype=torch.bool)
        t_mask = torch.zeros((B, Q, L), dtype=torch.bool)
        for b in range(B):
            n = len(seqs[b])
            input_ids[b, :n] = torch.tensor(seqs[b])
            attn[b, :n] = 1
            lab_t[b, :n] = torch.tensor(labels[b])
            for j, ((p, is_c), tgt) in enumerate(zip(qpos[b], tmasks[b])):
                q_index[b, j] = p
                q_valid[b, j] = True
                q_is_color[b, j] = is_c
                t_mask[b, j, tgt] = True
        drop_keys = torch.zeros((B, L), dtype=torch.bool)
        for b in range(B):
            drop_keys[b, drops[b]] = True
        vis_mask = torch.zeros(L, dtype=torch.bool)
        vis_mask[vis_start : vis_start + n_vis] = True
        return dict(
            input_ids=input_ids,
            attention_mask=attn,
            labels=lab_t,
            pixel_values_videos=torch.stack(pix),
            q_index=q_index,
            q_valid=q_valid,
            q_is_color=q_is_color,
            t_mask=t_mask,
            vis_mask=vis_mask,
            g_words=torch.from_numpy(np.stack(gcol).astype(np.int64)),  # (B, T, P, 4)
            drop_keys=drop_keys,
            drop_after=torch.tensor(drop_after),
        )


def rater_attention(attn_module, captured: dict, batch: dict) -> torch.Tensor:
    """Head-mean attention of the supervised query rows: (B, Q, L) float32.

    Recomputed from the layer's input (captured by a pre-hook) for the Q query rows only, with the
    causal + padding mask, so training can use sdpa and never materialise an L x L map.
    """
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb  # Qwen2's is the same function

    h = captured["hidden_states"]  # (B, L, D) after input_layernorm
    cos, sin = captured["position_embeddings"]
    B, L, _ = h.shape
    hd = attn_module.head_dim
    q = attn_module.q_proj(h).view(B, L, -1, hd).transpose(1, 2)
    k = attn_module.k_proj(h).view(B, L, -1, hd).transpose(1, 2)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    groups = q.shape[1] // k.shape[1]
    if groups > 1:  # grouped-query attention (Qwen2): each KV head serves `groups` query heads (repeat_kv)
        k = k.repeat_interleave(groups, dim=1)
    idx = batch["q_index"]  # (B, Q)
    qr = torch.gather(q, 2, idx[:, None, :, None].expand(-1, q.shape[1], -1, hd))  # (B, H, Q, hd)
    s = (qr.float() @ k.float().transpose(-1, -2)) * attn_module.scaling  # (B, H, Q, L)
    pos = torch.arange(L)
    allowed = (pos[None, None, :] <= idx[:, :, None]) & batch["attention_mask"].bool()[:, None, :]
    s = s.masked_fill(~allowed[:, None], float("-inf"))
    return s.softmax(-1).mean(1)


def routing_loss(rows: torch.Tensor, batch: dict, color_only: bool) -> torch.Tensor:
    """-log share of the visual attention that lands on the target patches. rows: (B, Q, L)."""
    vis = rows[..., batch["vis_mask"]].sum(-1)
    tgt = (rows * batch["t_mask"]).sum(-1)
    share = tgt / vis.clamp_min(1e-9)
    valid = batch["q_valid"] & (batch["q_is_color"] if color_only else torch.ones_like(batch["q_valid"]))
    nll = -torch.log(share.clamp_min(1e-6))
    return (nll * valid).sum() / valid.sum().clamp_min(1)


def simulated_pruning_masks(batch: dict, num_layers: int) -> dict:
    """Per-layer boolean attention masks (B, 1, L, L) emulating a pruning stage: in layers after
    ``drop_after[b]`` nobody attends to ``drop_keys[b]`` (like the tokens had been removed)."""
    am = batch["attention_mask"].bool()
    B, L = am.shape
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    base = causal[None] & am[:, None, :]
    base[:, :, 0] = True  # first token (BOS / <|im_start|>) always visible: no empty rows (padding rows)
    out = {}
    for layer in range(num_layers):
        drop = batch["drop_keys"] & (batch["drop_after"] < layer)[:, None]  # (B, L)
        if drop.any():
            out[layer] = (base & ~drop[:, None, :])[:, None]
        else:
            out[layer] = base[:, None]
    return out


def rater_penalty(v: torch.Tensor, words: torch.Tensor, embed: torch.Tensor, non_key_ids: torch.Tensor,
                  color_ids: torch.Tensor, bg_id: int) -> torch.Tensor:
    """Keep question-guided rater selection on the key word.

    SparseVLM-style raters are the text tokens whose layer-0 embedding is most relevant to the visual
    tokens. This pushes every projected patch token orthogonal to the question's non-key words
    (``what``, ``shape``, ``where``, ...) and background patches orthogonal to the colour words, so the
    only question word visual tokens resemble is the asked colour. v: (B*T, P, D); words: (B, T, P, 4).
    """
    v = v.float().reshape(-1, v.shape[-1])
    bg = words.reshape(-1, 4)[:, 0] == bg_id
    nk = v @ embed[non_key_ids].float().T  # (N, |nk|)
    col = v[bg] @ embed[color_ids].float().T
    return nk.pow(2).mean() + col.pow(2).mean()


def grounding_groups(tok) -> list:
    """Word ids of the four grounding groups: colour, shape (each with ``background``), top/bottom, left/right."""
    ids = tok.convert_tokens_to_ids
    bg = syn.BACKGROUND_WORD
    return [
        torch.tensor(ids(list(syn.COLORS) + [bg])),
        torch.tensor(ids(list(syn.SHAPES) + [bg])),
        torch.tensor(ids(["top", "bottom"])),
        torch.tensor(ids(["left", "right"])),
    ]


def grounding_loss(logits: torch.Tensor, words: torch.Tensor, groups: list, bg_id: int, pos_weight: float = 1.0) -> torch.Tensor:
    """Patch grounding through lm_head, one softmax per attribute group, balanced object/background.

    logits: (B*T, P, V) lm_head of the projected patch tokens; words: (B, T, P, 4) target word ids
    (colour, shape, top/bottom, left/right of the object in the patch; ``background`` otherwise).
    Each group is a cross-entropy over that group's words only (so the attributes do not compete
    for one distribution); position groups apply to object patches only. Object and background
    patches are averaged separately and summed.
    """
    lg = logits.float().reshape(-1, logits.shape[-1])
    w = words.reshape(-1, 4)
    obj = w[:, 0] != bg_id
    total = lg.new_zeros(())
    for k, g in enumerate(groups):
        sub = lg[:, g]  # (N, |g|)
        target = (w[:, k : k + 1] == g[None]).float().argmax(1)
        nll = F.cross_entropy(sub, target, reduction="none")
        if obj.any():
            total = total + nll[obj].mean() * (pos_weight if k >= 2 else 1.0)
        if k < 2:
            total = total + nll[~obj].mean()
    return total / 4


def lr_at(step: int, args, elapsed: float | None = None) -> float:
    """Warm-up then cosine to ``min_lr_frac``. With ``--anneal-to-deadline`` the cosine's progress is the larger
    of the step progress and ``elapsed / --max-minutes``, so a run cut by the time cap still ends annealed."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    p = (step - args.warmup) / max(1, args.steps - args.warmup)
    if getattr(args, "anneal_to_deadline", False) and elapsed is not None:
        p = min(1.0, max(p, elapsed / (60.0 * args.max_minutes)))
    return args.lr * (args.min_lr_frac + (1 - args.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * p)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", default=tb.DEFAULT_FAMILY, choices=tb.FAMILIES,
                    help="model family: video_llava (default; videosparse/assets/testbed) or llava_onevision "
                         "(videosparse/assets/testbed_onevision)")
    ap.add_argument("--out", default=None, help="output dir (default: the family's videosparse/assets/ dir)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=2500)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--qa-per-clip", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--min-lr-frac", type=float, default=0.05)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--ground-weight", type=float, default=1.0)
    ap.add_argument("--route-weight", type=float, default=0.5)
    ap.add_argument("--unknown-prob", type=float, default=0.3,
                    help="share of clips whose first question loses its target patches after the stage layer (answer 'unknown')")
    ap.add_argument("--drop-prob", type=float, default=0.5,
                    help="share of clips that lose 50-97%% of the unasked patches after the stage layer")
    ap.add_argument("--drop-layers", default="0,1", help="stage layers drawn for the simulated pruning")
    ap.add_argument("--rater-weight", type=float, default=0.1,
                    help="weight of the rater-alignment penalty (patch tokens orthogonal to non-key question words)")
    ap.add_argument("--count-weight", type=int, default=3, help="draw weight of group count questions")
    ap.add_argument("--partial-prob", type=float, default=0.2,
                    help="share of clips whose first (non-count) question keeps only one of its patches after the stage layer")
    ap.add_argument("--pos-weight", type=float, default=4.0, help="weight of the top/bottom, left/right grounding")
    ap.add_argument("--pos-init-std", type=float, default=0.3, help="init std of the ViT position embeddings")
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--val-n", type=int, default=256)
    ap.add_argument("--heldout-n", type=int, default=1000)
    ap.add_argument("--stop-at", type=float, default=0.985, help="stop early when validation accuracy >= this")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--snapshot", default=None, help="also save the model here at every validation")
    ap.add_argument("--max-minutes", type=float, default=30.0, help="safety stop (breaks determinism if hit)")
    ap.add_argument("--anneal-to-deadline", action="store_true",
                    help="cosine progress = max(step progress, elapsed / --max-minutes): a run cut by the time cap "
                         "(shared machine) still ends at the low learning rate (not step-deterministic when it binds)")
    ap.add_argument("--route-answers", action=argparse.BooleanOptionalAction, default=None,
                    help="also route (layer 1) the answer tokens followed by another answer word, e.g. 'top' of "
                         "'top left' (default: on for llava_onevision, off for video_llava)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from videosparse.frontends import get_frontend

    family = args.family
    onevision = family == tb.LLAVA_ONEVISION
    # OneVision (2 KV heads): without it the second word of 'where' answers stayed at the prior (left/right
    # 50 %) while the visual tokens' grounding of left/right was perfect
    route_answers = onevision if args.route_answers is None else bool(args.route_answers)
    gen = syn.GenConfig()
    tok = tb.build_tokenizer(family)
    config = tb.build_config(tok, gen, family=family)
    model = get_frontend(family).model_class()(config)
    model.set_attn_implementation("sdpa")
    tower = model.model.vision_tower if onevision else model.model.video_tower
    with torch.no_grad():  # larger position embeddings: patch position survives the saturated object colours
        tower.embeddings.position_embedding.weight.normal_(0.0, args.pos_init_std)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("params %d", n_params)
    drop_layers = tuple(int(x) for x in args.drop_layers.split(","))
    per_frame = tb.tokens_per_frame(config)
    bg_id = tok.convert_tokens_to_ids(syn.BACKGROUND_WORD)
    groups = grounding_groups(tok)
    color_ids = torch.tensor(tok.convert_tokens_to_ids(list(syn.COLORS)))
    closing = {tb.IM_END, tb.IM_START, "assistant"} if onevision else {"ASSISTANT:"}
    question_words = sorted({w for t in syn.QUESTION_TEMPLATES.values() for w in t.replace("{c}", "").split()} | closing)
    non_key_ids = torch.tensor(tok.convert_tokens_to_ids(question_words))
    batcher = Batcher(tok, gen, per_frame, family, tb.has_cls(config), tb.tail_tokens(config))

    feats = {}
    inner = model.model
    if onevision:
        # the visual tokens are the projector's patch tokens *pooled* 2 x 2 (transformers' apply_pooling):
        # capture them there, one token per cell (B*T, grid*grid, D)
        pooling = inner.apply_pooling

        def pool_and_keep(x):
            y = pooling(x)
            feats["v"] = y
            return y

        inner.apply_pooling = pool_and_keep
    else:
        inner.multi_modal_projector.register_forward_hook(lambda m, i, o: feats.__setitem__("v", o))
    layers = model.model.language_model.layers
    captured = [{}, {}]

    def capture(store):
        def hook(module, args, kwargs):
            store["hidden_states"] = args[0] if args else kwargs["hidden_states"]
            store["position_embeddings"] = kwargs["position_embeddings"]

        return hook

    for i in range(2):
        layers[i].self_attn.register_forward_pre_hook(capture(captured[i]), with_kwargs=True)

    masks = {}

    def layer_mask(idx):
        def hook(module, args, kwargs):
            if idx in masks:
                kwargs["attention_mask"] = masks[idx]
            return args, kwargs

        return hook

    for i in range(len(layers)):
        layers[i].self_attn.register_forward_pre_hook(layer_mask(i), with_kwargs=True)

    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "norm" in n or "embedding" in n else decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.98),
    )
    val = syn.make_dataset(VAL_SEED, args.val_n, gen)
    history = []
    t0 = time.time()
    ema = None
    step = 0
    for step in range(args.steps):
        lr = lr_at(step, args, time.time() - t0)
        for g in opt.param_groups:
            g["lr"] = lr
        rng = np.random.default_rng([TRAIN_SEED_DOMAIN, args.seed, step])
        batch = batcher.make(rng, args.batch, args.qa_per_clip, args.unknown_prob, args.drop_prob, drop_layers,
                             args.partial_prob, args.count_weight, route_answers)
        masks.clear()
        masks.update(simulated_pruning_masks(batch, len(layers)))
        model.train()
        out = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            pixel_values_videos=batch["pixel_values_videos"],
            use_cache=False,
        )
        masks.clear()  # the simulated-pruning masks are for this training forward only
        logits = out.logits[:, :-1]
        qa = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1), ignore_index=-100)
        v = feats["v"] if onevision else feats["v"][:, 1:]  # (B*T, cells, D) patch tokens (CLS dropped)
        rpen = (
            rater_penalty(v, batch["g_words"], model.get_input_embeddings().weight, non_key_ids, color_ids, bg_id)
            if args.rater_weight > 0 else v.new_zeros(())
        )
        ground = grounding_loss(model.lm_head(v), batch["g_words"], groups, bg_id, args.pos_weight)
        route = 0.5 * (
            routing_loss(rater_attention(layers[0].self_attn, captured[0], batch), batch, color_only=True)
            + routing_loss(rater_attention(layers[1].self_attn, captured[1], batch), batch, color_only=False)
        )
        loss = qa + args.ground_weight * ground + args.route_weight * route + args.rater_weight * rpen
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        vals = [qa.item(), ground.item(), route.item(), rpen.item()]
        ema = vals if ema is None else [0.95 * e + 0.05 * x for e, x in zip(ema, vals)]
        if step % 25 == 0:
            log.info("step %d lr %.2e qa %.3f ground %.3f route %.3f rater %.3f (%.0fs)", step, lr, *ema,
                     time.time() - t0)
        last = step == args.steps - 1
        if (step + 1) % args.eval_every == 0 or last:
            model.eval()
            res = tb.evaluate(model, tok, val, batch_size=64)
            history.append({"step": step + 1, "seconds": round(time.time() - t0, 1), **res})
            log.info("VAL step %d acc %.4f %s", step + 1, res["accuracy"], json.dumps(res["per_type"]))
            if args.snapshot:
                model.save_pretrained(args.snapshot)
                tok.save_pretrained(args.snapshot)
                tb.save_preprocessor_config(args.snapshot, gen, family)
            if res["accuracy"] >= args.stop_at:
                log.info("stop: validation accuracy reached %.3f", args.stop_at)
                break
        if (time.time() - t0) / 60 > args.max_minutes:
            log.warning("stop: --max-minutes %.1f reached (run is no longer step-deterministic)", args.max_minutes)
            break
    train_seconds = time.time() - t0
    if onevision:
        del inner.apply_pooling  # back to the class's method

    out_dir = args.out or tb.default_path(family)
    os.makedirs(out_dir, exist_ok=True)
    model.eval()
    model.set_attn_implementation("sdpa")
    model.config._attn_implementation = "sdpa"
    model.generation_config.do_sample = False
    model.generation_config.max_new_tokens = 4
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.bos_token_id = tok.bos_token_id
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    tb.save_preprocessor_config(out_dir, gen, family)

    # fixed questions for the tests: from a seed never used in training, answered correctly by the model
    fixed = syn.make_dataset(TEST_SEED, 64, gen)
    tb.save_json([s.to_json() for s in fixed], tb.fixed_questions_path(out_dir))

    # held-out evaluation through real video files and the package's reader / preprocessing
    heldout_dir = os.path.join(out_dir + "_heldout")
    if os.path.exists(heldout_dir):
        shutil.rmtree(heldout_dir)
    jsonl = syn.write_dataset(syn.make_dataset(HELDOUT_SEED, args.heldout_n, gen), heldout_dir)
    samples = syn.load_samples(jsonl, num_frames=gen.num_frames)
    model2, tok2, spec = tb.load_testbed(out_dir)
    res = tb.evaluate(model2, tok2, samples, batch_size=64, spec=spec)
    log.info("HELD-OUT seed %d n %d acc %.4f %s", HELDOUT_SEED, len(samples), res["accuracy"], json.dumps(res["per_type"]))
    info = {
        "family": family,
        "seed": args.seed,
        "args": vars(args),
        "steps_run": step + 1,
        "train_seconds": round(train_seconds, 1),
        "params": n_params,
        "threads": args.threads,
        "torch": torch.__version__,
        "heldout": {"seed": HELDOUT_SEED, "reader": "videosparse.video" if spec is not None else "pyav", **res},
        "validation_history": history,
    }
    tb.save_json(info, os.path.join(out_dir, "training_info.json"))
    shutil.rmtree(heldout_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
