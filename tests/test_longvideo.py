"""The long-video path: pool algebra against slow references, bounded memory, and the pipeline end to end
on the trained test-bed model (pool size, timestamps, batching, KV cache, bad input)."""

from __future__ import annotations

import gc
import json
import math

import numpy as np
import pytest
import torch

from videosparse import LongVideoConfig, SparseConfig, VideoQA, cli
from videosparse.core.pool import (
    AffinityStats,
    floor_windows,
    relevance_scores,
    repeats_previous,
    select_pool,
    text_affinity,
    time_positions,
)
from videosparse.longvideo import build_pools
from videosparse.testbed import synthetic as syn
from videosparse.video import Clip

P = 37  # test-bed tokens per frame


# ----------------------------------------------------------------------------- pure pool functions
def _ref_select(scores, window, per_window, global_count):
    """Slow reference of select_pool for one row."""
    C = len(scores)
    floor = set()
    for w in sorted(set(window)):
        members = [i for i in range(C) if window[i] == w]
        members.sort(key=lambda i: (-scores[i], i))
        floor.update(members[:per_window])
    rest = sorted((i for i in range(C) if i not in floor), key=lambda i: (-scores[i], i))
    return sorted(floor | set(rest[:global_count]))


@pytest.mark.parametrize("C,per_window,global_count,ties", [(50, 1, 10, False), (97, 2, 0, False), (64, 0, 20, True),
                                                              (30, 3, 100, True), (1, 1, 1, False)])
