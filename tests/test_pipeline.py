"""VideoQA end to end on a tiny saved checkpoint and a generated video file."""

from __future__ import annotations

import numpy as np
import pytest

from videosparse import SparseConfig
from videosparse.pipeline import VideoQA


@pytest.fixture(scope="module")
def qa(tiny_checkpoint):
    q = VideoQA.from_pretrained(tiny_checkpoint, sparsity=None, num_frames=4)
    yield q
    q.close()


def _check(ans, qa, pruned):
    assert isinstance(ans.text, str)
    assert ans.visual_tokens == 4 * qa.tokens_per_frame
    assert ans.prefill_seconds > 0 and ans.decode_seconds >= 0
    assert ans.timestamps == sorted(ans.timestamps) and len(ans.timestamps) == 4
    assert ans.new_tokens >= 1
    if pruned:
        assert ans.trace is not None and ans.trace.batch_size == 1
        assert ans.counts == ans.trace.counts
        assert ans.counts[-1] == int(ans.trace.kept_per_frame().sum())
        assert ans.equivalent_tokens == pytest.approx(ans.trace.equivalent_tokens)
        assert ans.equivalent_tokens < ans.visual_tokens
    else:
        assert ans.trace is None and ans.counts == []


def test_ask_with_and_without_sparsity(qa, tiny_video):
    qa.set_sparsity(None)
    full = qa.ask(tiny_video, "what is the red object", max_new_tokens=3)
    _check(full, qa, pruned=False)
    qa.set_sparsity(SparseConfig.preset("video", budget=0.25, num_layers=4))
    pruned = qa.ask(tiny_video, "what is the red object", max_new_tokens=3)
    _check(pruned, qa, pruned=True)
    assert pruned.counts == [2 * round(0.25 * 4 * qa.tokens_per_frame), round(0.25 * 4 * qa.tokens_per_frame)]
    # keep-all through the pipeline answers exactly like the full model
    qa.set_sparsity(SparseConfig(budget=1.0, layers=(1,)))
    same = qa.ask(tiny_video, "what is the red object", max_new_tokens=3)
    assert same.text == full.text


def test_video_forms_and_feature_reuse(qa, tiny_video):
    from videosparse.video import load_video

    qa.set_sparsity(SparseConfig.preset("video", budget=0.3, num_layers=4))
    clip = load_video(tiny_video, num_frames=4)
    a = qa.ask(tiny_video, "where is the red object", max_new_tokens=2)
    b = qa.ask(clip, "where is the red object", max_new_tokens=2)
    c = qa.ask(np.ascontiguousarray(clip.frames), "where is the red object", max_new_tokens=2)
    assert a.text == b.text == c.text
    assert a.trace.stages[0].kept.tolist() == b.trace.stages[0].kept.tolist() == c.trace.stages[0].kept.tolist()
    # the vision tower runs once per video, however many questions are asked
    calls = []
    hook = qa.model.model.video_tower.register_forward_hook(lambda *a: calls.append(1))
    try:
        qa.ask_many([(tiny_video, "where is the red object"), (tiny_video, "what shape is the red object"),
                     (tiny_video, "when does the red object appear")], batch_size=2, max_new_tokens=2)
    finally:
        hook.remove()
    assert calls == []  # already cached above
    qa._cache.clear()
    hook = qa.model.model.video_tower.register_forward_hook(lambda *a: calls.append(1))
    try:
        qa.ask_many([(tiny_video, "where is the red object"), (tiny_video, "what shape is the red object")],
                    batch_size=2, max_new_tokens=2)
    finally:
        hook.remove()
    assert len(calls) == 1


def test_ask_many_batches_equal_single_and_record_errors(qa, tiny_video, tmp_path):
    qa.set_sparsity(SparseConfig.preset("video", budget=0.3, num_layers=4))
    qs = ["where is the red object", "what is the shape of the blue object", "when does the red object appear"]
    single = [qa.ask(tiny_video, q, max_new_tokens=3) for q in qs]
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all")
    batch = qa.ask_many([(tiny_video, qs[0]), (str(bad), qs[0]), (tiny_video, qs[1]), (tiny_video, "  "),
                         (tiny_video, qs[2])], batch_size=3, on_error="record", max_new_tokens=3)
    assert batch[1].error and "bad.mp4" in batch[1].error
    assert batch[3].error and "empty" in batch[3].error
    for s, b in zip(single, [batch[0], batch[2], batch[4]]):
        assert b.error is None
        assert b.text == s.text
        assert b.trace.stages[0].kept.tolist() == s.trace.stages[0].kept.tolist()
    from videosparse.video import VideoError

    with pytest.raises(VideoError, match="bad.mp4"):
        qa.ask(str(bad), qs[0])
    with pytest.raises(ValueError, match="question is empty"):
        qa.ask(tiny_video, "")


def test_on_step_follows_generation(qa, tiny_video):
    steps = []
    qa.set_sparsity(SparseConfig.preset("video", budget=0.3, num_layers=4))
    qa.on_step = lambda done, total: steps.append((done, total))
    try:
        ans = qa.ask(tiny_video, "where is the red object", max_new_tokens=3)
    finally:
        qa.on_step = None
    assert steps and steps[0] == (1, 3)  # the prefill is forward pass 1
    assert [d for d, _ in steps] == list(range(1, len(steps) + 1))
    assert len(steps) >= ans.new_tokens
