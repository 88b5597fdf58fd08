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


# ---------------------------------------------------------------- JSON round trip is lossless

def make_two_stage_trace(seed=3, frames=T):
    """Two stages with recycling at both, raters, redundancy flags and text positions: every field
    `token_table` and the renderers read is non-trivial."""
    g = torch.Generator().manual_seed(seed)
    nv = frames * P
    s0 = torch.rand(1, nv, generator=g)
    kept0 = torch.randperm(nv, generator=g)[: nv // 2].sort().values
    pruned0 = torch.tensor(sorted(set(range(nv)) - set(kept0.tolist())))
    merged0 = torch.zeros(len(kept0), dtype=torch.bool)
    merged0[[1, 4]] = True
    cl0 = torch.full((nv,), -1)
    cl0[pruned0[:5]] = 1
    cl0[pruned0[5:9]] = 4
    s1 = torch.full((nv,), float("nan"))
    s1[kept0] = torch.rand(len(kept0), generator=g)
    kept1 = kept0[torch.randperm(len(kept0), generator=g)[: nv // 5]].sort().values
    pruned1 = torch.tensor(sorted(set(kept0.tolist()) - set(kept1.tolist())))
    merged1 = torch.tensor([k in set(kept0[merged0].tolist()) for k in kept1.tolist()])
    merged1[0] = True
    cl1 = torch.full((nv,), -1)
    cl1[pruned1[:3]] = 0
    raters = torch.tensor([True, False, True, True])
    redundant = torch.rand(1, nv, generator=g) > 0.7
    st0 = StageRecord(1, kept0[None], merged0[None], s0, raters[None], cl0[None], redundant)
    st1 = StageRecord(2, kept1[None], merged1[None], s1[None], raters[None], cl1[None], None)
    return RetentionTrace(frames, P, True, (ROWS, COLS), 6, 1, [st0, st1], {"name": "hand"},
                          torch.tensor([[40, 41, 42, 43]]))


def assert_tables_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert len(a[k]) == len(b[k]), k
        for i, (x, y) in enumerate(zip(a[k], b[k])):
            assert x == y, (k, i, x, y)


def assert_traces_equal(a, b):
    assert (a.num_frames, a.tokens_per_frame, a.has_cls, tuple(a.grid), a.num_layers) == \
           (b.num_frames, b.tokens_per_frame, b.has_cls, tuple(b.grid), b.num_layers)
    assert a.counts == b.counts and a.equivalent_tokens == b.equivalent_tokens
    assert len(a.stages) == len(b.stages)
    for sa, sb in zip(a.stages, b.stages):
        assert sa.layer == sb.layer
        for name in ("kept", "merged", "raters", "clusters", "redundant"):
            xa, xb = getattr(sa, name), getattr(sb, name)
            assert (xa is None) == (xb is None), name
            if xa is not None:
                assert torch.equal(xa.cpu(), xb.cpu()), name
        assert torch.equal(sa.scores.float().isnan(), sb.scores.isnan())
        ok = ~sa.scores.float().isnan()
        assert torch.equal(sa.scores.float()[ok], sb.scores[ok])  # float32 exact
    ra, rb = a.raters_text_positions, b.raters_text_positions
    assert (ra is None) == (rb is None) and (ra is None or torch.equal(ra, rb))


def test_json_round_trip_keeps_clusters_and_every_stage(tmp_path):
    trace = make_two_stage_trace()
    ts = [0.5 * t for t in range(T)]
    path = heatmap.write_json(trace, str(tmp_path / "r.json"), timestamps=ts)
    back, doc = heatmap.trace_from_json(path)
    assert_traces_equal(trace, back)
    a, b = heatmap.token_table(trace, timestamps=ts), heatmap.token_table(back, timestamps=doc["timestamps"])
    assert_tables_equal(a, b)
    # the recycled clusters survive (the defect: every cluster came back as -1)
    assert sum(c >= 0 for c in b["cluster"]) == 5 + 4 + 3
    assert any(b["merged"])
    # a second round trip is a fixed point
    back2, _ = heatmap.trace_from_json(heatmap.write_json(back, str(tmp_path / "r2.json"), timestamps=ts))
    assert_traces_equal(back, back2)


def test_json_round_trip_selects_the_sample_of_a_batch(tmp_path):
    one, other = make_two_stage_trace(3), make_two_stage_trace(4)
    assert one.counts == other.counts  # same counts by construction, different tokens
    stages = [StageRecord(s.layer, torch.cat([s.kept, o.kept]), torch.cat([s.merged, o.merged]),
                          torch.cat([s.scores, o.scores]), torch.cat([s.raters, o.raters]),
                          torch.cat([s.clusters, o.clusters]), None)
              for s, o in zip(one.stages, other.stages)]
    both = RetentionTrace(T, P, True, (ROWS, COLS), 6, 2, stages, {})
    back, _ = heatmap.trace_from_json(heatmap.write_json(both, str(tmp_path / "b.json"), sample=1))
    assert_tables_equal(heatmap.token_table(both, sample=1), heatmap.token_table(back))
    assert heatmap.token_table(back) != heatmap.token_table(both, sample=0)


def test_legacy_json_without_stage_records_still_keeps_clusters(tmp_path):
    trace = make_two_stage_trace()
    path = heatmap.write_json(trace, str(tmp_path / "old.json"))
    doc = json.load(open(path))
    doc.pop("stages")
    doc.pop("raters_text_positions")
    json.dump(doc, open(path, "w"))
    back, _ = heatmap.trace_from_json(path)
    assert_tables_equal(heatmap.token_table(trace), heatmap.token_table(back))
    assert back.counts == trace.counts and back.equivalent_tokens == trace.equivalent_tokens


def test_json_with_inconsistent_stage_records_is_rejected(tmp_path):
    trace = make_two_stage_trace()
    path = heatmap.write_json(trace, str(tmp_path / "bad.json"))
    doc = json.load(open(path))
    doc["stages"][0]["scores"] = doc["stages"][0]["scores"][:-1]
    json.dump(doc, open(path, "w"))
    with pytest.raises(ValueError, match="scores"):
        heatmap.trace_from_json(path)


# ---------------------------------------------------------------- header text says what the numbers are

def test_summary_text_one_stage():
    trace = make_trace()  # 85 visual tokens, one stage at layer 1 of 4
    k = trace.counts[0]
    s = heatmap.summary_text(trace)
    assert s.startswith(f"{T * P} visual tokens -> {k} kept after layer 1 (decoder layers 0-3); ")
    assert f"{100 * k / (T * P):.3g}% kept" in s
    assert f"equivalent tokens {trace.equivalent_tokens:.1f}" in s
    assert "stages" not in s and "[" not in s


def test_summary_text_two_stages():
    trace = make_two_stage_trace()
    k0, k1 = trace.counts
    s = heatmap.summary_text(trace)
    assert s.startswith(f"{T * P} visual tokens -> {k0} after layer 1 -> {k1} kept after layer 2 "
                        f"(decoder layers 0-5); ")
    assert f"{100 * k1 / (T * P):.3g}% kept" in s and f"equivalent tokens {trace.equivalent_tokens:.1f}" in s


def test_summary_text_no_stage():
    trace = RetentionTrace(2, P, True, (ROWS, COLS), 4, 1, [])
    assert heatmap.summary_text(trace) == f"{2 * P} visual tokens, none pruned (decoder layers 0-3); " \
                                          f"equivalent tokens {2 * P:.1f}"


# ---------------------------------------------------------------- bad timestamps

@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), 2e7, -1e8, None, "x"])
def test_bad_timestamps_label_as_unknown(bad, tmp_path):
    assert heatmap.time_label(bad) == "t=?"
    assert heatmap.time_label(1.5) == "t=1.50s" and heatmap.time_label(9e6) == "t=9000000.00s"
    assert heatmap.frame_label(3, 2, 17, bad, True) == "#3 t=?  kept 2/17"
    trace = make_trace(frames=2)
    ts = [0.5, bad]
    tab = heatmap.token_table(trace, timestamps=ts)
    assert tab["time"][0] == 0.5 and tab["time"][P] is None
    path = heatmap.write_json(trace, str(tmp_path / "t.json"), timestamps=ts)
    text = open(path).read()
    assert "NaN" not in text and "Infinity" not in text  # strict JSON
    doc = json.loads(text)
    assert doc["timestamps"] == [0.5, None]
    # rendered labels: the tile with the bad timestamp equals one drawn from the label "t=?"
    frames = np.full((2, 32, 32, 3), 120, dtype=np.uint8)
    spec = VideoProcessorSpec(shortest_edge=32, crop_size=32)
    tiles = heatmap.render_frames(frames, trace, cell=128, spec=spec, timestamps=ts)
    ref = heatmap.render_frames(frames, trace, cell=128, spec=spec, timestamps=[0.5, float("nan")])
    assert np.array_equal(tiles[1], ref[1])
    good = heatmap.render_frames(frames, trace, cell=128, spec=spec, timestamps=[0.5, 1234.5])
    assert not np.array_equal(tiles[1][128:], good[1][128:])  # the label differs from a real time
