"""Adapter protocol, registry and the handle returned by `videosparse.sparsify`."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

from videosparse.compat import SUPPORTED_SPEC, check_transformers_version  # noqa: F401 (re-exported)


class ModelAdapter:
    """Protocol of a model family: the only code that knows the family's transformers classes.

    The pruning itself is the engine's (``videosparse.engine``), written once; the frame geometry (patch
    grid, CLS, tokens per frame, tokens closing the video block, the video placeholder id) is the family's
    front end's (``videosparse.frontends``), read here once. A family sets ``name``, ``model_types``
    (config.json ``model_type`` values), ``description``, ``model_classes`` (the conditional-generation
    class and its inner multimodal model) and ``image_inputs``; the defaults below handle a decoder-only
    language model with Llama-style layers (``self_attn.q_proj/k_proj``, ``input_layernorm``,
    ``decoder.rotary_emb``, rotate-half) and one contiguous run of video placeholders per sample. A family
    with per-head q/k norms, multi-axis rotary or interleaved video runs overrides ``project_queries`` /
    ``project_keys`` / ``rotary`` / ``locate``.
    """

    name: str = ""
    model_types: tuple = ()
    description: str = ""
    model_classes: tuple = ()  # (conditional-generation class name, inner multimodal model class name)
    image_inputs: tuple = ("pixel_values",)  # keyword arguments carrying images (refused: videos only)
    mrope: bool = False  # multi-axis rotary positions (no renumbering, no 1-D RoPE gravity)

    @classmethod
    def matches(cls, model: Any) -> bool:
        return type(model).__name__ in cls.model_classes

    @classmethod
    def inner_of(cls, model: Any) -> Any:
        """The multimodal model whose forward receives input_ids (where the video tokens are located)."""
        return model.model if type(model).__name__ == cls.model_classes[0] else model

    @classmethod
    def decoder_layers(cls, model: Any) -> Any:
        return cls.inner_of(model).get_decoder().layers

    def __init__(self, model: Any, config: Any) -> None:
        check_transformers_version()
        self.model = model
        self.config = config
        self.inner = self.inner_of(model)
        decoder = self.inner.get_decoder()
        for attr in ("layers", "rotary_emb", "norm", "embed_tokens"):
            if not hasattr(decoder, attr):
                raise ValueError(
                    f"videosparse: the decoder {type(decoder).__name__} has no '{attr}'; only decoders with "
                    f"Llama-style layers are supported ({self.description})"
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
        problem = positions_problem(self.name, self.mrope, config)
        if problem:
            raise ValueError(problem)
        self._read_geometry(self.inner.config)

    def _read_geometry(self, mcfg: Any) -> None:
        """The frame geometry; it has one owner, the family's front end."""
        from videosparse.frontends import frontend_for

        fe = frontend_for(mcfg)
        self.grid = tuple(int(v) for v in fe.frame_grid(mcfg))
        self.has_cls = bool(fe.has_cls)
        self.tokens_per_frame = int(fe.tokens_per_frame(mcfg))
        self.tail_tokens = int(fe.tail_tokens)
        self.video_token_id = int(fe.video_token_id(mcfg))

    def locate(self, args: tuple, kwargs: dict, handle: "SparseHandle") -> Any:
        """The VisualLayout of a prefill from the multimodal model's call (before the placeholders are
        replaced by features), or raise ValueError naming what is wrong with the input.

        Default: every sample holds one contiguous run of ``video_token_id`` placeholders, frame-major
        (``num_frames x tokens_per_frame`` visual tokens, or the K tokens of a long-video pool), followed
        inside the run by ``tail_tokens`` tokens that close the video block (never scored, never pruned)."""
        import torch

        from videosparse.engine.state import VisualLayout

        input_ids = kwargs.get("input_ids", args[0] if args else None)
        for key in self.image_inputs:
            if kwargs.get(key) is not None:
                raise ValueError(
                    f"videosparse: image inputs ({key}) are not supported; pass videos as "
                    "pixel_values_videos, or run inside `with handle.disabled():`"
                )
        if input_ids is None:
            raise ValueError("videosparse: input_ids are required to locate the video tokens (got inputs_embeds only)")
        run = input_ids == self.video_token_id
        if not bool(run.any()):
            raise ValueError(
                f"videosparse: the input has no video tokens (video_token_id={self.video_token_id}); "
                "videosparse prunes video tokens only - run text-only prompts inside `with handle.disabled():`"
            )
        counts = run.sum(dim=1)
        if bool((counts != counts[0]).any()):
            raise ValueError(
                f"videosparse: every sample must hold the same number of video tokens, got {counts.tolist()}"
            )
        nv = int(counts[0]) - self.tail_tokens
        if nv < 1:
            raise ValueError(f"videosparse: the video block holds {int(counts[0])} tokens, no visual token before "
                             f"its {self.tail_tokens} closing token(s)")
        vm = run & (run.long().cumsum(dim=1) <= nv) if self.tail_tokens else run
        P = self.tokens_per_frame
        if handle._pool is not None:
            ids, frames = handle._pool[:2]
            ids = torch.as_tensor(ids, dtype=torch.long)
            if ids.ndim != 2 or ids.shape[1] != nv or vm.shape[0] % ids.shape[0]:
                raise ValueError(f"videosparse: the pooled layout {tuple(ids.shape)} does not match the input: "
                                 f"{vm.shape[0]} sample(s) with {nv} video tokens each")
            if bool((ids[:, 1:] <= ids[:, :-1]).any()) or int(ids.min()) < 0 or int(ids.max()) >= frames * P:
                raise ValueError(f"videosparse: pooled token ids must be ascending and inside {frames} frames x {P}")
            ids = ids.repeat_interleave(vm.shape[0] // ids.shape[0], dim=0)  # beams/returned sequences
            return VisualLayout(vm, frames, P, ids.to(vm.device), tail=self.tail_tokens)
        if nv % P:
            raise ValueError(f"videosparse: {nv} video tokens is not a whole number of frames of {P} tokens")
        return VisualLayout(vm, nv // P, P, tail=self.tail_tokens)

    # ---------------------------------------------------------------- engine plumbing
    def install(self, handle: "SparseHandle") -> None:
        from videosparse.engine import PruningEngine

        self.engine = PruningEngine(self)
        self.engine.install(handle)

    def uninstall(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.remove()
            self.engine = None

    # ---------------------------------------------------------------- Llama-style q/k and rotary
    def project_queries(self, layer: Any, x: Any) -> Any:
        """Pre-rotary queries of rows `x` (B, R, D) of `layer`'s input: (B, H, R, d)."""
        attn = layer.self_attn
        q = attn.q_proj(layer.input_layernorm(x)).view(x.shape[0], x.shape[1], -1, attn.head_dim)
        norm = getattr(attn, "q_norm", None)  # per-head RMS norm before rotary (Qwen3)
        return (q if norm is None else norm(q)).transpose(1, 2)

    def project_keys(self, layer: Any, x: Any) -> Any:
        """Pre-rotary keys of rows `x` (B, R, D) of `layer`'s input: (B, H_kv, R, d)."""
        attn = layer.self_attn
        k = attn.k_proj(layer.input_layernorm(x)).view(x.shape[0], x.shape[1], -1, attn.head_dim)
        norm = getattr(attn, "k_norm", None)
        return (k if norm is None else norm(k)).transpose(1, 2)

    @staticmethod
    def rotate(x: Any, cos: Any, sin: Any) -> Any:
        """Rotary embedding of x (B, H, R, d) with the rows' cos/sin (B, R, d) (rotate-half convention)."""
        import torch

        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos[:, None] + rotated * sin[:, None]

    def rotary(self, h: Any, position_ids: Any) -> tuple:
        """(cos, sin) of the decoder's rotary embedding at `position_ids`."""
        return self.decoder.rotary_emb(h, position_ids=position_ids)

    def gravity_table(self, n: int, device: Any, kind: str = "bounded") -> Any:
        """RoPE distance weights g(0..>=n) of the decoder's rotary frequencies ('bounded' or 'official')."""
        from videosparse.core.scores import rope_gravity, rope_gravity_official

        cache = self.__dict__.setdefault("_gravity", {})
        t = cache.get(kind)
        if t is None or t.numel() < n + 1 or t.device != device:
            inv = self.decoder.rotary_emb.inv_freq.to(device)
            t = (rope_gravity if kind == "bounded" else rope_gravity_official)(max(n, 1), inv)
            cache[kind] = t
        return t


_REGISTRY: dict = {}


def register_adapter(cls: type) -> type:
    """Register an adapter class; a second adapter with the same name is an error."""
    if not getattr(cls, "name", ""):
        raise ValueError(f"adapter {cls!r} has no name")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"an adapter named {cls.name!r} is already registered ({_REGISTRY[cls.name]!r})")
    _REGISTRY[cls.name] = cls
    return cls


def positions_problem(name: str, mrope: bool, config: Any) -> str | None:
    """Why ``config`` cannot run on a family with multi-axis rotary positions (None when it can)."""
    if mrope and (config.positions == "renumber" or config.gravity is not None):
        return (f"videosparse: {name} uses multi-axis rotary positions (mrope: time, height, width); "
                "positions='renumber' and RoPE gravity are defined for 1-D positions only. Use "
                "positions='original' and gravity=None (e.g. the 'video' preset, or "
                "SparseConfig.preset(name).replace(positions='original', gravity=None))")
    return None


def check_positions(model_type: str, config: Any) -> None:
    """`positions_problem` for the adapter registered under a config.json ``model_type`` (before any model is
    patched: VideoQA checks a new config before it removes the current one)."""
    for cls in _REGISTRY.values():
        if model_type in getattr(cls, "model_types", ()):
            problem = positions_problem(cls.name, cls.mrope, config)
            if problem:
                raise ValueError(problem)


def registered_adapters() -> dict:
    return dict(_REGISTRY)


def find_adapter(model: Any) -> type:
    """The adapter class for `model`; a clear ValueError naming the supported models otherwise."""
    found = [cls for cls in _REGISTRY.values() if cls.matches(model)]
    if not found:
        supported = "; ".join(f"{c.name}: {c.description}" for c in _REGISTRY.values())
        raise ValueError(
            f"videosparse does not support model class {type(model).__name__!r}. Supported: {supported}"
        )
    if len(found) > 1:
        raise ValueError(f"several adapters match {type(model).__name__!r}: {[c.name for c in found]}")
    return found[0]


class SparseHandle:
    """What `sparsify` returns: controls and observes the patch on one model.

    * `remove()` restores the model exactly (idempotent); also on `with` exit.
    * `trace`: the RetentionTrace of the last pruned prefill (None before the first one).
    * `disabled()`: a context in which the model runs unpruned (e.g. text-only prompts).
    * `override_selection(stages)`: a context in which the kept visual tokens are given
      (list of (B, k) original visual indices, one per stage) instead of selected. The given tokens are
      kept as they are: no recycling runs (a recycled cluster of a traced run is not rebuilt, so replaying a
      trace of a recycling config reproduces its kept set, not its merged tokens).
    * `pooled(ids, num_frames)`: a context in which the video tokens are a pre-selected pool
      (the long-video path) instead of whole frames.
    """

    def __init__(self, model: Any, config: Any, adapter: Any) -> None:
        self.model = model
        self.config = config
        self._adapter = adapter
        self.trace = None
        self.last_counts: list | None = None
        self._disabled = 0
        self._override: list | None = None
        self._pool: tuple | None = None
        self._active = True
        self._callbacks: list = []

    @property
    def active(self) -> bool:
        return self._active

    def remove(self) -> None:
        if self._active:
            self._adapter.uninstall()
            self._active = False

    def __enter__(self) -> "SparseHandle":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    @contextlib.contextmanager
    def disabled(self) -> Iterator["SparseHandle"]:
        self._disabled += 1
        try:
            yield self
        finally:
            self._disabled -= 1

    @contextlib.contextmanager
    def override_selection(self, stages: list) -> Iterator["SparseHandle"]:
        previous = self._override
        self._override = list(stages)
        try:
            yield self
        finally:
            self._override = previous

    @contextlib.contextmanager
    def pooled(self, ids: Any, num_frames: int, grid: tuple | None = None) -> Iterator["SparseHandle"]:
        """A context in which the video tokens of a prefill are a pool of K tokens picked from
        ``num_frames`` sampled frames (the long-video path) rather than whole frames.

        ids: (B, K) long, each pooled token's coordinate ``frame * P + p`` among the sampled frames, in the
        order the tokens appear in the prompt (ascending). Selection, the per-frame floor and the trace then
        work in the coordinates of the sampled frames. grid: (rows, cols) of a frame's tokens for a family whose
        grid is per video (Qwen-VL; ``P = rows x cols``); None: the family's fixed grid."""
        previous = self._pool
        self._pool = (ids, int(num_frames)) if grid is None else (ids, int(num_frames), tuple(grid))
        try:
            yield self
        finally:
            self._pool = previous

    def on_prefill(self, fn: Callable) -> None:
        """Register `fn(trace)` to be called after every pruned prefill."""
        self._callbacks.append(fn)

    def _record(self, trace: Any) -> None:
        self.trace = trace
        self.last_counts = None if trace is None else (trace.sample_counts if trace.ragged else trace.counts)
        for fn in self._callbacks:
            fn(trace)

    def __repr__(self) -> str:
        state = "active" if self._active else "removed"
        return f"SparseHandle({self._adapter.name}, {self.config.name}, {state})"
