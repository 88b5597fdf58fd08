"""SparseConfig: the one frozen, validated configuration of a sparsification run (its long-video settings:
``SparseConfig.long``, a LongVideoConfig).

Presets are data (``PRESETS``); ``SparseConfig.preset(name, budget=...)`` builds a config from them.
Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

METHODS = ("sparsevlm", "fastv", "random", "uniform")
RATERS = ("sparsevlm", "last", "all")
HEAD_AGG = ("mean", "priority")
POSITIONS = ("original", "renumber")
TEMPORAL_MODES = ("discount", "merge")
PRE_METHODS = ("relevance", "random")
PRE_POSITIONS = ("time", "compact")
RANK_RULES = ("lambda", "linear", "rank")
RECYCLE_RULES = ("share", "seed")
RECYCLE_PLACES = ("center", "after")
GRAVITY = (None, "bounded", "official")

# An int budget keeping 1 token, or less than this share of the input's visual tokens, is logged as a likely
# mistake (``--budget 1`` / ``video@01`` meant 100 %): see SparseConfig.stage_plan.
TINY_BUDGET_SHARE = 0.01

# Depth the published layer schedules were written for (Video-LLaVA-7B / LLaVA-1.5-7B).
REFERENCE_LAYERS = 32
# Visual-token count the published per-stage counts were written for (LLaVA-1.5 image: 24 x 24).
REFERENCE_VISUAL_TOKENS = 576

# Seed per-stage counts (before recycling), keyed by the nominal token budget.
V15_SCHEDULES = {192: (300, 200, 110), 128: (303, 110, 36), 96: (238, 48, 26), 64: (66, 30, 17)}
V2_SCHEDULES = {192: (300, 200, 118), 128: (238, 108, 60), 96: (246, 54, 28), 64: (66, 34, 20)}
SEED_TABLES = {"sparsevlm-v1.5": V15_SCHEDULES, "sparsevlm-v2": V2_SCHEDULES}
# Table key whose per-stage fractions of 576 are the v1.5/v2 default (resolved against the input).
_DEFAULT_KEY = 192
# SparseVLM v1 (first release) code rule: keep min(int(rank x scale + bias), N - 1), per token setting.
V1_RANK_RULES = {192: (13.5, 0.0), 128: (9.0, 6.0), 64: (0.8, 0.0)}


def _f(help_text: str, default: Any = dataclasses.MISSING, **kw: Any) -> Any:
    meta = {"help": help_text}
    if default is dataclasses.MISSING:
        return field(metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


@dataclass(frozen=True)
class LongVideoConfig:
    """How the long-video path builds the pool of visual tokens that enters the decoder.

    ``SparseConfig.long`` holds one. When the sampled frames hold more visual tokens than ``budget``, frames
    are decoded and encoded in chunks and a question-guided pre-selection keeps a running pool of at most
    ``budget`` tokens; the in-decoder stages then prune that pool to ``SparseConfig.budget``. Every field
    carries its help text in ``dataclasses.fields(LongVideoConfig)[i].metadata["help"]``; validation happens
    in ``__post_init__`` (``ValueError`` naming ``LongVideoConfig.<field>``).
    """

    budget: int | None = _f(
        "The most visual tokens that enter the decoder (the pool size). When the sampled frames hold more "
        "tokens than this, frames are decoded and encoded in chunks and a question-guided pre-selection "
        "keeps a running pool of at most `budget` tokens (frame-major, temporal order) before the "
        "decoder; the in-decoder stages then prune the pool to `SparseConfig.budget`. None = the front end's "
        "default frames' worth of the model's tokens (Video-LLaVA: 8 x 257 = 2056), what the model was "
        "trained on. `VideoQA.ask(pre_budget=...)` and `--pre-budget` override it per call.",
        None,
    )
    method: str = _f(
        "Pre-selection score: 'relevance' (each projected visual token's affinity to the question "
        "tokens' input embeddings, standardised per text token over the visual tokens seen so far, max over "
        "the text tokens) or 'random' (seeded by SparseConfig.seed; a content-blind baseline: no "
        "temporal-redundancy penalty).",
        "relevance",
    )
    temporal_tau: float | None = _f(
        "Cosine similarity (projected features) above which a token repeats the same spatial token of the "
        "previous sampled frame; its pre-selection score is lowered by temporal_penalty. None disables.",
        0.9,
    )
    temporal_penalty: float = _f(
        "Amount (in standard deviations of the relevance score) subtracted from a temporally redundant "
        "token's pre-selection score (method='relevance').",
        1.0,
    )
    frame_floor: int = _f(
        "Tokens each sampled frame keeps in the pool at least (its best ones), so the timeline keeps "
        "coverage. When frames x floor would exceed floor_share of budget, consecutive frames are grouped "
        "into equal windows and each window keeps one token instead.",
        1,
    )
    floor_share: float = _f("Share of budget (the pool) the per-frame (or per-window) floor may use.", 0.25)
    positions: str = _f(
        "RoPE positions of the pooled tokens. 'time': each pooled token takes the position it "
        "would have in a clip of pool_size / tokens_per_frame frames spanning the same time (frame slot from "
        "its timestamp, in-frame offset kept), so positions stay inside the range the model was trained on and "
        "still encode when and where in the frame a token was; 'compact': consecutive positions in temporal "
        "order (the sequence index; the default).",
        "compact",
    )
    chunk_frames: int = _f(
        "Frames decoded and run through the vision tower at a time (bounds the memory of "
        "decoded pixels and vision activations; 8 keeps the working memory flat in the number of frames).",
        8,
    )

    def __post_init__(self) -> None:
        if self.budget is not None and (isinstance(self.budget, bool) or not isinstance(self.budget, int)
                                        or self.budget < 1):
            raise ValueError(f"LongVideoConfig.budget: must be a positive int or None, got {self.budget!r}")
        if self.method not in PRE_METHODS:
            raise ValueError(f"LongVideoConfig.method: {self.method!r} is not one of {list(PRE_METHODS)}")
        if self.temporal_tau is not None and not (-1.0 <= self.temporal_tau <= 1.0):
            raise ValueError(
                f"LongVideoConfig.temporal_tau: must be a cosine in [-1, 1] or None, got {self.temporal_tau}")
        if not (self.temporal_penalty >= 0.0) or math.isinf(self.temporal_penalty):
            raise ValueError(f"LongVideoConfig.temporal_penalty: must be finite and >= 0, got {self.temporal_penalty}")
        if isinstance(self.frame_floor, bool) or not isinstance(self.frame_floor, int) or self.frame_floor < 0:
            raise ValueError(f"LongVideoConfig.frame_floor: must be an int >= 0, got {self.frame_floor!r}")
        if not (0.0 <= self.floor_share <= 1.0):
            raise ValueError(f"LongVideoConfig.floor_share: must be in [0, 1], got {self.floor_share}")
        if self.positions not in PRE_POSITIONS:
            raise ValueError(f"LongVideoConfig.positions: {self.positions!r} is not one of {list(PRE_POSITIONS)}")
        if isinstance(self.chunk_frames, bool) or not isinstance(self.chunk_frames, int) or self.chunk_frames < 1:
            raise ValueError(f"LongVideoConfig.chunk_frames: must be a positive int, got {self.chunk_frames!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LongVideoConfig":
        if not isinstance(d, dict):
            raise ValueError(f"LongVideoConfig.from_dict: expected a dict, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"LongVideoConfig.from_dict: unknown field(s) {sorted(unknown)}")
        return cls(**d)

    def replace(self, **changes: Any) -> "LongVideoConfig":
        return dataclasses.replace(self, **changes)


# The flat long-video fields of SparseConfig before LongVideoConfig: old name -> LongVideoConfig field.
# SparseConfig(...), cfg.replace(...), SparseConfig.preset(..., **overrides) accept them with a DeprecationWarning;
# SparseConfig.from_dict reads them (config files and traces of earlier releases) without one.
LEGACY_LONG_FIELDS = {
    "pre_budget": "budget",
    "pre_method": "method",
    "pre_temporal_tau": "temporal_tau",
    "pre_temporal_penalty": "temporal_penalty",
    "pre_frame_floor": "frame_floor",
    "pre_floor_share": "floor_share",
    "pre_positions": "positions",
    "chunk_frames": "chunk_frames",
}
_LONG_DEFAULT = LongVideoConfig()


def _warn_legacy(old: str, how: str, stacklevel: int) -> None:
    new = LEGACY_LONG_FIELDS[old]
    if how == "init":
        text = (f"SparseConfig({old}=...) is deprecated: use long=LongVideoConfig({new}=...) "
                f"or cfg.replace(long=cfg.long.replace({new}=...))")
    elif how == "replace":
        text = f"SparseConfig.replace({old}=...) is deprecated: use cfg.replace(long=cfg.long.replace({new}=...))"
    elif how == "preset":
        text = f"SparseConfig.preset(..., {old}=...) is deprecated: use long=LongVideoConfig({new}=...)"
    else:  # attribute
        text = f"SparseConfig.{old} is deprecated: use cfg.long.{new}"
    warnings.warn(text, DeprecationWarning, stacklevel=stacklevel + 1)


def _merge_legacy(long: Any, flat: dict, where: str) -> "LongVideoConfig":
    """``long`` (None, a dict of LongVideoConfig fields or a LongVideoConfig) with the flat (old-name) settings
    ``flat`` applied. A setting given in both spellings with different values is a ValueError; for a
    LongVideoConfig instance the fields that differ from the defaults count as given (defaults cannot be told
    apart from unset ones)."""
    new = {LEGACY_LONG_FIELDS[k]: v for k, v in flat.items()}
    if long is None:
        return LongVideoConfig(**new)
    if isinstance(long, dict):
        nested = dict(long)
        given = nested
    elif isinstance(long, LongVideoConfig):
        nested = long.to_dict()
        given = {k: v for k, v in nested.items() if v != getattr(_LONG_DEFAULT, k)}
    else:
        raise ValueError(f"SparseConfig.long: expected a LongVideoConfig (or a dict of its fields), "
                         f"got {type(long).__name__}")
    for old, v in flat.items():
        name = LEGACY_LONG_FIELDS[old]
        if name in given and not _same(given[name], v):
            raise ValueError(
                f"{where}: {old}={v!r} (the deprecated flat spelling) conflicts with long.{name}={given[name]!r}; "
                f"give the setting once, as long.{name}")
    nested.update(new)
    return LongVideoConfig.from_dict(nested)


def _same(a: Any, b: Any) -> bool:
    return a == b and isinstance(a, bool) == isinstance(b, bool)


def _accept_legacy_keywords(init: Any) -> Any:
    """Wrap the dataclass-generated ``SparseConfig.__init__`` so that the flat long-video keywords of earlier
    releases (``pre_budget=``, ..., ``chunk_frames=``) still work: they are folded into ``long`` with a
    DeprecationWarning. The generated ``__init__`` (its signature, defaults and ``__post_init__``) is kept as is,
    so ``dataclasses.fields``/``replace``, equality, hashing and pickling are those of a plain frozen dataclass."""

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        flat = {k: kwargs.pop(k) for k in list(kwargs) if k in LEGACY_LONG_FIELDS}
        if flat:
            for k in flat:
                _warn_legacy(k, "init", stacklevel=2)
            kwargs["long"] = _merge_legacy(kwargs.get("long"), flat, "SparseConfig")
        init(self, *args, **kwargs)

    return __init__


def _legacy_property(old: str) -> property:
    new = LEGACY_LONG_FIELDS[old]

    def get(self: Any) -> Any:
        _warn_legacy(old, "attribute", stacklevel=2)
        return getattr(self.long, new)

    return property(get, doc=f"Deprecated: ``cfg.long.{new}`` (read-only).")


@dataclass(frozen=True)
class SparseConfig:
    """How visual tokens are pruned inside the decoder.

    Every field carries its help text in ``dataclasses.fields(SparseConfig)[i].metadata["help"]``.
    Validation happens in ``__post_init__``; model-dependent checks (stage layer inside the decoder,
    budget not above the visual tokens) happen when the config meets a model/input and also raise
    ``ValueError`` naming the field.

    The long-video settings (pool size, pre-selection, decoding chunk) are one field, ``long``, a
    `LongVideoConfig`; the flat names of earlier releases (``pre_budget``, ``pre_method``, ...,
    ``chunk_frames``) are accepted by the constructor, ``replace``, ``preset`` (DeprecationWarning) and
    ``from_dict`` (config files and traces of earlier releases), and readable as deprecated properties.
    """

    budget: Any = _f(
        "Visual-token budget. 'Neq' (e.g. '194eq'): N equivalent tokens, the unit of the SparseVLM paper's "
        "tables (mean visual tokens per decoder layer, merged tokens included): the stage counts are solved "
        "for it on the actual input and decoder ('0.094eq': a fraction of the visual tokens). "
        "int n: n tokens kept after the last stage; float f in (0, 1]: "
        "round(f x visual tokens) kept after the last stage (with several stages the earlier ones step "
        "down geometrically to it); 'rank': SparseVLM-v1 rank-adaptive count at every stage (see "
        "rank_lambda); [(layer, count), ...]: explicit per-stage schedule (int counts or fractions of the "
        "input's visual tokens) that also defines the stage layers (`layers` is set from it). The "
        "sparsevlm-v1.5/v2 presets turn their budget into such a schedule (see SparseConfig.preset): "
        "an int that is a seed table key (v1.5: 192/128/64, v2: 192/128/96/64) selects the seed's "
        "per-stage counts for 576 visual tokens, whose last stage keeps fewer tokens than the key "
        "(v1.5 64 -> 66, 30, 17); any other int n or float f is a nominal budget (n/576 or f of the "
        "visual tokens, roughly the mean tokens per layer) given the nearest table entry's per-stage "
        "fractions, scaled (v1.5 0.1 -> 10.3 %, 4.7 %, 2.7 %); no budget = the seed's 192 entry as "
        "fractions of the input (300, 200, 110 of 576).",
        0.1,
    )
    layers: tuple = _f(
        "Decoder layers at which a stage scores and prunes. A stage at layer L uses layer L's attention "
        "and shrinks the sequence after layer L. Strictly increasing, >= 0. With several stages and an "
        "int/float budget the count decreases geometrically to the budget at the last stage. With a "
        "per-stage schedule budget this is normalised to the schedule's layers (the layers that run).",
        (1,),
    )
    method: str = _f(
        "Scorer: 'sparsevlm' (question-guided rater attention), 'fastv' (last-token attention), "
        "'random' (seeded), 'uniform' (evenly spread over space and time).",
        "sparsevlm",
    )
    raters: str = _f(
        "Which text tokens guide selection: 'sparsevlm' (text after the video whose relevance to the "
        "visual tokens is above the mean), 'last' (last prompt token), 'all' (all text after the video).",
        "sparsevlm",
    )
    head_agg: str = _f("Aggregate attention heads by 'mean' or over the top-h 'priority' heads.", "mean")
    priority_heads: int = _f("Number of heads kept by head_agg='priority' (v2 uses 14).", 8)
    gravity: Any = _f(
        "v2 gravity correction: divide each rater->visual attention by a RoPE distance weight g(|q - k|). "
        "None: off. 'bounded' (True): RoFormer's normalised long-term-decay bound, in (0, 1], g(0) = 1. "
        "'official': the seed's rotary(ones) . rotary(ones) / sqrt(d) = 2 sum_i cos(delta theta_i) / sqrt(d), "
        "which is <= 0 at 16 of the 2,116 distances of a Video-LLaVA prompt (the score's sign flips there).",
        None,
    )
    temporal_tau: float | None = _f(
        "Cosine similarity above which a token equals the same spatial token of the previous frame "
        "(temporal redundancy). None disables.",
        None,
    )
    temporal_mode: str = _f("'discount' redundant tokens' scores or 'merge' them into their predecessor.", "discount")
    temporal_discount: float = _f("Score multiplier for temporally redundant tokens (discount mode).", 0.5)
    frame_floor: int = _f("Minimum kept tokens per frame (0 = frames may vanish).", 0)
    floor_share: float = _f(
        "The per-frame floor may use at most this share of the budget (it is lowered, possibly to 0, so "
        "that floor picks never crowd out the global question-guided choice).",
        0.25,
    )
    keep_cls: bool = _f("Always keep each frame's CLS token (token 0) when the budget allows.", False)
    recycle: bool = _f("Recycle pruned tokens: cluster the best pruned ones (DPC-KNN) and merge them.", False)
    recycle_ratio: float = _f("Share of pruned tokens (top by score) considered for recycling.", 0.3)
    recycle_cluster_ratio: float = _f("Clusters per recycled token (about one tenth).", 0.1)
    recycle_knn: int = _f("k of the k-nearest-neighbour density in DPC-KNN.", 5)
    recycle_share: float = _f(
        "recycle_rule='share': recycled (merged) tokens may take at most this share of the budget; they count "
        "against it.", 0.1
    )
    recycle_rule: str = _f(
        "'share': merged tokens are part of the stage's count (at most recycle_share of it; this package's "
        "rule). 'seed': the official rule: of the n pruned tokens the top int(recycle_ratio x n) + 1 by score "
        "are clustered into int(recycle_cluster_ratio x n_c) + 1 clusters by DPC-KNN with k = the number of "
        "clusters (the point itself included) and the merged tokens are added on top of the stage's count.",
        "share",
    )
    recycle_place: str = _f(
        "Where merged tokens go in the sequence: 'center' (at their cluster center's slot, in temporal order) "
        "or 'after' (after the kept visual tokens, before the text: the seed's placement).",
        "center",
    )
    rank_rule: str = _f(
        "budget='rank': 'lambda' (the paper: prune round(rank_lambda x (N - rank)) of N), 'linear' (the v1 "
        "release code: keep min(int(rank x rank_scale + rank_bias), N - 1)), 'rank' (the seed's video branch: "
        "keep rank tokens, all of them when rank >= N).",
        "lambda",
    )
    rank_scale: float = _f("rank_rule='linear': scale (v1 code: 13.5 for its 192 setting, 9 for 128, 0.8 for 64).", 13.5)
    rank_bias: float = _f("rank_rule='linear': bias (v1 code: 0 for 192 and 64, 6 for 128).", 0.0)
    clamp_counts: bool = _f(
        "Seed behaviour: a stage count above the stage's N visual tokens keeps min(count, N - 1) instead of "
        "raising (v1.5/v2 table counts meet inputs with fewer tokens).",
        False,
    )
    stage_shape: Any = _f(
        "Relative per-stage counts (non-increasing fractions, one per stage). An int/float budget fixes the last "
        "stage's count and the earlier ones keep the same ratios to it (capped at the visual tokens); an "
        "equivalent-token budget ('194eq') scales the whole shape. None = geometric steps down to the last "
        "stage's count.",
        None,
    )
    rank_lambda: float = _f(
        "budget='rank' (SparseVLM-v1): each stage prunes round(lambda * (N - rank)) of its N visual tokens, "
        "rank = rank of the rater-to-visual relevance matrix (<= number of raters). 0.5 keeps about half "
        "per stage; 1.0 keeps only ~rank tokens (a warning is logged when a stage keeps fewer tokens than "
        "there are frames or < 1 % of the visual tokens).",
        0.5,
    )
    score_impl: str = _f(
        "'rows': compute only the rater rows of the stage layer's attention (default). 'full': "
        "materialise the full N x N attention map of that layer first, as the seed reference code "
        "does (same result, for benchmarks and parity checks).",
        "rows",
    )
    positions: str = _f("'original' RoPE positions for kept tokens, or 'renumber' them 0..k-1 (v1).", "original")
    long: LongVideoConfig = _f(
        "Long-video settings (a `LongVideoConfig`: pool size, pre-selection score, temporal-redundancy penalty, "
        "per-frame floor, pool positions, decoding chunk). They configure the question-guided pre-selection "
        "before the decoder and do nothing on the whole-frame path. A dict is converted "
        "(`LongVideoConfig.from_dict`). The flat spellings of earlier releases (pre_budget=, pre_method=, ..., "
        "chunk_frames=) still work, with a DeprecationWarning.",
        LongVideoConfig(),
    )
    seed: int = _f("Seed of the 'random' method.", 0)
    trace: bool = _f("Record a RetentionTrace (kept tokens, scores, raters, clusters) on every prefill.", True)
    name: str = _f("Preset name this config came from (informational).", "custom")

    # deprecated read-only aliases of the flat long-video fields of earlier releases (cfg.long.<name>)
    pre_budget = _legacy_property("pre_budget")
    pre_method = _legacy_property("pre_method")
    pre_temporal_tau = _legacy_property("pre_temporal_tau")
    pre_temporal_penalty = _legacy_property("pre_temporal_penalty")
    pre_frame_floor = _legacy_property("pre_frame_floor")
    pre_floor_share = _legacy_property("pre_floor_share")
    pre_positions = _legacy_property("pre_positions")
    chunk_frames = _legacy_property("chunk_frames")

    def __setstate__(self, state: dict) -> None:
        """Unpickle, also a SparseConfig pickled by an earlier release (flat long-video fields)."""
        state = dict(state)
        flat = {LEGACY_LONG_FIELDS[k]: state.pop(k) for k in list(state) if k in LEGACY_LONG_FIELDS}
        if "long" not in state:
            state["long"] = LongVideoConfig(**flat)
        for k, v in state.items():
            object.__setattr__(self, k, v)

    # ------------------------------------------------------------------ validation
    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(int(x) for x in self.layers))
        if self.gravity is True:
            object.__setattr__(self, "gravity", "bounded")
        elif self.gravity is False:
            object.__setattr__(self, "gravity", None)
        if self.gravity not in GRAVITY:
            raise ValueError(f"SparseConfig.gravity: {self.gravity!r} is not one of {list(GRAVITY)} (or a bool)")
        if isinstance(self.stage_shape, list):
            object.__setattr__(self, "stage_shape", tuple(self.stage_shape))
        b = self.budget
        if isinstance(b, list):
            b = tuple(tuple(x) for x in b)
            object.__setattr__(self, "budget", b)
        Budget.of(self.budget)  # ValueError naming `budget`
        if isinstance(self.budget, tuple):
            # a schedule defines its stage layers: `layers` always reports the layers that run
            object.__setattr__(self, "layers", tuple(layer for layer, _ in self.budget))
            object.__setattr__(self, "stage_shape", None)  # the schedule's counts are the shape
        if not self.layers:
            raise ValueError("SparseConfig.layers: at least one stage layer is required")
        if any(x < 0 for x in self.layers):
            raise ValueError(f"SparseConfig.layers: stage layers must be >= 0, got {list(self.layers)}")
        if any(b2 <= a for a, b2 in zip(self.layers, self.layers[1:])):
            raise ValueError(f"SparseConfig.layers: stage layers must be strictly increasing, got {list(self.layers)}")
        for name, allowed in (
            ("method", METHODS),
            ("raters", RATERS),
            ("head_agg", HEAD_AGG),
            ("positions", POSITIONS),
            ("temporal_mode", TEMPORAL_MODES),
            ("score_impl", ("rows", "full")),
            ("rank_rule", RANK_RULES),
            ("recycle_rule", RECYCLE_RULES),
            ("recycle_place", RECYCLE_PLACES),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"SparseConfig.{name}: {getattr(self, name)!r} is not one of {list(allowed)}")
        if self.budget == "rank" and self.method != "sparsevlm":
            raise ValueError(
                f"SparseConfig.budget: 'rank' needs method='sparsevlm' (rater attention), got method={self.method!r}"
            )
        if self.priority_heads < 1:
            raise ValueError(f"SparseConfig.priority_heads: must be >= 1, got {self.priority_heads}")
        if self.temporal_tau is not None and not (-1.0 <= self.temporal_tau <= 1.0):
            raise ValueError(f"SparseConfig.temporal_tau: must be a cosine in [-1, 1] or None, got {self.temporal_tau}")
        if not (0.0 <= self.temporal_discount <= 1.0):
            raise ValueError(f"SparseConfig.temporal_discount: must be in [0, 1], got {self.temporal_discount}")
        if self.frame_floor < 0:
            raise ValueError(f"SparseConfig.frame_floor: must be >= 0, got {self.frame_floor}")
        if not (0.0 < self.recycle_ratio <= 1.0):
            raise ValueError(f"SparseConfig.recycle_ratio: must be in (0, 1], got {self.recycle_ratio}")
        if not (0.0 < self.recycle_cluster_ratio <= 1.0):
            raise ValueError(
                f"SparseConfig.recycle_cluster_ratio: must be in (0, 1], got {self.recycle_cluster_ratio}"
            )
        for name in ("floor_share", "recycle_share"):
            v = getattr(self, name)
            if not (0.0 <= v <= 1.0):
                raise ValueError(f"SparseConfig.{name}: must be in [0, 1], got {v}")
        if self.recycle_knn < 1:
            raise ValueError(f"SparseConfig.recycle_knn: must be >= 1, got {self.recycle_knn}")
        if isinstance(self.long, dict):
            object.__setattr__(self, "long", LongVideoConfig.from_dict(self.long))
        elif self.long is None:
            object.__setattr__(self, "long", LongVideoConfig())
        if not isinstance(self.long, LongVideoConfig):
            raise ValueError(f"SparseConfig.long: expected a LongVideoConfig (or a dict of its fields), "
                             f"got {type(self.long).__name__}")
        if not (self.rank_lambda > 0):
            raise ValueError(f"SparseConfig.rank_lambda: must be > 0, got {self.rank_lambda}")
        if not (self.rank_scale > 0) or math.isinf(self.rank_scale):
            raise ValueError(f"SparseConfig.rank_scale: must be finite and > 0, got {self.rank_scale}")
        if math.isnan(self.rank_bias) or math.isinf(self.rank_bias):
            raise ValueError(f"SparseConfig.rank_bias: must be finite, got {self.rank_bias}")
        if self.stage_shape is not None:
            sh = self.stage_shape
            if (not isinstance(sh, tuple) or len(sh) != len(self.layers)
                    or any(isinstance(x, bool) or not isinstance(x, (int, float)) or not (0 < x <= 1) for x in sh)
                    or any(b2 > a for a, b2 in zip(sh, sh[1:]))):
                raise ValueError(
                    f"SparseConfig.stage_shape: needs one non-increasing fraction in (0, 1] per stage layer "
                    f"({len(self.layers)}), got {sh!r}")

    @staticmethod
    def _validate_budget(b: Any) -> None:
        """Deprecated alias of ``Budget.of(b)`` (kept for callers of earlier releases)."""
        Budget.of(b)

    @property
    def budget_value(self) -> "Budget":
        """The budget as a typed value (what kind of budget, and its value)."""
        return Budget.of(self.budget)

    # ------------------------------------------------------------------ derived
    @property
    def stage_layers(self) -> tuple:
        """Layers of the stages that run (always equal to ``layers``; a schedule budget sets them)."""
        return self.layers

    def schedule(self, num_visual: int, num_layers: int | None = None) -> "Schedule":
        """The stages this config runs on an input of ``num_visual`` visual tokens per sample and a
        ``num_layers``-layer decoder: the one place stage layers and counts are resolved (the engine, the
        trace, ``describe``, the equivalent-token solver and the benchmarks read it). Resolved once per
        (config, input size, depth). ``num_layers`` is needed for an equivalent-token budget ('194eq').
        Raises ValueError (naming ``budget``) when a count is impossible for ``num_visual``."""
        schedule = _schedule(self, int(num_visual), None if num_layers is None else int(num_layers))
        b = self.budget
        if isinstance(b, int) and not isinstance(b, bool):
            tiny_budget_warning(b, int(num_visual))  # outside the cache: its own cache says it once per process
        return schedule

    def stage_counts(self, num_visual: int, num_layers: int | None = None) -> list:
        """Visual tokens each stage selects (before recycled tokens added on top) for ``num_visual``
        visual tokens per sample.

        Returns a list of ints, or ``None`` entries for rank-adaptive stages (decided from the data).
        ``num_layers`` (the decoder depth) is needed for an equivalent-token budget ('194eq').
        Raises ValueError (naming ``budget``) when a count is impossible for ``num_visual``.
        """
        return [st.selected for st in self.schedule(num_visual, num_layers).stages]

    def stage_plan(self, num_visual: int, num_layers: int | None = None) -> list:
        """``[(layer, selected, merged_on_top), ...]`` per stage (the tuples of ``schedule(...).stages``): the
        tokens a stage selects and the merged tokens recycle_rule='seed' adds on top (0 otherwise); the stage
        leaves selected + merged tokens. ``None`` counts for rank-adaptive stages."""
        return [(st.layer, st.selected, st.merged) for st in self.schedule(num_visual, num_layers).stages]

    def _resolve_plan(self, num_visual: int, num_layers: int | None) -> list:
        """Resolve the budget into ``[(layer, selected, merged_on_top)]`` (uncached; see ``schedule``)."""
        if num_visual <= 0:
            raise ValueError("SparseConfig.budget: the input has no visual tokens to prune")
        b = self.budget
        if b == "rank":
            return [(layer, None, None) for layer in self.layers]
        if isinstance(b, str):
            if num_layers is None:
                raise ValueError("SparseConfig.budget: an equivalent-token budget needs the decoder depth "
                                 "(stage_counts(num_visual, num_layers))")
            return self._plan(self._solve_equivalent(parse_equivalent(b), num_visual, num_layers), num_visual)
        if isinstance(b, tuple):
            counts = [_resolve_count(c, num_visual) for _, c in b]
        elif self.stage_shape is not None:
            final = _resolve_count(b, num_visual)
            sh = self.stage_shape
            counts = [min(num_visual, max(final, int(round(final * f / sh[-1])))) for f in sh[:-1]] + [final]
        else:
            counts = self._geometric(_resolve_count(b, num_visual), num_visual)
        if any(c > num_visual for c in counts):
            key = self._seed_table_key()
            if key is not None:
                full = list(SEED_TABLES[self.name][key])
                fitted = "" if full == counts else f" ({full} fitted to {len(counts)} stages)"
                raise ValueError(
                    f"SparseConfig.budget: the seed's counts {counts} for budget {key}{fitted} are for "
                    f"{REFERENCE_VISUAL_TOKENS} visual tokens; this input has {num_visual}: pass a fraction such as "
                    f"{key / REFERENCE_VISUAL_TOKENS:.2f} (the same budget relative to the input), give no budget "
                    f"(the preset default scales the seed's {_DEFAULT_KEY} entry to the input), or a per-stage "
                    f"schedule [(layer, count), ...] with counts <= {num_visual}"
                )
            c = max(counts)
            raise ValueError(
                f"SparseConfig.budget: {c} tokens requested but the input has only {num_visual} visual tokens "
                f"(use a count <= {num_visual} or a fraction in (0, 1])"
            )
        for a, c in zip(counts, counts[1:]):
            if c > a:
                raise ValueError(f"SparseConfig.budget: per-stage counts must not increase, got {counts}")
        return self._plan(counts, num_visual)

    def _geometric(self, final: int, num_visual: int) -> list:
        """Counts stepping down geometrically from num_visual to ``final`` at the last stage."""
        n = len(self.layers)
        counts = [max(final, int(round(num_visual * (final / num_visual) ** ((i + 1) / n)))) for i in range(n)]
        counts[-1] = final
        return counts

    def _plan(self, counts: list, num_visual: int) -> list:
        """Apply the seed clamp (min(count, N - 1)) and the merged tokens added on top, stage by stage."""
        plan, current = [], num_visual
        for layer, c in zip(self.layers, counts):
            if self.clamp_counts:
                c = min(c, current - 1) if current > 1 else current
            merged = self.merged_on_top(current, c)
            plan.append((layer, int(c), merged))
            current = c + merged
        return plan

    def merged_on_top(self, num_current: int, selected: int) -> int:
        """Merged tokens a stage adds on top of its ``selected`` tokens (recycle_rule='seed'; else 0)."""
        if not self.recycle or self.recycle_rule != "seed":
            return 0
        return seed_recycle_counts(num_current - selected, self.recycle_ratio, self.recycle_cluster_ratio)[1]

    def check_layers(self, num_layers: int) -> None:
        """ValueError naming ``layers`` when a stage layer does not fit a ``num_layers``-layer decoder."""
        for layer in self.layers:
            if layer >= num_layers - 1:
                raise ValueError(
                    f"SparseConfig.layers: stage layer {layer} must be < number of decoder layers - 1 ({num_layers - 1}); "
                    f"a stage at the last layer would prune nothing"
                )

    def equivalent_range(self, num_visual: int, num_layers: int) -> tuple:
        """(lowest, highest) equivalent tokens an equivalent-token budget can reach with this config's stage
        layers, shape and recycling on ``num_visual`` visual tokens and a ``num_layers``-layer decoder."""
        _, eq, lo_x, hi_x = self._equivalent_search(num_visual, num_layers)
        return eq(lo_x), eq(hi_x)

    def _equivalent_search(self, num_visual: int, num_layers: int) -> tuple:
        """(counts_for(x), equivalent(x), x_min, x_max) of the schedule family an equivalent budget solves over."""
        self.check_layers(num_layers)
        shape = self.stage_shape
        n = len(self.layers)

        def counts_for(x: float) -> list:
            # x > 0 scales the whole schedule continuously (so early stages move in single tokens too)
            if shape is None:  # geometric steps from num_visual towards x at the last stage
                raw = [num_visual * (x / num_visual) ** ((i + 1) / n) for i in range(n)]
            else:
                raw = [x * f * num_visual for f in shape]
            return [min(num_visual, max(1, int(round(r)))) for r in raw]

        def eq(x: float) -> float:
            plan = self._plan(counts_for(x), num_visual)
            return equivalent_tokens(num_visual, num_layers, self.layers, [k + m for _, k, m in plan])

        # x_min small enough that every stage reaches a single token (geometric steps: num_visual * x^(i/n))
        return counts_for, eq, 1e-30, (float(num_visual) if shape is None else 1.0 / shape[-1])

    def _solve_equivalent(self, target: float, num_visual: int, num_layers: int) -> list:
        """Stage counts whose equivalent tokens are closest to ``target`` (ties: fewer tokens).

        The shape is kept: ``stage_shape`` scaled, or geometric steps; a bisection runs over the schedule's
        scale (equivalent tokens grow monotonically with it)."""
        if target <= 1.0:
            target = target * num_visual  # a fraction of the visual tokens
        counts_for, eq, lo_x, hi_x = self._equivalent_search(num_visual, num_layers)
        lo_eq, hi_eq = eq(lo_x), eq(hi_x)
        if not (lo_eq - 0.5 <= target <= hi_eq + 0.5):
            raise ValueError(
                f"SparseConfig.budget: {target:g} equivalent tokens cannot be reached by stages after layers "
                f"{list(self.layers)} of a {num_layers}-layer decoder with {num_visual} visual tokens: the layers up "
                f"to the first stage see every token (and recycled tokens come on top), so the reachable range is [{lo_eq:.1f}, {hi_eq:.1f}]"
            )
        lo, hi = math.log(lo_x), math.log(hi_x)  # eq(exp(lo)) <= target < eq(exp(hi)) (within the range)
        for _ in range(60):
            mid = (lo + hi) / 2
            if eq(math.exp(mid)) <= target:
                lo = mid
            else:
                hi = mid
        below, above = math.exp(lo), math.exp(hi)
        best = below if abs(eq(below) - target) <= abs(eq(above) - target) else above
        return counts_for(best)

    def _seed_table_key(self) -> int | None:
        """The seed table key whose verbatim counts this config's schedule is (table presets only)."""
        table = SEED_TABLES.get(self.name)
        if table is None or not isinstance(self.budget, tuple):
            return None
        counts = tuple(c for _, c in self.budget)
        if not all(isinstance(c, int) for c in counts):
            return None
        for key, seed in table.items():
            if _fit(seed, len(counts)) == counts:
                return key
        return None

    def describe(self, num_visual: int, num_layers: int) -> str:
        """One line for humans: stage layers, tokens after each stage, recycling, equivalent tokens.

        Raises ValueError (naming the field) when the config does not fit ``num_visual`` visual tokens
        or a ``num_layers``-layer decoder, as running it would.
        """
        self.check_layers(num_layers)
        plan = self.stage_plan(num_visual, num_layers)  # the schedule's stages, as tuples
        head = f"{self.name} ({self.method}): {num_visual} visual tokens, {num_layers} layers; "
        n = len(self.layers)
        layers = ", ".join(str(x) for x in self.layers)
        where = f"{n} stage{'s' if n > 1 else ''} (after layer{'s' if n > 1 else ''} {layers})"
        if self.budget == "rank":
            rule = {"lambda": f"each prunes round({self.rank_lambda:g} x (N - rank)) of its N tokens",
                    "linear": f"each keeps min(int(rank x {self.rank_scale:g} + {self.rank_bias:g}), N - 1) tokens",
                    "rank": "keeps rank tokens (all when rank >= N)"}[self.rank_rule]
            text = f"rank-adaptive {where}: {rule}, counts decided per input (see the trace)"
            equiv = "equivalent tokens decided per input"
        else:
            flow = " -> ".join(f"{k}+{m}" if m else str(k) for _, k, m in plan)
            last = plan[-1][1] + plan[-1][2]
            text = f"{where} keep{'s' if n == 1 else ''} {flow} tokens ({last / num_visual:.1%} after the last stage)"
            eq = self.equivalent_tokens(num_visual, num_layers)
            equiv = f"equivalent tokens {eq:.1f} ({eq / num_visual:.1%}, mean visual tokens per layer)"
        if not self.recycle:
            rec = "no recycling"
        elif self.recycle_rule == "seed":
            rec = (f"recycling (seed rule): top int({self.recycle_ratio:g} n) + 1 of the n pruned tokens merged into "
                   f"int({self.recycle_cluster_ratio:g} n_c) + 1 clusters, added on top"
                   + (" after the kept tokens" if self.recycle_place == "after" else ""))
        elif plan[0][1] is None:
            rec = f"recycling: merged tokens take <= {self.recycle_share:.0%} of each stage's count"
        else:
            caps = ", ".join(str(int(self.recycle_share * k + 1e-9)) for _, k, _ in plan)
            rec = f"recycling: <= {self.recycle_share:.0%} of each stage's count are merged tokens (<= {caps})"
        return f"{head}{text}; {rec}; {equiv}"

    def equivalent_tokens(self, num_visual: int, num_layers: int, counts: list | None = None) -> float:
        """SparseVLM's equivalent tokens: mean over decoder layers of the visual tokens each layer sees
        (merged tokens included). ``counts``: tokens left after each stage (default: from the plan)."""
        if counts is None:
            counts = [st.after for st in self.schedule(num_visual, num_layers).stages]
        return equivalent_tokens(num_visual, num_layers, self.stage_layers, counts)

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["layers"] = list(self.layers)
        if isinstance(self.budget, tuple):
            d["budget"] = [list(x) for x in self.budget]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SparseConfig":
        """A config from ``to_dict()``: the nested form (``"long": {...}``) of this release or the flat
        long-video keys (``pre_budget``, ..., ``chunk_frames``) of the files and traces earlier releases wrote
        (read without a warning). A setting given in both forms with different values is a ValueError."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names - set(LEGACY_LONG_FIELDS)
        if unknown:
            raise ValueError(f"SparseConfig.from_dict: unknown field(s) {sorted(unknown)}")
        d = dict(d)
        flat = {k: d.pop(k) for k in list(d) if k in LEGACY_LONG_FIELDS}
        if flat:
            d["long"] = _merge_legacy(d.get("long"), flat, "SparseConfig.from_dict")
        elif isinstance(d.get("long"), dict):
            d["long"] = LongVideoConfig.from_dict(d["long"])
        if isinstance(d.get("budget"), list):
            d["budget"] = tuple(tuple(x) for x in d["budget"])
        if "layers" in d:
            d["layers"] = tuple(d["layers"])
        return cls(**d)

    def replace(self, **changes: Any) -> "SparseConfig":
        """A copy with ``changes``; the flat long-video names of earlier releases (``pre_budget=``, ...) still
        work with a DeprecationWarning (applied to ``self.long``)."""
        flat = {k: changes.pop(k) for k in list(changes) if k in LEGACY_LONG_FIELDS}
        if flat:
            for k in flat:
                _warn_legacy(k, "replace", stacklevel=2)
            if "long" in changes:
                changes["long"] = _merge_legacy(changes["long"], flat, "SparseConfig.replace")
            else:
                changes["long"] = self.long.replace(**{LEGACY_LONG_FIELDS[k]: v for k, v in flat.items()})
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ presets
    @classmethod
    def preset(cls, name: str, budget: Any = None, num_layers: int = REFERENCE_LAYERS, **overrides: Any) -> "SparseConfig":
        """Build a named preset for a ``num_layers``-layer decoder.

        ``num_layers``: the preset's stage layers (written for 32 layers) are rescaled to it, kept strictly
        increasing and < num_layers - 1 (stages that do not fit are dropped; a table preset then keeps
        its final count). The returned config's ``layers`` are the layers that run.

        ``budget`` (``None``: the preset default):

        * ``video``, ``fastv``, ``random``, ``uniform`` (one stage): int n keeps n visual tokens, float f
          keeps round(f x visual tokens). Default 0.1.
        * ``sparsevlm-v1``: default ``"rank"`` (rank-adaptive, rank_lambda 0.5); an int/float gives fixed
          counts stepping down geometrically to the budget at the last stage.
        * ``sparsevlm-v1.5`` / ``sparsevlm-v2`` (seed per-stage tables, counts for 576 visual tokens):
          an int that is a table key (v1.5: 192, 128, 64; v2: 192, 128, 96, 64) selects the seed's
          counts verbatim, e.g. v1.5 64 -> [66, 30, 17]: the *last* stage keeps fewer tokens than the
          key, and inputs with fewer visual tokens than the first count are rejected. Any other int n
          (read as n/576) or float f is a nominal budget: the per-stage fractions of the nearest table
          entry, scaled by f / (key/576), resolved against the input (v1.5 0.1 -> 10.3 %, 4.7 %, 2.7 % of
          the visual tokens). The default is the 192 entry as fractions of the input: [300, 200, 110]
          on 576 tokens, [154, 103, 57] on 296.
        * ``"rank"`` with any sparsevlm-method preset: rank-adaptive counts at the preset's stage
          layers, with rank_lambda 0.5 unless given.
        * a schedule ``[(layer, count), ...]`` is used as given (its layers are not rescaled).
        """
        if name not in PRESETS:
            raise ValueError(f"SparseConfig.preset: unknown preset {name!r}; known: {sorted(PRESETS)}")
        if num_layers < 2:
            raise ValueError(f"SparseConfig.preset: num_layers must be >= 2, got {num_layers}")
        spec = dict(PRESETS[name])
        builder = spec.pop("_schedule", None)
        default = spec.pop("budget")
        layers = rescale_layers(tuple(spec.pop("layers")), num_layers)
        if builder is not None:
            budget = builder(budget, default, layers, spec)
        elif budget is None:
            budget = default
        if budget == "rank":
            spec.setdefault("rank_lambda", PRESETS["sparsevlm-v1"]["rank_lambda"])
        if spec.get("stage_shape") is not None and "stage_shape" not in overrides:
            spec["stage_shape"] = _fit(tuple(spec["stage_shape"]), len(layers))  # stages dropped on shallow decoders
        flat = {k: overrides.pop(k) for k in list(overrides) if k in LEGACY_LONG_FIELDS}
        if flat:
            for k in flat:
                _warn_legacy(k, "preset", stacklevel=2)
            overrides["long"] = _merge_legacy(overrides.get("long", spec.get("long")), flat, "SparseConfig.preset")
        spec.update(overrides)
        return cls(budget=budget, layers=layers, name=name, **spec)


SparseConfig.__init__ = _accept_legacy_keywords(SparseConfig.__init__)  # type: ignore[method-assign]


@dataclass(frozen=True)
class Budget:
    """A budget as a typed value: what the user asked for, parsed and validated once.

    kind:  ``"kept"`` (int: visual tokens left after the last stage), ``"fraction"`` (float in (0, 1] of the
           input's visual tokens), ``"equivalent"`` (``'194eq'``: mean visual tokens per decoder layer;
           ``'0.094eq'``: a fraction of the visual tokens), ``"rank"`` (rank-adaptive counts) or
           ``"schedule"`` (``((layer, count), ...)``).
    value: the int, the float, the equivalent target (float), ``"rank"``, or the schedule tuple.
    raw:   what ``SparseConfig.budget`` holds (and config files store) for it.
    """

    kind: str
    value: Any
    raw: Any

    @classmethod
    def parse(cls, text: str) -> "Budget":
        """A budget as typed on a command line (``'194'``, ``'0.1'``, ``'194eq'``, ``'rank'``), syntax and
        ranges checked. Raises ValueError naming what is wrong."""
        return cls.of(parse_budget(text))

    @classmethod
    def of(cls, b: Any) -> "Budget":
        """The Budget of a ``SparseConfig.budget`` value; ValueError (naming ``SparseConfig.budget``) otherwise."""
        if isinstance(b, bool):
            raise ValueError(f"SparseConfig.budget: a bool is not a budget, got {b!r}")
        if isinstance(b, int):
            if b <= 0:
                raise ValueError(f"SparseConfig.budget: must be > 0 tokens, got {b}")
            return cls("kept", b, b)
        if isinstance(b, float):
            if not (0.0 < b <= 1.0) or math.isnan(b):
                raise ValueError(f"SparseConfig.budget: a fraction must be in (0, 1], got {b}")
            return cls("fraction", b, b)
        if isinstance(b, str):
            if b == "rank":
                return cls("rank", "rank", b)
            eq = parse_equivalent(b)
            if eq is None:
                raise ValueError(
                    f"SparseConfig.budget: a string budget is 'rank' or equivalent tokens such as '194eq' "
                    f"(or '0.094eq', a fraction of the visual tokens), got {b!r}")
            return cls("equivalent", eq, b)
        if isinstance(b, list):
            b = tuple(tuple(x) for x in b)
        if isinstance(b, tuple):
            _check_schedule(b)
            return cls("schedule", b, b)
        raise ValueError(
            f"SparseConfig.budget: expected int, float fraction, 'rank' or [(layer, count), ...], got {b!r}"
        )


def _check_schedule(b: tuple) -> None:
    if not b:
        raise ValueError("SparseConfig.budget: a per-stage schedule needs at least one (layer, count)")
    prev_layer, prev_count = -1, None
    for item in b:
        if len(item) != 2:
            raise ValueError(f"SparseConfig.budget: schedule items are (layer, count), got {item!r}")
        layer, count = item
        if not isinstance(layer, int) or isinstance(layer, bool) or layer < 0:
            raise ValueError(f"SparseConfig.budget: schedule layer must be an int >= 0, got {layer!r}")
        if layer <= prev_layer:
            raise ValueError(f"SparseConfig.budget: schedule layers must be strictly increasing, got {b}")
        if isinstance(count, bool) or not isinstance(count, (int, float)) or count <= 0:
            raise ValueError(f"SparseConfig.budget: schedule count must be > 0, got {count!r}")
        if isinstance(count, float) and count > 1.0:
            raise ValueError(f"SparseConfig.budget: a schedule fraction must be in (0, 1], got {count}")
        if prev_count is not None and type(count) is type(prev_count) and count > prev_count:
            raise ValueError(f"SparseConfig.budget: schedule counts must not increase, got {b}")
        prev_layer, prev_count = layer, count


@dataclass(frozen=True)
class Stage:
    """One stage of a Schedule: it scores with ``layer``'s attention and shrinks the sequence after it.

    selected: visual tokens it selects (None: rank-adaptive, decided from the data)
    merged:   merged tokens the seed's recycling adds on top (0 otherwise; None when decided from the data)
    """

    layer: int
    selected: int | None
    merged: int | None

    @property
    def after(self) -> int | None:
        """Visual tokens left after the stage (None when decided from the data)."""
        return None if self.selected is None else self.selected + (self.merged or 0)


@dataclass(frozen=True)
class Schedule:
    """What a config does on one input size and decoder depth (``SparseConfig.schedule``)."""

    num_visual: int
    num_layers: int | None
    stages: tuple

    @property
    def layers(self) -> tuple:
        return tuple(st.layer for st in self.stages)

    @property
    def adaptive(self) -> bool:
        """True when counts are decided from the data (rank-adaptive)."""
        return any(st.selected is None for st in self.stages)

    def tokens_per_layer(self) -> list | None:
        """Visual tokens each decoder layer sees (layers up to a stage see what it starts with); None when
        the depth is unknown or the counts are decided from the data."""
        if self.num_layers is None or self.adaptive:
            return None
        out, current, after = [], self.num_visual, {st.layer: st.after for st in self.stages}
        for layer in range(self.num_layers):
            out.append(current)
            current = after.get(layer, current)
        return out

    @property
    def equivalent_tokens(self) -> float | None:
        """SparseVLM's equivalent tokens: the mean of ``tokens_per_layer()`` (None when not fixed)."""
        seen = self.tokens_per_layer()
        return None if seen is None else sum(seen) / len(seen)


