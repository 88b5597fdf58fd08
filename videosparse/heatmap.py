"""Per-frame token-retention heatmaps from a RetentionTrace.

* `render_grid`  -> one PNG: the sampled frames as the model sees them (`model_view`: the model input's
  own resize and center crop, `videosparse.video.preprocess_frames`, before normalisation) in a grid;
  each kept token's patch outlined over a score colour map, pruned patches dimmed, recycled (merged)
  tokens outlined in magenta, the CLS token's fate as a corner badge, and the
  frame timestamp plus kept count under every frame.
* `write_video`  -> an overlay MP4 of the same, one frame of the grid per sampled frame.
* `render_timeline` / `timeline_data` -> a PNG of WHEN the model looked over the whole video: kept (and,
  on the long-video path, pooled) tokens per sampled frame and the max pre-selection score per frame,
  over seconds (matplotlib, Agg). Long traces (more than GRID_MAX_FRAMES frames) show in the grid and
  the MP4 only the frames that hold kept tokens (`grid_frames`).
* `token_table` / `write_npz` -> one row per visual token: frame, row, col, score, kept, stage, cluster
  (+ pooled, pool_score on the long-video path).
* `write_json` -> the trace format (docs/trace-format.md; `RetentionTrace.to_dict` of the sample) plus the
  token table, meta and the video's fingerprint; `trace_from_json` -> the trace back (lossless) through the
  one reader, `RetentionTrace.from_dict`, which also reads the API's `save_json` and older files.
* `summary_text` / `wrap_text` -> the PNG's header text (token counts per stage, wrapped title).

Pillow draws (with a scalable TrueType font, so spaces and non-ASCII text render); PyAV writes the
MP4; matplotlib (object API on an Agg canvas, no pyplot state) draws the timeline. Nothing here imports
torch or matplotlib at module import.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import unicodedata
from typing import Any, Sequence

import numpy as np

from videosparse.core.trace import MAX_TIMESTAMP, TIME_DECIMALS, clean_time, round_time  # noqa: F401

log = logging.getLogger(__name__)

# timestamps: MAX_TIMESTAMP (beyond it a timestamp is garbage, like NaN / inf), TIME_DECIMALS, round_time and
# clean_time are the trace format's (videosparse.core.trace; torch-free at import), re-exported here
# traces with more sampled frames than this show in the grid / MP4 only the frames holding kept tokens
GRID_MAX_FRAMES = 64
# write_all draws the timeline for traces with more sampled frames than this (or with a pre-decoder pool)
TIMELINE_MIN_FRAMES = 16
# side (px) of the long-video path's model-view thumbnails (videosparse.longvideo.THUMBNAIL_SIDE)
THUMBNAIL_SIDE = 96

# perceptual colour ramp (dark purple -> orange -> light yellow, "inferno"-like anchors)
_RAMP = np.array(
    [[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21], [250, 193, 39],
     [252, 255, 164]],
    dtype=np.float64,
)


def colormap(values: np.ndarray) -> np.ndarray:
    """values in [0, 1] (any shape) -> uint8 RGB (..., 3)."""
    v = np.clip(np.nan_to_num(values, nan=0.0), 0.0, 1.0) * (len(_RAMP) - 1)
    lo = np.floor(v).astype(int)
    hi = np.minimum(lo + 1, len(_RAMP) - 1)
    w = (v - lo)[..., None]
    return (_RAMP[lo] * (1 - w) + _RAMP[hi] * w).round().astype(np.uint8)


def _trace_timestamps(trace: Any, timestamps: Sequence | None) -> Sequence | None:
    """`timestamps` when given, else the trace's own (`RetentionTrace.timestamps`, set by the pipeline)."""
    return timestamps if timestamps is not None else getattr(trace, "timestamps", None)


def _token_arrays(trace: Any, sample: int = 0) -> dict:
    """The per-token columns of `token_table` as numpy arrays (score NaN when never scored; pooled and
    pool_score only with a pool)."""
    T, P = trace.num_frames, trace.tokens_per_frame
    Nv = T * P
    score = np.full(Nv, np.nan)
    stage = np.full(Nv, -1)
    cluster = np.full(Nv, -1)
    alive = np.ones(Nv, dtype=bool)
    merged = np.zeros(Nv, dtype=bool)
    out: dict = {}
    pool = getattr(trace, "pool", None)
    if pool is not None:
        alive = np.zeros(Nv, dtype=bool)
        alive[pool.kept[sample].detach().cpu().numpy()] = True
        stage[~alive] = -2
        out["pooled"] = alive.copy()
        out["pool_score"] = pool.scores[sample].detach().cpu().float().numpy().astype(np.float64)
    for si, st in enumerate(trace.stages):
        sc = st.scores[sample].detach().cpu().float().numpy()
        has = ~np.isnan(sc)
        score[has] = sc[has]
        kept_ids = st.kept[sample].detach().cpu().numpy()
        kept_now = np.zeros(Nv, dtype=bool)
        kept_now[kept_ids] = True
        pruned_here = alive & ~kept_now
        stage[pruned_here] = si
        if st.clusters is not None:
            cl = st.clusters[sample].detach().cpu().numpy()
            cluster[pruned_here] = cl[pruned_here]
        alive = kept_now
        merged = np.zeros(Nv, dtype=bool)
        merged[kept_ids[st.merged[sample].detach().cpu().numpy()]] = True
    out.update(score=score, kept=alive, stage=stage, cluster=cluster, merged=merged)
    return out


