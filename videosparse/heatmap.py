"""Per-frame token-retention heatmaps from a RetentionTrace.

* `render_grid`  -> one PNG: the sampled frames (as the model sees them: resized and center-cropped)
  in a grid; each kept token's patch outlined over a score colour map, pruned patches dimmed,
  recycled (merged) tokens outlined in magenta, the CLS token's fate as a corner badge, and the
  frame timestamp plus kept count under every frame.
* `write_video`  -> an overlay MP4 of the same, one frame of the grid per sampled frame.
* `token_table` / `write_json` / `write_npz` -> one row per visual token: frame, row, col, score,
  kept, stage, cluster.
* `trace_from_json` -> the trace back from a JSON written by `write_json` (lossless: the JSON carries
  every stage record of the sample), for re-rendering.
* `summary_text` / `wrap_text` -> the PNG's header text (token counts per stage, wrapped title).

Pillow draws (with a scalable TrueType font, so spaces and non-ASCII text render); PyAV writes the
MP4. Nothing here imports torch at module import.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import unicodedata
from typing import Any, Sequence

import numpy as np

log = logging.getLogger(__name__)

# timestamps beyond this (seconds, ~115 days) are treated as garbage, like NaN / inf
MAX_TIMESTAMP = 1e7

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


def token_table(trace: Any, sample: int = 0, timestamps: Sequence | None = None) -> dict:
    """One entry per visual token of `sample`, as parallel lists.

    frame, token (in-frame index; 0 = CLS when has_cls), row/col (-1 for CLS), score (last stage
    that scored it; NaN if never), kept (alive after the last stage), stage (index of the stage
    that pruned it; -1 if kept to the end), cluster (recycled cluster's kept slot at the stage that
    pruned it, or -1), merged (kept token is a recycled cluster), time (seconds, when given).
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
    score = np.full(Nv, np.nan)
    stage = np.full(Nv, -1)
    cluster = np.full(Nv, -1)
    alive = np.ones(Nv, dtype=bool)
    merged = np.zeros(Nv, dtype=bool)
    for si, st in enumerate(trace.stages):
        sc = st.scores[sample].float().numpy()
        has = ~np.isnan(sc)
        score[has] = sc[has]
        kept_now = np.zeros(Nv, dtype=bool)
        kept_now[st.kept[sample].numpy()] = True
        pruned_here = alive & ~kept_now
        stage[pruned_here] = si
        if st.clusters is not None:
            cl = st.clusters[sample].numpy()
            cluster[pruned_here] = cl[pruned_here]
        alive = kept_now
        merged = np.zeros(Nv, dtype=bool)
        merged[st.kept[sample].numpy()[st.merged[sample].numpy()]] = True
    out = {
        "frame": frame.tolist(), "token": tok.tolist(), "row": row.tolist(), "col": col.tolist(),
        "score": [None if math.isnan(x) else float(x) for x in score], "kept": alive.tolist(),
        "stage": stage.tolist(), "cluster": cluster.tolist(), "merged": merged.tolist(),
    }
    if timestamps is not None:
        ts = [clean_time(t) for t in timestamps]
        out["time"] = [ts[f] if f < len(ts) else None for f in frame.tolist()]
    return out


def clean_time(t: Any) -> float | None:
    """A timestamp in seconds as a float, or None when missing, not a number, non-finite or absurd
    (|t| > MAX_TIMESTAMP)."""
    try:
        v = float(t)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(v) or abs(v) > MAX_TIMESTAMP:
        return None
    return v


def time_label(t: Any) -> str:
    """Frame time label: "t=1.50s", or "t=?" for a missing / NaN / infinite / absurd timestamp."""
    v = clean_time(t)
    return "t=?" if v is None else f"t={v:.2f}s"


def _float_list(x: Any) -> list:
    """float32 values as the shortest decimals that read back to the same float32 (NaN -> None)."""
    a = x.detach().cpu().float().numpy().ravel()
    return [None if np.isnan(v) else float(str(v)) for v in a]


def _opt_list(x: Any) -> list | None:
    return None if x is None else x.detach().cpu().tolist()


def _stage_doc(st: Any, b: int) -> dict:
    """One StageRecord of sample `b` as JSON-able lists (read back by `trace_from_json`)."""
    return {
        "layer": int(st.layer),
        "count": int(st.kept.shape[1]),
        "kept": st.kept[b].tolist(),
        "merged": [bool(v) for v in st.merged[b].tolist()],
        "scores": _float_list(st.scores[b]),
        "raters": _opt_list(None if st.raters is None else st.raters[b]),
        "clusters": _opt_list(None if st.clusters is None else st.clusters[b]),
        "redundant": _opt_list(None if st.redundant is None else st.redundant[b]),
    }


