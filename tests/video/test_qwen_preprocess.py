"""Qwen2.5-VL / Qwen3-VL video preprocessing (videosparse.video.qwen) against hand-worked references.

transformers' Qwen video processors need torchvision (not usable here), so the references are the
documented algorithm written out below: resize sizes and frame indices worked by hand, patch order by
explicit loops, normalisation in numpy, prompt text as literal strings. Where a piece of transformers
itself imports without torchvision (the ``smart_resize`` functions, ``Qwen3VLVideoProcessor.sample_frames``,
``Qwen3VLProcessor.replace_video_token``), it is compared directly as well.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
import types

import numpy as np
import pytest
import torch

from videosparse.video.clip import Clip
from videosparse.video.preprocess import _torch_resize
from videosparse.video.qwen import (
    QwenVideoSpec,
    expand_video_placeholders,
    preprocess_video,
    qwen2_5_video_prompt,
    qwen3_smart_resize,
    qwen3_timestamps,
    qwen3_video_prompt,
    sample_indices,
    sampled_fps,
    second_per_grid_ts,
    smart_resize,
    video_grid_thw,
    video_resize_hw,
)

Q25 = QwenVideoSpec.qwen2_5_vl()
Q3 = QwenVideoSpec.qwen3_vl()


def _hf(module: str):
    """A transformers module that imports without torchvision, else skip."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:  # pragma: no cover - depends on the installed transformers
        pytest.skip(f"{module} does not import here: {e}")


# ---------------------------------------------------------------------------------------------------------
# resize size


def test_smart_resize_hand_cases():
    # 480x640, Qwen2.5-VL-7B (factor 28, pixels [3136, 12845056]):
    #   480/28 = 17.14 -> 17 * 28 = 476;  640/28 = 22.86 -> 23 * 28 = 644;  476*644 = 306544 in range
    assert smart_resize(480, 640, 28, 3136, 12845056) == (476, 644)
    # 70x70: 70/28 = 2.5 rounds half to EVEN -> 2 -> 56 (not 84); 56*56 = 3136 = min_pixels, kept
    assert smart_resize(70, 70, 28, 3136, 12845056) == (56, 56)
    # 1080x1920 with the Qwen2VLVideoProcessor class budget (max 28*28*768 = 602112):
    #   rounded 1092x1932 = 2109744 > 602112 -> beta = sqrt(1080*1920 / 602112) = 1.85577
    #   1080/1.85577/28 = 20.78 -> 20*28 = 560;  1920/1.85577/28 = 36.95 -> 36*28 = 1008
    assert smart_resize(1080, 1920, 28, 128 * 28 * 28, 28 * 28 * 768) == (560, 1008)
    # 20x30 (sides below the factor are no error in 5.x): rounded 28x28 = 784 < 3136
    #   beta = sqrt(3136 / 600) = 2.2862;  ceil(20*2.2862/28) = ceil(1.63) = 2 -> 56;  ceil(2.45) = 3 -> 84
    assert smart_resize(20, 30, 28, 3136, 12845056) == (56, 84)


def test_qwen3_smart_resize_hand_cases():
    # 16 frames 480x640, Qwen3-VL-8B video budget [4096, 25165824] for t*h*w (factor 32):
    #   480/32 = 15 -> 480, 640/32 = 20 -> 640, t = 16: 16*480*640 = 4915200 <= 25165824: unchanged
    assert qwen3_smart_resize(16, 480, 640, 2, 32, 4096, 25165824) == (480, 640)
    # 768 frames: 768*307200 > budget -> beta = sqrt(768*480*640 / 25165824) = sqrt(9.375) = 3.0619
    #   480/3.0619/32 = 4.90 -> 128;  640/3.0619/32 = 6.53 -> 192
    assert qwen3_smart_resize(768, 480, 640, 2, 32, 4096, 25165824) == (128, 192)
    # 3 frames 20x600: height < 32 -> scale both by max(32/20, 32/600) = 1.6 -> 32x960;
    #   t = round(3/2)*2 = 4 (1.5 -> 2, half to even); 4*32*960 = 122880 in range
    assert qwen3_smart_resize(3, 20, 600, 2, 32, 4096, 25165824) == (32, 960)


