"""Video-LLaVA (Llama decoder) adapter: the only module that knows transformers internals.

How it hooks in (no forked modeling file):
* a forward pre-hook on the inner `VideoLlavaModel` finds the video tokens
  (`input_ids == config.video_token_id`) of a prefill and the number of frames;
* the decoder's `forward` is replaced *on the instance* by a dispatcher. Calls that are not a pruned
  prefill or a decode step on a pruned cache go to the original bound method unchanged.
  A pruned prefill runs the decoder layers in a loop: layers 0..L see every token; at a stage layer L
  the rater rows of layer L's attention are computed from q/k (never `output_attentions`), the
  selection is made, and before layer L+1 the kept rows of the hidden states and of the rotary
  cos/sin are gathered and the causal mask is rebuilt for the shorter sequence;
* the kept indices are stored on the cache object so decode steps rebuild each segment's mask from
  the pruned 2-D attention mask. Layer 0 always holds the full-length cache (it drives `generate`'s
  default positions).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from videosparse.config import SparseConfig
from videosparse.core.raters import select_raters
from videosparse.core.scores import (
    rater_attention,
    received_attention,
    relevance_rank,
    rope_gravity,
    rope_gravity_official,
    visual_scores,
)
from videosparse.core.select import run_stage
from videosparse.core.budget import rank_adaptive_count, rank_count_warning
from videosparse.core.trace import RetentionTrace, StageRecord
from videosparse.models.base import ModelAdapter, SparseHandle, register_adapter
from videosparse.models.compat import cache_keyword, causal_mask, check_transformers_version, get_cache, model_output, pop_cache
from videosparse.baselines import random_scores, uniform_scores

logger = logging.getLogger(__name__)

_STATE_ATTR = "_videosparse_state"


@dataclass
class _Pending:
    visual_mask: torch.Tensor  # (B, N) bool
    num_frames: int
    tokens_per_frame: int
    ids: torch.Tensor | None = None  # (B, K) pooled tokens' frame * P + p (long-video path), else None


@dataclass
class _CacheState:
    """Stored on the cache after a pruned prefill; read by decode steps."""

    prefill_len: int
    segments: list  # [(first_layer, last_layer, keep_idx (B, N_s) or None, shift)]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def _apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, H, R, d); cos/sin: (B, R, d)."""
    return x * cos[:, None] + _rotate_half(x) * sin[:, None]