def test_select_pool_matches_reference(C, per_window, global_count, ties):
    g = torch.Generator().manual_seed(C)
    scores = torch.randn(3, C, generator=g)
    if ties:
        scores = scores.round()
    window = torch.sort(torch.randint(0, max(1, C // 7), (C,), generator=g)).values
    got = select_pool(scores, window, per_window, global_count)
    for q in range(3):
        ref = _ref_select(scores[q].tolist(), window.tolist(), per_window, global_count)
        assert got[q].tolist() == ref


@pytest.mark.parametrize("T,cap,floor,share,expect", [
    (8, 296, 1, 0.25, (1, 1)),        # 8 floor tokens fit in 74
    (64, 296, 1, 0.25, (1, 1)),       # 64 <= 74
    (256, 296, 1, 0.25, (4, 1)),      # 74 slots for 256 frames: windows of 4 frames
    (256, 296, 0, 0.25, (1, 0)),      # no floor
    (100, 296, 2, 1.0, (1, 2)),
    (10_000, 2056, 1, 0.25, (20, 1)),
    (5, 3, 1, 0.1, (1, 0)),           # no slot at all
])
def test_floor_windows(T, cap, floor, share, expect):
    fpw, per = floor_windows(T, cap, floor, share, P)
    assert (fpw, per) == expect
    if per:  # floor tokens stay within their share of the pool
        assert per * math.ceil(T / fpw) <= int(share * cap)


def test_time_positions_layout():
    T, K = 256, 296
    ids = torch.sort(torch.randperm(T * P, generator=torch.Generator().manual_seed(0))[:K]).values
    off = time_positions(ids, T, P, K)
    frames = ids // P
    slots = off // P
    assert bool((slots[1:] >= slots[:-1]).all())
    assert int(off.max()) < (K // P) * P and int(off.min()) >= 0
    assert torch.equal(off % P, ids % P)  # in-frame offset kept
    assert torch.equal(slots, frames * (K // P) // T)


def test_repeats_previous_across_chunks_equals_whole():
    g = torch.Generator().manual_seed(1)
    base = torch.randn(1, P, 16, generator=g)
    feats = base.repeat(12, 1, 1) + 0.05 * torch.randn(12, P, 16, generator=g)
    feats[5] = torch.randn(P, 16, generator=g)  # a scene change
    whole = repeats_previous(feats, None, 0.9)
    parts = [repeats_previous(feats[0:4], None, 0.9), repeats_previous(feats[4:9], feats[3], 0.9),
             repeats_previous(feats[9:], feats[8], 0.9)]
    assert torch.equal(torch.cat(parts), whole)
    assert not whole[0].any() and whole[1].all() and not whole[5].any() and not whole[6].any() and whole[7].all()


def test_relevance_standardises_each_text_token():
    # text token 0 is close to every visual token (a template word), token 1 only to two of them (the object)
    D = 8
    vis = torch.zeros(100, D)
    vis[:, 0] = 5.0 + 0.1 * torch.randn(100, generator=torch.Generator().manual_seed(2))
    vis[[17, 60], 1] = 3.0
    text = torch.zeros(1, 2, D)
    text[0, 0, 0] = 1.0
    text[0, 1, 1] = 1.0
    logits = text_affinity(vis, text)
    stats = AffinityStats.empty(1, 2).update(logits)
    s = relevance_scores(logits, stats, torch.ones(1, 2, dtype=torch.bool))
    assert set(s[0].topk(2).indices.tolist()) == {17, 60}
    # a padded text column never contributes
    s2 = relevance_scores(logits, stats, torch.tensor([[True, False]]))
    assert set(s2[0].topk(2).indices.tolist()) != {17, 60}


# ----------------------------------------------------------------------------- streaming = offline, bounded
def _fake_chunks(T, chunk, H=8):
    for s in range(0, T, chunk):
        idx = np.arange(s, min(T, s + chunk))
        yield Clip(frames=np.zeros((len(idx), H, H, 3), np.uint8), indices=idx, timestamps=idx / 4.0, fps=4.0,
                   num_source_frames=T, duration=T / 4.0, backend="array")


def _fake_encoder(D=16, seed=0):
    def encode(frames):
        t = torch.Generator().manual_seed(seed + int(frames.shape[0]))
        return torch.randn(frames.shape[0], P, D, generator=t)
    return encode


@pytest.mark.parametrize("chunk", [1, 7, 32, 300])
def test_streaming_pool_equals_offline_selection(chunk):
    """With scores fixed per token (random method), the streamed pool is exactly the offline choice: each
    window's best token plus the global top of the rest, whatever the chunk size."""
    T, cap = 150, 296
    cfg = SparseConfig(long=LongVideoConfig(method="random", temporal_tau=None), seed=3)
    text = torch.zeros(2, 3, 16)
    valid = torch.ones(2, 3, dtype=torch.bool)
    pools = build_pools(_fake_chunks(T, chunk), _fake_encoder(), text, valid, T, P, cap, cfg)
    table = torch.rand(T * P, generator=torch.Generator().manual_seed(3))
    fpw, per = floor_windows(T, cap, 1, 0.25, P)
    window = (torch.arange(T * P) // P) // fpw
    ref = _ref_select(table.tolist(), window.tolist(), per, cap - per * math.ceil(T / fpw))
    for pv in pools:
        assert pv.ids.tolist() == ref
        assert pv.num_tokens == cap and pv.peak_pool <= cap
        assert pv.timestamps.tolist() == (np.arange(T) / 4.0).tolist()


@pytest.mark.parametrize("T,cap,chunk", [(40, 296, 32), (333, 296, 16), (64, 100, 5), (10, 1000, 4)])
def test_pool_never_exceeds_pre_budget(T, cap, chunk):
    cfg = SparseConfig()
    seen = []
    pools = build_pools(_fake_chunks(T, chunk), _fake_encoder(), torch.randn(1, 4, 16), torch.ones(1, 4, dtype=torch.bool),
                        T, P, cap, cfg, on_chunk=lambda done, feats: seen.append(int(feats.shape[1])))
    assert max(seen) <= cap and pools[0].peak_pool == max(seen)
    assert pools[0].num_tokens == min(cap, T * P)
    ids = pools[0].ids
    assert bool((ids[1:] > ids[:-1]).all())  # frame-major, temporal order
    # the floor: every window keeps a token
    fpw, per = floor_windows(T, cap, cfg.long.frame_floor, cfg.long.floor_share, P)
    if per:
        assert set(((ids // P) // fpw).tolist()) == set(range(math.ceil(T / fpw)))


def _feature_bytes(D):
    """Bytes of every live tensor whose last dimension is the feature size D (the features)."""
    import warnings

    total = 0
    with warnings.catch_warnings():  # isinstance() on some torch.distributed objects warns
        warnings.simplefilter("ignore")
        objs = gc.get_objects()
        tensors = [o for o in objs if _is_tensor(o)]
    for o in tensors:
        if o.ndim >= 2 and o.shape[-1] == D:
            total += o.numel() * o.element_size()
    return total


def _is_tensor(o) -> bool:
    try:
        return isinstance(o, torch.Tensor)
    except Exception:  # pragma: no cover - objects that refuse inspection
        return False


def test_feature_memory_does_not_grow_with_frames():
    """Count the live feature tensors after every chunk: the same at 64 and at 1024 frames."""
    D = 48  # distinct from every other tensor's last dimension in this test
    cfg = SparseConfig()
    peaks = {}
    for T in (64, 1024):
        seen = []
        build_pools(_fake_chunks(T, 32), _fake_encoder(D), torch.randn(2, 5, D), torch.ones(2, 5, dtype=torch.bool),
                    T, P, 296, cfg, on_chunk=lambda done, feats: seen.append(_feature_bytes(D)))
        peaks[T] = max(seen)
    # pools (2 x 296 x D) + the previous frame (P x D) + text: nothing proportional to the frames
    assert peaks[1024] == peaks[64], peaks
    assert peaks[1024] <= (2 * 296 + P + 2 * 5) * D * 4 * 1.01


# ----------------------------------------------------------------------------- the pipeline (test-bed model)
@pytest.fixture(scope="module")
def qa():
    return VideoQA.from_pretrained("testbed")


@pytest.fixture(scope="module")
def needles():
    cfg = syn.GenConfig(num_frames=256)
    return [syn.make_sample(4242, i, cfg) for i in range(8)]


def _target_ids(s):
    return {f * P + 1 + r * 6 + c for f, r, c in s.target}


def test_needle_reaches_the_decoder(qa, needles):
    """Objects visible in 2 of 256 frames: the pool holds them; 8 uniform frames do not see them."""
    correct = 0
    for s in needles:
        ans = qa.ask(s.frames, s.question, num_frames=256, max_new_tokens=4, keep_frames=False)
        assert ans.pool_tokens == 296 and ans.visual_tokens == 256 * P and len(ans.timestamps) == 256
        assert _target_ids(s) <= set(ans.trace.pool.kept[0].tolist())
        assert ans.trace.decoder_visual == 296 and ans.counts == [60, 30]
        correct += syn.exact_match(ans.text, s.answer)
    assert correct >= 6, correct
    uniform = np.linspace(0, 255, 8).astype(int)
    unseen = [s for s in needles if not {f for f, _, _ in s.target} & set(uniform.tolist())]
    assert len(unseen) >= 6
    for s in unseen[:3]:
        assert not syn.exact_match(qa.ask(s.frames[uniform], s.question, max_new_tokens=4).text, s.answer)


def test_random_preselection_misses_needles(qa, needles):
    # pure random: without the temporal-redundancy penalty (which alone spots objects appearing in these
    # static synthetic scenes)
    random_pool = LongVideoConfig(method="random", temporal_tau=None)
    qa.set_sparsity(SparseConfig.preset("video", num_layers=4, long=random_pool))
    try:
        hits = [_target_ids(s) <= set(qa.ask(s.frames, s.question, max_new_tokens=2).trace.pool.kept[0].tolist())
                for s in needles[:4]]
    finally:
        qa.set_sparsity("video")
    assert sum(hits) <= 1


@pytest.fixture(scope="module")
def long_file(tmp_path_factory, needles):
    path = str(tmp_path_factory.mktemp("long") / "needle.mp4")
    syn.write_video(needles[0].frames, path, fps=4)
    return path


def test_trace_maps_tokens_to_frames_and_timestamps(qa, needles, long_file):
    s = needles[0]
    ans = qa.ask(long_file, s.question, num_frames=256, max_new_tokens=4)
    assert ans.frame_indices == list(range(256))
    assert ans.timestamps == pytest.approx([i / 4 for i in range(256)], abs=1e-4)
    t = ans.trace
    kept = t.stages[-1].kept[0].tolist()
    assert t.kept_frames() == [i // P for i in kept]
    assert t.kept_timestamps() == pytest.approx([ans.timestamps[i // P] for i in kept])
    assert ans.kept_timestamps == t.kept_timestamps()
    target_seconds = {f / 4 for f, _, _ in s.target}
    pooled_seconds = {round(ans.timestamps[i // P], 4) for i in t.pool.kept[0].tolist()}
    assert target_seconds <= pooled_seconds
    assert ans.frames.shape[0] == 256 and ans.frames.shape[1] <= 96  # thumbnails for heatmaps
    json.dumps(t.to_dict())  # serialisable, with the pool
    assert t.to_dict()["pool"]["count"] == 296


def test_fps_sampling_never_repeats_frames(qa, long_file):
    ans = qa.ask(long_file, "where is the red object", fps=2, max_new_tokens=2)
    assert len(ans.frame_indices) == 128 and ans.frame_indices == list(range(0, 256, 2))
    ans = qa.ask(long_file, "where is the red object", fps=1000, max_new_tokens=2)  # faster than the source
    assert ans.frame_indices == list(range(256))
    ans = qa.ask(long_file, "where is the red object", num_frames=5000, max_new_tokens=2)  # more than it has
    assert ans.frame_indices == list(range(256))
    ans = qa.ask(long_file, "where is the red object", fps=2, start=10, end=20, max_new_tokens=2)
    assert ans.timestamps == pytest.approx([10 + i / 2 for i in range(20)], abs=1e-3)
    assert ans.pool_tokens == 296  # 20 frames x 37 tokens > 296


def test_bad_long_inputs_are_clear_errors(qa, long_file, monkeypatch):
    from videosparse.video import VideoError

    monkeypatch.setattr(qa, "_encode_long", lambda *a, **k: pytest.fail("decoded before refusing"))
    with pytest.raises(ValueError, match=r"num_frames=100000 is more than the 10000"):
        qa.ask(long_file, "where is the red object", num_frames=100_000)
    with pytest.raises(ValueError, match=r"the time window is empty: end=5 <= start=5"):
        qa.ask(long_file, "where is the red object", fps=1, start=5, end=5)
    with pytest.raises(ValueError, match=r"fps must be a number > 0"):
        qa.ask(long_file, "where is the red object", fps=0)
    with pytest.raises(ValueError, match=r"pre_budget must be a positive integer"):
        qa.ask(long_file, "where is the red object", num_frames=64, pre_budget=0)
    with pytest.raises(ValueError, match=r"400 tokens requested but the input has only 296"):
        qa.set_sparsity(SparseConfig.preset("video", budget=400, num_layers=4))  # the default pool: 8 x 37
    assert qa.sparsity is not None and qa.handle is not None  # a refused config leaves the current one
    qa.set_sparsity(SparseConfig.preset("video", budget=250, num_layers=4))
    try:
        with pytest.raises(ValueError, match=r"250 tokens requested but the input has only 200.*pool of pre_budget=200"):
            qa.ask(long_file, "where is the red object", num_frames=64, pre_budget=200)
    finally:
        qa.set_sparsity("video")
    monkeypatch.undo()
    with pytest.raises(VideoError, match=r"no frame in the time window"):
        qa.ask(long_file, "where is the red object", fps=1, start=500, end=600)
    with pytest.raises(ValueError, match=r"LongVideoConfig\.method: 'best' is not one of"):
        SparseConfig(long=LongVideoConfig(method="best"))
    with pytest.raises(ValueError, match=r"LongVideoConfig\.chunk_frames"):
        LongVideoConfig(chunk_frames=0)
    with pytest.raises(ValueError, match=r"LongVideoConfig\.budget"):
        SparseConfig(long={"budget": -1})


def test_batches_and_kv_cache(qa, needles):
    pairs = [(needles[1].frames, needles[1].question), (needles[2].frames, needles[2].question),
             (needles[1].frames, "how many red objects"), (needles[3].frames, needles[3].question)]
    singles = [qa.ask(v, q, num_frames=256, max_new_tokens=4) for v, q in pairs]
    batched = qa.ask_many(pairs, batch_size=3, num_frames=256, max_new_tokens=4)
    for a, b in zip(singles, batched):
        assert a.text == b.text
        assert torch.equal(a.trace.pool.kept, b.trace.pool.kept)
        assert torch.equal(a.trace.stages[-1].kept, b.trace.stages[-1].kept)
    nocache = qa.ask(pairs[0][0], pairs[0][1], num_frames=256, max_new_tokens=4, use_cache=False)
    assert nocache.text == singles[0].text
    beams = qa.ask(pairs[0][0], pairs[0][1], num_frames=256, max_new_tokens=4, num_beams=2, num_return_sequences=2)
    assert len(beams.sequences) == 2 and beams.sequences[0] == singles[0].text


def test_full_decoder_and_time_positions(qa, needles):
    s = needles[4]
    qa.set_sparsity(None)
    try:
        ans = qa.ask(s.frames, s.question, max_new_tokens=4, num_frames=256)
    finally:
        qa.set_sparsity("video")
    assert ans.trace.stages == [] and ans.counts == [] and ans.pool_tokens == 296
    assert int(ans.trace.kept_mask().sum()) == 296 and ans.equivalent_tokens == 296
    cfg = SparseConfig.preset("video", num_layers=4)
    qa.set_sparsity(cfg.replace(long=cfg.long.replace(positions="time")))
    try:
        timed = qa.ask(s.frames, s.question, max_new_tokens=4, num_frames=256)
    finally:
        qa.set_sparsity("video")
    assert timed.pool_tokens == 296 and timed.text


def test_cli_long_video(long_file, capsys):
    rc = cli.main(["ask", long_file, "where is the red object", "--model", "testbed", "--frames", "128", "--json",
                   "--quiet", "--max-new-tokens", "3"])
    out = capsys.readouterr().out
    assert rc == 0
    d = json.loads(out)
    assert d["pool_tokens"] == 296 and len(d["timestamps"]) == 128 and d["visual_tokens"] == 128 * P
    assert d["vision_seconds"] > 0 and d["preselect_seconds"] > 0
    rc = cli.main(["ask", long_file, "where is the red object", "--model", "testbed", "--fps", "0.5", "--quiet",
                   "--max-new-tokens", "3"])
    out = capsys.readouterr().out
    assert rc == 0 and "pool 296 (pre-selected before the decoder:" in out and "frames:" in out