@functools.lru_cache(maxsize=1024)
def _schedule(cfg: "SparseConfig", num_visual: int, num_layers: int | None) -> Schedule:
    plan = cfg._resolve_plan(num_visual, num_layers)
    return Schedule(num_visual, num_layers, tuple(Stage(layer, k, m) for layer, k, m in plan))


@functools.lru_cache(maxsize=256)
def tiny_budget_warning(budget: int, num_visual: int) -> str | None:
    """Log (once per process for each budget and input size) and return a warning when an int budget is tiny for
    an input of ``num_visual`` visual tokens: 1 token, or less than TINY_BUDGET_SHARE of them. A user who writes
    ``1`` (or ``01``) usually means 100 %, which is ``1.0``. None when the budget is not tiny. Called where a
    budget meets the actual input (`SparseConfig.stage_plan`), so the API, the CLI and the evaluation runner
    all warn."""
    if budget >= num_visual or (budget > 1 and budget >= TINY_BUDGET_SHARE * num_visual):
        return None
    msg = (f"SparseConfig.budget: {budget} is a token count: {budget} of the input's {num_visual} visual tokens "
           f"({budget / num_visual:.1%}) {'is' if budget == 1 else 'are'} kept after the last stage; a fraction "
           f"is written with a decimal point (1.0 keeps all of them, 0.1 keeps 10 %)")
    logger.warning("%s", msg)
    return msg