def test_smart_resize_matches_transformers():
    pil = _hf("transformers.models.qwen2_vl.image_processing_pil_qwen2_vl")
    v3 = _hf("transformers.models.qwen3_vl.video_processing_qwen3_vl")
    rng = np.random.default_rng(0)
    budgets = [(3136, 12845056), (128 * 28 * 28, 28 * 28 * 768), (4096, 25165824), (128 * 32 * 32, 32 * 32 * 768)]
    for _ in range(3000):
        h, w = (int(v) for v in rng.integers(1, 4000, 2))
        if rng.random() < 0.2:
            h = int(rng.integers(1, 40))
        mn, mx = budgets[int(rng.integers(len(budgets)))]
        f = int(rng.choice([28, 32]))
        n = int(rng.integers(1, 800))
        for ours, theirs in ((lambda: smart_resize(h, w, f, mn, mx), lambda: pil.smart_resize(h, w, f, mn, mx)),
                             (lambda: qwen3_smart_resize(n, h, w, 2, f, mn, mx),
                              lambda: v3.smart_resize(n, h, w, 2, f, mn, mx))):
            try:
                want = theirs()
            except ValueError:
                with pytest.raises(ValueError):
                    ours()
                continue
            assert ours() == want, (n, h, w, f, mn, mx)


def test_smart_resize_errors():
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(10, 2100)
    with pytest.raises(ValueError, match="aspect ratio"):
        qwen3_smart_resize(4, 2100, 10, 2, 32)
    with pytest.raises(ValueError, match="height"):
        smart_resize(0, 100)
    with pytest.raises(ValueError, match="at least temporal_patch_size=2 frames"):
        qwen3_smart_resize(1, 480, 640)


def test_video_resize_hw_and_grid():
    # Qwen3 cap_pixels_per_frame (opt-in): 4 frames 1080x1920 -> per frame min(768*32*32, 25165824 // 4)
    #   = 786432, clip budget 4*786432 = 3145728;  rounded 4*1088*1920 > it -> beta = sqrt(4*2073600/3145728)
    #   = 1.6238: 1080/1.6238/32 = 20.78 -> 640;  1920/1.6238/32 = 36.95 -> 1152.  Uncapped: 1088x1920.
    assert video_resize_hw(4, 1080, 1920, Q3) == (1088, 1920)
    assert video_resize_hw(4, 1080, 1920, dataclasses.replace(Q3, cap_pixels_per_frame=True)) == (640, 1152)
    # Qwen2.5 cap, 768 frames: int(128000*28*28*0.9) * 2 // 768 = 235200 per frame;
    #   beta = sqrt(2073600/235200) = 2.9692: 1080/2.9692/28 = 12.99 -> 336;  1920/2.9692/28 = 23.09 -> 644
    assert video_resize_hw(768, 1080, 1920, dataclasses.replace(Q25, cap_pixels_per_frame=True)) == (336, 644)
    assert video_resize_hw(768, 1080, 1920, Q25) == (1092, 1932)
    # grids: 16 frames 480x640 on Qwen3 -> (8, 480/16, 640/16) = (8, 30, 40): 8*30*40/4 = 2400 tokens;
    # 3 frames 480x640 on Qwen2.5 -> t = ceil(3/2) = 2, 476/14 = 34, 644/14 = 46
    assert video_grid_thw(16, 480, 640, Q3) == (8, 30, 40)
    assert video_grid_thw(3, 480, 640, Q25) == (2, 34, 46)


# ---------------------------------------------------------------------------------------------------------
# sampling