def _gather_rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x: (B or 1, N, D), idx: (B, K) -> (B, K, D)."""
    if x.shape[0] != idx.shape[0]:
        x = x.expand(idx.shape[0], *x.shape[1:])
    return x.gather(1, idx[:, :, None].expand(*idx.shape, x.shape[-1]))


@register_adapter
class VideoLlavaAdapter(ModelAdapter):
    name = "video_llava"
    model_types = ("video_llava",)  # config.json model_type values (videosparse.loading checks before loading)
    description = (
        "transformers VideoLlavaForConditionalGeneration / VideoLlavaModel with a Llama-style decoder "
        "(e.g. LanguageBind/Video-LLaVA-7B-hf)"
    )

    @classmethod
    def matches(cls, model: Any) -> bool:
        return type(model).__name__ in ("VideoLlavaForConditionalGeneration", "VideoLlavaModel")

    def __init__(self, model: Any, config: SparseConfig) -> None:
        check_transformers_version()
        self.model = model
        self.config = config
        inner = model.model if type(model).__name__ == "VideoLlavaForConditionalGeneration" else model
        self.inner = inner
        decoder = inner.get_decoder()
        for attr in ("layers", "rotary_emb", "norm", "embed_tokens"):
            if not hasattr(decoder, attr):
                raise ValueError(
                    f"videosparse: the decoder {type(decoder).__name__} has no '{attr}'; only Llama-style "
                    f"decoders are supported ({self.description})"
                )
        self.decoder = decoder
        tcfg = decoder.config
        if getattr(tcfg, "sliding_window", None) or getattr(tcfg, "layer_types", None) and any(
            t != "full_attention" for t in tcfg.layer_types
        ):
            raise ValueError("videosparse: decoders with sliding-window/hybrid attention layers are not supported")
        self.num_layers = len(decoder.layers)
        config.check_layers(self.num_layers)
        if config.budget == "rank" and config.method != "sparsevlm":
            raise ValueError("SparseConfig.budget: 'rank' needs method='sparsevlm' (rater attention)")
        vcfg = inner.config.vision_config
        self.grid = (vcfg.image_size // vcfg.patch_size, vcfg.image_size // vcfg.patch_size)
        self.tokens_per_frame = self.grid[0] * self.grid[1] + 1  # CLS + patches (Video-LLaVA keeps CLS)
        self.video_token_id = inner.config.video_token_id
        self._handle: SparseHandle | None = None
        self._pending: _Pending | None = None
        self._hook = None
        self._had_forward_attr = False
        self._orig_forward_attr = None
        self._gravity: dict = {}

    # ------------------------------------------------------------------ install / uninstall
    def install(self, handle: SparseHandle) -> None:
        self._handle = handle
        for other in getattr(self.decoder, "_videosparse_handles", []):
            if other.active:
                raise ValueError("videosparse: this model is already sparsified; remove() the first handle")
        self._had_forward_attr = "forward" in self.decoder.__dict__
        self._orig_forward_attr = self.decoder.__dict__.get("forward")
        self._original = self.decoder.forward  # bound method (or the user's own instance override)
        self._hook = self.inner.register_forward_pre_hook(self._pre_hook, with_kwargs=True)
        pruned = _wrap_like_original(_pruned_forward_impl)
        adapter = self

        def forward(dec_self: Any = None, *args: Any, **kwargs: Any) -> Any:
            return adapter._dispatch(pruned, *args, **kwargs)

        forward.__wrapped__ = self._original  # type: ignore[attr-defined]
        forward.__doc__ = getattr(self._original, "__doc__", None)
        self._patched = forward.__get__(self.decoder, type(self.decoder))
        self.decoder.forward = self._patched
        self.decoder._videosparse_handles = [handle]

    def uninstall(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self.decoder.__dict__.get("forward") is self._patched:
            if self._had_forward_attr:
                self.decoder.forward = self._orig_forward_attr
            else:
                del self.decoder.forward
        if "_videosparse_handles" in self.decoder.__dict__:
            del self.decoder._videosparse_handles
        self._pending = None

    # ------------------------------------------------------------------ hooks
    def _pre_hook(self, module: Any, args: tuple, kwargs: dict) -> None:
        self._pending = None
        h = self._handle
        if h is None or h._disabled:
            return None
        cache = get_cache(kwargs)
        if cache is not None and cache.get_seq_length() > 0:
            return None  # decode step or continuation: handled from the cache state
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if kwargs.get("pixel_values") is not None or kwargs.get("pixel_values_images") is not None:
            raise ValueError(
                "videosparse: image inputs (pixel_values) are not supported; pass videos as "
                "pixel_values_videos, or run inside `with handle.disabled():`"
            )
        if input_ids is None:
            raise ValueError("videosparse: input_ids are required to locate the video tokens (got inputs_embeds only)")
        vm = input_ids == self.video_token_id
        if not bool(vm.any()):
            raise ValueError(
                f"videosparse: the input has no video tokens (video_token_id={self.video_token_id}); "
                "videosparse prunes video tokens only - run text-only prompts inside `with handle.disabled():`"
            )
        counts = vm.sum(dim=1)
        if bool((counts != counts[0]).any()):
            raise ValueError(
                f"videosparse: every sample must hold the same number of video tokens, got {counts.tolist()}"
            )
        nv = int(counts[0])
        P = self.tokens_per_frame
        if h._pool is not None:
            ids, frames = h._pool
            ids = torch.as_tensor(ids, dtype=torch.long)
            if ids.ndim != 2 or ids.shape[1] != nv or vm.shape[0] % ids.shape[0]:
                raise ValueError(f"videosparse: the pooled layout {tuple(ids.shape)} does not match the input: "
                                 f"{vm.shape[0]} sample(s) with {nv} video tokens each")
            if bool((ids[:, 1:] <= ids[:, :-1]).any()) or int(ids.min()) < 0 or int(ids.max()) >= frames * P:
                raise ValueError(f"videosparse: pooled token ids must be ascending and inside {frames} frames x {P}")
            ids = ids.repeat_interleave(vm.shape[0] // ids.shape[0], dim=0)  # beams/returned sequences
            self._pending = _Pending(vm, frames, P, ids.to(vm.device))
            return None
        if nv % P:
            raise ValueError(f"videosparse: {nv} video tokens is not a whole number of frames of {P} tokens")
        self._pending = _Pending(vm, nv // P, P)
        return None

    def _dispatch(self, pruned: Any, *args: Any, **kwargs: Any) -> Any:
        pending, self._pending = self._pending, None
        h = self._handle
        cache = get_cache(kwargs)
        state = getattr(cache, _STATE_ATTR, None) if cache is not None else None
        if args:
            raise TypeError("videosparse: call the decoder with keyword arguments")
        if h is None or h._disabled or (pending is None and state is None):
            return self._original(**kwargs)
        pop_cache(kwargs)
        kwargs["cache"] = cache
        if pending is not None:
            kwargs["_vs"] = (self, pending, None)
        else:
            kwargs["_vs"] = (self, None, state)
        return pruned(self.decoder, **kwargs)

    # ------------------------------------------------------------------ selection helpers
    def gravity_table(self, n: int, device: torch.device, kind: str = "bounded") -> torch.Tensor:
        """RoPE distance weights g(0..>=n) of the decoder's rotary frequencies ('bounded' or 'official')."""
        t = self._gravity.get(kind) if self._gravity else None
        if t is None or t.numel() < n + 1 or t.device != device:
            inv = self.decoder.rotary_emb.inv_freq.to(device)
            t = (rope_gravity if kind == "bounded" else rope_gravity_official)(max(n, 1), inv)
            self._gravity[kind] = t
        return t