def parse_budget(text: str) -> Any:
    """A budget as typed on a command line: ``"194"`` -> 194 (tokens), ``"0.1"`` -> 0.1 (fraction),
    ``"194eq"`` -> ``"194eq"`` (equivalent tokens), ``"rank"`` -> ``"rank"``. Only the syntax is checked
    here (ranges: ``SparseConfig``).
    Raises ValueError: ``'abc' is not a token count (194), a fraction (0.1), equivalent tokens (194eq) or 'rank'``."""
    t = str(text).strip()
    if t == "rank":
        return "rank"
    if t.lower().endswith("eq") and parse_equivalent(t) is not None:
        return t.lower()
    try:
        return int(t) if t.lstrip("-").isdigit() else float(t)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a token count (194), a fraction (0.1), equivalent tokens (194eq) or 'rank'") from None


def parse_equivalent(text: str) -> float | None:
    """``'194eq'`` -> 194.0, ``'0.094eq'`` -> 0.094 (a fraction of the visual tokens); anything else -> None."""
    t = str(text).strip().lower()
    if not t.endswith("eq"):
        return None
    try:
        v = float(t[:-2])
    except ValueError:
        return None
    if not (v > 0) or math.isinf(v):
        return None
    return v


def seed_recycle_counts(num_pruned: int, ratio: float = 0.3, cluster_ratio: float = 0.1) -> tuple:
    """The seed's recycling counts for ``num_pruned`` pruned tokens: (candidates, clusters) =
    (int(ratio x n) + 1, int(cluster_ratio x candidates) + 1), both capped at n; (0, 0) when nothing is pruned."""
    if num_pruned <= 0:
        return 0, 0
    cand = min(num_pruned, int(ratio * num_pruned) + 1)
    return cand, min(cand, int(cluster_ratio * cand) + 1)


