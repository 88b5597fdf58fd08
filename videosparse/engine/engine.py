"""PruningEngine: pruned prefill and decode through hooks on the stock decoder (see the package doc).

Layer convention: a stage "at layer L" scores with layer L's attention (rater rows only, from the
post-rotary queries of L's input and L's keys) and shrinks the sequence after layer L, so layers 0..L
see every token and layers > L see only the kept ones. Layer 0's cache always holds the whole prompt:
the stock decoder derives the decode positions from it, so they continue the original positions.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from videosparse.baselines import random_scores, uniform_scores
from videosparse.core.budget import rank_adaptive_count, rank_count_warning
from videosparse.core.raters import select_raters
from videosparse.core.scores import rater_attention, received_attention, relevance_rank, visual_scores
from videosparse.core.select import run_stage
from videosparse.core.trace import RetentionTrace, StageRecord
from videosparse.engine.state import CACHE_STATE_ATTR, CacheState, VisualLayout
from videosparse.compat import causal_mask, get_cache

logger = logging.getLogger(__name__)


def gather_rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x: (B or 1, N, D), idx: (B, K) -> (B, K, D)."""
    if x.shape[0] != idx.shape[0]:
        x = x.expand(idx.shape[0], *x.shape[1:])
    return x.gather(1, idx[:, :, None].expand(*idx.shape, x.shape[-1]))