def _wrap_like_original(fn: Any) -> Any:
    """Wrap the pruned forward with the decorators the original decoder forward carries
    (config defaults, output capture), so `output_hidden_states` etc. behave the same."""
    try:
        from transformers.utils.generic import merge_with_config_defaults
        from transformers.utils.output_capturing import capture_outputs
    except ImportError:  # pragma: no cover - other 5.x layouts
        return fn
    return merge_with_config_defaults(capture_outputs(fn))


def _pruned_forward_impl(
    self: Any,
    input_ids: torch.LongTensor | None = None,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.LongTensor | None = None,
    cache: Any = None,
    inputs_embeds: torch.Tensor | None = None,
    use_cache: bool | None = None,
    _vs: Any = None,
    **kwargs: Any,
) -> Any:
    from transformers.cache_utils import DynamicCache
    from transformers.modeling_outputs import BaseModelOutputWithPast

    adapter, pending, state = _vs
    if (input_ids is None) ^ (inputs_embeds is not None):
        raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
    if inputs_embeds is None:
        inputs_embeds = self.embed_tokens(input_ids)
    if use_cache and cache is None:
        cache = DynamicCache(config=self.config)
    if attention_mask is not None and attention_mask.ndim != 2:
        raise ValueError("videosparse: only 2-D attention masks are supported (got a prepared 4-D mask)")
    if cache is not None and getattr(cache, "is_compileable", False):
        raise ValueError("videosparse: static/compileable caches are not supported; use the default DynamicCache")

    if pending is not None:
        hidden = _prefill(self, adapter, pending, inputs_embeds, attention_mask, position_ids, cache,
                          use_cache, kwargs)
    else:
        hidden = _decode(self, adapter, state, inputs_embeds, attention_mask, position_ids, cache,
                         use_cache, kwargs)
    hidden = self.norm(hidden)
    return model_output(BaseModelOutputWithPast, cache, last_hidden_state=hidden)