def _resolve_count(c: Any, num_visual: int) -> int:
    if isinstance(c, float):
        return max(1, int(round(c * num_visual)))
    return int(c)


def equivalent_tokens(num_visual: int, num_layers: int, stage_layers: tuple, counts: list) -> float:
    """Mean over ``num_layers`` decoder layers of visual tokens seen; stage at L shrinks after L."""
    total = 0.0
    current = num_visual
    stages = dict(zip(stage_layers, counts))
    for layer in range(num_layers):
        total += current
        if layer in stages and stages[layer] is not None:
            current = stages[layer]
    return total / num_layers


def rescale_layers(layers: tuple, num_layers: int) -> tuple:
    """Map stage layers written for a 32-layer decoder onto ``num_layers`` layers.

    Proportional mapping, but a reference layer >= 1 maps to >= 1 (layer-0 attention is a weak
    guide); kept strictly increasing and inside [0, num_layers - 2]; stages that do not fit are dropped.
    """
    if num_layers == REFERENCE_LAYERS:
        return tuple(layers)
    out: list = []
    for layer in layers:
        mapped = int(round(layer * (num_layers - 1) / (REFERENCE_LAYERS - 1)))
        mapped = max(mapped, min(layer, 1))  # a stage after layer >= 1 never collapses onto layer 0
        mapped = min(max(mapped, 0), num_layers - 2)
        if out and mapped <= out[-1]:
            mapped = out[-1] + 1
        if mapped > num_layers - 2:
            break
        out.append(mapped)
    return tuple(out)


