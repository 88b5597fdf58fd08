"""The synthetic video-QA generator: deterministic, and its answers are right (read from the pixels)."""

from __future__ import annotations

import numpy as np
import pytest

from videosparse.testbed import synthetic as syn

CFG = syn.GenConfig()


def _color_cells(frames: np.ndarray, color: str, tol: float = 45.0, min_px: int = 6) -> set:
    """(t, row, col) cells whose pixels contain the saturated ``color`` (independent of the layout)."""
    rgb = np.asarray(syn.COLORS[color], dtype=np.float64)
    dist = np.linalg.norm(frames.astype(np.float64) - rgb, axis=-1)  # (T, H, W)
    hit = dist < tol
    T = frames.shape[0]
    g, c = CFG.grid, CFG.cell
    counts = hit.reshape(T, g, c, g, c).sum(axis=(2, 4))
    return {tuple(int(x) for x in i) for i in zip(*np.nonzero(counts >= min_px))}


def _shape_in(frames: np.ndarray, cell: tuple, color: str) -> str:
    t, r, c = cell
    rgb = np.asarray(syn.COLORS[color], dtype=np.float64)
    patch = frames[t, r * CFG.cell : (r + 1) * CFG.cell, c * CFG.cell : (c + 1) * CFG.cell].astype(np.float64)
    mask = np.linalg.norm(patch - rgb, axis=-1) < 45.0
    ious = {s: (mask & syn.stamp(s, CFG.cell)).sum() / (mask | syn.stamp(s, CFG.cell)).sum() for s in syn.SHAPES}
    return max(ious, key=ious.get)


def _answer_from_pixels(s: syn.Sample) -> tuple:
    cells = _color_cells(s.frames, s.color)
    assert cells, "asked-about colour not visible"
    frames_seen = sorted({t for t, _, _ in cells})
    if s.qtype == "count":
        per_frame = max(sum(1 for t, _, _ in cells if t == f) for f in frames_seen)
        return syn.COUNTS[per_frame - 1], cells
    # unique object: exactly one cell per visible frame
    assert all(sum(1 for t, _, _ in cells if t == f) == 1 for f in frames_seen)
    if s.qtype == "when":
        return ("early" if frames_seen[0] < CFG.num_frames // 2 else "late"), cells
    if s.qtype == "where":
        quads = {syn.quadrant_of(r, c, CFG.grid) for _, r, c in cells}
        assert len(quads) == 1
        return quads.pop(), cells
    if s.qtype == "shape":
        shapes = {_shape_in(s.frames, cell, s.color) for cell in cells}
        assert len(shapes) == 1
        return shapes.pop(), cells
    raise AssertionError(s.qtype)


def test_deterministic():
    a = syn.make_dataset(11, 12)
    b = syn.make_dataset(11, 12)
    for x, y in zip(a, b):
        assert x.question == y.question and x.answer == y.answer and x.target == y.target
        np.testing.assert_array_equal(x.frames, y.frames)
    c = syn.make_dataset(12, 12)
    assert any(not np.array_equal(x.frames, z.frames) for x, z in zip(a, c))
    r1 = syn.training_batch(np.random.default_rng([1, 2]), 3, 4)
    r2 = syn.training_batch(np.random.default_rng([1, 2]), 3, 4)
    for (c1, q1), (c2, q2) in zip(r1, r2):
        np.testing.assert_array_equal(c1.frames, c2.frames)
        assert [q.question for q in q1] == [q.question for q in q2]


def test_sample_format():
    s = syn.make_dataset(3, 8)
    assert [x.qtype for x in s] == list(syn.QUESTION_TYPES) * 2
    for x in s:
        assert x.frames.shape == (CFG.num_frames, CFG.size, CFG.size, 3) and x.frames.dtype == np.uint8
        assert x.answer in syn.ANSWERS[x.qtype]
        assert x.color in x.question.split()
        assert set(x.question.split()) <= set(syn.vocabulary())
        # small relevant region: 2-6 of the 288 patches
        assert 2 <= len(x.target) <= 6


@pytest.mark.parametrize("seed", [0, 5])
def test_answers_match_pixels(seed):
    samples = syn.make_dataset(seed, 48)
    for s in samples:
        answer, cells = _answer_from_pixels(s)
        assert answer == s.answer, (s.question, s.answer, answer)
        assert cells == set(s.target), (s.question, sorted(cells), s.target)


def test_answer_balance_and_distractors():
    samples = syn.make_dataset(9, 240)
    for qtype, answers in syn.ANSWERS.items():
        got = [s.answer for s in samples if s.qtype == qtype]
        for a in answers:  # every answer occurs, none dominates
            assert 0.1 < got.count(a) / len(got) < 0.7, (qtype, a, got.count(a), len(got))
    for s in samples[:40]:
        other = [c for c in syn.COLORS if c != s.color and _color_cells(s.frames, c)]
        assert other, "every clip has distractor objects"


def test_training_batch_targets_and_labels():
    rng = np.random.default_rng(4)
    for clip, qas in syn.training_batch(rng, 6, 4):
        colors, shapes = syn.patch_labels(clip)
        assert 1 <= len(qas) <= 4
        for q in qas:
            assert syn.answer_for(clip, q.qtype, q.color)[0] == q.answer
            for t, r, c in q.target:
                assert colors[t, r, c] == q.color
        assert (colors == syn.BACKGROUND_WORD).mean() > 0.9  # objects are small


def test_video_roundtrip(tmp_path):
    samples = syn.make_dataset(21, 3)
    jsonl = syn.write_dataset(samples, str(tmp_path))
    back = syn.load_samples(jsonl, num_frames=CFG.num_frames)
    assert len(back) == 3
    for a, b in zip(samples, back):
        assert (a.question, a.answer, a.qtype, list(map(tuple, a.target))) == (b.question, b.answer, b.qtype, b.target)
        np.testing.assert_array_equal(a.frames, b.frames)  # lossless through the package's decoder


def test_exact_match():
    assert syn.exact_match(" Top Left </s>", "top left")
    assert not syn.exact_match("top", "top left")