def _prefill(dec, adapter, pending, x, attention_mask, position_ids, cache, use_cache, kwargs):
    cfg: SparseConfig = adapter.config
    handle: SparseHandle = adapter._handle
    B, N, D = x.shape
    dev = x.device
    vm = pending.visual_mask.to(dev)
    if vm.shape != (B, N):
        raise ValueError(f"videosparse: video-token mask {tuple(vm.shape)} does not match the sequence {(B, N)}")
    T, P = pending.num_frames, pending.tokens_per_frame
    pooled = pending.ids is not None
    Nv = int(pending.ids.shape[1]) if pooled else T * P  # visual tokens in the sequence
    Nv_all = T * P  # visual tokens of the sampled frames (trace coordinates)
    counts = cfg.stage_counts(Nv, dec.config.num_hidden_layers)  # ValueError naming `budget` when impossible
    stage_layers = list(cfg.stage_layers)
    vis_start = vm.float().argmax(dim=1)
    vis_pos = vis_start[:, None] + torch.arange(Nv, device=dev)[None]
    if bool((vis_pos >= N).any()) or not bool(vm.gather(1, vis_pos.clamp(max=N - 1)).all()):
        raise ValueError("videosparse: the video tokens of a sample must be contiguous (one video per sample)")
    mask2d = attention_mask.bool() if attention_mask is not None else torch.ones(B, N, dtype=torch.bool, device=dev)
    past = cache.get_seq_length() if cache is not None else 0
    if position_ids is None:
        position_ids = (torch.arange(N, device=dev) + past).unsqueeze(0)
    cos_full, sin_full = dec.rotary_emb(x, position_ids=position_ids)  # (1 or B, N, d)
    pos_full = position_ids.expand(B, N)

    # ---- raters: text after the video, from the layer-0 input embeddings
    vis_end = vis_start + Nv  # first position after the video
    Nt = int((N - vis_end).max().item())
    text_pos = vis_end[:, None] + torch.arange(max(Nt, 1), device=dev)[None]
    text_valid = text_pos < N
    text_pos = text_pos.clamp(max=N - 1)
    text_valid &= mask2d.gather(1, text_pos)
    if Nt == 0 or not bool(text_valid.any(dim=1).all()):
        raise ValueError("videosparse: every sample needs text (the question) after the video tokens")
    raters = None
    if cfg.method == "sparsevlm":
        raters = select_raters(_gather_rows(x, vis_pos), _gather_rows(x, text_pos), text_valid, cfg.raters)

    causal = causal_mask(dec.config, x, attention_mask, cache, position_ids=position_ids)
    ckw = {cache_keyword(dec.layers[0]): cache}  # 'cache' (5.24+) or 'past_key_values'
    # current sequence bookkeeping (original positions of the tokens still alive)
    cur = torch.arange(N, device=dev).expand(B, N).clone()
    cur_vis = vis_pos.clone()  # current visual tokens, as original positions
    # original visual index (frame * P + p among the sampled frames)
    cur_vis_id = pending.ids.clone() if pooled else torch.arange(Nv, device=dev).expand(B, Nv).clone()
    cur_merged = torch.zeros(B, Nv, dtype=torch.bool, device=dev)
    cos, sin = cos_full, sin_full
    rope_pos = pos_full
    seg_position_ids = position_ids
    # decoder segments (first_layer, last_layer, keep_idx or None, rope shift); the last one is open
    segments: list = [(0, None, None, 0)]
    trace_stages = []
    stage_sizes: list = []
    stage_of = {layer: i for i, layer in enumerate(stage_layers)}
    h = x
    for li, layer in enumerate(dec.layers[: dec.config.num_hidden_layers]):
        s_idx = stage_of.get(li)
        q_rows = None
        if s_idx is not None:
            q_rows = _stage_queries(layer, h, cur, raters, text_pos, cos, sin, cfg)
            h_in = h
        h = layer(h, attention_mask=causal, position_embeddings=(cos, sin), position_ids=seg_position_ids,
                  use_cache=use_cache, **ckw, **kwargs)
        if s_idx is None:
            continue
        # ---------------- stage at layer li
        attn = layer.self_attn
        key_valid = mask2d.gather(1, cur)
        vis_local = torch.searchsorted(cur, cur_vis)  # positions of visual tokens in the current sequence
        M = cur_vis.shape[1]
        count = counts[s_idx]
        if cfg.method == "sparsevlm":
            k = _stage_keys(layer, cache, li, h_in, cos, sin)
            q, qpos_local, rater_valid = q_rows
            if cfg.score_impl == "full":
                # seed-reference style: the whole (B, H, N, N) map of layer li, then its rater rows
                q_all = _all_queries(layer, h_in, cos, sin)
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
                qpos_rope = rope_pos.gather(1, qpos_local.clamp(min=0))
                kpos_rope = rope_pos.gather(1, vis_local)
                grav = adapter.gravity_table(int(rope_pos.max().item()) + 1, dev, cfg.gravity)
            scores = visual_scores(probs, rater_valid, vis_local, cfg.head_agg, cfg.priority_heads,
                                   grav, qpos_rope, kpos_rope)
            if count is None:
                rank = relevance_rank(probs, rater_valid, vis_local)
                count = rank_adaptive_count(M, rank, cfg.rank_lambda, rule=cfg.rank_rule, scale=cfg.rank_scale,
                                            bias=cfg.rank_bias)
                # the seed rules ('linear', 'rank') are reproduced as published; only the lambda rule warns
                msg = rank_count_warning(count, rank, li, T, Nv, cfg.rank_lambda) if cfg.rank_rule == "lambda" else None
                if msg:
                    logger.warning(msg)
        elif cfg.method == "fastv":
            k = _stage_keys(layer, cache, li, h_in, cos, sin)
            scores = received_attention(q_rows, k, key_valid, attn.scaling).gather(1, vis_local)
        elif cfg.method == "random":
            scores = random_scores(cur_vis_id, Nv_all, cfg.seed)
        else:  # uniform
            scores = uniform_scores(cur_vis_id, count)
        count = min(int(count), M)
        if cfg.clamp_counts and M > 1:
            count = min(count, M - 1)  # the seed's min(count, N - 1)
        frame_id = cur_vis_id // P
        forced = (cur_vis_id % P == 0) if cfg.keep_cls else None
        override = None
        if handle._override is not None:
            ov = handle._override[s_idx].to(dev)
            # ids may be out of order after merged tokens were placed after the kept ones: match by value
            hit = cur_vis_id[:, None, :] == ov.sort(dim=1).values[:, :, None]  # (B, K, M)
            if not bool(hit.any(dim=2).all()):
                raise ValueError(f"videosparse: the selection override of stage {s_idx} names tokens that are no "
                                 f"longer in the sequence")
            override = hit.float().argmax(dim=2)
            count = ov.shape[1]
        vis_hidden = _gather_rows(h, vis_local)
        full_grid = not pooled and M == Nv  # the whole frame-major grid is still there
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
            redundancy_features=_gather_rows(x, cur_vis) if full_grid and cfg.temporal_tau is not None else None,
        )
        stage_sizes.append(int(res.keep.shape[1]))
        # trace (in original visual coordinates)
        if cfg.trace:
            full_scores = torch.full((B, Nv_all), float("nan"), device=dev)
            full_scores.scatter_(1, cur_vis_id, res.scores.float())
            kept_ids = cur_vis_id.gather(1, res.ids)
            clusters = None
            if cfg.recycle:
                clusters = torch.full((B, Nv_all), -1, dtype=torch.long, device=dev)
                clusters.scatter_(1, cur_vis_id, res.clusters)
            redundant = None
            if cfg.temporal_tau is not None and full_grid:
                redundant = torch.zeros(B, Nv_all, dtype=torch.bool, device=dev)
                redundant.scatter_(1, cur_vis_id, res.redundant)
            trace_stages.append(StageRecord(
                layer=li, kept=kept_ids.cpu(), merged=(cur_merged.gather(1, res.ids) | res.merged).cpu(),
                scores=full_scores.cpu(), raters=raters.cpu() if raters is not None else None,
                clusters=clusters.cpu() if clusters is not None else None,
                redundant=redundant.cpu() if redundant is not None else None,
            ))
        # ---------------- shrink the sequence
        keep_vis_local = vis_local.gather(1, res.keep)  # current-sequence slots of kept visual tokens
        alive = torch.ones(B, cur.shape[1], dtype=torch.bool, device=dev)
        alive.scatter_(1, vis_local, False)
        alive.scatter_(1, keep_vis_local, True)
        new_len = cur.shape[1] - M + res.keep.shape[1]
        slots = alive.nonzero()[:, 1].view(B, new_len)  # ascending current-sequence slots that stay
        h = h.clone()
        h.scatter_(1, keep_vis_local[:, :, None].expand(B, res.keep.shape[1], D), res.hidden.to(h.dtype))
        h = _gather_rows(h, slots)
        cur = cur.gather(1, slots)
        cur_vis = cur_vis.gather(1, res.keep)
        cur_vis_id = cur_vis_id.gather(1, res.ids)  # identity follows the content, slots follow `keep`
        cur_merged = cur_merged.gather(1, res.ids) | res.merged
        removed = N - cur.shape[1]
        mask_cur = mask2d.gather(1, cur)
        if cfg.positions == "renumber":
            new_pos = (mask_cur.long().cumsum(-1) - 1).clamp(min=0) + past
            cos, sin = dec.rotary_emb(h, position_ids=new_pos)
            rope_pos = new_pos
        else:
            cos, sin = _gather_rows(cos_full, cur), _gather_rows(sin_full, cur)
            rope_pos = pos_full.gather(1, cur)
        seg_position_ids = None  # gapped positions would be read as packed sequences
        # close the running segment at this layer, open the next one on the shorter sequence
        first, _, keep_idx, shift = segments[-1]
        segments[-1] = (first, li, keep_idx, shift)
        segments.append((li + 1, None, cur.clone(), removed if cfg.positions == "renumber" else 0))
        causal = causal_mask(dec.config, h, mask_cur, cache, position_ids=None, layer_idx=li + 1)
    first, _, keep_idx, shift = segments[-1]
    segments[-1] = (first, len(dec.layers) - 1, keep_idx, shift)
    if cache is not None and use_cache:
        setattr(cache, _STATE_ATTR, _CacheState(prefill_len=N, segments=segments))
    if cfg.trace:
        trace = RetentionTrace(num_frames=T, tokens_per_frame=P, has_cls=True, grid=adapter.grid,
                               num_layers=len(dec.layers), batch_size=B, stages=trace_stages,
                               config=cfg.to_dict(), raters_text_positions=text_pos.cpu(),
                               decoder_visual=Nv if pooled else None)
        handle._record(trace)
    else:
        handle.last_counts = stage_sizes  # visual tokens after each stage, merged tokens included
    return h