def _table_schedule(table: dict) -> Any:
    """Builder for seed-style per-stage schedules (layers already rescaled to the target depth).

    None (preset default) -> the default key's counts as fractions of 576, resolved against the input.
    int in the table -> the seed's counts verbatim (for 576 visual tokens).
    Other int n (as n/576) or a float fraction -> the nearest table entry's counts scaled to the same
    fractions of the visual tokens (float fractions per stage, resolved against the input).
    'rank' -> rank-adaptive counts at the preset's layers.
    """

    def build(budget: Any, default: Any, layers: tuple, spec: dict) -> Any:
        if isinstance(budget, (tuple, list)) or budget == "rank":
            return budget
        if isinstance(budget, str) and parse_equivalent(budget) is not None:
            # equivalent tokens: the default entry's per-stage shape, scaled until the equivalent tokens match
            spec["stage_shape"] = tuple(c / REFERENCE_VISUAL_TOKENS for c in table[default])
            return budget
        if budget is None:
            counts = _fit(table[default], len(layers))
            return tuple((layer, c / REFERENCE_VISUAL_TOKENS) for layer, c in zip(layers, counts))
        if isinstance(budget, int) and not isinstance(budget, bool) and budget in table:
            counts = _fit(table[budget], len(layers))
            return tuple(zip(layers, counts))
        if isinstance(budget, int) and not isinstance(budget, bool):
            frac = budget / REFERENCE_VISUAL_TOKENS
        elif isinstance(budget, float):
            frac = budget
        else:
            raise ValueError(
                f"SparseConfig.budget: this preset needs an int, a float, 'rank' or a schedule, got {budget!r}"
            )
        if not (0.0 < frac <= 1.0):
            raise ValueError(f"SparseConfig.budget: fraction must be in (0, 1], got {frac}")
        key = min(table, key=lambda k: abs(k / REFERENCE_VISUAL_TOKENS - frac))
        scale = frac / (key / REFERENCE_VISUAL_TOKENS)
        fracs = [min(1.0, c / REFERENCE_VISUAL_TOKENS * scale) for c in _fit(table[key], len(layers))]
        return tuple((layer, float(f)) for layer, f in zip(layers, fracs))

    return build


