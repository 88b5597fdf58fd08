"""Per-frame token-retention heatmaps from a RetentionTrace.

* `render_grid`  -> one PNG: the sampled frames (as the model sees them: resized and center-cropped)
  in a grid; each kept token's patch outlined over a score colour map, pruned patches dimmed,
  recycled (merged) tokens outlined in magenta, the CLS token's fate as a corner badge, and the
  frame timestamp plus kept count under every frame.
* `write_video`  -> an overlay MP4 of the same, one frame of the grid per sampled frame.
* `token_table` / `write_json` / `write_npz` -> one row per visual token: frame, row, col, score,
  kept, stage, cluster.

Pillow draws; PyAV writes the MP4. Nothing here imports torch at module import.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Sequence

import numpy as np

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
        ts = [float(t) for t in timestamps]
        out["time"] = [ts[f] if f < len(ts) else None for f in frame.tolist()]
    return out


def write_json(trace: Any, path: str, sample: int = 0, timestamps: Sequence | None = None,
               meta: dict | None = None) -> str:
    """JSON: {"meta", "num_frames", "tokens_per_frame", "grid", "num_layers", "counts", "equivalent_tokens",
    "timestamps", "tokens": token_table(...)}."""
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
        "timestamps": [float(t) for t in timestamps] if timestamps is not None else None,
        "config": trace.config,
        "tokens": token_table(trace, sample, timestamps),
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


def render_frames(frames: np.ndarray, trace: Any, sample: int = 0, cell: int = 224, spec: Any = None,
                  timestamps: Sequence | None = None) -> list:
    """Annotated frames (list of uint8 (cell + label, cell, 3) arrays), one per sampled frame."""
    from PIL import Image, ImageDraw, ImageFont

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
    font = ImageFont.load_default()
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
        ts = f"t={float(timestamps[t]):.2f}s  " if timestamps is not None and t < len(timestamps) else ""
        d.text((3, cell + 1), f"#{t} {ts}kept {n_kept}/{P}", fill=(0, 0, 0), font=font)
        out.append(np.asarray(canvas))
    return out


def render_grid(frames: np.ndarray, trace: Any, path: str, sample: int = 0, spec: Any = None,
                timestamps: Sequence | None = None, title: str | None = None, cell: int | None = None,
                columns: int | None = None) -> str:
    """Write the PNG grid. Cell size shrinks with many frames (64+ frames stay legible: >= 96 px)."""
    from PIL import Image, ImageDraw, ImageFont

    T = trace.num_frames
    columns = columns or max(1, min(T, int(math.ceil(math.sqrt(T * 1.6)))))
    if cell is None:
        cell = int(max(96, min(224, 2400 // columns)))
    tiles = render_frames(frames, trace, sample, cell, spec, timestamps)
    th, tw = tiles[0].shape[:2]
    gap = 4
    nrows = int(math.ceil(T / columns))
    head = 20 if title is None else 20 + 14 * (1 + len(title) // max(20, (columns * (tw + gap)) // 7))
    legend_h = 18
    W = columns * (tw + gap) + gap
    H = head + nrows * (th + gap) + gap + legend_h
    canvas = Image.new("RGB", (W, H), (255, 255, 255))
    d = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    counts = trace.counts
    summary = (f"visual tokens {trace.num_visual} -> {counts[-1] if counts else trace.num_visual} "
               f"(stages {counts}, equivalent {trace.equivalent_tokens:.1f})")
    y = 3
    if title:
        width_chars = max(20, W // 7)
        for k in range(0, len(title), width_chars):
            d.text((gap, y), title[k : k + width_chars], fill=(0, 0, 0), font=font)
            y += 14
    d.text((gap, y), summary, fill=(60, 60, 60), font=font)
    for t, tile in enumerate(tiles):
        r, c = divmod(t, columns)
        canvas.paste(Image.fromarray(tile), (gap + c * (tw + gap), head + r * (th + gap)))
    # legend: colour ramp low -> high score, outline meanings
    ly = H - legend_h + 2
    ramp = colormap(np.linspace(0, 1, 120))[None].repeat(10, 0)
    canvas.paste(Image.fromarray(ramp), (gap, ly))
    d.text((gap + 125, ly - 1), "score low->high | white: kept | magenta: recycled | dim: pruned | "
           "green badge: CLS kept", fill=(0, 0, 0), font=font)
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
    paths = {
        "png": render_grid(frames, trace, os.path.join(out_dir, f"{stem}.png"), sample, spec, timestamps, title),
        "json": write_json(trace, os.path.join(out_dir, f"{stem}.json"), sample, timestamps, meta),
        "npz": write_npz(trace, os.path.join(out_dir, f"{stem}.npz"), sample, timestamps),
    }
    if video:
        paths["mp4"] = write_video(frames, trace, os.path.join(out_dir, f"{stem}.mp4"), sample, spec, timestamps)
    return paths


def trace_from_json(path: str) -> Any:
    """Rebuild a single-sample RetentionTrace from a JSON written by `write_json` (for re-rendering)."""
    import torch

    from videosparse.core.trace import RetentionTrace, StageRecord

    with open(path) as f:
        doc = json.load(f)
    tab = doc["tokens"]
    T, P = doc["num_frames"], doc["tokens_per_frame"]
    Nv = T * P
    stage = np.asarray(tab["stage"])
    score = torch.tensor([np.nan if v is None else v for v in tab["score"]], dtype=torch.float32)[None]
    stages = []
    n_st = len(doc["counts"])
    merged_final = np.asarray(tab["merged"])
    for si, layer in enumerate(doc.get("stage_layers") or list(range(n_st))):
        alive = (stage == -1) | (stage > si)
        kept = torch.tensor(np.nonzero(alive)[0])[None]
        merged = torch.tensor(merged_final[alive] if si == n_st - 1 else np.zeros(int(alive.sum()), bool))[None]
        stages.append(StageRecord(layer=int(layer), kept=kept, merged=merged, scores=score.clone()))
    trace = RetentionTrace(T, P, bool(doc.get("has_cls", True)), tuple(doc["grid"]),
                           int(doc["num_layers"]), 1, stages, doc.get("config", {}))
    if Nv != len(stage):
        raise ValueError(f"{path}: token table has {len(stage)} rows, expected {Nv}")
    return trace, doc