def _stage_queries(layer, h, cur, raters, text_pos, cos, sin, cfg):
    """Post-rotary queries of the rows that score at this stage (computed before the layer runs)."""
    attn = layer.self_attn
    B = h.shape[0]
    if cfg.method == "sparsevlm":
        R = int(raters.sum(dim=1).max().item())
        # rater original positions, padded with -1
        order = torch.argsort((~raters).int(), dim=1, stable=True)[:, :R]
        valid = raters.gather(1, order)
        orig = text_pos.gather(1, order)
        local = torch.searchsorted(cur, orig)
        local = local.clamp(max=cur.shape[1] - 1)
        x = layer.input_layernorm(_gather_rows(h, local))
        q = attn.q_proj(x).view(B, R, -1, attn.head_dim).transpose(1, 2)
        q = _apply_rope(q, _gather_rows(cos, local), _gather_rows(sin, local))
        qpos = torch.where(valid, local, torch.full_like(local, -1))
        return q, qpos, valid
    if cfg.method == "fastv":
        return _all_queries(layer, h, cos, sin)
    return None


def _all_queries(layer, h, cos, sin):
    """Post-rotary queries of every row of `h` at `layer`: (B, H, N, d)."""
    attn = layer.self_attn
    B = h.shape[0]
    x = layer.input_layernorm(h)
    q = attn.q_proj(x).view(B, h.shape[1], -1, attn.head_dim).transpose(1, 2)
    return _apply_rope(q, cos.expand(B, *cos.shape[1:]), sin.expand(B, *sin.shape[1:]))