def _v1_schedule(budget: Any, default: Any, layers: tuple, spec: dict) -> Any:
    """sparsevlm-v1: None or a setting 192/128/64 -> the release code's rank rule with that setting's
    (scale, bias); 'rank' -> the rule as configured; anything else (int, float, 'Neq', schedule) -> fixed counts."""
    if budget is None:
        budget = default
    if isinstance(budget, int) and not isinstance(budget, bool) and budget in V1_RANK_RULES:
        spec["rank_scale"], spec["rank_bias"] = V1_RANK_RULES[budget]
        return "rank"
    return budget


def _fit(counts: tuple, n: int) -> tuple:
    """Counts for n stages: when a shallow decoder drops stages, the final count is kept."""
    if n >= len(counts):
        return tuple(counts)
    return tuple(counts[: n - 1]) + (counts[-1],)


# The official code's recycling (v1, v1.5, video branch): merged tokens added on top of a stage's count,
# placed after the kept visual tokens, positions renumbered.
_SEED_RECYCLING = dict(recycle=True, recycle_rule="seed", recycle_place="after", positions="renumber")

# Presets are data. Layers are for a 32-layer decoder and rescaled by SparseConfig.preset.
PRESETS: dict = {
    "video": dict(
        # two stages: after layer 1 twice the final count survives, after layer 8 the final count (budget).
        # At equal equivalent tokens this beats one stage (README: Reproducing SparseVLM / equal compute)
        budget=0.1,
        layers=(1, 8),
        stage_shape=(0.2, 0.1),
        method="sparsevlm",
        raters="sparsevlm",
        temporal_tau=0.9,
        temporal_mode="discount",
        temporal_discount=0.5,
        frame_floor=1,
        recycle=True,
        positions="original",
    ),
    # The seed presets reproduce the official code (github Gumpest/SparseVLMs), token counts included.
    "sparsevlm-video": dict(
        # video branch: one stage at layer 1 keeping `rank` tokens; the seed's recycling adds the merged tokens
        # on top, after the kept ones; positions renumbered (rank ~8 on Video-LLaVA -> 8 + 62 = 70 tokens)
        budget="rank",
        layers=(1,),
        method="sparsevlm",
        raters="sparsevlm",
        rank_rule="rank",
        **_SEED_RECYCLING,
    ),
    "sparsevlm-v1": dict(
        # first release: keep min(int(rank x 13.5 + 0), N - 1) at layers 2, 6, 15, 19 (its 192 setting)
        budget=_DEFAULT_KEY,
        layers=(2, 6, 15, 19),
        _schedule=_v1_schedule,
        method="sparsevlm",
        raters="sparsevlm",
        rank_rule="linear",
        rank_scale=V1_RANK_RULES[_DEFAULT_KEY][0],
        rank_bias=V1_RANK_RULES[_DEFAULT_KEY][1],
        rank_lambda=0.5,  # the paper's rule (rank_rule='lambda'): lambda = 0.5 ~ halves per stage
        **_SEED_RECYCLING,
    ),
    # budget: the table key of the default; SparseConfig.preset turns it into the key's per-stage
    # fractions of 576, so the default fits any input (an explicit table-key int is verbatim counts)
    "sparsevlm-v1.5": dict(
        budget=_DEFAULT_KEY,
        layers=(2, 6, 15),
        _schedule=_table_schedule(V15_SCHEDULES),
        method="sparsevlm",
        raters="sparsevlm",
        clamp_counts=True,
        **_SEED_RECYCLING,
    ),
    "sparsevlm-v2": dict(
        budget=_DEFAULT_KEY,
        layers=(2, 6, 15),
        _schedule=_table_schedule(V2_SCHEDULES),
        method="sparsevlm",
        raters="sparsevlm",
        head_agg="priority",
        priority_heads=14,
        gravity="bounded",  # the seed's factor: gravity="official" (<= 0 at some distances, see the README)
        clamp_counts=True,
        recycle=False,
        positions="original",
    ),
    "fastv": dict(budget=0.1, layers=(2,), method="fastv", raters="last", positions="original"),
    "random": dict(budget=0.1, layers=(1,), method="random", positions="original"),
    "uniform": dict(budget=0.1, layers=(1,), method="uniform", positions="original"),
}
