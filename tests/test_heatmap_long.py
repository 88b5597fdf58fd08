"""Heatmaps of long-video traces: the timeline PNG, the frame subset of the grid, pool / timestamps in
JSON / NPZ and their round trip. Traces are built by hand (no model) except for one test-bed run."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from videosparse import heatmap
from videosparse.core.trace import RetentionTrace, StageRecord
from videosparse.video import VideoProcessorSpec

from test_heatmap import assert_tables_equal, assert_traces_equal

P, GRID = 37, (6, 6)
SPEC = VideoProcessorSpec(shortest_edge=32, crop_size=32)


def make_long_trace(T=300, K=296, k=30, seed=0, stages=True, pool=True, timestamps="seconds"):
    """T frames x P tokens; a pool of K ids chosen by pre-selection score (frames 50-59 score high);
    one stage at layer 1 keeping the k best-scored pool tokens (two of them recycled)."""
    g = torch.Generator().manual_seed(seed)
    nv = T * P
    pre = torch.randn(1, nv, generator=g)
    hot = slice(min(50, T // 2) * P, min(60, T) * P)
    pre[0, hot] += 3.0
    pool_ids = torch.topk(pre[0], K).indices.sort().values
    recs = []
    if stages:
        s = torch.full((1, nv), float("nan"))
        s[0, pool_ids] = torch.rand(K, generator=g) + 0.01
        kept = pool_ids[torch.topk(s[0, pool_ids], k).indices].sort().values
        merged = torch.zeros(1, k, dtype=torch.bool)
        merged[0, :2] = True
        recs.append(StageRecord(1, kept[None], merged, s))
    pool_rec = None
    if pool:
        pool_rec = StageRecord(-1, pool_ids[None], torch.zeros(1, K, dtype=torch.bool), pre,
                               redundant=torch.rand(1, nv, generator=g) > 0.8)
    ts = [0.5 * t + 3.0 for t in range(T)] if timestamps == "seconds" else timestamps
    return RetentionTrace(T, P, True, GRID, 4, 1, recs, {"name": "hand"}, None, K if pool else None, pool_rec, ts)


def thumbnails(T, side=48, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (T, side, side, 3), dtype=np.uint8)


def frame_max(scores, T):
    """Independent per-frame max ignoring NaN (NaN for a frame with none)."""
    s = scores.numpy().reshape(T, P).astype(np.float64)
    out = np.full(T, np.nan)
    for t in range(T):
        row = s[t][~np.isnan(s[t])]
        if row.size:
            out[t] = row.max()
    return out


# ---------------------------------------------------------------- timeline data

def test_timeline_data_matches_numpy():
    trace = make_long_trace()
    T = trace.num_frames
    d = heatmap.timeline_data(trace)
    kept_ids = trace.stages[-1].kept[0].numpy()
    pool_ids = trace.pool.kept[0].numpy()
    assert np.array_equal(d["kept"], np.bincount(kept_ids // P, minlength=T))
    assert np.array_equal(d["pooled"], np.bincount(pool_ids // P, minlength=T))
    assert d["kept"].sum() == 30 and d["pooled"].sum() == 296
    assert (d["kept"] <= d["pooled"]).all()
    np.testing.assert_allclose(d["score"], frame_max(trace.pool.scores[0], T), rtol=0, atol=0)
    np.testing.assert_array_equal(d["time"], np.asarray(trace.timestamps))
    np.testing.assert_array_equal(d["x"], d["time"])
    assert len(d["edges"]) == T + 1 and (np.diff(d["edges"]) > 0).all()
    assert d["x_label"] == "time (s)" and d["time_note"] is None
    assert d["kept_label"] == "kept after layer 1"
    # the hot segment is where the pool went
    assert d["pooled"][50:60].sum() > 0.5 * 296


def test_timeline_data_without_pool_uses_the_last_stage():
    g = torch.Generator().manual_seed(1)
    T = 40
    nv = T * P
    s0 = torch.rand(1, nv, generator=g)
    kept0 = torch.randperm(nv, generator=g)[: nv // 3].sort().values
    s1 = torch.full((1, nv), float("nan"))
    s1[0, kept0] = torch.rand(len(kept0), generator=g)
    s1[0, 5 * P:6 * P] = float("nan")  # frame 5: no score at the last stage
    kept1 = kept0[torch.randperm(len(kept0), generator=g)[:50]].sort().values
    st = [StageRecord(0, kept0[None], torch.zeros(1, len(kept0), dtype=torch.bool), s0),
          StageRecord(2, kept1[None], torch.zeros(1, 50, dtype=torch.bool), s1)]
    trace = RetentionTrace(T, P, True, GRID, 4, 1, st)
    d = heatmap.timeline_data(trace)
    assert d["pooled"] is None
    assert np.array_equal(d["kept"], np.bincount(kept1.numpy() // P, minlength=T))
    expect = frame_max(s1[0], T)
    assert np.isnan(d["score"][5]) and np.isnan(expect[5])
    np.testing.assert_array_equal(d["score"], expect)
    assert d["time"] is None and np.array_equal(d["x"], np.arange(T)) and d["x_label"] == "sampled frame"
    assert d["score_label"] == "score at layer 2"


def test_timeline_data_without_stages():
    only_pool = make_long_trace(T=80, stages=False)
    d = heatmap.timeline_data(only_pool)
    assert np.array_equal(d["kept"], d["pooled"]) and d["kept"].sum() == 296
    bare = RetentionTrace(20, P, True, GRID, 4, 1, [])
    d = heatmap.timeline_data(bare)
    assert (d["kept"] == P).all() and d["pooled"] is None and np.isnan(d["score"]).all()


# ---------------------------------------------------------------- timeline PNG

def test_render_timeline_png(tmp_path):
    trace = make_long_trace()
    path = heatmap.render_timeline(trace, str(tmp_path / "t.png"), title="Q: where is the yellow object?  "
                                   "A: top right " + "and a long answer " * 20)
    img = np.asarray(Image.open(path).convert("RGB")).astype(int)
    h, w = img.shape[:2]
    assert w >= 1000 and h >= 500
    assert img.std() > 10  # not a blank canvas
    # the dark kept bars, the light pooled bars and the orange score line are all drawn
    for colour in ((0x08, 0x51, 0x9C), (0x9E, 0xCA, 0xE1), (0xD9, 0x48, 0x01)):
        assert (np.abs(img - np.array(colour)).sum(-1) < 12).sum() > 20, colour


@pytest.mark.parametrize("T", [8, 10000])
def test_timeline_any_length(T, tmp_path):
    trace = make_long_trace(T=T, K=min(296, T * P // 2), k=min(30, T * 2))
    path = heatmap.render_timeline(trace, str(tmp_path / f"t{T}.png"))
    img = np.asarray(Image.open(path).convert("RGB")).astype(int)
    assert img.std() > 10
    # kept frames stay visible even when a frame is a fraction of a pixel wide
    assert (np.abs(img - np.array((0x08, 0x51, 0x9C))).sum(-1) < 12).sum() > 20


def test_nan_timestamps_and_all_nan_scores_do_not_crash(tmp_path, caplog):
    T = 120
    ts = [0.5 * t for t in range(T)]
    ts[7] = float("nan")
    trace = make_long_trace(T=T, timestamps=ts)
    trace.pool.scores[:] = float("nan")
    trace.stages[-1].scores[:] = float("nan")
    d = heatmap.timeline_data(trace)
    assert d["time"] is None and np.array_equal(d["x"], np.arange(T)) and "1 of 120" in d["time_note"]
    assert np.isnan(d["score"]).all()
    with caplog.at_level(logging.WARNING, logger="videosparse.heatmap"):
        path = heatmap.render_timeline(trace, str(tmp_path / "t.png"))
    assert any("x axis = sampled frame index" in r.getMessage() for r in caplog.records)
    assert np.asarray(Image.open(path)).std() > 10
    # non-increasing, short and missing timestamps fall back too
    for bad in ([1.0] * T, ts[:10], [None] * T):
        assert heatmap.timeline_data(trace, timestamps=bad)["time"] is None
    # the whole write_all path with bad timestamps
    paths = heatmap.write_all(thumbnails(T), trace, str(tmp_path / "all"), video=False)
    assert set(paths) == {"png", "timeline", "json", "npz"}
    back, doc = heatmap.trace_from_json(paths["json"])
    assert doc["timestamps"][7] is None and np.isnan(back.timestamps[7])
    assert_tables_equal(heatmap.token_table(trace), heatmap.token_table(back))


# ---------------------------------------------------------------- write_all on long traces

def test_write_all_long_trace_grid_shows_only_kept_frames(tmp_path):
    trace = make_long_trace()
    T = trace.num_frames
    frames = thumbnails(T)
    paths = heatmap.write_all(frames, trace, str(tmp_path), title="Q: what? A: red", video=True)
    assert set(paths) == {"png", "timeline", "json", "npz", "mp4"}
    assert paths["timeline"].endswith("retention_timeline.png")
    shown = heatmap.grid_frames(trace)
    expect = sorted(set((trace.stages[-1].kept[0] // P).tolist()))
    assert shown == expect and len(shown) < 64
    # the tiles are those of the real frames (frame number + timestamp in the label, same content)
    tiles = heatmap.render_frames(frames, trace, cell=96, indices=shown)
    full = heatmap.render_frames(frames, trace, cell=96)
    for j, t in enumerate(shown):
        assert np.array_equal(tiles[j], full[t]), t
    assert not np.array_equal(tiles[1], full[1])  # the second tile is not sampled frame #1
    # the PNG grid holds exactly those tiles, in temporal order
    grid_tiles = heatmap.render_frames(frames, trace, cell=224, indices=shown)
    png = np.asarray(Image.open(paths["png"]).convert("RGB"))
    th, tw = grid_tiles[0].shape[:2]
    cols = int(np.ceil(np.sqrt(len(shown) * 1.6)))
    head = next(h for h in range(0, 120) if np.array_equal(png[h:h + th, 4:4 + tw], grid_tiles[0]))
    for j in range(len(shown)):
        r, c = divmod(j, cols)
        y, x = head + r * (th + 4), 4 + c * (tw + 4)
        assert np.array_equal(png[y:y + th, x:x + tw], grid_tiles[j]), j
    nrows = int(np.ceil(len(shown) / cols))
    assert png.shape[1] == cols * (tw + 4) + 4
    below = png[head + nrows * (th + 4):]  # after the last row: only the legend, no further tiles
    assert below.shape[0] < 40
    note = heatmap.grid_note(trace, 0, shown)
    assert note.startswith(f"Only {len(shown)} of {T} sampled frames are shown")
    import av

    with av.open(paths["mp4"]) as c:
        assert sum(1 for _ in c.decode(video=0)) == len(shown)


def test_grid_frames_caps_at_64_with_the_most_kept():
    T, nv = 300, 300 * P
    g = torch.Generator().manual_seed(5)
    frames_with = torch.randperm(T, generator=g)[:100].sort().values
    ids = []
    for j, t in enumerate(frames_with.tolist()):
        ids += [t * P + p for p in range(1 + j % 5)]  # 1..5 kept tokens per frame
    kept = torch.tensor(ids)
    st = StageRecord(1, kept[None], torch.zeros(1, len(ids), dtype=torch.bool), torch.rand(1, nv, generator=g))
    trace = RetentionTrace(T, P, True, GRID, 4, 1, [st])
    shown = heatmap.grid_frames(trace)
    per = np.bincount(kept.numpy() // P, minlength=T)
    assert len(shown) == 64 and shown == sorted(shown)
    assert all(per[t] > 0 for t in shown)
    rest = [t for t in range(T) if per[t] > 0 and t not in set(shown)]
    assert min(per[shown]) >= max(per[rest])
    assert "64 with the most kept tokens of the 100 holding kept tokens" in heatmap.grid_note(trace, 0, shown)
    # nothing kept anywhere (no stage, no pool, all tokens alive): evenly spaced frames
    bare = RetentionTrace(T, P, True, GRID, 4, 1, [])
    even = heatmap.grid_frames(bare)
    assert len(even) == 64 and even[0] == 0 and even[-1] == T - 1
    # <= 64 frames: all of them
    assert heatmap.grid_frames(make_long_trace(T=64, K=200, k=20)) == list(range(64))


def test_timeline_only_for_long_or_pooled_traces(tmp_path):
    short = make_long_trace(T=8, K=100, k=10, pool=False, timestamps=None)
    assert "timeline" not in heatmap.write_all(thumbnails(8), short, str(tmp_path / "a"), spec=SPEC, video=False)
    pooled = make_long_trace(T=8, K=100, k=10)
    assert "timeline" in heatmap.write_all(thumbnails(8), pooled, str(tmp_path / "b"), video=False)
    longer = make_long_trace(T=17, K=100, k=10, pool=False)
    assert "timeline" in heatmap.write_all(thumbnails(17), longer, str(tmp_path / "c"), spec=SPEC, video=False)


# ---------------------------------------------------------------- JSON / NPZ carry the pool and timestamps

def test_json_npz_round_trip_of_pool_timestamps_decoder_visual(tmp_path):
    trace = make_long_trace()
    T, nv = trace.num_frames, trace.num_visual
    tab = heatmap.token_table(trace)
    pool_ids = set(trace.pool.kept[0].tolist())
    kept_ids = set(trace.stages[-1].kept[0].tolist())
    assert [i for i in range(nv) if tab["pooled"][i]] == sorted(pool_ids)
    assert all(tab["pooled"][i] for i in kept_ids)
    assert all(tab["stage"][i] == (-1 if i in kept_ids else 0 if i in pool_ids else -2) for i in range(nv))
    np.testing.assert_array_equal(np.array(tab["pool_score"], dtype=np.float64),
                                  trace.pool.scores[0].numpy().astype(np.float64))
    assert tab["time"][P * 10] == trace.timestamps[10]  # the trace's own timestamps
    path = heatmap.write_json(trace, str(tmp_path / "r.json"))
    doc = json.load(open(path))
    assert doc["decoder_visual"] == 296 and doc["pool"]["layer"] == -1 and doc["pool"]["count"] == 296
    assert doc["timestamps"] == trace.timestamps
    back, _ = heatmap.trace_from_json(path)
    assert_traces_equal(trace, back)
    assert back.decoder_visual == 296 and back.timestamps == trace.timestamps
    assert back.equivalent_tokens == trace.equivalent_tokens
    for name in ("kept", "merged", "redundant"):
        assert torch.equal(getattr(trace.pool, name), getattr(back.pool, name)), name
    assert torch.equal(trace.pool.scores, back.pool.scores)
    assert_tables_equal(tab, heatmap.token_table(back))
    # re-rendering the restored trace gives the same tables and timeline data
    a = heatmap.write_all(thumbnails(T), trace, str(tmp_path / "a"), video=False)
    b = heatmap.write_all(thumbnails(T), back, str(tmp_path / "b"), video=False)
    assert json.load(open(a["json"]))["tokens"] == json.load(open(b["json"]))["tokens"]
    for key in ("png", "timeline"):
        assert np.array_equal(np.asarray(Image.open(a[key])), np.asarray(Image.open(b[key]))), key
    npz = np.load(a["npz"])
    assert np.array_equal(np.nonzero(npz["pooled"])[0], np.array(sorted(pool_ids)))
    np.testing.assert_array_equal(npz["pool_score"], trace.pool.scores[0].numpy().astype(np.float64))
    np.testing.assert_array_equal(npz["timestamps"], np.asarray(trace.timestamps))
    assert int(npz["decoder_visual"]) == 296 and np.array_equal(npz["pool_kept"], trace.pool.kept[0].numpy())


def test_summary_mentions_the_pool():
    trace = make_long_trace()
    assert heatmap.summary_text(trace).startswith(f"{300 * P} visual tokens -> 296 pooled before the decoder -> "
                                                  f"30 kept after layer 1 (decoder layers 0-3)")
    assert "296 pooled before the decoder, none pruned in it" in heatmap.summary_text(
        make_long_trace(stages=False))


# ---------------------------------------------------------------- the test-bed model, end to end

def test_testbed_long_video_end_to_end(tmp_path):
    import videosparse.testbed.synthetic as syn
    from videosparse import VideoQA

    qa = VideoQA.from_pretrained("testbed")
    sample = syn.make_sample(5, 0, syn.GenConfig(num_frames=96))
    ans = qa.ask(sample.frames, sample.question, max_new_tokens=3)
    trace = ans.trace
    assert trace.pool is not None and trace.num_frames == 96 and len(ans.timestamps) == 96
    paths = heatmap.write_all(ans.frames, trace, str(tmp_path), spec=qa.spec, timestamps=ans.timestamps,
                              video=False, title=f"Q: {ans.question}  A: {ans.text}")
    assert {"png", "timeline", "json"} <= set(paths)
    d = heatmap.timeline_data(trace, timestamps=ans.timestamps)
    target_frames = sorted({f for f, _, _ in sample.target})
    assert target_frames and all(d["pooled"][f] > 0 for f in target_frames), (target_frames, d["pooled"])
    assert d["kept"].sum() == trace.counts[-1] and d["pooled"].sum() == trace.decoder_visual
    back, doc = heatmap.trace_from_json(paths["json"])
    assert_tables_equal(heatmap.token_table(trace, timestamps=ans.timestamps),
                        heatmap.token_table(back, timestamps=doc["timestamps"]))