def token_table(trace: Any, sample: int = 0, timestamps: Sequence | None = None) -> dict:
    """One entry per visual token of `sample`, as parallel lists.

    frame, token (in-frame index; 0 = CLS when has_cls), row/col (-1 for CLS), score (last stage
    that scored it; NaN if never), kept (alive after the last stage), stage (index of the stage
    that pruned it; -1 if kept to the end; -2 if the pre-decoder pool dropped it), cluster (recycled
    cluster's kept slot at the stage that pruned it, or -1), merged (kept token is a recycled
    cluster), time (seconds; from `timestamps`, else the trace's timestamps, when either is present).
    With a pre-decoder pool (`trace.pool`, long-video path) also: pooled (the token entered the
    decoder; `kept` is then a subset of it) and pool_score (its pre-selection score; None when not
    scored).
    """
    T, P = trace.num_frames, trace.tokens_per_frame
    rows, cols = trace.grid
    Nv = T * P
    idx = np.arange(Nv)
    frame, tok = idx // P, idx % P
    off = 1 if trace.has_cls else 0
    patch = tok - off
    row = np.where(patch >= 0, patch // cols, -1)
    col = np.where(patch >= 0, patch % cols, -1)
    arr = _token_arrays(trace, sample)
    out = {
        "frame": frame.tolist(), "token": tok.tolist(), "row": row.tolist(), "col": col.tolist(),
        "score": [None if math.isnan(x) else float(x) for x in arr["score"]], "kept": arr["kept"].tolist(),
        "stage": arr["stage"].tolist(), "cluster": arr["cluster"].tolist(), "merged": arr["merged"].tolist(),
    }
    if "pooled" in arr:
        out["pooled"] = arr["pooled"].tolist()
        out["pool_score"] = [None if math.isnan(x) else float(x) for x in arr["pool_score"]]
    timestamps = _trace_timestamps(trace, timestamps)
    if timestamps is not None:
        ts = [clean_time(t) for t in timestamps]
        out["time"] = [ts[f] if f < len(ts) else None for f in frame.tolist()]
    return out


def time_label(t: Any) -> str:
    """Frame time label: "t=1.50s", or "t=?" for a missing / NaN / infinite / absurd timestamp."""
    v = clean_time(t)
    return "t=?" if v is None else f"t={v:.2f}s"


# bytes of a video file hashed for its fingerprint (its head: container header and first frames)
FINGERPRINT_BYTES = 1 << 20


def video_fingerprint(path: str) -> dict:
    """What identifies the video a trace was made on (stored as ``meta["source"]`` of the JSON, checked by
    ``videosparse heatmap --video``): ``path`` (absolute), ``name``, ``size`` (bytes), ``head_sha256`` (SHA-256
    of the first FINGERPRINT_BYTES bytes), ``num_frames`` and ``duration`` (seconds) from the container (None
    when it cannot be probed). Reads 1 MiB, and PyAV's index of the container (its packets; decoding only for
    files whose timestamps do not identify the frames), without a progress bar."""
    st = os.stat(path)
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        h.update(fh.read(FINGERPRINT_BYTES))
    num_frames = duration = None
    try:
        from videosparse.video import VideoError, probe_video

        try:
            info = probe_video(path, backend="pyav", strict=False, progress=False)
            num_frames, duration = int(info.num_frames), round_time(info.duration)
        except (VideoError, OSError, ValueError) as e:
            log.debug("video_fingerprint: cannot probe %s (%s)", path, e)
    except ImportError:  # pragma: no cover - PyAV missing
        pass
    return {"path": os.path.abspath(path), "name": os.path.basename(path), "size": int(st.st_size),
            "head_sha256": h.hexdigest(), "hashed_bytes": min(int(st.st_size), FINGERPRINT_BYTES),
            "num_frames": num_frames, "duration": duration}


def source_mismatch(recorded: dict, path: str) -> str | None:
    """How the video file at ``path`` differs from the ``recorded`` fingerprint (`video_fingerprint`), in one
    line, or None when it is the same video (size and head hash equal; frame count and duration equal where
    both are known). The path itself may differ (a moved or copied file is the same video)."""
    now = video_fingerprint(path)
    diffs = []
    if recorded.get("size") is not None and recorded["size"] != now["size"]:
        diffs.append(f"{now['size']} bytes, the trace's video had {recorded['size']}")
    if recorded.get("head_sha256") and recorded["head_sha256"] != now["head_sha256"]:
        diffs.append(f"its content differs (SHA-256 of the first {now['hashed_bytes']} bytes)")
    for key, unit in (("num_frames", " frames"), ("duration", " s")):
        a, b = recorded.get(key), now.get(key)
        if a is not None and b is not None and a != b:
            diffs.append(f"{b:g}{unit}, the trace's video had {a:g}{unit}")
    return "; ".join(diffs) if diffs else None


def write_json(trace: Any, path: str, sample: int = 0, timestamps: Sequence | None = None,
               meta: dict | None = None, source: Any = None) -> str:
    """The trace of `sample` as a document of the trace format (docs/trace-format.md; the API's
    `RetentionTrace.to_dict` of `trace.select(sample)`: geometry, counts, equivalent tokens, config, timestamps,
    every stage record, the pre-decoder pool, raters_text_positions, decoder_visual) plus what the heatmap adds:
    "meta" (what the caller passes, e.g. question, answer, preprocessing; and "source"), "sample" (the index of
    the sample in the trace's batch) and "tokens" (`token_table`, one row per visual token).

    `timestamps` default to the trace's own. Timestamps that are missing, non-finite or absurd are
    written as null. `source`: the video file the trace was made on (a path: its `video_fingerprint`; or a
    fingerprint dict), stored as ``meta["source"]`` so a re-render can check it is given the same video.
    Read back by `trace_from_json` (= `RetentionTrace.from_dict`)."""
    timestamps = _trace_timestamps(trace, timestamps)
    meta = dict(meta or {})
    if source is not None:
        meta["source"] = dict(source) if isinstance(source, dict) else video_fingerprint(os.fspath(source))
    if not 0 <= int(sample) < trace.batch_size:
        raise ValueError(f"heatmap: sample {sample} out of range for a batch of {trace.batch_size}")
    one = trace.select(int(sample))
    one.timestamps = None if timestamps is None else list(timestamps)
    body = one.to_dict()
    doc = {"format": body.pop("format"), "version": body.pop("version"), "meta": meta, "sample": int(sample),
           **body, "tokens": token_table(trace, sample, timestamps)}
    from videosparse.fileio import atomic_write

    def dump(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(doc, f)

    return atomic_write(path, dump)


def write_npz(trace: Any, path: str, sample: int = 0, timestamps: Sequence | None = None) -> str:
    """NPZ: the token table's columns (None -> NaN), counts, grid; with timestamps (given or the
    trace's) `timestamps` per frame (NaN when unusable); with a pool `decoder_visual` and `pool_kept`."""
    timestamps = _trace_timestamps(trace, timestamps)
    tab = token_table(trace, sample, timestamps)
    arrays = {k: np.asarray([np.nan if v is None else v for v in vals]) for k, vals in tab.items()}
    arrays.update(counts=np.asarray(trace.counts), grid=np.asarray(trace.grid))
    if timestamps is not None:
        arrays["timestamps"] = np.asarray([np.nan if (v := clean_time(t)) is None else v for t in timestamps],
                                          dtype=np.float64)
    pool = getattr(trace, "pool", None)
    if pool is not None:
        arrays["pool_kept"] = pool.kept[sample].detach().cpu().numpy()
    if getattr(trace, "decoder_visual", None) is not None:
        arrays["decoder_visual"] = np.asarray(int(trace.decoder_visual))
    from videosparse.fileio import atomic_write

    # the temporary name ends in .npz too, so numpy does not append another suffix
    return atomic_write(path, lambda tmp: np.savez_compressed(tmp, **arrays))


def model_view(frames: np.ndarray, spec: Any = None) -> np.ndarray:
    """The frames as the model sees them (uint8 (T, h, w, 3), not normalised): the model input's own
    preprocessing (`videosparse.video.preprocess_frames` with `spec`, default VideoProcessorSpec(): the same
    resize, resampling filter and center crop, zero padding where the frame is smaller than the crop) with
    rescaling and normalisation left out, so the pixels are exactly the uint8 ones the model's input is
    computed from."""
    import dataclasses

    from videosparse.video import VideoProcessorSpec, preprocess_frames

    spec = spec or VideoProcessorSpec()
    geometry = dataclasses.replace(spec, do_rescale=False, do_normalize=False)
    x = preprocess_frames(np.asarray(frames), geometry, return_tensors="np")  # float32 of uint8 values
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)).astype(np.uint8)