def write_json(trace: Any, path: str, sample: int = 0, timestamps: Sequence | None = None,
               meta: dict | None = None) -> str:
    """JSON: {"meta", "num_frames", "tokens_per_frame", "grid", "num_layers", "counts", "equivalent_tokens",
    "timestamps", "tokens": token_table(...), "stages": every stage record of `sample` (kept, merged,
    scores, raters, clusters, redundant), "raters_text_positions"}.

    Timestamps that are missing, non-finite or absurd are written as null."""
    doc = {
        "meta": meta or {},
        "num_frames": trace.num_frames,
        "tokens_per_frame": trace.tokens_per_frame,
        "has_cls": trace.has_cls,
        "grid": list(trace.grid),
        "num_layers": trace.num_layers,
        "counts": trace.counts,
        "equivalent_tokens": trace.equivalent_tokens,
        "stage_layers": [s.layer for s in trace.stages],
        "timestamps": [clean_time(t) for t in timestamps] if timestamps is not None else None,
        "config": trace.config,
        "tokens": token_table(trace, sample, timestamps),
        "stages": [_stage_doc(st, sample) for st in trace.stages],
        "raters_text_positions": (None if getattr(trace, "raters_text_positions", None) is None
                                  else trace.raters_text_positions[sample].tolist()),
    }
    with open(path, "w") as f:
        json.dump(doc, f)
    return path


def write_npz(trace: Any, path: str, sample: int = 0, timestamps: Sequence | None = None) -> str:
    tab = token_table(trace, sample, timestamps)
    arrays = {k: np.asarray([np.nan if v is None else v for v in vals]) for k, vals in tab.items()}
    np.savez_compressed(path, **arrays, counts=np.asarray(trace.counts), grid=np.asarray(trace.grid))
    return path


