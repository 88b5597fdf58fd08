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
        if layout is not None:
            self._run = _Prefill(self, layout, mask)
        else:
            self._run = _Decode(self, state, mask)
        return None

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
    """One pruned prefill: state that shrinks stage by stage (original positions of what is alive)."""

    def __init__(self, engine: PruningEngine, layout: VisualLayout, attention_mask: torch.Tensor | None) -> None:
        self.family = engine.family
        self.cfg = engine.family.config
        self.handle = engine.handle
        self.layout = layout
        self.attention_mask = attention_mask
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
        self.use_cache = bool(kwargs.get("use_cache"))
        vm = lay.visual_mask.to(dev)
        if vm.shape != (B, N):
            raise ValueError(f"videosparse: video-token mask {tuple(vm.shape)} does not match the sequence {(B, N)}")
        T, P = lay.num_frames, lay.tokens_per_frame
        self.pooled = lay.ids is not None
        self.Nv = int(lay.ids.shape[1]) if self.pooled else T * P  # visual tokens in the sequence
        self.Nv_all = T * P  # visual tokens of the sampled frames (trace coordinates)
        self.schedule = cfg.schedule(self.Nv, fam.num_layers)  # ValueError naming `budget` when impossible
        vis_start = vm.float().argmax(dim=1)
        vis_pos = vis_start[:, None] + torch.arange(self.Nv, device=dev)[None]
        if bool((vis_pos >= N).any()) or not bool(vm.gather(1, vis_pos.clamp(max=N - 1)).all()):
            raise ValueError("videosparse: the video tokens of a sample must be contiguous (one video per sample)")
        am = self.attention_mask
        self.mask2d = am.bool() if am is not None else torch.ones(B, N, dtype=torch.bool, device=dev)
        self.past = self.cache.get_seq_length() if self.cache is not None else 0
        position_ids = kwargs.get("position_ids")
        if position_ids is None:
            position_ids = (torch.arange(N, device=dev) + self.past).unsqueeze(0)
        self.cos_full, self.sin_full = kwargs["position_embeddings"]
        self.pos_full = position_ids.expand(B, N)
        # raters: text after the video block (past the tokens closing it), from the layer-0 input embeddings
        vis_end = vis_start + self.Nv + lay.tail
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
            self.raters = select_raters(gather_rows(x, vis_pos), gather_rows(x, text_pos), text_valid, cfg.raters)
        self.x = x
        self.N = N
        # current sequence bookkeeping (original positions of the tokens still alive)
        self.cur = torch.arange(N, device=dev).expand(B, N).clone()
        self.cur_vis = vis_pos.clone()
        self.cur_vis_id = lay.ids.clone() if self.pooled else torch.arange(self.Nv, device=dev).expand(B, self.Nv).clone()
        self.cur_merged = torch.zeros(B, self.Nv, dtype=torch.bool, device=dev)
        self.cos, self.sin = self.cos_full, self.sin_full
        self.rope_pos = self.pos_full
        self.causal = None
        self.segments: list = [(0, None, None, 0)]  # the last one is open
        self.trace_stages: list = []
        self.stage_sizes: list = []

    # ---------------------------------------------------------------- hooks
    def before_layer(self, i: int, layer: Any, args: tuple, kwargs: dict) -> Any:
        h = _hidden_arg(args, kwargs)
        if not self.started:
            if i != 0:
                return None
            self._start(h, kwargs)
        changed = None
        if self.shrunk is not None:
            h, self.shrunk = self.shrunk, None
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
            local = torch.searchsorted(self.cur, orig).clamp(max=self.cur.shape[1] - 1)
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
        fam, cfg, handle = self.family, self.cfg, self.handle
        s_idx = self.stage_of[li]
        B, _, D = h.shape
        dev = h.device
        T, P = self.layout.num_frames, self.layout.tokens_per_frame
        h_in, q_rows = self.h_in, self.q_rows
        self.h_in = self.q_rows = None
        attn = layer.self_attn
        key_valid = self.mask2d.gather(1, self.cur)
        vis_local = torch.searchsorted(self.cur, self.cur_vis)  # positions of visual tokens in the current sequence
        M = self.cur_vis.shape[1]
        count = self.schedule.stages[s_idx].selected  # None: rank-adaptive, decided below from the scores
        if cfg.method == "sparsevlm":
            k = self.stage_keys(layer, li, h_in)
            q, qpos_local, rater_valid = q_rows
            if cfg.score_impl == "full":
                # seed-reference style: the whole (B, H, N, N) map of layer li, then its rater rows
                q_all = self.all_queries(layer, h_in)
                allpos = torch.arange(q_all.shape[2], device=dev).expand(B, -1)
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
                grav = fam.gravity_table(int(self.rope_pos.max().item()) + 1, dev, cfg.gravity)
            scores = visual_scores(probs, rater_valid, vis_local, cfg.head_agg, cfg.priority_heads,
                                   grav, qpos_rope, kpos_rope)
            if count is None:
                rank = relevance_rank(probs, rater_valid, vis_local)
                count = rank_adaptive_count(M, rank, cfg.rank_lambda, rule=cfg.rank_rule, scale=cfg.rank_scale,
                                            bias=cfg.rank_bias)
                count = min(int(count), M)
                if cfg.clamp_counts and M > 1:
                    count = min(count, M - 1)  # the seed's min(count, N - 1), as the schedule does for fixed counts
                # the seed rules ('linear', 'rank') are reproduced as published; only the lambda rule warns
                msg = (rank_count_warning(count, rank, li, T, self.Nv, cfg.rank_lambda)
                       if cfg.rank_rule == "lambda" else None)
                if msg:
                    logger.warning(msg)
        elif cfg.method == "fastv":
            k = self.stage_keys(layer, li, h_in)
            scores = received_attention(q_rows, k, key_valid, attn.scaling).gather(1, vis_local)
        elif cfg.method == "random":
            scores = random_scores(self.cur_vis_id, self.Nv_all, cfg.seed)
        else:  # uniform
            scores = uniform_scores(self.cur_vis_id, count)
        if count > M:  # the schedule resolved the counts for this input: a stage never asks for more than it has
            raise RuntimeError(f"videosparse: internal error: stage {s_idx} was scheduled to keep {count} of {M} tokens")
        frame_id = self.cur_vis_id // P
        forced = (self.cur_vis_id % P == 0) if (cfg.keep_cls and fam.has_cls) else None
        override = None
        if handle._override is not None:
            ov = handle._override[s_idx].to(dev)
            # ids may be out of order after merged tokens were placed after the kept ones: match by value
            hit = self.cur_vis_id[:, None, :] == ov.sort(dim=1).values[:, :, None]  # (B, K, M)
            if not bool(hit.any(dim=2).all()):
                raise ValueError(f"videosparse: the selection override of stage {s_idx} names tokens that are no "
                                 f"longer in the sequence")
            override = hit.float().argmax(dim=2)
            count = ov.shape[1]
        vis_hidden = gather_rows(h, vis_local)
        full_grid = not self.pooled and M == self.Nv  # the whole frame-major grid is still there
        res = run_stage(
            scores, vis_hidden, count, frame_id, T,
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
            redundancy_features=(gather_rows(self.x, self.cur_vis)
                                 if full_grid and cfg.temporal_tau is not None else None),
        )
        self.stage_sizes.append(int(res.keep.shape[1]))
        if cfg.trace:
            self._trace_stage(li, res, full_grid)
        return self._shrink(li, h, vis_local, M, res)

    def _trace_stage(self, li: int, res: Any, full_grid: bool) -> None:
        cfg = self.cfg
        B, dev = self.cur_vis_id.shape[0], self.cur_vis_id.device
        full_scores = torch.full((B, self.Nv_all), float("nan"), device=dev)
        full_scores.scatter_(1, self.cur_vis_id, res.scores.float())
        kept_ids = self.cur_vis_id.gather(1, res.ids)
        clusters = None
        if cfg.recycle:
            clusters = torch.full((B, self.Nv_all), -1, dtype=torch.long, device=dev)
            clusters.scatter_(1, self.cur_vis_id, res.clusters)
        redundant = None
        if cfg.temporal_tau is not None and full_grid:
            redundant = torch.zeros(B, self.Nv_all, dtype=torch.bool, device=dev)
            redundant.scatter_(1, self.cur_vis_id, res.redundant)
        self.trace_stages.append(StageRecord(
            layer=li, kept=kept_ids.cpu(), merged=(self.cur_merged.gather(1, res.ids) | res.merged).cpu(),
            scores=full_scores.cpu(), raters=self.raters.cpu() if self.raters is not None else None,
            clusters=clusters.cpu() if clusters is not None else None,
            redundant=redundant.cpu() if redundant is not None else None,
        ))

    def _shrink(self, li: int, h: torch.Tensor, vis_local: torch.Tensor, M: int, res: Any) -> torch.Tensor:
        fam, cfg = self.family, self.cfg
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
        removed = self.N - self.cur.shape[1]
        mask_cur = self.mask2d.gather(1, self.cur)
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
        self.causal = causal_mask(fam.decoder.config, h, mask_cur, self.cache, position_ids=None, layer_idx=li + 1)
        self.pruned = True
        return h

    # ---------------------------------------------------------------- end of the prefill
    def finish(self) -> None:
        fam, cfg, handle = self.family, self.cfg, self.handle
        first, _, keep_idx, shift = self.segments[-1]
        self.segments[-1] = (first, fam.num_layers - 1, keep_idx, shift)
        if self.cache is not None and self.use_cache:
            setattr(self.cache, CACHE_STATE_ATTR, CacheState(prefill_len=self.N, segments=self.segments))
        if cfg.trace:
            B = self.cur.shape[0]
            trace = RetentionTrace(num_frames=self.layout.num_frames, tokens_per_frame=self.layout.tokens_per_frame,
                                   has_cls=fam.has_cls, grid=fam.grid, num_layers=fam.num_layers, batch_size=B,
                                   stages=self.trace_stages, config=cfg.to_dict(),
                                   raters_text_positions=self.text_pos.cpu(),
                                   decoder_visual=self.Nv if self.pooled else None)
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
            if keep_idx is not None:
                if keep_idx.shape[0] != B:
                    raise ValueError("videosparse: the batch changed since the pruned prefill (beam/batch reordering "
                                     "of a pruned cache across samples is not supported)")
                if mask2d is not None:
                    N0 = self.state.prefill_len
                    mask2d = torch.cat([mask2d[:, :N0].gather(1, keep_idx), mask2d[:, N0:]], dim=1)
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