def test_sampling_qwen2_5_vl_hand_cases():
    f = functools.partial(sample_indices, family="qwen2_5_vl")
    # 10 s at 30 fps, 2 fps -> n = 300/30*2 = 20 (even, within [4, 300]); floor(i * 300/20) = 15 i
    assert f(300, 30.0).tolist() == list(range(0, 300, 15))
    # 5 frames: n = 0.33 -> min_frames 4 -> cap floor(5/2)*2 = 4 -> floor(i * 5/4) = 0, 1, 2, 3
    assert f(5, 30.0).tolist() == [0, 1, 2, 3]
    # 3 frames: min_frames 4 > cap floor(3/2)*2 = 2 -> n = 2: floor(i * 3/2) = 0, 1
    assert f(3, 30.0).tolist() == [0, 1]
    # 1 hour at 30 fps: n = 7200 -> max_frames 768; step 108000/768 = 140.625 (exact in float32)
    long = f(108000, 30.0)
    assert long.tolist() == [math.floor(i * 140.625) for i in range(768)]
    # 230 frames at 30 fps: n = 15.3 -> 14. torch.arange(0, 230, 230/14) has 15 entries, the last == 230
    # (out of range: transformers' indexing would fail); the 14 intended ones are floor(i * 230/14)
    assert f(230, 30.0).tolist() == [0, 16, 32, 49, 65, 82, 98, 115, 131, 147, 164, 180, 197, 213]
    assert f(17, 2.4).tolist() == [0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 12, 13, 14, 15]
    # fixed counts round to a multiple of 2 with Python's round: 5 -> round(2.5) = 2 -> 4; 7 -> round(3.5) -> 8
    assert f(100, 30.0, num_frames=5).tolist() == [0, 25, 50, 75]
    assert len(f(100, 30.0, num_frames=7)) == 8
    # no fps, no count: every frame (the processor's do_sample_frames=False behaviour)
    assert f(7, 30.0, fps=None).tolist() == list(range(7))
    # long videos: float32 arange values, as transformers computes them
    big = f(1_000_003, 29.97)
    assert big.tolist() == torch.arange(0, 1_000_003, 1_000_003 / 768).int()[:768].tolist()
    with pytest.raises(ValueError, match="at least 2"):
        f(1, 30.0)
    with pytest.raises(ValueError, match="exceeds"):
        f(10, 30.0, num_frames=12)
    with pytest.raises(ValueError, match="fps"):
        f(100, None)


def test_sampling_qwen3_vl_hand_cases():
    f = functools.partial(sample_indices, family="qwen3_vl")
    # 1 s at 10 fps: n = int(10/10*2) = 2 -> min_frames 4 -> linspace(0, 9, 4) = 0, 3, 6, 9
    assert f(10, 10.0).tolist() == [0, 3, 6, 9]
    # 10 s at 30 fps: n = 20, linspace(0, 299, 20) rounded: round(i * 299/19)
    assert f(300, 30.0).tolist() == [round(i * 299 / 19) for i in range(20)]
    assert f(300, 30.0).tolist()[:5] == [0, 16, 31, 47, 63]
    # 3 frames: n = int(0.2) = 0 -> 4 -> capped by total = 3 (odd; padded later): 0, 1, 2
    assert f(3, 30.0).tolist() == [0, 1, 2]
    # 1 hour: 7200 -> 768; linspace(0, 107999, 768) rounded
    long = f(108000, 30.0)
    assert len(long) == 768 and long[0] == 0 and long[-1] == 107999
    assert long.tolist() == [round(i * 107999 / 767) for i in range(768)]
    # fixed count used as given, no rounding to 2: linspace(0, 99, 5) = 0, 24.75, 49.5, 74.25, 99;
    # 49.5 rounds half to even -> 50
    assert f(100, 30.0, num_frames=5).tolist() == [0, 25, 50, 74, 99]
    # unknown fps -> 24: 48 frames = 2 s -> n = 4: linspace(0, 47, 4) = 0, 15.67, 31.33, 47
    assert f(48, None).tolist() == [0, 16, 31, 47]
    # no fps, no count: min(max(total, 4), 768) -> a 2-frame video is stretched to 4 (repeats)
    assert f(2, 30.0, fps=None).tolist() == [0, 0, 1, 1]


def test_sampling_qwen_vl_utils_hand_cases():
    f = functools.partial(sample_indices, family="qwen_vl_utils")
    # smart_nframes: 300 @ 30 fps -> 20; torch.linspace(0, 299, 20).round()
    assert f(300, 30.0).tolist() == [round(i * 299 / 19) for i in range(20)]
    # 3 frames -> min 4, max floor(min(768, 3)/2)*2 = 2 -> n = 2 -> linspace(0, 2, 2) = 0, 2
    assert f(3, 30.0).tolist() == [0, 2]
    # nframes 5 -> round(5/2) * 2 = round(2.5) * 2 = 4 (half to even) -> linspace(0, 99, 4) = 0, 33, 66, 99
    assert f(100, 30.0, num_frames=5).tolist() == [0, 33, 66, 99]
    with pytest.raises(ValueError, match="nframes"):
        f(1, 30.0)
    with pytest.raises(ValueError, match="family"):
        sample_indices(10, 30.0, family="llava")