def _normalise_scores(score: np.ndarray, log: bool = True) -> np.ndarray:
    """Rank-free, robust normalisation of scores to [0, 1] over the whole clip: linear between the 2nd
    and 99.5th percentile of the usable scores, of their log when `log` (positive scores only; attention
    scores) or of the scores themselves (any finite value; pre-selection z-scores). Others -> 0."""
    s = np.array(score, dtype=np.float64)
    ok = np.isfinite(s) & (s > 0) if log else np.isfinite(s)
    out = np.zeros_like(s)
    if ok.any():
        v = np.log(s[ok]) if log else s[ok]
        lo, hi = np.percentile(v, 2), np.percentile(v, 99.5)
        out[ok] = (v - lo) / max(hi - lo, 1e-12)
    return np.clip(out, 0, 1)


# TrueType fonts tried in order (Pillow searches the system font folders for bare file names).
# Pillow's own default (Aileron at 10 px, or the latin-1 bitmap font before Pillow 10.1) is the last
# resort: its space is 2 px wide at that size, so "what shape" reads as "whatshape".
FONT_CANDIDATES = ("DejaVuSans.ttf", "LiberationSans-Regular.ttf", "Arial.ttf", "arial.ttf", "Verdana.ttf",
                   "FreeSans.ttf", "NotoSans-Regular.ttf", "Helvetica.ttc")


@functools.lru_cache(maxsize=None)
def get_font(size: int = 11) -> Any:
    """A legible font at `size` px: the first of FONT_CANDIDATES found, else Pillow's default."""
    from PIL import ImageFont

    for name in FONT_CANDIDATES:
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    try:
        font = ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: Aileron
    except (TypeError, AttributeError, ImportError, OSError):
        font = ImageFont.load_default()
    log.debug("heatmap: none of %s found, using Pillow's default font", FONT_CANDIDATES)
    return font


def _font_size(font: Any) -> float:
    return float(getattr(font, "size", 0) or 11)


def _space_width(font: Any) -> float:
    """Advance used for a space: the font's own, but at least 0.3 em so word gaps stay visible."""
    return max(float(font.getlength(" ")), 0.3 * _font_size(font))


def line_height(font: Any) -> int:
    if hasattr(font, "getmetrics"):
        ascent, descent = font.getmetrics()
        return int(ascent + descent + 2)
    return int(font.getbbox("Ag")[3] + 3)


def _no_controls(text: Any) -> str:
    """`text` as a string with control characters (newlines, tabs, ...) replaced by spaces."""
    return "".join(" " if unicodedata.category(ch)[0] == "C" else ch for ch in str(text))


def _printable(font: Any, text: str) -> str:
    """`text` on one line (control characters -> spaces); characters the font cannot encode -> "?"."""
    text = _no_controls(text)
    if hasattr(font, "getmetrics"):  # FreeType: any Unicode (missing glyphs draw as boxes)
        return text
    try:
        font.getlength(text)
        return text
    except UnicodeError:  # Pillow's bitmap font is latin-1 only
        return text.encode("latin-1", "replace").decode("latin-1")


def text_width(font: Any, text: str) -> float:
    """Width in px of `text` as `draw_text` draws it."""
    text = _printable(font, text)
    words = text.split(" ")
    return sum(float(font.getlength(w)) for w in words if w) + (len(words) - 1) * _space_width(font)


def draw_text(draw: Any, xy: tuple, text: str, font: Any, fill: Any) -> float:
    """Draw one line word by word with `_space_width` gaps; returns the x after the text."""
    x, y = float(xy[0]), float(xy[1])
    text = _printable(font, text)
    sw = _space_width(font)
    for k, w in enumerate(text.split(" ")):
        if k:
            x += sw
        if w:
            draw.text((x, y), w, fill=fill, font=font)
            x += float(font.getlength(w))
    return x


def _ellipsize(text: str, font: Any, max_width: float, force: bool = False) -> str:
    """`text` cut at a character boundary so that it plus an ellipsis fits `max_width`."""
    if not force and text_width(font, text) <= max_width:
        return text
    dots = "\u2026" if hasattr(font, "getmetrics") else "..."
    t = text.rstrip()
    while t and text_width(font, t + dots) > max_width:
        t = t[:-1].rstrip()
    return t + dots if text_width(font, t + dots) <= max_width else ""