def _hidden_arg(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


class PruningEngine:
    """Installs the hooks on one model for one family adapter and one SparseHandle.

    family: the model family's adapter (``videosparse.models.base.ModelAdapter``): ``inner``, ``decoder``,
    ``locate``, the q/k projections and rotary helpers, ``grid``, ``has_cls``.
    """

    def __init__(self, family: Any) -> None:
        self.family = family
        self.handle = None
        self._hooks: list = []
        self._layout: VisualLayout | None = None
        self._run: Any = None

    # ------------------------------------------------------------------ install / remove
    def install(self, handle: Any) -> None:
        fam = self.family
        self.handle = handle
        for other in getattr(fam.decoder, "_videosparse_handles", []):
            if other.active:
                raise ValueError("videosparse: this model is already sparsified; remove() the first handle")
        hooks = [
            fam.inner.register_forward_pre_hook(self._on_model, with_kwargs=True),
            fam.decoder.register_forward_pre_hook(self._on_decoder, with_kwargs=True),
            fam.decoder.register_forward_hook(self._after_decoder, with_kwargs=True, always_call=True),
        ]
        for i, layer in enumerate(fam.decoder.layers):
            hooks.append(layer.register_forward_pre_hook(self._layer_pre(i), with_kwargs=True))
            hooks.append(layer.register_forward_hook(self._layer_post(i)))
        self._hooks = hooks
        fam.decoder._videosparse_handles = [handle]

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []
        if "_videosparse_handles" in self.family.decoder.__dict__:
            del self.family.decoder._videosparse_handles
        self._layout = None
        self._run = None

    # ------------------------------------------------------------------ hooks
    def _on_model(self, module: Any, args: tuple, kwargs: dict) -> None:
        self._layout = None
        h = self.handle
        if h is None or h._disabled:
            return None
        cache = get_cache(kwargs)
        if cache is not None and cache.get_seq_length() > 0:
            return None  # decode step or continuation: handled from the cache state
        self._layout = self.family.locate(args, kwargs, h)
        return None

    def _on_decoder(self, module: Any, args: tuple, kwargs: dict) -> None:
        layout, self._layout = self._layout, None
        self._run = None
        h = self.handle
        if h is None or h._disabled:
            return None
        cache = get_cache(kwargs)
        state = getattr(cache, CACHE_STATE_ATTR, None) if cache is not None else None
        if layout is None and state is None:
            return None
        if args:
            raise TypeError("videosparse: call the decoder with keyword arguments")
        mask = kwargs.get("attention_mask")
        if mask is not None and mask.ndim != 2:
            raise ValueError("videosparse: only 2-D attention masks are supported (got a prepared 4-D mask)")
        if cache is not None and getattr(cache, "is_compileable", False):
            raise ValueError("videosparse: static/compileable caches are not supported; use the default DynamicCache")
        if layout is None:
            self._run = _Decode(self, state, mask)
            return None
        deepstack = None
        if kwargs.get("deepstack_visual_embeds") is not None:
            # Qwen3-VL adds these to the visual rows after its first layers, on the whole sequence: the engine
            # takes them over and adds them to the rows still alive
            deepstack = (kwargs.get("visual_pos_masks"), list(kwargs["deepstack_visual_embeds"]))
            kwargs = dict(kwargs)
            kwargs["deepstack_visual_embeds"] = None
            kwargs["visual_pos_masks"] = None
        self._run = _Prefill(self, layout, mask, deepstack)
        return None if deepstack is None else (args, kwargs)

    def _after_decoder(self, module: Any, args: tuple, kwargs: dict, output: Any) -> None:
        run, self._run = self._run, None
        if output is not None and isinstance(run, _Prefill) and run.started:
            run.finish()
        return None

    def _layer_pre(self, i: int) -> Any:
        def hook(module: Any, args: tuple, kwargs: dict) -> Any:
            run = self._run
            return None if run is None else run.before_layer(i, module, args, kwargs)

        return hook

    def _layer_post(self, i: int) -> Any:
        def hook(module: Any, args: tuple, output: Any) -> Any:
            run = self._run
            return None if run is None else run.after_layer(i, module, output)

        return hook


class _Prefill:
    """One pruned prefill: state that shrinks stage by stage (original positions of what is alive).

    Samples whose frames have different geometries (dynamic-resolution families) are selected one by one and
    may keep different numbers of tokens; the shorter ones then carry filler rows on their left (``valid``
    False: always masked, like left padding) so the batch stays one tensor."""

    def __init__(self, engine: PruningEngine, layout: VisualLayout, attention_mask: torch.Tensor | None,
                 deepstack: tuple | None = None) -> None:
        self.family = engine.family
        self.cfg = engine.family.config
        self.handle = engine.handle
        self.layout = layout
        self.attention_mask = attention_mask
        self.deepstack = deepstack  # (visual_pos_masks, [per-layer (sum of visual tokens, D)]) taken from the decoder
        self.started = False
        self.stage_of = {layer: s for s, layer in enumerate(self.cfg.stage_layers)}
        self.pruned = False  # a stage has shrunk the sequence: later layers get replaced inputs
        self.q_rows = None
        self.h_in = None
        # the kept rows of a stage layer's output: they replace the next layer's input (not the stage layer's
        # output, so transformers' output capture records the layer's whole output as without pruning); a
        # stage is never at the last layer (SparseConfig.check_layers), so a next layer always exists
        self.shrunk: torch.Tensor | None = None

    # ---------------------------------------------------------------- layer 0: read the stock inputs
    def _start(self, x: torch.Tensor, kwargs: dict) -> None:
        fam, cfg, lay = self.family, self.cfg, self.layout
        B, N, _ = x.shape
        dev = x.device
        self.started = True
        self.cache = get_cache(kwargs)
        vm = lay.visual_mask.to(dev)
        if vm.shape != (B, N):
            raise ValueError(f"videosparse: video-token mask {tuple(vm.shape)} does not match the sequence {(B, N)}")
        if lay.samples is not None:
            if len(lay.samples) != B:
                raise ValueError(f"videosparse: the layout describes {len(lay.samples)} samples, the batch has {B}")
            geo = [(int(t), int(p), tuple(int(v) for v in g)) for t, p, g in lay.samples]
        else:
            grid = tuple(int(v) for v in (lay.grid if lay.grid is not None else fam.grid))
            geo = [(int(lay.num_frames), int(lay.tokens_per_frame), grid)] * B
        self.geo = geo
        self.ragged = len(set(geo)) > 1
        self.pooled = lay.ids is not None
        nv = [int(lay.ids.shape[1])] * B if self.pooled else [t * p for t, p, _ in geo]
        counts = vm.sum(dim=1)
        if counts.tolist() != nv:
            raise ValueError(f"videosparse: the samples hold {counts.tolist()} video tokens but their frames make {nv}")
        self.nv = nv  # visual tokens of each sample in the sequence
        self.Nv = max(nv)
        self.Nv_all = [t * p for t, p, _ in geo]  # visual tokens of the sampled frames (trace coordinates)
        by_count: dict = {}
        for n in nv:
            if n not in by_count:
                by_count[n] = cfg.schedule(n, fam.num_layers)  # ValueError naming `budget` when impossible
        self.schedules = [by_count[n] for n in nv]
        # visual positions in prompt order (need not be contiguous); a shorter sample's row is padded with
        # positions that are never read
        vis_pos = torch.argsort((~vm).to(torch.int8), dim=1, stable=True)[:, :self.Nv]
        self.vis_order = vm.long().cumsum(dim=1) - 1  # (B, N) index of a visual token among its sample's
        self.valid = None  # (B, L) False for filler rows, None while there are none
        am = self.attention_mask
        self.mask2d = am.bool() if am is not None else torch.ones(B, N, dtype=torch.bool, device=dev)
        self.past = self.cache.get_seq_length() if self.cache is not None else 0
        position_ids = kwargs.get("position_ids")
        if position_ids is None:
            position_ids = (torch.arange(N, device=dev) + self.past).unsqueeze(0)
        self.cos_full, self.sin_full = kwargs["position_embeddings"]
        self.pos_full = position_ids.expand(B, N)
        # raters: text after the video (past its last visual token and the tokens closing the block), from the
        # layer-0 input embeddings
        last = vis_pos.gather(1, (counts - 1).clamp(min=0)[:, None])[:, 0]
        vis_end = last + 1 + lay.tail
        Nt = int((N - vis_end).max().item())
        text_pos = vis_end[:, None] + torch.arange(max(Nt, 1), device=dev)[None]
        text_valid = text_pos < N
        text_pos = text_pos.clamp(max=N - 1)
        text_valid &= self.mask2d.gather(1, text_pos)
        if Nt == 0 or not bool(text_valid.any(dim=1).all()):
            raise ValueError("videosparse: every sample needs text (the question) after the video tokens")
        self.text_pos = text_pos
        self.raters = None
        if cfg.method == "sparsevlm":
            if self.ragged:
                self.raters = torch.cat([
                    select_raters(gather_rows(x[b:b + 1], vis_pos[b:b + 1, :nv[b]]), gather_rows(x[b:b + 1], text_pos[b:b + 1]),
                                  text_valid[b:b + 1], cfg.raters) for b in range(B)])
            else:
                self.raters = select_raters(gather_rows(x, vis_pos), gather_rows(x, text_pos), text_valid, cfg.raters)
        self.x = x
        self.N = N
        # current sequence bookkeeping (original positions of the tokens still alive)
        self.cur = torch.arange(N, device=dev).expand(B, N).clone()
        self.cur_vis = vis_pos.clone()
        self.cur_nvis = list(nv)  # current visual tokens of each sample (the first ones of its cur_vis row)
        self.cur_vis_id = lay.ids.clone() if self.pooled else torch.arange(self.Nv, device=dev).expand(B, self.Nv).clone()
        self.cur_merged = torch.zeros(B, self.Nv, dtype=torch.bool, device=dev)
        self.cos, self.sin = self.cos_full, self.sin_full
        self.rope_pos = self.pos_full
        self.causal = None
        self.segments: list = [(0, None, None, 0)]  # the last one is open
        self.seg_valid: list = [None]
        self.trace_stages: list = []
        self.stage_sizes: list = []
        self.ds = None
        if self.deepstack is not None:
            self._start_deepstack(vm)

    def _start_deepstack(self, vm: torch.Tensor) -> None:
        """Deepstack side inputs (Qwen3-VL): the features the stock decoder adds to the visual rows after its
        first layers, per sample and visual token, added by `before_layer` to the rows still alive."""
        masks, embeds = self.deepstack
        if masks is None or not torch.equal(masks.to(vm.device).bool(), vm):
            raise ValueError("videosparse: the decoder's deepstack positions are not the video tokens "
                             "(image inputs are not supported)")
        if len(embeds) >= self.family.num_layers:
            raise ValueError(f"videosparse: {len(embeds)} deepstack layers on a {self.family.num_layers}-layer decoder")
        B = vm.shape[0]
        ds = []
        for e in embeds:
            parts = e.split(self.nv, dim=0)
            pad = e.new_zeros(B, self.Nv, e.shape[-1])
            for b, part in enumerate(parts):
                pad[b, : part.shape[0]] = part
            ds.append(pad)
        self.ds = ds

    def _local(self, orig: torch.Tensor) -> torch.Tensor:
        """Current-sequence slots of original positions `orig` (B, K) (filler rows sit left of real rows and
        carry position 0, so the last match is the real row)."""
        return (torch.searchsorted(self.cur, orig, right=True) - 1).clamp(min=0)

    # ---------------------------------------------------------------- hooks
    def before_layer(self, i: int, layer: Any, args: tuple, kwargs: dict) -> Any:
        h = _hidden_arg(args, kwargs)
        if not self.started:
            if i != 0:
                return None
            self._start(h, kwargs)
        replaced = False
        if self.shrunk is not None:
            h, self.shrunk = self.shrunk, None
            replaced = True
        if self.ds is not None and 0 < i <= len(self.ds):
            h = self._add_deepstack(h, self.ds[i - 1])
            replaced = True
        changed = None
        if replaced:
            if args:
                args = (h, *args[1:])
            else:
                kwargs = dict(kwargs)
                kwargs["hidden_states"] = h
            changed = (args, kwargs)
        if self.pruned:
            kwargs = dict(kwargs)
            kwargs["position_embeddings"] = (self.cos, self.sin)
            kwargs["attention_mask"] = self.causal
            kwargs["position_ids"] = None  # gapped positions would be read as packed sequences
            changed = (args, kwargs)
        if i in self.stage_of:
            self.h_in = h
            self.q_rows = self.stage_queries(layer, h)
        return changed

    def _add_deepstack(self, h: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """h + the deepstack features of the visual tokens alive (each slot gets its token's; a merged token's
        slot, its cluster center's)."""
        B, _, D = h.shape
        M = self.cur_vis.shape[1]
        order = self.vis_order.gather(1, self.cur_vis).clamp(min=0)
        add = gather_rows(feats.to(h.dtype), order)
        if self.ragged:
            live = torch.arange(M, device=h.device)[None] < torch.tensor(self.cur_nvis, device=h.device)[:, None]
            add = add * live[:, :, None]
        return h.scatter_add(1, self._local(self.cur_vis)[:, :, None].expand(B, M, D), add)

    def after_layer(self, i: int, layer: Any, output: Any) -> None:
        if not self.started or i not in self.stage_of:
            return None
        h = output[0] if isinstance(output, tuple) else output
        self.shrunk = self._stage(i, layer, h)
        return None

    # ---------------------------------------------------------------- scoring inputs
    def stage_queries(self, layer: Any, h: torch.Tensor) -> Any:
        """Post-rotary queries of the rows that score at this stage (from the layer's input)."""
        fam, cfg = self.family, self.cfg
        if cfg.method == "sparsevlm":
            raters = self.raters
            R = int(raters.sum(dim=1).max().item())
            order = torch.argsort((~raters).int(), dim=1, stable=True)[:, :R]  # rater original positions
            valid = raters.gather(1, order)
            orig = self.text_pos.gather(1, order)
            local = self._local(orig).clamp(max=self.cur.shape[1] - 1)
            q = fam.project_queries(layer, gather_rows(h, local))
            q = fam.rotate(q, gather_rows(self.cos, local), gather_rows(self.sin, local))
            qpos = torch.where(valid, local, torch.full_like(local, -1))
            return q, qpos, valid
        if cfg.method == "fastv":
            return self.all_queries(layer, h)
        return None

    def all_queries(self, layer: Any, h: torch.Tensor) -> torch.Tensor:
        """Post-rotary queries of every row of `h` at `layer`: (B, H, N, d)."""
        B = h.shape[0]
        cos, sin = self.cos.expand(B, *self.cos.shape[1:]), self.sin.expand(B, *self.sin.shape[1:])
        return self.family.rotate(self.family.project_queries(layer, h), cos, sin)

    def stage_keys(self, layer: Any, li: int, h_in: torch.Tensor) -> torch.Tensor:
        """Post-rotary keys of layer `li` for the current sequence: from the cache when there is one."""
        cache = self.cache
        if cache is not None and hasattr(cache, "layers") and li < len(cache.layers):
            keys = getattr(cache.layers[li], "keys", None)
            if keys is not None and keys.shape[2] >= h_in.shape[1]:
                return keys[:, :, -h_in.shape[1]:]
        B = h_in.shape[0]
        cos, sin = self.cos.expand(B, *self.cos.shape[1:]), self.sin.expand(B, *self.sin.shape[1:])
        return self.family.rotate(self.family.project_keys(layer, h_in), cos, sin)

    # ---------------------------------------------------------------- one stage
    def _stage(self, li: int, layer: Any, h: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        B = h.shape[0]
        h_in, q_rows = self.h_in, self.q_rows
        self.h_in = self.q_rows = None
        attn = layer.self_attn
        key_valid = self.mask2d.gather(1, self.cur)
        if self.valid is not None:
            key_valid = key_valid & self.valid
        vis_local = self._local(self.cur_vis)  # positions of visual tokens in the current sequence
        M = self.cur_vis.shape[1]
        scored: dict = {}
        if cfg.method == "sparsevlm":
            k = self.stage_keys(layer, li, h_in)
            q, qpos_local, rater_valid = q_rows
            if cfg.score_impl == "full":
                # seed-reference style: the whole (B, H, N, N) map of layer li, then its rater rows
                q_all = self.all_queries(layer, h_in)
                allpos = torch.arange(q_all.shape[2], device=h.device).expand(B, -1)
                full = rater_attention(q_all, k, allpos, key_valid, attn.scaling)
                probs = full.gather(2, qpos_local.clamp(min=0)[:, None, :, None].expand(
                    B, full.shape[1], qpos_local.shape[1], full.shape[3]))
                probs = probs * rater_valid[:, None, :, None]
                del full
            else:
                probs = rater_attention(q, k, qpos_local, key_valid, attn.scaling)
            grav, qpos_rope, kpos_rope = None, None, None
            if cfg.gravity is not None:
                qpos_rope = self.rope_pos.gather(1, qpos_local.clamp(min=0))
                kpos_rope = self.rope_pos.gather(1, vis_local)
                grav = self.family.gravity_table(int(self.rope_pos.max().item()) + 1, h.device, cfg.gravity)
            scored["scores"] = visual_scores(probs, rater_valid, vis_local, cfg.head_agg, cfg.priority_heads,
                                             grav, qpos_rope, kpos_rope)
            scored["probs"], scored["rater_valid"] = probs, rater_valid
        elif cfg.method == "fastv":
            k = self.stage_keys(layer, li, h_in)
            scored["scores"] = received_attention(q_rows, k, key_valid, attn.scaling).gather(1, vis_local)
        if not self.ragged:
            res = self._select(li, slice(None), 0, M, h, vis_local, scored)
            self.stage_sizes.append(int(res.keep.shape[1]))
            if cfg.trace:
                self.trace_stages.append(self._record([res], li))
            return self._shrink(li, h, vis_local, M, res)
        results = [self._select(li, slice(b, b + 1), b, self.cur_nvis[b], h, vis_local, scored) for b in range(B)]
        self.stage_sizes.append([int(r.keep.shape[1]) for r in results])
        if cfg.trace:
            self.trace_stages.append(self._record(results, li))
        return self._shrink_ragged(li, h, vis_local, results)

    def _select(self, li: int, sl: slice, b0: int, Mg: int, h: torch.Tensor, vis_local: torch.Tensor,
                scored: dict) -> Any:
        """Selection for the samples `sl` (all of them, or one when the geometries differ): `Mg` current visual
        tokens each; `b0` is the first sample of the group (its geometry and schedule are the group's)."""
        fam, cfg, handle = self.family, self.cfg, self.handle
        s_idx = self.stage_of[li]
        dev = h.device
        T, P, _ = self.geo[b0]
        count = self.schedules[b0].stages[s_idx].selected  # None: rank-adaptive, decided below from the scores
        ids = self.cur_vis_id[sl, :Mg]
        local = vis_local[sl, :Mg]
        if cfg.method in ("sparsevlm", "fastv"):
            scores = scored["scores"][sl, :Mg]
            if count is None:
                probs, rater_valid = scored["probs"][sl], scored["rater_valid"][sl]
                rank = relevance_rank(probs, rater_valid, local)
                count = rank_adaptive_count(Mg, rank, cfg.rank_lambda, rule=cfg.rank_rule, scale=cfg.rank_scale,
                                            bias=cfg.rank_bias)
                count = min(int(count), Mg)
                if cfg.clamp_counts and Mg > 1:
                    count = min(count, Mg - 1)  # the seed's min(count, N - 1), as the schedule does for fixed counts
                # the seed rules ('linear', 'rank') are reproduced as published; only the lambda rule warns
                msg = (rank_count_warning(count, rank, li, T, self.nv[b0], cfg.rank_lambda)
                       if cfg.rank_rule == "lambda" else None)
                if msg:
                    logger.warning(msg)
        elif cfg.method == "random":
            scores = random_scores(ids, self.Nv_all[b0], cfg.seed)
        else:  # uniform
            scores = uniform_scores(ids, count)
        if count > Mg:  # the schedule resolved the counts for this input: a stage never asks for more than it has
            raise RuntimeError(f"videosparse: internal error: stage {s_idx} was scheduled to keep {count} of {Mg} tokens")
        frame_id = ids // P
        forced = (ids % P == 0) if (cfg.keep_cls and fam.has_cls) else None
        override = None
        if handle._override is not None:
            if self.ragged:
                raise ValueError("videosparse: a selection override needs every sample of the batch to have the same "
                                 "frame geometry")
            ov = handle._override[s_idx].to(dev)
            # ids may be out of order after merged tokens were placed after the kept ones: match by value
            hit = ids[:, None, :] == ov.sort(dim=1).values[:, :, None]  # (B, K, M)
            if not bool(hit.any(dim=2).all()):
                raise ValueError(f"videosparse: the selection override of stage {s_idx} names tokens that are no "
                                 f"longer in the sequence")
            override = hit.float().argmax(dim=2)
            count = ov.shape[1]
        full_grid = not self.pooled and Mg == self.nv[b0]  # the whole frame-major grid is still there
        return run_stage(
            scores, gather_rows(h[sl], local), count, frame_id, T,
            grid_shape=(T, P) if full_grid else None,
            frame_floor=cfg.frame_floor, forced=forced,
            temporal_tau=cfg.temporal_tau, temporal_mode=cfg.temporal_mode,
            temporal_discount=cfg.temporal_discount,
            recycle_tokens=cfg.recycle, recycle_ratio=cfg.recycle_ratio,
            recycle_cluster_ratio=cfg.recycle_cluster_ratio, recycle_knn=cfg.recycle_knn,
            floor_share=cfg.floor_share, recycle_share=cfg.recycle_share,
            override=override, recycle_rule=cfg.recycle_rule, recycle_place=cfg.recycle_place,
            # temporal redundancy on the projected visual features (decoder input): position-free, so
            # identical content in two frames is recognised (layer-L states differ by RoPE/context)
            redundancy_features=(gather_rows(self.x[sl], self.cur_vis[sl, :Mg])
                                 if full_grid and cfg.temporal_tau is not None else None),
        )

    def _record(self, results: list, li: int) -> StageRecord:
        """The trace record of one stage; with one result per sample (different geometries) the per-sample
        arrays are padded: kept -1, merged False, scores NaN, clusters -1, redundant False."""
        cfg = self.cfg
        B, dev = self.cur_vis_id.shape[0], self.cur_vis_id.device
        groups = [(slice(None), 0, self.cur_nvis[0], results[0])] if len(results) == 1 else \
            [(slice(b, b + 1), b, self.cur_nvis[b], r) for b, r in enumerate(results)]
        Kmax = max(int(r.ids.shape[1]) for r in results)
        Nv_all = max(self.Nv_all)
        kept = torch.full((B, Kmax), -1, dtype=torch.long, device=dev)
        merged = torch.zeros(B, Kmax, dtype=torch.bool, device=dev)
        scores = torch.full((B, Nv_all), float("nan"), device=dev)
        clusters = torch.full((B, Nv_all), -1, dtype=torch.long, device=dev) if cfg.recycle else None
        redundant = None
        for sl, b0, Mg, res in groups:
            ids = self.cur_vis_id[sl, :Mg]
            K = int(res.ids.shape[1])
            kept[sl, :K] = ids.gather(1, res.ids)
            merged[sl, :K] = self.cur_merged[sl, :Mg].gather(1, res.ids) | res.merged
            scores[sl].scatter_(1, ids, res.scores.float())
            if clusters is not None:
                clusters[sl].scatter_(1, ids, res.clusters)
            if cfg.temporal_tau is not None and not self.pooled and Mg == self.nv[b0]:
                if redundant is None:
                    redundant = torch.zeros(B, Nv_all, dtype=torch.bool, device=dev)
                redundant[sl].scatter_(1, ids, res.redundant)
        return StageRecord(layer=li, kept=kept.cpu(), merged=merged.cpu(), scores=scores.cpu(),
                           raters=self.raters.cpu() if self.raters is not None else None,
                           clusters=clusters.cpu() if clusters is not None else None,
                           redundant=redundant.cpu() if redundant is not None else None)

    def _shrink(self, li: int, h: torch.Tensor, vis_local: torch.Tensor, M: int, res: Any) -> torch.Tensor:
        B, _, D = h.shape
        dev = h.device
        keep_vis_local = vis_local.gather(1, res.keep)  # current-sequence slots of kept visual tokens
        alive = torch.ones(B, self.cur.shape[1], dtype=torch.bool, device=dev)
        alive.scatter_(1, vis_local, False)
        alive.scatter_(1, keep_vis_local, True)
        new_len = self.cur.shape[1] - M + res.keep.shape[1]
        slots = alive.nonzero()[:, 1].view(B, new_len)  # ascending current-sequence slots that stay
        h = h.clone()
        h.scatter_(1, keep_vis_local[:, :, None].expand(B, res.keep.shape[1], D), res.hidden.to(h.dtype))
        h = gather_rows(h, slots)
        self.cur = self.cur.gather(1, slots)
        self.cur_vis = self.cur_vis.gather(1, res.keep)
        self.cur_vis_id = self.cur_vis_id.gather(1, res.ids)  # identity follows the content, slots follow `keep`
        self.cur_merged = self.cur_merged.gather(1, res.ids) | res.merged
        self.cur_nvis = [int(res.keep.shape[1])] * B
        return self._after_shrink(li, h)

    def _shrink_ragged(self, li: int, h: torch.Tensor, vis_local: torch.Tensor, results: list) -> torch.Tensor:
        """The shrink of a batch whose samples keep different numbers of tokens: each sample's surviving rows,
        left-padded with filler rows (position 0, never attended) to the longest."""
        B, L, D = h.shape
        dev = h.device
        rows, vis, vis_id, merged = [], [], [], []
        h = h.clone()
        for b, res in enumerate(results):
            Mg = self.cur_nvis[b]
            local = vis_local[b, :Mg]
            keep_local = local[res.keep[0]]
            alive = torch.ones(L, dtype=torch.bool, device=dev) if self.valid is None else self.valid[b].clone()
            alive[local] = False
            alive[keep_local] = True
            h[b, keep_local] = res.hidden[0].to(h.dtype)
            rows.append(alive.nonzero()[:, 0])
            vis.append(self.cur_vis[b, :Mg][res.keep[0]])
            vis_id.append(self.cur_vis_id[b, :Mg][res.ids[0]])
            merged.append(self.cur_merged[b, :Mg][res.ids[0]] | res.merged[0])
        new_len = max(int(r.numel()) for r in rows)
        Kmax = max(int(v.numel()) for v in vis)
        slots = torch.zeros(B, new_len, dtype=torch.long, device=dev)
        valid = torch.zeros(B, new_len, dtype=torch.bool, device=dev)
        cur = torch.zeros(B, new_len, dtype=torch.long, device=dev)
        cur_vis = torch.zeros(B, Kmax, dtype=torch.long, device=dev)
        cur_vis_id = torch.zeros(B, Kmax, dtype=torch.long, device=dev)
        cur_merged = torch.zeros(B, Kmax, dtype=torch.bool, device=dev)
        for b in range(B):
            n, k = int(rows[b].numel()), int(vis[b].numel())
            slots[b, new_len - n:] = rows[b]
            valid[b, new_len - n:] = True
            cur[b, new_len - n:] = self.cur[b, rows[b]]
            cur_vis[b, :k], cur_vis_id[b, :k], cur_merged[b, :k] = vis[b], vis_id[b], merged[b]
            cur_vis[b, k:] = vis[b][-1] if k else 0
        h = gather_rows(h, slots)
        self.cur, self.valid = cur, valid
        self.cur_vis, self.cur_vis_id, self.cur_merged = cur_vis, cur_vis_id, cur_merged
        self.cur_nvis = [int(v.numel()) for v in vis]
        return self._after_shrink(li, h)

    def _after_shrink(self, li: int, h: torch.Tensor) -> torch.Tensor:
        fam, cfg = self.family, self.cfg
        removed = self.N - self.cur.shape[1]
        mask_cur = self.mask2d.gather(1, self.cur)
        if self.valid is not None:
            mask_cur = mask_cur & self.valid
        if cfg.positions == "renumber":
            new_pos = (mask_cur.long().cumsum(-1) - 1).clamp(min=0) + self.past
            self.cos, self.sin = fam.rotary(h, new_pos)
            self.rope_pos = new_pos
        else:
            self.cos, self.sin = gather_rows(self.cos_full, self.cur), gather_rows(self.sin_full, self.cur)
            self.rope_pos = self.pos_full.gather(1, self.cur)
        # close the running segment at this layer, open the next one on the shorter sequence
        first, _, keep_idx, shift = self.segments[-1]
        self.segments[-1] = (first, li, keep_idx, shift)
        self.segments.append((li + 1, None, self.cur.clone(), removed if cfg.positions == "renumber" else 0))
        self.seg_valid.append(None if self.valid is None else self.valid.clone())
        self.causal = causal_mask(fam.decoder.config, h, mask_cur, self.cache, position_ids=None, layer_idx=li + 1)
        self.pruned = True
        return h

    # ---------------------------------------------------------------- end of the prefill
    def finish(self) -> None:
        fam, cfg, handle = self.family, self.cfg, self.handle
        first, _, keep_idx, shift = self.segments[-1]
        self.segments[-1] = (first, fam.num_layers - 1, keep_idx, shift)
        if self.cache is not None:  # the layers wrote the pruned rows to it (use_cache need not reach the layers)
            valid = self.seg_valid if any(v is not None for v in self.seg_valid) else None
            setattr(self.cache, CACHE_STATE_ATTR, CacheState(prefill_len=self.N, segments=self.segments, valid=valid))
        if cfg.trace:
            B = self.cur.shape[0]
            T, P, grid = self.geo[0]
            trace = RetentionTrace(num_frames=T, tokens_per_frame=P,
                                   has_cls=fam.has_cls, grid=grid, num_layers=fam.num_layers, batch_size=B,
                                   stages=self.trace_stages, config=cfg.to_dict(),
                                   raters_text_positions=self.text_pos.cpu(),
                                   decoder_visual=self.Nv if self.pooled else None,
                                   samples=list(self.geo) if self.ragged else None)
            handle._record(trace)
        else:
            handle.last_counts = self.stage_sizes  # visual tokens after each stage, merged tokens included


class _Decode:
    """One decode step on a pruned cache: each segment's layers get the mask of their own cache rows and,
    after a renumbering stage, rotary tables shifted by the number of rows removed before them."""

    def __init__(self, engine: PruningEngine, state: CacheState, attention_mask: torch.Tensor | None) -> None:
        self.family = engine.family
        self.state = state
        self.attention_mask = attention_mask
        self.seg_of: dict = {}
        for s, (first, last, keep_idx, shift) in enumerate(state.segments):
            for li in range(first, last + 1):
                self.seg_of[li] = s
        self.masks: dict = {}
        self.rope: dict = {}

    def before_layer(self, i: int, layer: Any, args: tuple, kwargs: dict) -> Any:
        s = self.seg_of.get(i)
        if s is None:
            return None
        first, _, keep_idx, shift = self.state.segments[s]
        if keep_idx is None and not shift:
            return None  # the stock inputs are right for layers that hold the whole prompt
        h = _hidden_arg(args, kwargs)
        B = h.shape[0]
        kwargs = dict(kwargs)
        cache = get_cache(kwargs)
        if s not in self.masks:
            mask2d = self.attention_mask
            valid = self.state.valid[s] if self.state.valid is not None else None
            if keep_idx is not None:
                if keep_idx.shape[0] != B:
                    raise ValueError("videosparse: the batch changed since the pruned prefill (beam/batch reordering "
                                     "of a pruned cache across samples is not supported)")
                if mask2d is None and valid is not None:
                    # filler rows must be masked: the whole prompt and the tokens since are otherwise attended
                    mask2d = torch.ones(B, cache.get_seq_length() + h.shape[1], dtype=torch.long, device=h.device)
                if mask2d is not None:
                    N0 = self.state.prefill_len
                    kept = mask2d[:, :N0].gather(1, keep_idx)
                    if valid is not None:
                        kept = kept.masked_fill(~valid, 0)
                    mask2d = torch.cat([kept, mask2d[:, N0:]], dim=1)
            self.masks[s] = causal_mask(self.family.decoder.config, h, mask2d, cache, position_ids=None,
                                        layer_idx=first)
        kwargs["attention_mask"] = self.masks[s]
        if shift:
            if shift not in self.rope:
                position_ids = kwargs.get("position_ids")
                if position_ids is None:
                    raise ValueError("videosparse: the decoder passed no position_ids to its layers; "
                                     "renumbered positions cannot be continued")
                self.rope[shift] = self.family.rotary(h, position_ids - shift)
            kwargs["position_embeddings"] = self.rope[shift]
        kwargs["position_ids"] = None
        return args, kwargs

    def after_layer(self, i: int, layer: Any, output: Any) -> Any:
        return None