def test_sampling_qwen3_matches_transformers():
    v3 = _hf("transformers.models.qwen3_vl.video_processing_qwen3_vl")
    from transformers.video_utils import VideoMetadata

    sample_frames = vars(v3.Qwen3VLVideoProcessor)["sample_frames"]  # the real function, no instance needed
    proc = types.SimpleNamespace(fps=2, min_frames=4, max_frames=768)
    rng = np.random.default_rng(1)
    for _ in range(400):
        total = int(rng.integers(1, 40000))
        vfps = float(rng.choice([24, 25, 30, 29.97, 60, 1, 2.5]))
        fps = float(rng.choice([0.5, 1, 2, 4]))
        want = sample_frames(proc, VideoMetadata(total_num_frames=total, fps=vfps), fps=fps)
        assert np.array_equal(sample_indices(total, vfps, fps=fps, family="qwen3_vl"), want), (total, vfps, fps)


# ---------------------------------------------------------------------------------------------------------
# pixels


def _ref_normalize(x_uint8_tchw: np.ndarray, spec: QwenVideoSpec) -> np.ndarray:
    """transformers' fused rescale + normalise in float32: (x - mean/r) / (std/r)."""
    inv = np.float32(1.0 / spec.rescale_factor)
    mean = (np.asarray(spec.image_mean, np.float32) * inv).reshape(1, 3, 1, 1)
    std = (np.asarray(spec.image_std, np.float32) * inv).reshape(1, 3, 1, 1)
    return (x_uint8_tchw.astype(np.float32) - mean) / std