def wrap_text(text: str, font: Any, max_width: float, max_lines: int | None = None) -> list:
    """Greedy word wrap of `text` into lines no wider than `max_width` px (as `draw_text` draws them).

    Words longer than a line are broken between characters; with `max_lines`, the last line ends in
    an ellipsis when the text does not fit.
    """
    text = _printable(font, text).strip()
    if not text:
        return []
    lines: list = []
    cur: str | None = None
    for w in text.split(" "):
        if cur is None and not w:
            continue  # no leading spaces on a wrapped line
        cand = w if cur is None else f"{cur} {w}"
        if text_width(font, cand) <= max_width:
            cur = cand
            continue
        if cur is not None and cur.strip():
            lines.append(cur.rstrip())
        while len(w) > 1 and text_width(font, w) > max_width:
            lo, hi = 1, len(w) - 1  # longest prefix that fits (at least one character)
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if text_width(font, w[:mid]) <= max_width:
                    lo = mid
                else:
                    hi = mid - 1
            lines.append(w[:lo])
            w = w[lo:]
        cur = w or None
    if cur is not None and cur.strip():
        lines.append(cur.rstrip())
    if max_lines is not None and len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = _ellipsize(lines[-1], font, max_width, force=True)
    return lines


def fit_text(options: Sequence, font: Any, max_width: float) -> str:
    """The first of `options` (most to least verbose) that fits `max_width`, else the last one
    ellipsized."""
    for o in options:
        if text_width(font, o) <= max_width:
            return o
    return _ellipsize(options[-1], font, max_width)


def summary_text(trace: Any) -> str:
    """The PNG subtitle: token counts through the stages, e.g.
    "296 visual tokens -> 30 kept after layer 1 (decoder layers 0-3); 10.1% kept; equivalent tokens 163.0",
    or on the long-video path "3552 visual tokens -> 296 pooled before the decoder -> 30 kept after layer 1
    (...)". Layers are 0-based decoder layer indices; equivalent tokens = mean visual tokens per decoder layer."""
    nv, nl = trace.num_visual, trace.num_layers
    layers = f"decoder layers 0-{nl - 1}" if nl > 1 else "decoder layer 0"
    eq = f"equivalent tokens {trace.equivalent_tokens:.1f}"
    pool = getattr(trace, "pool", None)
    if pool is not None and not trace.stages:
        pct = 100.0 * pool.count / max(nv, 1)
        return (f"{nv} visual tokens -> {pool.count} pooled before the decoder, none pruned in it ({layers}); "
                f"{pct:.3g}% kept; {eq}")
    if not trace.stages:
        return f"{nv} visual tokens, none pruned ({layers}); {eq}"
    steps = [f"{nv} visual tokens"]
    if pool is not None:
        steps.append(f"{pool.count} pooled before the decoder")
    last = len(trace.stages) - 1
    for i, st in enumerate(trace.stages):
        steps.append(f"{st.count}{' kept' if i == last else ''} after layer {st.layer}")
    pct = 100.0 * trace.stages[-1].count / max(nv, 1)
    return f"{' -> '.join(steps)} ({layers}); {pct:.3g}% kept; {eq}"


LEGEND = "score low->high | white: kept | magenta: recycled | dim: pruned | green badge: CLS kept"


def frame_label(t: int, n_kept: int, per_frame: int, timestamp: Any = None, has_time: bool = False,
                font: Any = None, max_width: float | None = None, span: Any = None) -> str:
    """Label under frame `t`: "#t t=1.50s  kept k/P" (t=? for a bad timestamp), shortened to fit; a frame that
    is a group of sampled frames (`span` = (first, last) seconds, Qwen-VL's temporal patch): "#t 1.00-1.50s"."""
    ts = f"{time_label(timestamp)} " if has_time else ""
    if span is not None:
        a, b = (clean_time(x) for x in span)
        ts = f"{a:.2f}-{b:.2f}s " if a is not None and b is not None else ts
    options = [f"#{t} {ts} kept {n_kept}/{per_frame}" if ts else f"#{t} kept {n_kept}/{per_frame}",
               f"#{t} {ts}{n_kept}/{per_frame}", f"#{t} {n_kept}/{per_frame}"]
    if font is None or max_width is None:
        return options[0]
    return fit_text(options, font, max_width)


def _colour_values(arr: dict) -> np.ndarray:
    """[0, 1] colour value of every token: the in-decoder scores (log scale over the clip); on the
    long-video path without in-decoder scores for the kept tokens, their pre-selection scores."""
    score, kept = arr["score"], arr["kept"]
    if "pool_score" in arr and not np.isfinite(score[kept]).any():
        return _normalise_scores(np.where(arr["pooled"], arr["pool_score"], np.nan), log=False)
    return _normalise_scores(score)


def _is_model_view(frames: np.ndarray, trace: Any) -> bool:
    """The long-video path keeps small model-view thumbnails (square, center-cropped already,
    <= THUMBNAIL_SIDE px): they are shown as they are, not resized and cropped again."""
    return (getattr(trace, "pool", None) is not None and frames.ndim == 4
            and frames.shape[1] == frames.shape[2] <= THUMBNAIL_SIDE)


def _view(frames: Any, trace: Any, spec: Any, indices: Sequence) -> np.ndarray:
    sub = np.asarray(frames)[list(indices)]
    if _is_model_view(sub, trace):
        return sub
    if hasattr(spec, "merge_size"):  # a Qwen-VL spec: each video has its own size, the trace's grid says which
        return qwen_model_view(sub, spec, *trace.grid)
    return model_view(sub, spec)


def qwen_model_view(frames: np.ndarray, spec: Any, rows: int, cols: int) -> np.ndarray:
    """Frames as a Qwen-VL model sees them: resized (the spec's filter, as `videosparse.video.qwen.preprocess_video`
    does) to ``rows x cols`` merged patches of ``patch_size x merge_size`` pixels, not normalised (uint8)."""
    import torch

    from videosparse.video.preprocess import _torch_resize

    oh, ow = int(rows) * spec.factor, int(cols) * spec.factor
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).contiguous()
    if spec.do_resize:
        x = _torch_resize(x, oh, ow, spec.resample)
    return np.ascontiguousarray(x.permute(0, 2, 3, 1).numpy())


