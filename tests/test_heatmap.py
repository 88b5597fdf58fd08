"""Heatmap outputs carry the trace: the outlined cells are the kept ones, JSON/NPZ rows match."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from videosparse import heatmap
from videosparse.core.trace import RetentionTrace, StageRecord
from videosparse.video import VideoProcessorSpec

T, ROWS, COLS = 5, 4, 4
P = ROWS * COLS + 1


def make_trace(seed=0, frames=T):
    g = torch.Generator().manual_seed(seed)
    nv = frames * P
    scores = torch.rand(1, nv, generator=g)
    kept = torch.randperm(nv, generator=g)[: nv // 4].sort().values[None]
    merged = torch.zeros_like(kept, dtype=torch.bool)
    merged[0, :2] = True
    clusters = torch.full((1, nv), -1)
    pruned = torch.tensor([i for i in range(nv) if i not in set(kept[0].tolist())])
    clusters[0, pruned[:3]] = 0
    st = StageRecord(layer=1, kept=kept, merged=merged, scores=scores, clusters=clusters)
    return RetentionTrace(frames, P, True, (ROWS, COLS), 4, 1, [st])


def test_tiles_outline_kept_cells_and_dim_pruned():
    trace = make_trace()
    frames = np.full((T, 32, 32, 3), 200, dtype=np.uint8)
    spec = VideoProcessorSpec(shortest_edge=32, crop_size=32)
    tiles = heatmap.render_frames(frames, trace, cell=128, spec=spec, timestamps=[0.5 * t for t in range(T)])
    kept = set(trace.stages[0].kept[0].tolist())
    merged = set(trace.stages[0].kept[0][trace.stages[0].merged[0]].tolist())
    ph = 128 // ROWS
    for t in range(T):
        tile = tiles[t].astype(int)
        for p in range(1, P):
            r, c = divmod(p - 1, COLS)
            corner = tuple(tile[r * ph, c * ph])
            center = tile[r * ph + ph // 2, c * ph + ph // 2]
            i = t * P + p
            if i in kept:
                assert corner == ((255, 0, 255) if i in merged else (255, 255, 255)), (t, p)
                assert center.max() > 0.3 * 200 + 5  # not dimmed
            else:
                assert center.max() <= int(0.3 * 200) + 1, (t, p)  # dimmed, no heat overlay
        # CLS badge: green when the frame's CLS token is kept
        badge = tuple(tile[5, 128 - 5])
        assert badge == ((40, 200, 80) if t * P in kept else (90, 90, 90))


def test_png_grid_contains_the_tiles_and_json_npz_match(tmp_path):
    trace = make_trace(1)
    frames = np.full((T, 32, 32, 3), 180, dtype=np.uint8)
    spec = VideoProcessorSpec(shortest_edge=32, crop_size=32)
    ts = [0.25 * t for t in range(T)]
    paths = heatmap.write_all(frames, trace, str(tmp_path), spec=spec, timestamps=ts, title="Q: what? A: red")
    tiles = heatmap.render_frames(frames, trace, cell=224, spec=spec, timestamps=ts)
    png = np.asarray(Image.open(paths["png"]).convert("RGB"))
    cols = int(np.ceil(np.sqrt(T * 1.6)))
    th, tw = tiles[0].shape[:2]
    # locate tile 0 by its known content: search the header offset
    found = False
    for head in range(0, 80):
        if np.array_equal(png[head : head + th, 4 : 4 + tw], tiles[0]):
            found = True
            break
    assert found, "tile 0 not found in the PNG grid"
    for t in range(T):
        r, c = divmod(t, cols)
        y, x = head + r * (th + 4), 4 + c * (tw + 4)
        assert np.array_equal(png[y : y + th, x : x + tw], tiles[t])
    doc = json.load(open(paths["json"]))
    tab = doc["tokens"]
    kept = trace.stages[0].kept[0].tolist()
    assert [i for i, k in enumerate(tab["kept"]) if k] == kept
    assert doc["counts"] == [len(kept)]
    for i in range(T * P):
        assert tab["frame"][i] == i // P
        tok = i % P
        assert (tab["row"][i], tab["col"][i]) == ((-1, -1) if tok == 0 else divmod(tok - 1, COLS))
        assert tab["score"][i] == pytest.approx(float(trace.stages[0].scores[0, i]))
        assert tab["stage"][i] == (-1 if i in kept else 0)
        assert tab["time"][i] == ts[i // P]
    assert sum(c >= 0 for c in tab["cluster"]) == 3
    npz = np.load(paths["npz"])
    assert np.array_equal(np.nonzero(npz["kept"])[0], np.array(kept))
    import av

    with av.open(paths["mp4"]) as c:
        n = sum(1 for _ in c.decode(video=0))
    assert n == T
    # the JSON round-trips into a trace with the same kept set
    back, _ = heatmap.trace_from_json(paths["json"])
    assert back.stages[-1].kept[0].tolist() == kept
    assert back.num_layers == trace.num_layers and back.equivalent_tokens == pytest.approx(trace.equivalent_tokens)


def test_many_frames_stay_legible(tmp_path):
    trace = make_trace(2, frames=64)
    frames = np.random.default_rng(0).integers(0, 255, (64, 32, 32, 3), dtype=np.uint8)
    path = heatmap.render_grid(frames, trace, str(tmp_path / "g.png"),
                               spec=VideoProcessorSpec(shortest_edge=32, crop_size=32))
    img = Image.open(path)
    cols = int(np.ceil(np.sqrt(64 * 1.6)))
    assert img.width <= 2600 and img.width >= cols * 96  # cells never below 96 px
