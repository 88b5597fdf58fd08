"""Sampling is pure index arithmetic: check it against the obvious references."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from videosparse.video import FrameIndexError, NoFramesError, SamplingError, sample_indices
from videosparse.video.sampling import segment_indices, uniform_indices


@given(n=st.integers(1, 5000), k=st.integers(1, 64))
@settings(max_examples=200, deadline=None)
def test_uniform_is_videollava_linspace(n, k):
    idx = sample_indices(np.arange(n) / 30.0, k)
    np.testing.assert_array_equal(idx, np.linspace(0, n - 1, k, dtype=int))  # Video-LLaVA's exact formula
    assert idx.dtype == np.int64 and idx.shape == (k,)
    assert idx[0] == 0 and (k == 1 or idx[-1] == n - 1)
    assert np.all(np.diff(idx) >= 0)


@given(n=st.integers(1, 5000), k=st.integers(1, 64))
@settings(max_examples=200, deadline=None)
def test_segments_middle_frame(n, k):
    idx = segment_indices(n, k)
    ref = [min(int((i + 0.5) * n / k), n - 1) for i in range(k)]
    np.testing.assert_array_equal(idx, ref)
    # in frame-time units frame j is shown during [j, j + 1): the chosen frame is the one on screen
    # at the middle of its segment, and segments never share a frame when n >= k
    mid = (np.arange(k) + 0.5) * n / k
    assert np.all((idx <= mid + 1e-9) & (mid < idx + 1))
    if n >= k:
        assert len(np.unique(idx)) == k


@given(n=st.integers(1, 600), fps=st.floats(1, 60), rate=st.floats(0.1, 10), cap=st.none() | st.integers(1, 30))
@settings(max_examples=150, deadline=None)
def test_fps_sampling_reference(n, fps, rate, cap):
    ts = np.arange(n) / fps
    idx = sample_indices(ts, cap, "fps", sample_fps=rate)
    assert np.all(np.diff(idx) > 0) and idx[0] == 0 and idx[-1] < n  # strictly increasing, never repeats
    full = sample_indices(ts, None, "fps", sample_fps=rate)
    # reference: for each target time, the last frame whose timestamp <= target
    targets = np.arange(0, ts[-1] + 1e-4, 1 / rate)
    ref = np.unique([int(np.nonzero(ts <= t + 1e-4)[0][-1]) for t in targets])
    np.testing.assert_array_equal(full, ref)
    if cap is not None:
        assert len(idx) == min(cap, len(full)) and set(idx) <= set(full)


def test_window_and_indices():
    ts = np.arange(100) / 10.0  # 10 s at 10 fps
    np.testing.assert_array_equal(sample_indices(ts, 3, start=2.0, end=3.0), [20, 24, 29])
    np.testing.assert_array_equal(sample_indices(ts, None, "all", start=9.5), [95, 96, 97, 98, 99])
    np.testing.assert_array_equal(sample_indices(ts, indices=[5, 1, 1]), [5, 1, 1])
    with pytest.raises(FrameIndexError, match="100 frames"):
        sample_indices(ts, indices=[100], path="v.mp4")
    with pytest.raises(NoFramesError):
        sample_indices(np.zeros(0), 8, path="v.mp4")
    with pytest.raises(SamplingError):
        sample_indices(ts, None, "segments")
    with pytest.raises(SamplingError):
        sample_indices(ts, 4, "fps", sample_fps=0)
    np.testing.assert_array_equal(uniform_indices(5, 0), [])