def render_frames(frames: np.ndarray, trace: Any, sample: int = 0, cell: int = 224, spec: Any = None,
                  timestamps: Sequence | None = None, indices: Sequence | None = None) -> list:
    """Annotated frames (list of uint8 (cell + label, cell, 3) arrays), one per sampled frame, or one per
    sampled frame in `indices` (labelled with its real frame number and timestamp).

    `frames` holds all the trace's sampled frames (full frames, or the long-video path's model-view
    thumbnails); `timestamps` default to the trace's own."""
    from PIL import Image, ImageDraw

    T = trace.num_frames
    if len(frames) != T:
        raise ValueError(f"heatmap: {len(frames)} frames given but the trace has {T}")
    idx = list(range(T)) if indices is None else [int(i) for i in indices]
    if any(not 0 <= t < T for t in idx):
        raise ValueError(f"heatmap: frame indices must lie in [0, {T})")
    timestamps = _trace_timestamps(trace, timestamps)
    spans = getattr(trace, "time_spans", None)
    view = _view(frames, trace, spec, idx)
    arr = _token_arrays(trace, sample)
    rows, cols = trace.grid
    # the tile keeps the grid's aspect (Qwen-VL frames are not square): `cell` px high
    cw = cell if rows == cols else max(16, int(round(cell * cols / rows)))
    P = trace.tokens_per_frame
    off = 1 if trace.has_cls else 0
    norm = _colour_values(arr)
    kept = arr["kept"]
    merged = arr["merged"]
    label_h = max(14, cell // 9)
    font = get_font(int(min(14, max(10, label_h - 4))))
    out = []
    for j, t in enumerate(idx):
        src = view[j]
        # small inputs (e.g. 48 px test-bed frames) are enlarged with nearest so patches stay crisp
        filt = Image.NEAREST if cell >= 2 * src.shape[0] else Image.BICUBIC
        img = Image.fromarray(src).resize((cw, cell), filt)
        base = np.asarray(img).astype(np.float64)
        heat = np.zeros_like(base)
        alpha = np.zeros(base.shape[:2])
        dim = np.ones(base.shape[:2])
        ph, pw = cell / rows, cw / cols
        for p in range(off, P):
            i = t * P + p
            r, c = divmod(p - off, cols)
            y0, y1, x0, x1 = int(r * ph), int((r + 1) * ph), int(c * pw), int((c + 1) * pw)
            if kept[i]:
                heat[y0:y1, x0:x1] = colormap(norm[i])
                alpha[y0:y1, x0:x1] = 0.45
            else:
                dim[y0:y1, x0:x1] = 0.3
        comp = base * dim[..., None]
        comp = comp * (1 - alpha[..., None]) + heat * alpha[..., None]
        canvas = Image.new("RGB", (cw, cell + label_h), (255, 255, 255))
        canvas.paste(Image.fromarray(comp.clip(0, 255).astype(np.uint8)), (0, 0))
        d = ImageDraw.Draw(canvas)
        lw = max(1, cell // 150)
        for p in range(off, P):
            i = t * P + p
            if not kept[i]:
                continue
            r, c = divmod(p - off, cols)
            box = [int(c * pw), int(r * ph), int((c + 1) * pw) - 1, int((r + 1) * ph) - 1]
            d.rectangle(box, outline=(255, 0, 255) if merged[i] else (255, 255, 255), width=lw)
        n_kept = int(kept[t * P : (t + 1) * P].sum())
        if trace.has_cls:
            cls_kept = bool(kept[t * P])
            bs = max(6, cell // 20)
            d.rectangle([cw - bs - 2, 2, cw - 2, bs + 2], fill=(40, 200, 80) if cls_kept else (90, 90, 90))
        has_time = timestamps is not None and t < len(timestamps)
        span = spans[t] if spans is not None and t < len(spans) else None
        label = frame_label(t, n_kept, P, timestamps[t] if has_time else None, has_time, font, cw - 6, span)
        draw_text(d, (3, cell + 1), label, font, (0, 0, 0))
        out.append(np.asarray(canvas))
    return out


def grid_frames(trace: Any, sample: int = 0, limit: int | None = None) -> list:
    """The sampled frames the grid and the MP4 show, in temporal order.

    All of them when there are at most `limit` (default GRID_MAX_FRAMES); else the frames holding tokens
    kept after the last stage (the pool's when there is no stage), at most `limit`: those with the most
    kept tokens, ties spread evenly over time. When no frame holds a kept token, `limit` evenly spaced
    frames."""
    limit = GRID_MAX_FRAMES if limit is None else int(limit)
    T = trace.num_frames
    if T <= limit:
        return list(range(T))
    per = trace.kept_mask()[sample].sum(dim=-1).cpu().numpy()
    chosen: list = []
    for n in sorted({int(v) for v in per if v > 0}, reverse=True):
        group = np.nonzero(per == n)[0]
        need = limit - len(chosen)
        if len(group) > need:
            group = group[np.unique(np.linspace(0, len(group) - 1, need).round().astype(int))]
        chosen.extend(int(t) for t in group)
        if len(chosen) >= limit:
            break
    if not chosen:
        chosen = sorted({int(t) for t in np.linspace(0, T - 1, limit).round()})
    return sorted(chosen)


def grid_note(trace: Any, sample: int, indices: Sequence) -> str:
    """The grid header's note when it shows only `indices` of the sampled frames ("Only N of T ...")."""
    T, n = trace.num_frames, len(indices)
    m = int((trace.kept_mask()[sample].sum(dim=-1) > 0).sum())
    if m == 0:
        return f"Only {n} of {T} sampled frames are shown (evenly spaced; no frame holds a kept token)."
    which = (f"the {n} holding kept tokens" if n >= m
             else f"the {n} with the most kept tokens of the {m} holding kept tokens")
    return f"Only {n} of {T} sampled frames are shown: {which}, in temporal order (real frame numbers and times)."


def render_grid(frames: np.ndarray, trace: Any, path: str, sample: int = 0, spec: Any = None,
                timestamps: Sequence | None = None, title: str | None = None, cell: int | None = None,
                columns: int | None = None, indices: Sequence | None = None) -> str:
    """Write the PNG grid. Cell size shrinks with many frames (64+ frames stay legible: >= 96 px).

    Header: `title` word-wrapped (at most 3 lines, then an ellipsis) and `summary_text(trace)`.
    `indices`: show only these sampled frames (see `grid_frames`); the header then says that only N of
    the T sampled frames are shown."""
    from PIL import Image, ImageDraw

    T = trace.num_frames
    n = T if indices is None else len(indices)
    if n == 0:
        raise ValueError("heatmap: no frame to show")
    columns = columns or max(1, min(n, int(math.ceil(math.sqrt(n * 1.6)))))
    if cell is None:
        cell = int(max(96, min(224, 2400 // columns)))
    tiles = render_frames(frames, trace, sample, cell, spec, timestamps, indices)
    th, tw = tiles[0].shape[:2]
    gap = 4
    nrows = int(math.ceil(n / columns))
    W = columns * (tw + gap) + gap
    title_font, small = get_font(13), get_font(11)
    title_lines = wrap_text(title, title_font, W - 2 * gap, max_lines=3) if title else []
    summary = summary_text(trace)
    if indices is not None and n < T:
        summary = f"{summary}. {grid_note(trace, sample, indices)}"
    summary_lines = wrap_text(summary, small, W - 2 * gap)
    ramp_w = 120
    legend_lines = wrap_text(LEGEND, small, max(40, W - 2 * gap - ramp_w - 5))
    lt, ls = line_height(title_font), line_height(small)
    head = 3 + lt * len(title_lines) + ls * len(summary_lines) + 3
    legend_h = max(12, ls * len(legend_lines)) + 6
    H = head + nrows * (th + gap) + gap + legend_h
    canvas = Image.new("RGB", (W, H), (255, 255, 255))
    d = ImageDraw.Draw(canvas)
    y = 3
    for line in title_lines:
        draw_text(d, (gap, y), line, title_font, (0, 0, 0))
        y += lt
    for line in summary_lines:
        draw_text(d, (gap, y), line, small, (60, 60, 60))
        y += ls
    for t, tile in enumerate(tiles):
        r, c = divmod(t, columns)
        canvas.paste(Image.fromarray(tile), (gap + c * (tw + gap), head + r * (th + gap)))
    # legend: colour ramp low -> high score, outline meanings
    ly = H - legend_h + 2
    ramp = colormap(np.linspace(0, 1, ramp_w))[None].repeat(10, 0)
    canvas.paste(Image.fromarray(ramp), (gap, ly))
    for k, line in enumerate(legend_lines):
        draw_text(d, (gap + ramp_w + 5, ly - 1 + k * ls), line, small, (0, 0, 0))
    return _save_atomic(path, lambda tmp: canvas.save(tmp, format="PNG"))


def write_video(frames: np.ndarray, trace: Any, path: str, sample: int = 0, spec: Any = None,
                timestamps: Sequence | None = None, fps: float = 2.0, cell: int = 224,
                indices: Sequence | None = None) -> str:
    """Overlay MP4 (H.264 when available, else MPEG-4), one annotated frame per sampled frame (or per
    sampled frame in `indices`)."""
    tiles = render_frames(frames, trace, sample, cell, spec, timestamps, indices)
    h, w = tiles[0].shape[:2]
    h2, w2 = h + (h % 2), w + (w % 2)
    return _save_atomic(path, lambda tmp: _encode_mp4(tmp, tiles, h, w, h2, w2, fps))


def _encode_mp4(path: str, tiles: list, h: int, w: int, h2: int, w2: int, fps: float) -> None:
    import av

    with av.open(path, "w", format="mp4") as out:
        try:
            stream = out.add_stream("libx264", rate=max(1, int(round(fps))))
        except Exception:  # pragma: no cover - builds without libx264
            stream = out.add_stream("mpeg4", rate=max(1, int(round(fps))))
        stream.width, stream.height, stream.pix_fmt = w2, h2, "yuv420p"
        for tile in tiles:
            frame = np.zeros((h2, w2, 3), dtype=np.uint8)
            frame[:h, :w] = tile
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


# ---------------------------------------------------------------- timeline: when did the model look


def _timeline_times(timestamps: Sequence | None, T: int) -> tuple:
    """(seconds (T,) float array, None) when `timestamps` are usable for an x axis (T of them, all finite
    and sane, strictly increasing), else (None, why not)."""
    if timestamps is None:
        return None, None
    ts = list(timestamps)
    if len(ts) != T:
        return None, f"{len(ts)} timestamps for {T} sampled frames"
    clean = [clean_time(t) for t in ts]
    bad = sum(v is None for v in clean)
    if bad:
        return None, f"{bad} of {T} timestamps are missing, not finite or beyond {MAX_TIMESTAMP:g} s"
    x = np.asarray(clean, dtype=np.float64)
    if T > 1 and not (np.diff(x) > 0).all():
        return None, "timestamps are not strictly increasing"
    return x, None


def _edges(x: np.ndarray) -> np.ndarray:
    """Bar edges around the centres `x` (increasing): midpoints, the ends mirrored."""
    if len(x) == 1:
        return np.array([x[0] - 0.5, x[0] + 0.5])
    mid = (x[:-1] + x[1:]) / 2
    return np.concatenate([[x[0] - (mid[0] - x[0])], mid, [x[-1] + (x[-1] - mid[-1])]])


def _frame_max(scores: Any, T: int, P: int) -> np.ndarray:
    """(T,) max over each frame's P scores ignoring NaN; NaN for a frame with no score."""
    s = scores.detach().cpu().float().numpy().astype(np.float64).reshape(T, P)
    ok = ~np.isnan(s)
    m = np.where(ok, s, -np.inf).max(axis=1)
    m[~ok.any(axis=1)] = np.nan
    return m


def timeline_data(trace: Any, sample: int = 0, timestamps: Sequence | None = None) -> dict:
    """What `render_timeline` draws, per sampled frame (numpy arrays of length T):

    frame (0..T-1); kept: tokens alive after the last in-decoder stage (the pool, else every token, when
    there is no stage); pooled: tokens in the pre-decoder pool (None without a pool); score: max
    pre-selection score of the frame's tokens (the pool's; without a pool the last stage's; NaN ignored,
    NaN for a frame with none); time: seconds (None when the timestamps, given or the trace's, are
    unusable); x / edges: bar centres / T + 1 edges on the x axis (seconds, else frame index); x_label;
    time_note: why the timestamps were not used (None when used or absent); kept_label / score_label:
    what the bars / the line are."""
    T, P = trace.num_frames, trace.tokens_per_frame
    pool = getattr(trace, "pool", None)
    kept = trace.kept_mask()[sample].sum(dim=-1).cpu().numpy().astype(np.int64)
    pooled = None
    if pool is not None:
        pm = np.zeros(T * P, dtype=bool)
        pm[pool.kept[sample].detach().cpu().numpy()] = True
        pooled = pm.reshape(T, P).sum(axis=1).astype(np.int64)
    if pool is not None:
        score, score_label = _frame_max(pool.scores[sample], T, P), "pre-selection score (pool)"
    elif trace.stages:
        last = trace.stages[-1]
        score, score_label = _frame_max(last.scores[sample], T, P), f"score at layer {last.layer}"
    else:
        score, score_label = np.full(T, np.nan), "no scores"
    if trace.stages:
        kept_label = f"kept after layer {trace.stages[-1].layer}"
    elif pool is not None:
        kept_label = "kept (the pool; no in-decoder pruning)"
    else:
        kept_label = "kept (no pruning)"
    time, note = _timeline_times(_trace_timestamps(trace, timestamps), T)
    x = time if time is not None else np.arange(T, dtype=np.float64)
    return {
        "frame": np.arange(T), "kept": kept, "pooled": pooled, "score": score, "time": time, "x": x,
        "edges": _edges(x), "x_label": "time (s)" if time is not None else "sampled frame",
        "time_note": note, "kept_label": kept_label, "score_label": score_label,
    }


def _plain(text: Any) -> str:
    """One line of plain text (control characters -> spaces, runs of spaces squeezed)."""
    return " ".join(_no_controls(text).split())


def _wrap_chars(text: str, width: int, max_lines: int | None = None) -> list:
    import textwrap

    lines = textwrap.wrap(_plain(text), width=width, break_long_words=True, break_on_hyphens=False)
    if max_lines is not None and len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][: max(0, width - 1)].rstrip() + "\u2026"
    return lines


def _clock(seconds: float, hours: bool = False) -> str:
    """"m:ss", or "h:mm:ss" when `hours` (or the time is an hour or more)."""
    s = int(round(seconds))
    sign, s = ("-" if s < 0 else ""), abs(s)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{sign}{h}:{m:02d}:{sec:02d}" if h or hours else f"{sign}{m}:{sec:02d}"


# tick steps (seconds) of a clock axis: the first giving at most 8 ticks over the span is used
_CLOCK_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)


def _clock_step(span: float) -> float:
    for step in _CLOCK_STEPS:
        if span / step <= 8:
            return float(step)
    return float(math.ceil(span / 8 / 86400) * 86400)


def render_timeline(trace: Any, path: str, sample: int = 0, timestamps: Sequence | None = None,
                    title: str | None = None) -> str:
    """Write a PNG of WHEN the model looked, over the whole sampled video (x = seconds when the
    timestamps, given or the trace's, are usable, else the sampled-frame index, with a warning):

    top panel: tokens per frame kept after the last in-decoder stage (dark bars) in front of the tokens
    per frame in the pre-decoder pool (light bars, long-video path); bottom panel: the max pre-selection
    score per frame (the last stage's scores without a pool), dots on the frames that hold kept tokens.
    Title: `title` wrapped (at most 3 lines) over `summary_text(trace)`. Drawn with matplotlib's object
    API on an Agg canvas (no pyplot state); the data is `timeline_data(...)`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, MaxNLocator, MultipleLocator

    data = timeline_data(trace, sample, timestamps)
    if data["time_note"]:
        log.warning("heatmap timeline: %s; x axis = sampled frame index", data["time_note"])
    T = trace.num_frames
    x, edges, kept, pooled, score = data["x"], data["edges"], data["kept"], data["pooled"], data["score"]
    title_lines = _wrap_chars(title, 120, max_lines=3) if title else []
    summary_lines = _wrap_chars(summary_text(trace), 150)
    head = [(line, 11, "black") for line in title_lines] + [(line, 9, "#444444") for line in summary_lines]
    width_in, panels_in, line_in = 12.0, 5.4, 0.22
    height_in = panels_in + line_in * len(head) + 0.25
    fig = Figure(figsize=(width_in, height_in), dpi=100)
    FigureCanvasAgg(fig)
    top = 1 - (line_in * len(head) + 0.35) / height_in
    gs = fig.add_gridspec(2, 1, height_ratios=[3, 2], hspace=0.1, left=0.08, right=0.985, top=top, bottom=0.09)
    ax1 = fig.add_subplot(gs[0])
    ax2 = fig.add_subplot(gs[1], sharex=ax1)
    y = 1 - 0.12 / height_in
    for line, size, colour in head:
        fig.text(0.01, y, line, ha="left", va="top", fontsize=size, color=colour, parse_math=False)
        y -= line_in / height_in
    dark, light, line_c = "#08519c", "#9ecae1", "#d94801"
    # bars narrower than ~2 px vanish: draw the frames that hold tokens as lines of at least 1 px too
    thin = T > 300
    if pooled is not None:
        ax1.stairs(pooled, edges, fill=True, color=light,
                   label=f"pooled before the decoder ({int(pooled.sum())} tokens)")
        if thin and (pooled > 0).any():
            m = pooled > 0
            ax1.vlines(x[m], 0, pooled[m], colors=light, linewidth=0.8)
    ax1.stairs(kept, edges, fill=True, color=dark, label=f"{data['kept_label']} ({int(kept.sum())} tokens)")
    if thin and (kept > 0).any():
        m = kept > 0
        ax1.vlines(x[m], 0, kept[m], colors=dark, linewidth=1.0)
    ymax = max(int(kept.max(initial=0)), int(pooled.max(initial=0)) if pooled is not None else 0, 1)
    ax1.set_ylim(0, ymax * 1.15)
    ax1.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax1.set_ylabel("tokens per frame")
    ax1.grid(axis="y", alpha=0.3)
    # legends above the panels, never over a bar or a score peak
    ax1.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=2, fontsize=9, frameon=False, borderaxespad=0.1)
    ax1.tick_params(labelbottom=False)
    ok = np.isfinite(score)
    if ok.any():
        ax2.plot(x, score, color=line_c, linewidth=1.0 if T <= 2000 else 0.6, label=f"max {data['score_label']}")
        if T == 1 or ok.sum() == 1:
            ax2.plot(x[ok], score[ok], "o", color=line_c, markersize=3)
        m = ok & (kept > 0)
        if m.any():
            ax2.plot(x[m], score[m], "o", color=dark, markersize=3, label="frames holding kept tokens")
        ax2.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=2, fontsize=9, frameon=False, borderaxespad=0.1)
        ax2.grid(axis="y", alpha=0.3)
    else:
        ax2.text(0.5, 0.5, "no scores recorded", transform=ax2.transAxes, ha="center", va="center",
                 color="#666", parse_math=False)
        ax2.set_yticks([])
    ax2.set_ylabel("max score per frame\n(pre-selection)" if pooled is not None else "max score per frame")
    ax2.set_xlim(edges[0], edges[-1])
    if data["time"] is not None and edges[-1] - edges[0] > 120:
        hours = max(abs(edges[0]), abs(edges[-1])) >= 3600
        ax2.xaxis.set_major_locator(MultipleLocator(_clock_step(edges[-1] - edges[0])))
        ax2.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: _clock(v, hours)))
        ax2.set_xlabel("time (h:mm:ss)" if hours else "time (m:ss)")
    else:
        if data["time"] is None:
            ax2.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax2.set_xlabel(data["x_label"] if data["time"] is not None else
                       f"sampled frame (of {T}){'; timestamps unusable' if data['time_note'] else ''}")
    return _save_atomic(path, lambda tmp: fig.savefig(tmp, dpi=100, facecolor="white", format="png"))


def _save_atomic(path: str, save: Any) -> str:
    """Create the parent directory, then write `path` atomically with ``save(tmp_path)``; an OSError is one
    line naming `path` (videosparse.fileio)."""
    from videosparse.fileio import atomic_write, writing

    parent = os.path.dirname(os.path.abspath(path))
    with writing(parent, "create the directory"):
        os.makedirs(parent, exist_ok=True)
    return atomic_write(path, save)


def write_all(frames: np.ndarray, trace: Any, out_dir: str, sample: int = 0, spec: Any = None,
              timestamps: Sequence | None = None, title: str | None = None, stem: str = "retention",
              video: bool = True, meta: dict | None = None, source: Any = None) -> dict:
    """PNG grid + timeline PNG + MP4 overlay + JSON + NPZ into `out_dir`; returns {kind: path}.

    `source`: the video file the frames came from (path or `video_fingerprint` dict), recorded in the JSON
    (see `write_json`) so that ``videosparse heatmap`` refuses to draw the trace on another video.

    `timestamps` default to the trace's own. The timeline (`{stem}_timeline.png`, key "timeline") is
    written for traces with more than TIMELINE_MIN_FRAMES frames or a pre-decoder pool (skipped with a
    warning when matplotlib is not installed). With more than GRID_MAX_FRAMES frames the grid and the MP4
    show only the frames holding kept tokens (`grid_frames`)."""
    from videosparse.fileio import writing

    with writing(out_dir, "create the directory"):
        os.makedirs(out_dir, exist_ok=True)
    timestamps = _trace_timestamps(trace, timestamps)
    if timestamps is not None:
        bad = sum(clean_time(t) is None for t in timestamps)
        if bad:
            log.warning("heatmap: %d of %d frame timestamps are missing, not finite or beyond %g s; "
                        "labelled t=?", bad, len(timestamps), MAX_TIMESTAMP)
    indices = None if trace.num_frames <= GRID_MAX_FRAMES else grid_frames(trace, sample)
    paths = {"png": render_grid(frames, trace, os.path.join(out_dir, f"{stem}.png"), sample, spec, timestamps,
                                title, indices=indices)}
    if trace.num_frames > TIMELINE_MIN_FRAMES or getattr(trace, "pool", None) is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            log.warning("heatmap: matplotlib is not installed; no timeline written (pip install matplotlib)")
        else:
            paths["timeline"] = render_timeline(trace, os.path.join(out_dir, f"{stem}_timeline.png"), sample,
                                                timestamps, title)
    paths["npz"] = write_npz(trace, os.path.join(out_dir, f"{stem}.npz"), sample, timestamps)
    if video:
        paths["mp4"] = write_video(frames, trace, os.path.join(out_dir, f"{stem}.mp4"), sample, spec, timestamps,
                                   indices=indices)
    # the JSON last: a failure never leaves a JSON that points at a missing or partial PNG/NPZ/MP4
    paths["json"] = write_json(trace, os.path.join(out_dir, f"{stem}.json"), sample, timestamps, meta, source)
    return paths


def trace_from_json(path: str) -> Any:
    """Read a trace JSON (for re-rendering): returns (trace, doc).

    Any document of the trace format (docs/trace-format.md) is read, by the one reader,
    `RetentionTrace.from_dict`: the JSON written by `write_json` (one sample: the stage records, the
    pre-decoder pool, `decoder_visual` and the timestamps, unusable ones as NaN, are restored exactly, so
    `token_table` of the result equals that of the original sample), `RetentionTrace.save_json` (every sample of
    the batch), and the unversioned files of earlier releases of both. Heatmap JSONs without stage records
    (older files) are rebuilt from the token table: kept sets, stages, clusters, final scores and merged flags
    are restored; raters and redundancy are not.
    """
    from videosparse.core.trace import RetentionTrace

    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    return RetentionTrace.from_dict(doc, where=os.fspath(path)), doc