def _ref_patches(video: np.ndarray, p: int, m: int, tp: int) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Slow reference: ``video`` float (T, C, H, W) -> (rows, cols) patches, one row built at a time in the
    documented order (t-group, merge-block row, merge-block col, row in block, col in block), each row
    (channel, frame in group, y, x)."""
    while video.shape[0] % tp:
        video = np.concatenate([video, video[-1:]])
    t, c, h, w = video.shape
    gt, gh, gw = t // tp, h // p, w // p
    rows = []
    for it in range(gt):
        for bh in range(gh // m):
            for bw in range(gw // m):
                for mh in range(m):
                    for mw in range(m):
                        y0, x0 = (bh * m + mh) * p, (bw * m + mw) * p
                        vec = []
                        for ch in range(c):
                            for k in range(tp):
                                for yy in range(p):
                                    for xx in range(p):
                                        vec.append(video[it * tp + k, ch, y0 + yy, x0 + xx])
                        rows.append(vec)
    return np.asarray(rows, dtype=np.float32), (gt, gh, gw)


def _frames(t, h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    "t,h,w,spec",
    [
        (4, 56, 84, Q25),  # smart_resize(56, 84) = (56, 84): no resize; grid (2, 4, 6)
        (3, 56, 84, Q25),  # odd T: last frame repeated -> grid (2, 4, 6)
        (3, 64, 96, Q3),  # Qwen3: patch 16, t*h*w = 4*64*96 in budget -> grid (2, 4, 6)
        # tiny geometry, temporal patch 3, 5 frames -> padded to 6
        (5, 8, 12, QwenVideoSpec(patch_size=2, merge_size=2, temporal_patch_size=3, do_resize=False)),
    ],
)
def test_patch_order_matches_loop_reference(t, h, w, spec):
    frames = _frames(t, h, w, seed=t * 100 + h)
    out = preprocess_video(frames, spec)
    assert video_resize_hw(t, h, w, spec) == (h, w)
    norm = _ref_normalize(frames.transpose(0, 3, 1, 2), spec)
    want, grid = _ref_patches(norm, spec.patch_size, spec.merge_size, spec.temporal_patch_size)
    pv, thw = out["pixel_values_videos"], out["video_grid_thw"]
    assert pv.dtype == torch.float32 and thw.dtype == torch.long
    assert thw.tolist() == [list(grid)]
    assert tuple(pv.shape) == (grid[0] * grid[1] * grid[2], 3 * spec.temporal_patch_size * spec.patch_size ** 2)
    np.testing.assert_array_equal(pv.numpy(), want)


def test_resize_then_normalize_exact():
    # 50x70 on Qwen2.5: 50/28 = 1.79 -> 56, 70/28 = 2.5 -> 2 (half to even) -> 56; 56*56 = 3136 ok -> 56x56
    frames = _frames(2, 50, 70, seed=7)
    out = preprocess_video(frames, Q25)
    assert out["video_grid_thw"].tolist() == [[1, 4, 4]]
    resized = _torch_resize(torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous(), 56, 56, "bicubic").numpy()
    want, _ = _ref_patches(_ref_normalize(resized, Q25), 14, 2, 2)
    np.testing.assert_array_equal(out["pixel_values_videos"].numpy(), want)
    # Qwen3 (mean = std = 0.5): 2 frames 40x50 -> t*h*w = 2*32*64 = 4096 (50/32 = 1.56 -> 2 -> 64) = min
    frames3 = _frames(2, 40, 50, seed=8)
    out3 = preprocess_video(frames3, Q3)
    assert out3["video_grid_thw"].tolist() == [[1, 2, 4]]
    resized3 = _torch_resize(torch.from_numpy(frames3).permute(0, 3, 1, 2).contiguous(), 32, 64, "bicubic").numpy()
    want3, _ = _ref_patches(_ref_normalize(resized3, Q3), 16, 2, 2)
    np.testing.assert_array_equal(out3["pixel_values_videos"].numpy(), want3)


def test_chunking_and_clip_input():
    frames = _frames(19, 28, 56, seed=3)  # more than one 16-frame resize chunk
    # 28x56 -> 28*56 = 1568 < 3136 -> beta = sqrt(3136/1568) = 1.414: ceil(28*1.414/28) = 2 -> 56,
    # ceil(56*1.414/28) = ceil(2.83) = 3 -> 84
    a = preprocess_video(frames, Q25)
    assert a["video_grid_thw"].tolist() == [[10, 4, 6]]
    parts = [preprocess_video(frames[i : i + 2], Q25)["pixel_values_videos"] for i in range(0, 18, 2)]
    parts.append(preprocess_video(frames[18:], Q25)["pixel_values_videos"])  # padded alone, same as at the end
    np.testing.assert_array_equal(a["pixel_values_videos"].numpy(), torch.cat(parts).numpy())
    b = preprocess_video(Clip.from_array(frames, fps=30.0), Q25)
    assert torch.equal(a["pixel_values_videos"], b["pixel_values_videos"])


@pytest.mark.parametrize(
    "frames,match",
    [
        (np.zeros((0, 56, 56, 3), np.uint8), "no frames"),
        (np.zeros((2, 56, 56, 3), np.float32), "uint8"),
        (np.zeros((2, 56, 56), np.uint8), r"\(T, H, W, 3\)"),
        (np.zeros((2, 56, 56, 4), np.uint8), r"\(T, H, W, 3\)"),
        (np.zeros((2, 0, 56, 3), np.uint8), "zero height or width"),
        ([[0]], "numpy array"),
        (np.zeros((2, 10, 2100, 3), np.uint8), "aspect ratio"),
    ],
)
def test_preprocess_errors(frames, match):
    with pytest.raises(ValueError, match=match):
        preprocess_video(frames, Q25)


def test_preprocess_errors_family_specific():
    with pytest.raises(ValueError, match="at least temporal_patch_size=2 frames"):
        preprocess_video(_frames(1, 64, 64), Q3)  # Qwen3 refuses one-frame clips (transformers too)
    assert preprocess_video(_frames(1, 56, 56), Q25)["video_grid_thw"].tolist() == [[1, 4, 4]]  # padded to 2
    with pytest.raises(ValueError, match="multiples of 28"):
        preprocess_video(_frames(2, 50, 56), dataclasses.replace(Q25, do_resize=False))


# ---------------------------------------------------------------------------------------------------------
# temporal metadata and prompt text


def test_qwen3_timestamps_and_prompt():
    # 7 frames at 30 fps: indices padded with the last -> [0, 15, 30, 45, 60, 75, 90, 90];
    # seconds [0, .5, 1, 1.5, 2, 2.5, 3, 3] -> group means 0.25, 1.25, 2.25, 3.0
    idx = [0, 15, 30, 45, 60, 75, 90]
    ts = qwen3_timestamps(idx, 30.0)
    assert ts == [0.25, 1.25, 2.25, 3.0]
    # grid (4, 4, 6), merge 2: 4*6/4 = 6 tokens per group; "{:.1f}" rounds 0.25 -> "0.2", 1.25 -> "1.2"
    pads = "<|video_pad|>" * 6
    want = (f"<0.2 seconds><|vision_start|>{pads}<|vision_end|>"
            f"<1.2 seconds><|vision_start|>{pads}<|vision_end|>"
            f"<2.2 seconds><|vision_start|>{pads}<|vision_end|>"
            f"<3.0 seconds><|vision_start|>{pads}<|vision_end|>")
    assert qwen3_video_prompt((4, 4, 6), ts, 2) == want
    assert qwen3_video_prompt(torch.tensor([4, 4, 6]), ts) == want
    # in the chat template the placeholder sits in its own wrapper, which transformers 5.x keeps
    chat = "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>What happens?<|im_end|>\n"
    two = qwen3_video_prompt((2, 2, 2), [0.25, 1.25])
    assert expand_video_placeholders(chat, [two]) == (
        "<|im_start|>user\n<|vision_start|>"
        "<0.2 seconds><|vision_start|><|video_pad|><|vision_end|>"
        "<1.2 seconds><|vision_start|><|video_pad|><|vision_end|>"
        "<|vision_end|>What happens?<|im_end|>\n")
    # unknown fps -> 24: indices 0..3 -> seconds 0, 1/24, 2/24, 3/24 -> means 1/48, 5/48
    assert qwen3_timestamps(range(4), None) == [(0 + 1 / 24) / 2, (2 / 24 + 3 / 24) / 2]
    with pytest.raises(ValueError, match="one timestamp per temporal group"):
        qwen3_video_prompt((3, 2, 2), [0.0, 1.0])


def test_qwen3_prompt_matches_transformers():
    pq3 = _hf("transformers.models.qwen3_vl.processing_qwen3_vl")
    from transformers.video_utils import VideoMetadata

    cls = vars(pq3)["Qwen3VLProcessor"]
    proc = types.SimpleNamespace(
        video_processor=types.SimpleNamespace(merge_size=2, temporal_patch_size=2),
        vision_start_token="<|vision_start|>", vision_end_token="<|vision_end|>", video_token="<|video_pad|>",
        _calculate_timestamps=functools.partial(vars(cls)["_calculate_timestamps"], None))
    for idx, fps, grid in (([0, 15, 30, 45, 60, 75, 90], 30.0, (4, 4, 6)),
                           (sample_indices(3000, 29.97, family="qwen3_vl").tolist(), 29.97, (100, 8, 10))):
        md = VideoMetadata(total_num_frames=max(idx) + 1, fps=fps, frames_indices=list(idx))
        want = vars(cls)["replace_video_token"](proc, {"video_grid_thw": torch.tensor([grid]),
                                                       "video_metadata": [md]}, 0)
        assert qwen3_video_prompt(grid, qwen3_timestamps(idx, fps)) == want


def test_qwen2_5_prompt_and_second_per_grid_ts():
    # grid (2, 4, 6), merge 2 -> 2*4*6/4 = 12 tokens in place of the one placeholder
    assert qwen2_5_video_prompt((2, 4, 6)) == "<|video_pad|>" * 12
    chat = "<|vision_start|><|video_pad|><|vision_end|>Q"
    assert expand_video_placeholders(chat, [qwen2_5_video_prompt((1, 2, 2))]) == (
        "<|vision_start|><|video_pad|><|vision_end|>Q")
    with pytest.raises(ValueError, match=re.escape("1 '<|video_pad|>' placeholder(s) but 2")):
        expand_video_placeholders(chat, ["a", "b"])
    # 20 of 300 frames at 30 fps -> sampled fps 20/300*30 = 2 -> 2/2 = 1.0 s per temporal patch
    assert sampled_fps(20, 300, 30.0) == 2.0
    assert second_per_grid_ts(20, 300, 30.0) == 1.0
    # 14 of 230 at 30 fps -> 1.826 fps -> 1.0952 s;  frames without metadata -> fps 24 -> 2/24
    assert second_per_grid_ts(14, 230, 30.0) == 2 / (14 / 230 * 30)
    assert second_per_grid_ts(8, 8, None) == 2 / 24


# ---------------------------------------------------------------------------------------------------------
# spec


def test_checkpoint_specs():
    assert (Q25.family, Q25.patch_size, Q25.temporal_patch_size, Q25.merge_size, Q25.factor) == ("qwen2_5_vl", 14, 2, 2, 28)
    assert (Q25.min_pixels, Q25.max_pixels) == (3136, 12845056)
    assert Q25.image_mean == (0.48145466, 0.4578275, 0.40821073)
    assert Q25.image_std == (0.26862954, 0.26130258, 0.27577711)
    assert (Q25.fps, Q25.min_frames, Q25.max_frames, Q25.do_sample_frames) == (2.0, 4, 768, False)
    assert (Q3.family, Q3.patch_size, Q3.temporal_patch_size, Q3.merge_size, Q3.factor) == ("qwen3_vl", 16, 2, 2, 32)
    assert (Q3.min_pixels, Q3.max_pixels) == (4096, 25165824)
    assert Q3.image_mean == Q3.image_std == (0.5, 0.5, 0.5)
    assert (Q3.fps, Q3.min_frames, Q3.max_frames, Q3.do_sample_frames) == (2.0, 4, 768, True)
    assert Q25.rescale_factor == Q3.rescale_factor == 1 / 255 and Q3.resample == "bicubic"


def test_from_dict_and_from_pretrained(tmp_path):
    # class defaults for missing keys; Qwen2 min/max_pixels override size; Qwen3 ignores them
    s = QwenVideoSpec.from_dict({"video_processor_type": "Qwen2VLVideoProcessor"})
    assert (s.family, s.min_pixels, s.max_pixels, s.fps) == ("qwen2_5_vl", 128 * 28 * 28, 28 * 28 * 768, None)
    s = QwenVideoSpec.from_dict({"size": {"shortest_edge": 1, "longest_edge": 2000}, "min_pixels": 5,
                                 "processor_class": "Qwen2_5_VLProcessor"})
    assert (s.min_pixels, s.max_pixels) == (5, 2000)
    s = QwenVideoSpec.from_dict({"video_processor_type": "Qwen3VLVideoProcessor", "min_pixels": 5,
                                 "fps": 1, "resample": 3})
    assert (s.family, s.min_pixels, s.max_pixels, s.fps, s.patch_size) == ("qwen3_vl", 128 * 32 * 32, 32 * 32 * 768, 1.0, 16)
    # a checkpoint directory: nested processor_config.json wins, then video_preprocessor_config.json
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"min_pixels": 3136, "max_pixels": 99999,
                                                                    "image_processor_type": "Qwen2VLImageProcessor"}))
    assert QwenVideoSpec.from_pretrained(tmp_path).max_pixels == 99999
    (tmp_path / "video_preprocessor_config.json").write_text(json.dumps(
        {"size": {"longest_edge": 25165824, "shortest_edge": 4096}, "patch_size": 16,
         "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "video_processor_type": "Qwen3VLVideoProcessor"}))
    assert QwenVideoSpec.from_pretrained(tmp_path) == Q3
    (tmp_path / "processor_config.json").write_text(json.dumps(
        {"processor_class": "Qwen3VLProcessor", "video_processor": {"fps": 4, "max_frames": 64,
                                                                    "video_processor_type": "Qwen3VLVideoProcessor"}}))
    s = QwenVideoSpec.from_pretrained(tmp_path)
    assert (s.family, s.fps, s.max_frames) == ("qwen3_vl", 4.0, 64)
    assert QwenVideoSpec.from_pretrained(tmp_path / "video_preprocessor_config.json") == Q3
    with pytest.raises(FileNotFoundError):
        QwenVideoSpec.from_pretrained(tmp_path / "nope")
    with pytest.raises(ValueError, match="family"):
        QwenVideoSpec(family="llava")
    with pytest.raises(ValueError, match="min_pixels"):
        QwenVideoSpec(min_pixels=10, max_pixels=5)
