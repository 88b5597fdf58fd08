"""RetentionTrace: what was kept, where, and with which scores.

Indices are into the original visual tokens of the sample, frame-major: token i is frame i // P,
in-frame index i % P; in-frame index 0 is the frame's CLS token when `has_cls`, and the patch grid
(rows x cols) follows in row-major order.

The trace's JSON form is the one trace format of videosparse (docs/trace-format.md): a versioned document
(``"format": "videosparse.trace"``, ``"version": 2``) written by `RetentionTrace.to_dict` / `save_json` and, with
a per-token table and the video it was made on added, by `videosparse.heatmap.write_json`; read back by
`RetentionTrace.from_dict` / `load_json`, which also read the unversioned files of earlier releases (both the
API's and the heatmap's). torch is imported when a trace is built or read, not at module import.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch


@dataclass
class StageRecord:
    """One pruning stage.

    layer:       the stage scores with this layer's attention and shrinks the sequence after it
    kept:        (B, K) long, original visual indices of the tokens alive after the stage (incl. merged)
    merged:      (B, K) bool, True where the kept token is a recycled cluster (placed at its center)
    scores:      (B, Nv) float32 over the original visual tokens; NaN for tokens already gone
    raters:      (B, Nt) bool over the text tokens after the video (None for text-agnostic methods)
    clusters:    (B, Nv) long, recycled cluster id (index into `kept` of the merged token) or -1
    redundant:   (B, Nv) bool temporal-redundancy flags (None when disabled)
    """

    layer: int
    kept: torch.Tensor
    merged: torch.Tensor
    scores: torch.Tensor
    raters: torch.Tensor | None = None
    clusters: torch.Tensor | None = None
    redundant: torch.Tensor | None = None

    @property
    def count(self) -> int:
        return int(self.kept.shape[1])


@dataclass
class RetentionTrace:
    """Record of one prefill's pruning, for every sample of the batch.

    num_frames T, tokens_per_frame P, has_cls, grid (rows, cols) of patches per frame,
    num_layers of the decoder, stages in order, and the config it was produced with.
    """

    num_frames: int
    tokens_per_frame: int
    has_cls: bool
    grid: tuple
    num_layers: int
    batch_size: int
    stages: list = field(default_factory=list)
    config: dict = field(default_factory=dict)
    raters_text_positions: torch.Tensor | None = None  # (B, Nt) positions of the candidate text tokens
    # long-video path: visual tokens that entered the decoder (the pool), else None (= num_visual)
    decoder_visual: int | None = None
    # long-video path: the pre-selection before the decoder (layer -1; kept = the pool, scores = the
    # pre-selection scores of every sampled token, redundant = temporal-redundancy flags)
    pool: StageRecord | None = None
    timestamps: list | None = None  # seconds of each of the num_frames sampled frames
    # a batch whose samples have different frame geometries (dynamic-resolution families such as Qwen-VL):
    # per-sample (num_frames, tokens_per_frame, (rows, cols)); num_frames / tokens_per_frame / grid are then
    # sample 0's and the stage arrays are padded per sample (kept -1, merged False, scores NaN, clusters -1,
    # redundant False); `select(b)` gives sample b's trace on its own geometry
    samples: list | None = None
    # (first, last) seconds of the sampled frames each trace frame covers, when a frame of the trace is a group
    # of several sampled frames (Qwen-VL's temporal patch of 2: `timestamps` are then the groups' mid-times);
    # None: one sampled frame each
    time_spans: list | None = None

    @property
    def ragged(self) -> bool:
        """True when the samples of the batch have different frame geometries (see ``samples``)."""
        return self.samples is not None

    def _uniform(self, what: str) -> None:
        if self.samples is not None:
            raise ValueError(f"RetentionTrace.{what}: the samples of this batch have different frame geometries "
                             f"({[tuple(g[:2]) for g in self.samples]} frames x tokens); use trace.select(b) "
                             "for sample b, or trace.sample_counts")

    @property
    def num_visual(self) -> int:
        self._uniform("num_visual")
        return self.num_frames * self.tokens_per_frame

    @property
    def sample_counts(self) -> list:
        """Per sample, the visual tokens alive after each stage (``[[stage counts] per sample]``)."""
        if self.samples is None:
            return [self.counts for _ in range(self.batch_size)]
        return [[int((s.kept[b] >= 0).sum()) for s in self.stages] for b in range(self.batch_size)]

    @property
    def counts(self) -> list:
        """Visual tokens alive after each stage (same for every sample; see ``sample_counts`` otherwise)."""
        self._uniform("counts")
        return [s.count for s in self.stages]

    @property
    def equivalent_tokens(self) -> float:
        """Mean over all decoder layers of the visual tokens each layer sees."""
        total, current = 0.0, self.decoder_visual if self.decoder_visual is not None else self.num_visual
        by_layer = {s.layer: s.count for s in self.stages}
        for layer in range(self.num_layers):
            total += current
            if layer in by_layer:
                current = by_layer[layer]
        return total / self.num_layers

    def kept_mask(self, stage: int = -1) -> torch.Tensor:
        """(B, T, P) bool: visual tokens alive after `stage` (merged tokens count at their center)."""
        import torch

        B = self.batch_size
        m = torch.zeros(B, self.num_visual, dtype=torch.bool)
        if self.stages:
            m.scatter_(1, self.stages[stage].kept.cpu(), True)
        elif self.pool is not None:
            m.scatter_(1, self.pool.kept.cpu(), True)
        else:
            m[:] = True
        return m.view(B, self.num_frames, self.tokens_per_frame)

    def kept_per_frame(self, stage: int = -1) -> torch.Tensor:
        """(B, T) long kept tokens per frame after `stage`."""
        return self.kept_mask(stage).sum(dim=-1)

    def select(self, b: int) -> "RetentionTrace":
        """The trace of sample `b` alone (batch size 1), on its own frame geometry."""
        if not 0 <= b < self.batch_size:
            raise IndexError(f"RetentionTrace.select: sample {b} of a batch of {self.batch_size}")
        T, P, grid = (self.num_frames, self.tokens_per_frame, self.grid) if self.samples is None else self.samples[b]
        nv = T * P

        def one(x: Any) -> Any:
            return None if x is None else x[b : b + 1]

        def per_token(x: Any) -> Any:  # over the original visual tokens: drop the padding
            return None if x is None else x[b : b + 1, :nv]

        def rec(s: Any) -> Any:
            if s is None:
                return None
            kept, merged = one(s.kept), one(s.merged)
            if self.samples is not None:
                k = int((kept[0] >= 0).sum())
                kept, merged = kept[:, :k], merged[:, :k]
            return StageRecord(s.layer, kept, merged, per_token(s.scores), one(s.raters), per_token(s.clusters),
                               per_token(s.redundant))

        out = RetentionTrace(T, P, self.has_cls, tuple(grid), self.num_layers, 1,
                             [rec(s) for s in self.stages], dict(self.config), one(self.raters_text_positions),
                             self.decoder_visual, rec(self.pool),
                             None if self.timestamps is None else list(self.timestamps))
        out.time_spans = None if self.time_spans is None else [tuple(x) for x in self.time_spans]
        return out

    def kept_frames(self, stage: int = -1, sample: int = 0) -> list:
        """Sampled-frame index of every token kept after `stage` (the pool when there are no stages)."""
        rec = self.stages[stage] if self.stages else self.pool
        if rec is None:
            return [t for t in range(self.num_frames) for _ in range(self.tokens_per_frame)]
        return [int(i) // self.tokens_per_frame for i in rec.kept[sample].tolist()]

    def kept_timestamps(self, stage: int = -1, sample: int = 0) -> list:
        """Seconds (of the source video) of every token kept after `stage`, in token order; None entries when
        the trace has no timestamps."""
        ts = self.timestamps
        return [None if ts is None else float(ts[t]) for t in self.kept_frames(stage, sample)]

    def to_dict(self) -> dict:
        """The trace as a JSON-able document of the current trace format (TRACE_FORMAT, TRACE_VERSION;
        docs/trace-format.md): every sample of the batch, every stage record and the pool. Scores are float32
        written as the shortest decimals that read back to the same float32 (NaN -> null); timestamps as
        `clean_time` (null when missing, non-finite or absurd). `from_dict` reads it back exactly. A batch of
        different frame geometries has no single document: write `select(b)` per sample."""
        if self.samples is not None:
            raise ValueError("RetentionTrace.to_dict: the samples of this batch have different frame geometries; "
                             "write each sample: trace.select(b).to_dict() / .save_json(path)")
        B = self.batch_size

        def rec(s: Any) -> dict:
            return {
                "layer": int(s.layer),
                "count": int(s.count),
                "kept": _int_rows(s.kept, B),
                "merged": _bool_rows(s.merged, B),
                "scores": _float_rows(s.scores, B),
                "raters": _bool_rows(s.raters, B),
                "clusters": _int_rows(s.clusters, B),
                "redundant": _bool_rows(s.redundant, B),
            }

        return {
            "format": TRACE_FORMAT,
            "version": TRACE_VERSION,
            "num_frames": int(self.num_frames),
            "tokens_per_frame": int(self.tokens_per_frame),
            "has_cls": bool(self.has_cls),
            "grid": [int(v) for v in self.grid],
            "num_layers": int(self.num_layers),
            "batch_size": int(B),
            "counts": self.counts,
            "stage_layers": [int(s.layer) for s in self.stages],
            "equivalent_tokens": self.equivalent_tokens,
            "config": self.config,
            "decoder_visual": None if self.decoder_visual is None else int(self.decoder_visual),
            "timestamps": None if self.timestamps is None else [clean_time(t) for t in self.timestamps],
            **({} if self.time_spans is None else
               {"time_spans": [[clean_time(a), clean_time(b)] for a, b in self.time_spans]}),
            "raters_text_positions": _int_rows(self.raters_text_positions, B),
            "pool": None if self.pool is None else rec(self.pool),
            "stages": [rec(s) for s in self.stages],
        }

    def save_json(self, path: str) -> str:
        """Write `to_dict()` to `path` atomically (videosparse.fileio: temporary file, fsync, rename; an OSError
        is one line naming `path`). Returns `path`."""
        from videosparse.fileio import atomic_write

        doc = self.to_dict()

        def dump(tmp: str) -> None:
            with open(tmp, "w") as f:
                json.dump(doc, f)

        return atomic_write(path, dump)

    @classmethod
    def from_dict(cls, doc: dict, where: str = "trace") -> "RetentionTrace":
        """The trace of a document of the trace format, any version (docs/trace-format.md):

        * version 2 (``"format": "videosparse.trace"``): written by `to_dict` and `videosparse.heatmap.write_json`;
        * unversioned, without ``"tokens"``: `to_dict` of earlier releases (every sample; no
          raters_text_positions);
        * unversioned, with ``"tokens"``: the heatmap JSON of earlier releases (one sample, stage records as
          flat lists); without stage records (older still) the stages are rebuilt from the token table: kept
          sets, clusters, final scores and merged flags (raters and redundancy flags are not recorded there).

        Keys it does not know (``meta``, ``tokens``, ``sample``, ...) are ignored. Raises ValueError (naming
        `where`) for another format, a newer version, or records that contradict each other or the geometry.
        """
        import torch

        if not isinstance(doc, dict):
            raise ValueError(f"{where}: not a trace document (a JSON object expected, got {type(doc).__name__})")
        fmt, version = doc.get("format"), doc.get("version")
        if fmt is not None and fmt != TRACE_FORMAT:
            raise ValueError(f"{where}: format {fmt!r} is not {TRACE_FORMAT!r}")
        if version is None:
            if fmt is not None:
                raise ValueError(f"{where}: {TRACE_FORMAT} document without a version")
            version = 1
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ValueError(f"{where}: bad trace format version {version!r}")
        if version > TRACE_VERSION:
            raise ValueError(f"{where}: trace format version {version} was written by a newer videosparse; "
                             f"this one reads versions up to {TRACE_VERSION}")
        flat = version == 1 and "tokens" in doc  # heatmap JSON of earlier releases: one sample, flat lists
        T, P = int(doc["num_frames"]), int(doc["tokens_per_frame"])
        if T < 1 or P < 1:
            raise ValueError(f"{where}: num_frames and tokens_per_frame must be >= 1, got {T}, {P}")
        Nv = T * P
        B = 1 if flat else int(doc.get("batch_size", 1))
        if B < 1:
            raise ValueError(f"{where}: batch_size must be >= 1, got {B}")
        grid = tuple(int(v) for v in doc["grid"])
        has_cls = bool(doc.get("has_cls", True))
        if len(grid) != 2:
            raise ValueError(f"{where}: grid must be [rows, cols], got {list(grid)}")
        read = _Reader(torch, where, B, Nv, flat)
        recs = doc.get("stages")
        tokens = doc.get("tokens")
        if recs is None and isinstance(tokens, dict):
            stages, pool = _from_table(doc, Nv, torch, where)
        else:
            stages = [read.record(r) for r in (recs or [])]
            pool = None if doc.get("pool") is None else read.record(doc["pool"])
        if isinstance(tokens, dict) and "stage" in tokens and len(tokens["stage"]) != Nv:
            raise ValueError(f"{where}: token table has {len(tokens['stage'])} rows, expected {Nv}")
        trace = cls(T, P, has_cls, grid, int(doc["num_layers"]), B, stages, dict(doc.get("config") or {}),
                    read.rows("raters_text_positions", doc.get("raters_text_positions"), torch.long, None))
        trace.pool = pool
        dv = doc.get("decoder_visual")
        if dv is None and pool is not None and recs is None:
            dv = pool.count  # rebuilt from the table: the pool entered the decoder
        trace.decoder_visual = None if dv is None else int(dv)
        ts = doc.get("timestamps")
        if ts is not None:
            if len(ts) != T:
                raise ValueError(f"{where}: {len(ts)} timestamps for {T} frames")
            trace.timestamps = [float("nan") if v is None else float(v) for v in ts]
        spans = doc.get("time_spans")
        if spans is not None:
            if len(spans) != T or any(not isinstance(x, (list, tuple)) or len(x) != 2 for x in spans):
                raise ValueError(f"{where}: time_spans must hold one [first, last] pair per frame ({T})")
            trace.time_spans = [tuple(float("nan") if v is None else float(v) for v in x) for x in spans]
        counts = doc.get("counts")
        if counts is not None and list(counts) != trace.counts:
            raise ValueError(f"{where}: stage records keep {trace.counts} tokens but the document says {counts}")
        return trace

    @classmethod
    def load_json(cls, path: str) -> "RetentionTrace":
        """`from_dict` of the JSON file at `path` (any version, either writer)."""
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
        return cls.from_dict(doc, where=str(path))


# ---------------------------------------------------------------- the trace format (docs/trace-format.md)

TRACE_FORMAT = "videosparse.trace"
# 1: the two unversioned documents of earlier releases (RetentionTrace.to_dict; heatmap.write_json);
# 2: one document for both writers, with "format" and "version"
TRACE_VERSION = 2

# timestamps beyond this (seconds, ~115 days) are treated as garbage, like NaN / inf
MAX_TIMESTAMP = 1e7
# decimals of a timestamp in JSON / printed output (1 us: finer than any video clock; hides float noise)
TIME_DECIMALS = 6


def round_time(t: Any) -> Any:
    """A timestamp (seconds) as written to JSON / printed: rounded to TIME_DECIMALS (1 us). Frame times are
    pts x time_base, so float arithmetic leaves noise below any video's clock resolution (3 x 0.1 s =
    0.30000000000000004 -> 0.3). None stays None; a non-finite value is returned unchanged."""
    if t is None:
        return None
    v = float(t)
    return round(v, TIME_DECIMALS) if math.isfinite(v) else v


def clean_time(t: Any) -> float | None:
    """A timestamp in seconds as a float (rounded by `round_time`), or None when missing, not a number,
    non-finite or absurd (|t| > MAX_TIMESTAMP)."""
    try:
        v = float(t)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(v) or abs(v) > MAX_TIMESTAMP:
        return None
    return round_time(v)


def _rows(x: Any, B: int) -> Any:
    """`x` (a (B, N) tensor) as a numpy array, or None."""
    if x is None:
        return None
    a = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    return a.reshape(B, -1)


def _int_rows(x: Any, B: int) -> list | None:
    a = _rows(x, B)
    return None if a is None else a.astype(np.int64).tolist()


def _bool_rows(x: Any, B: int) -> list | None:
    a = _rows(x, B)
    return None if a is None else a.astype(bool).tolist()


def _float_rows(x: Any, B: int) -> list | None:
    """float32 values as the shortest decimals that read back to the same float32; NaN -> None."""
    if x is None:
        return None
    a = (x.detach().cpu().float().numpy() if hasattr(x, "detach") else np.asarray(x, dtype=np.float32))
    a = a.astype(np.float32).reshape(B, -1)
    return [[None if v != v else float(str(v)) for v in row] for row in a]


class _Reader:
    """Stage records of a document as (B, n) tensors, checked against the geometry."""

    def __init__(self, torch: Any, where: str, B: int, Nv: int, flat: bool) -> None:
        self.torch, self.where, self.B, self.Nv, self.flat = torch, where, B, Nv, flat
        self.layer: Any = None

    def rows(self, key: str, value: Any, dtype: Any, n: int | None) -> Any:
        if value is None:
            return None
        torch = self.torch
        at = f"{self.where}: " + ("" if self.layer is None else f"stage at layer {self.layer}: ")
        if dtype is torch.float32:
            value = [[np.nan if v is None else v for v in row] if isinstance(row, list) else
                     (np.nan if row is None else row) for row in value]
        try:
            t = torch.tensor(value, dtype=dtype)
        except (TypeError, ValueError, RuntimeError) as e:
            raise ValueError(f"{at}{key} is not a list of rows of equal length ({e})") from None
        if self.flat:
            t = t.reshape(1, -1)
        if t.dim() == 1 and t.numel() == 0 and self.B > 0:
            t = t.reshape(0, 0)
        if t.dim() != 2 or t.shape[0] != self.B or (n is not None and t.shape[1] != n):
            want = f"({self.B}, {n if n is not None else 'n'})"
            raise ValueError(f"{at}{key} has shape {tuple(t.shape)}, expected {want}")
        return t

    def record(self, r: dict) -> "StageRecord":
        torch = self.torch
        self.layer = r.get("layer")
        try:
            kept = self.rows("kept", r.get("kept"), torch.long, None)
            if kept is None or ((kept < 0) | (kept >= self.Nv)).any():
                raise ValueError(f"{self.where}: stage at layer {self.layer}: kept indices missing or out of range")
            B, K = kept.shape
            if r.get("count") is not None and int(r["count"]) != K:
                raise ValueError(f"{self.where}: stage at layer {self.layer}: count {r['count']} but {K} kept")
            merged = self.rows("merged", r.get("merged"), torch.bool, K)
            scores = self.rows("scores", r.get("scores"), torch.float32, self.Nv)
            return StageRecord(
                layer=int(r["layer"]), kept=kept,
                merged=merged if merged is not None else torch.zeros(B, K, dtype=torch.bool),
                scores=scores if scores is not None else torch.full((B, self.Nv), float("nan")),
                raters=self.rows("raters", r.get("raters"), torch.bool, None),
                clusters=self.rows("clusters", r.get("clusters"), torch.long, self.Nv),
                redundant=self.rows("redundant", r.get("redundant"), torch.bool, self.Nv))
        finally:
            self.layer = None


def _from_table(doc: dict, Nv: int, torch: Any, where: str) -> tuple:
    """(stages, pool) rebuilt from a heatmap JSON's token table alone (files written before the stage records
    were saved): kept sets, the stage that pruned each token, clusters, final scores and merged flags; the pool
    from the ``pooled`` / ``pool_score`` columns when present."""
    tab = doc["tokens"]
    for key in ("stage", "score", "merged"):
        if key not in tab or len(tab[key]) != Nv:
            raise ValueError(f"{where}: token table column {key!r} missing or not {Nv} rows")
    stage = np.asarray(tab["stage"])
    cluster = np.asarray(tab.get("cluster") or [-1] * Nv)
    merged_final = np.asarray(tab["merged"], dtype=bool)
    score = torch.tensor([np.nan if v is None else v for v in tab["score"]], dtype=torch.float32)[None]
    n_st = len(doc.get("counts") or doc.get("stage_layers") or [])
    has_clusters = bool((cluster >= 0).any())
    stages = []
    for si, layer in enumerate(doc.get("stage_layers") or list(range(n_st))):
        alive = (stage == -1) | (stage > si)
        kept_ids = np.nonzero(alive)[0]
        cl = np.where(stage == si, cluster, -1)
        merged = np.zeros(len(kept_ids), dtype=bool)
        slots = np.unique(cl[(cl >= 0) & (cl < len(kept_ids))])
        merged[slots] = True  # a cluster id is the slot of its merged token among the stage's kept ones
        if si == n_st - 1:
            merged |= merged_final[alive]
        stages.append(StageRecord(layer=int(layer), kept=torch.tensor(kept_ids, dtype=torch.long)[None],
                                  merged=torch.tensor(merged)[None], scores=score.clone(),
                                  clusters=torch.tensor(cl, dtype=torch.long)[None] if has_clusters else None))
    pool = None
    if tab.get("pooled") is not None:
        pooled = np.asarray(tab["pooled"], dtype=bool)
        ids = torch.tensor(np.nonzero(pooled)[0], dtype=torch.long)[None]
        ps = tab.get("pool_score")
        pool_scores = (torch.tensor([np.nan if v is None else v for v in ps], dtype=torch.float32)[None]
                       if ps is not None else torch.full((1, Nv), float("nan")))
        pool = StageRecord(layer=-1, kept=ids, merged=torch.zeros(1, ids.shape[1], dtype=torch.bool),
                           scores=pool_scores)
    return stages, pool