def model_view(frames: np.ndarray, spec: Any = None) -> np.ndarray:
    """The frames as the model sees them: shortest-edge resize + center crop (uint8, not normalised)."""
    from PIL import Image

    from videosparse.video import VideoProcessorSpec

    spec = spec or VideoProcessorSpec()
    ch, cw = spec.crop_hw
    out = []
    for f in np.asarray(frames):
        img = Image.fromarray(f)
        h, w = f.shape[:2]
        if spec.do_resize and spec.shortest_edge:
            s = spec.shortest_edge / min(h, w)
            nh, nw = max(ch, int(round(h * s))), max(cw, int(round(w * s)))
            img = img.resize((nw, nh), Image.BICUBIC)
        a = np.asarray(img)
        H, W = a.shape[:2]
        top, left = max(0, (H - ch) // 2), max(0, (W - cw) // 2)
        a = a[top : top + ch, left : left + cw]
        if a.shape[:2] != (ch, cw):
            a = np.asarray(Image.fromarray(a).resize((cw, ch), Image.BICUBIC))
        out.append(a)
    return np.stack(out)


def _normalise_scores(score: np.ndarray) -> np.ndarray:
    """Rank-free, robust normalisation of scores to [0, 1] over the whole clip (log scale)."""
    s = np.array(score, dtype=np.float64)
    ok = ~np.isnan(s) & (s > 0)
    out = np.zeros_like(s)
    if ok.any():
        ls = np.log(s[ok])
        lo, hi = np.percentile(ls, 2), np.percentile(ls, 99.5)
        out[ok] = (ls - lo) / max(hi - lo, 1e-12)
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


def _printable(font: Any, text: str) -> str:
    """`text` on one line (control characters -> spaces); characters the font cannot encode -> "?"."""
    text = "".join(" " if unicodedata.category(ch)[0] == "C" else ch for ch in str(text))
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
    "296 visual tokens -> 30 kept after layer 1 (decoder layers 0-3); 10.1% kept; equivalent tokens 163.0".
    Layers are 0-based decoder layer indices; equivalent tokens = mean visual tokens per decoder layer."""
    nv, nl = trace.num_visual, trace.num_layers
    layers = f"decoder layers 0-{nl - 1}" if nl > 1 else "decoder layer 0"
    eq = f"equivalent tokens {trace.equivalent_tokens:.1f}"
    if not trace.stages:
        return f"{nv} visual tokens, none pruned ({layers}); {eq}"
    steps = [f"{nv} visual tokens"]
    last = len(trace.stages) - 1
    for i, st in enumerate(trace.stages):
        steps.append(f"{st.count}{' kept' if i == last else ''} after layer {st.layer}")
    pct = 100.0 * trace.stages[-1].count / max(nv, 1)
    return f"{' -> '.join(steps)} ({layers}); {pct:.3g}% kept; {eq}"


LEGEND = "score low->high | white: kept | magenta: recycled | dim: pruned | green badge: CLS kept"


def frame_label(t: int, n_kept: int, per_frame: int, timestamp: Any = None, has_time: bool = False,
                font: Any = None, max_width: float | None = None) -> str:
    """Label under frame `t`: "#t t=1.50s  kept k/P" (t=? for a bad timestamp), shortened to fit."""
    ts = f"{time_label(timestamp)} " if has_time else ""
    options = [f"#{t} {ts} kept {n_kept}/{per_frame}" if ts else f"#{t} kept {n_kept}/{per_frame}",
               f"#{t} {ts}{n_kept}/{per_frame}", f"#{t} {n_kept}/{per_frame}"]
    if font is None or max_width is None:
        return options[0]
    return fit_text(options, font, max_width)


def render_frames(frames: np.ndarray, trace: Any, sample: int = 0, cell: int = 224, spec: Any = None,
                  timestamps: Sequence | None = None) -> list:
    """Annotated frames (list of uint8 (cell + label, cell, 3) arrays), one per sampled frame."""
    from PIL import Image, ImageDraw

    T = trace.num_frames
    if len(frames) != T:
        raise ValueError(f"heatmap: {len(frames)} frames given but the trace has {T}")
    view = model_view(frames, spec)
    tab = token_table(trace, sample, timestamps)
    rows, cols = trace.grid
    P = trace.tokens_per_frame
    off = 1 if trace.has_cls else 0
    norm = _normalise_scores(np.array([np.nan if v is None else v for v in tab["score"]]))
    kept = np.array(tab["kept"])
    merged = np.array(tab["merged"])
    label_h = max(14, cell // 9)
    font = get_font(int(min(14, max(10, label_h - 4))))
    out = []
    for t in range(T):
        src = view[t]
        # small inputs (e.g. 48 px test-bed frames) are enlarged with nearest so patches stay crisp
        filt = Image.NEAREST if cell >= 2 * src.shape[0] else Image.BICUBIC
        img = Image.fromarray(src).resize((cell, cell), filt)
        base = np.asarray(img).astype(np.float64)
        heat = np.zeros_like(base)
        alpha = np.zeros(base.shape[:2])
        dim = np.ones(base.shape[:2])
        ph, pw = cell / rows, cell / cols
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
        canvas = Image.new("RGB", (cell, cell + label_h), (255, 255, 255))
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
            d.rectangle([cell - bs - 2, 2, cell - 2, bs + 2], fill=(40, 200, 80) if cls_kept else (90, 90, 90))
        has_time = timestamps is not None and t < len(timestamps)
        label = frame_label(t, n_kept, P, timestamps[t] if has_time else None, has_time, font, cell - 6)
        draw_text(d, (3, cell + 1), label, font, (0, 0, 0))
        out.append(np.asarray(canvas))
    return out


def render_grid(frames: np.ndarray, trace: Any, path: str, sample: int = 0, spec: Any = None,
                timestamps: Sequence | None = None, title: str | None = None, cell: int | None = None,
                columns: int | None = None) -> str:
    """Write the PNG grid. Cell size shrinks with many frames (64+ frames stay legible: >= 96 px).

    Header: `title` word-wrapped (at most 3 lines, then an ellipsis) and `summary_text(trace)`."""
    from PIL import Image, ImageDraw

    T = trace.num_frames
    columns = columns or max(1, min(T, int(math.ceil(math.sqrt(T * 1.6)))))
    if cell is None:
        cell = int(max(96, min(224, 2400 // columns)))
    tiles = render_frames(frames, trace, sample, cell, spec, timestamps)
    th, tw = tiles[0].shape[:2]
    gap = 4
    nrows = int(math.ceil(T / columns))
    W = columns * (tw + gap) + gap
    title_font, small = get_font(13), get_font(11)
    title_lines = wrap_text(title, title_font, W - 2 * gap, max_lines=3) if title else []
    summary_lines = wrap_text(summary_text(trace), small, W - 2 * gap)
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
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    canvas.save(path)
    return path


def write_video(frames: np.ndarray, trace: Any, path: str, sample: int = 0, spec: Any = None,
                timestamps: Sequence | None = None, fps: float = 2.0, cell: int = 224) -> str:
    """Overlay MP4 (H.264 when available, else MPEG-4), one annotated frame per sampled frame."""
    import av

    tiles = render_frames(frames, trace, sample, cell, spec, timestamps)
    h, w = tiles[0].shape[:2]
    h2, w2 = h + (h % 2), w + (w % 2)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with av.open(path, "w") as out:
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
    return path


def write_all(frames: np.ndarray, trace: Any, out_dir: str, sample: int = 0, spec: Any = None,
              timestamps: Sequence | None = None, title: str | None = None, stem: str = "retention",
              video: bool = True, meta: dict | None = None) -> dict:
    """PNG grid + MP4 overlay + JSON + NPZ into `out_dir`; returns {kind: path}."""
    os.makedirs(out_dir, exist_ok=True)
    if timestamps is not None:
        bad = sum(clean_time(t) is None for t in timestamps)
        if bad:
            log.warning("heatmap: %d of %d frame timestamps are missing, not finite or beyond %g s; "
                        "labelled t=?", bad, len(timestamps), MAX_TIMESTAMP)
    paths = {
        "png": render_grid(frames, trace, os.path.join(out_dir, f"{stem}.png"), sample, spec, timestamps, title),
        "json": write_json(trace, os.path.join(out_dir, f"{stem}.json"), sample, timestamps, meta),
        "npz": write_npz(trace, os.path.join(out_dir, f"{stem}.npz"), sample, timestamps),
    }
    if video:
        paths["mp4"] = write_video(frames, trace, os.path.join(out_dir, f"{stem}.mp4"), sample, spec, timestamps)
    return paths


def trace_from_json(path: str) -> Any:
    """Rebuild a single-sample RetentionTrace from a JSON written by `write_json` (for re-rendering).

    Returns (trace, doc). The stage records stored in the JSON are restored exactly (kept, merged,
    scores, raters, clusters, redundant), so `token_table` of the result equals that of the original
    sample. JSONs without stage records (older files) are rebuilt from the token table: kept sets,
    stages, clusters, final scores and merged flags are restored; raters and redundancy are not.
    """
    import torch

    from videosparse.core.trace import RetentionTrace, StageRecord

    with open(path) as f:
        doc = json.load(f)
    tab = doc["tokens"]
    T, P = int(doc["num_frames"]), int(doc["tokens_per_frame"])
    Nv = T * P
    if len(tab["stage"]) != Nv:
        raise ValueError(f"{path}: token table has {len(tab['stage'])} rows, expected {Nv}")
    recs = doc.get("stages")
    if recs is not None:
        stages = [_stage_from_doc(r, Nv, path, torch, StageRecord) for r in recs]
    else:
        stages = _stages_from_table(doc, Nv, torch, StageRecord)
    rtp = doc.get("raters_text_positions")
    trace = RetentionTrace(T, P, bool(doc.get("has_cls", True)), tuple(doc["grid"]),
                           int(doc["num_layers"]), 1, stages, doc.get("config") or {},
                           torch.tensor(rtp, dtype=torch.long)[None] if rtp is not None else None)
    counts = doc.get("counts")
    if counts is not None and list(counts) != trace.counts:
        raise ValueError(f"{path}: stage records keep {trace.counts} tokens but the JSON says {counts}")
    return trace, doc


def _stage_from_doc(r: dict, Nv: int, path: str, torch: Any, StageRecord: Any) -> Any:
    def vec(key: str, dtype: Any, n: int | None) -> Any:
        v = r.get(key)
        if v is None:
            return None
        if dtype is torch.float32:
            v = [np.nan if x is None else x for x in v]
        t = torch.tensor(v, dtype=dtype)
        if n is not None and t.numel() != n:
            raise ValueError(f"{path}: stage at layer {r.get('layer')}: {key} has {t.numel()} entries, expected {n}")
        return t.reshape(1, -1)

    kept = vec("kept", torch.long, None)
    if kept is None or ((kept < 0) | (kept >= Nv)).any():
        raise ValueError(f"{path}: stage at layer {r.get('layer')}: kept indices missing or out of range")
    K = kept.shape[1]
    merged = vec("merged", torch.bool, K)
    return StageRecord(layer=int(r["layer"]), kept=kept,
                       merged=merged if merged is not None else torch.zeros(1, K, dtype=torch.bool),
                       scores=vec("scores", torch.float32, Nv), raters=vec("raters", torch.bool, None),
                       clusters=vec("clusters", torch.long, Nv), redundant=vec("redundant", torch.bool, Nv))


def _stages_from_table(doc: dict, Nv: int, torch: Any, StageRecord: Any) -> list:
    """Stage records rebuilt from the token table alone (JSONs written before stage records were saved)."""
    tab = doc["tokens"]
    stage = np.asarray(tab["stage"])
    cluster = np.asarray(tab.get("cluster") or [-1] * Nv)
    merged_final = np.asarray(tab["merged"], dtype=bool)
    score = torch.tensor([np.nan if v is None else v for v in tab["score"]], dtype=torch.float32)[None]
    n_st = len(doc["counts"])
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
    return stages
