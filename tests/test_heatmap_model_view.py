"""The heatmap draws the frames exactly as the model sees them: `heatmap.model_view` is the model input's own
preprocessing (`videosparse.video.preprocess_frames`: resize, resampling filter, center crop, zero padding)
before normalisation, for any frame size, so every drawn tile is the de-normalised model input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from videosparse import heatmap
from videosparse.core.trace import RetentionTrace, StageRecord
from videosparse.video import VideoProcessorSpec, preprocess_frames

SMALL = VideoProcessorSpec(shortest_edge=32, crop_size=32)
CASES = [
    ((35, 63), SMALL),                                            # odd, landscape
    ((63, 35), SMALL),                                            # odd, portrait
    ((35, 63), VideoProcessorSpec()),                             # upscaled to 224
    ((720, 1280), VideoProcessorSpec()),                          # 720p scaled down to 224
    ((360, 640), VideoProcessorSpec(shortest_edge=48, crop_size=48)),
    ((33, 47), VideoProcessorSpec(shortest_edge=24, crop_size=(20, 28))),  # rectangular crop
    ((30, 50), VideoProcessorSpec(shortest_edge=24, crop_size=32)),        # crop larger: zero padding
    ((35, 63), VideoProcessorSpec(resize_to=(40, 41), crop_size=32, resample="bilinear")),
]


def frames_of(h, w, n=2, seed=0):
    """Smooth content with edges (a real frame), plus noise, so a one-pixel geometry error shows."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    out = []
    for t in range(n):
        base = np.stack([(x * 255 // max(w - 1, 1)), (y * 255 // max(h - 1, 1)),
                         ((x // 7 + y // 5 + t) % 2) * 255], axis=-1).astype(np.int64)
        out.append(np.clip(base + rng.integers(-20, 21, base.shape), 0, 255).astype(np.uint8))
    return np.stack(out)


def denormalised_input(frames, spec):
    """The model's input (normalised float32) mapped back to uint8 levels."""
    x = preprocess_frames(frames, spec, return_tensors="np").transpose(0, 2, 3, 1).astype(np.float64)
    x = x * np.asarray(spec.image_std) + np.asarray(spec.image_mean)
    return x / spec.rescale_factor


@pytest.mark.parametrize("size, spec", CASES)
def test_model_view_is_the_denormalised_model_input(size, spec):
    frames = frames_of(*size)
    view = heatmap.model_view(frames, spec)
    ref = denormalised_input(frames, spec)
    assert view.dtype == np.uint8 and view.shape == ref.shape == (2, *spec.crop_hw, 3)
    assert np.abs(view.astype(np.float64) - ref).max() <= 1.0


def all_pruned_trace(T, rows, cols):
    """Every patch pruned (only each frame's CLS kept): a tile is the model view dimmed, with no overlay."""
    P = rows * cols + 1
    kept = torch.arange(T)[None] * P
    st = StageRecord(1, kept, torch.zeros(1, T, dtype=torch.bool), torch.rand(1, T * P))
    return RetentionTrace(T, P, True, (rows, cols), 4, 1, [st])


@pytest.mark.parametrize("size, spec", [c for c in CASES if isinstance(c[1].crop_size, int)])
def test_drawn_tile_is_the_denormalised_model_input(size, spec):
    frames = frames_of(*size)
    cell = spec.crop_hw[0]  # one screen pixel per model pixel
    trace = all_pruned_trace(len(frames), 4, 4)
    tiles = heatmap.render_frames(frames, trace, cell=cell, spec=spec)
    ref = denormalised_input(frames, spec)
    bs = max(6, cell // 20) + 3  # the CLS badge in the top right corner
    for tile, want in zip(tiles, ref):
        img = tile[:cell].astype(np.float64)
        mask = np.ones((cell, cell), dtype=bool)
        mask[:bs, cell - bs:] = False
        assert np.abs(img[mask] - np.floor(0.3 * want[mask])).max() <= 1.0  # pruned patches: dimmed to 30 %
    # and tiles drawn from the model view itself (already resized and cropped) are the same tiles
    ident = VideoProcessorSpec(shortest_edge=cell, crop_size=cell)
    again = heatmap.render_frames(heatmap.model_view(frames, spec), trace, cell=cell, spec=ident)
    for a, b in zip(tiles, again):
        assert np.array_equal(a, b)


def test_same_size_frames_are_shown_as_they_are():
    """The test-bed geometry (48 px frames, 48 px crop): the view is the frame, pixel for pixel."""
    frames = frames_of(48, 48)
    spec = VideoProcessorSpec(shortest_edge=48, crop_size=48)
    assert np.array_equal(heatmap.model_view(frames, spec), frames)


def test_long_video_thumbnails_use_the_same_view():
    from videosparse.longvideo import thumbnails

    frames = frames_of(35, 63)
    view = heatmap.model_view(frames, SMALL)
    assert np.array_equal(thumbnails(frames, SMALL, side=96), view)  # small enough: not shrunk
    small = thumbnails(frames, VideoProcessorSpec(), side=96)
    big = heatmap.model_view(frames, VideoProcessorSpec())
    want = np.stack([np.asarray(Image.fromarray(f).resize((96, 96), Image.BILINEAR)) for f in big])
    assert np.array_equal(small, want)