def _stage_keys(layer, cache, li, h_in, cos, sin):
    """Post-rotary keys of layer `li` for the current sequence: from the cache when there is one."""
    if cache is not None and hasattr(cache, "layers") and li < len(cache.layers):
        keys = getattr(cache.layers[li], "keys", None)
        if keys is not None and keys.shape[2] >= h_in.shape[1]:
            return keys[:, :, -h_in.shape[1]:]
    attn = layer.self_attn
    B, N, _ = h_in.shape
    x = layer.input_layernorm(h_in)
    k = attn.k_proj(x).view(B, N, -1, attn.head_dim).transpose(1, 2)
    return _apply_rope(k, cos.expand(B, *cos.shape[1:]), sin.expand(B, *sin.shape[1:]))


def _decode(dec, adapter, state, x, attention_mask, position_ids, cache, use_cache, kwargs):
    B, q, D = x.shape
    dev = x.device
    if position_ids is None:
        position_ids = (torch.arange(q, device=dev) + cache.get_seq_length()).unsqueeze(0)
    N0 = state.prefill_len
    h = x
    rope: dict = {}  # shift -> (cos, sin); most runs have a single shift (0)
    for first, last, keep_idx, shift in state.segments:
        if keep_idx is None:
            mask2d = attention_mask
            seg_pos = position_ids
        else:
            if keep_idx.shape[0] != B:
                raise ValueError("videosparse: the batch changed since the pruned prefill (beam/batch reordering "
                                 "of a pruned cache across samples is not supported)")
            mask2d = None
            if attention_mask is not None:
                mask2d = torch.cat([attention_mask[:, :N0].gather(1, keep_idx), attention_mask[:, N0:]], dim=1)
            seg_pos = None
        if shift not in rope:
            rope[shift] = dec.rotary_emb(h, position_ids=position_ids - shift if shift else position_ids)
        cos, sin = rope[shift]
        causal = causal_mask(dec.config, h, mask2d, cache, position_ids=seg_pos, layer_idx=first)
        for li in range(first, last + 1):
            h = dec.layers[li](h, attention_mask=causal, position_embeddings=(cos, sin), position_ids=seg_pos,
                               use_cache=use_cache, **{cache_keyword(dec.layers[li]): cache}, **kwargs)
    return h


def _decoder_layers(model: Any) -> Any:
    inner = model.model if type(model).__name__ == "VideoLlavaForConditionalGeneration" else model
    return inner.get_decoder().layers


VideoLlavaAdapter.decoder_layers = staticmethod(_decoder_layers)
