"""LLaVA-OneVision frame preprocessing (``resize_backend="torch"``) against a hand-written reference.

transformers' ``LlavaOnevisionVideoProcessor`` needs torchvision, which cannot be installed here, so the
reference is the documented algorithm written out in numpy below; the package must equal it **bit for
bit** (tolerance 0): every step is integer arithmetic up to the uint8 resize output, and the normalisation
is the same two float32 IEEE operations on both sides.

The algorithm (torchvision ``resize_image`` on a uint8 CPU tensor -> ``interpolate(mode="bicubic",
antialias=True, align_corners=False)`` on uint8, then transformers' fused rescale + normalise):

* separable, **horizontal pass first**, then vertical; a pass whose size does not change is skipped, and
  no resize at all when the size is already right;
* per axis, ``scale = in / out``; support ``2 * scale`` when downscaling (``scale >= 1``) else ``2``;
  output pixel ``i`` has centre ``c = scale * (i + 0.5)`` and takes input pixels
  ``j in [max(int(c - support + 0.5), 0), min(int(c + support + 0.5), in))`` -- the kernel is truncated at
  the edges, no padding -- with weights ``keys((j - c + 0.5) / max(scale, 1))``, Keys cubic with
  ``a = -0.5``, normalised to sum 1 per output pixel (``(j + 0.5) - c`` is the distance of the pixel
  centres, i.e. the ``(i + 0.5) * scale - 0.5`` alignment);
* uint8 fixed point: weights become ints ``round-half-away(w * 2**p)`` with ``p`` the largest precision
  (<= 22) for which the largest weight still fits int16; ``acc = 2**(p-1) + sum(w_int * pixel)``,
  ``out = clamp(acc >> p, 0, 255)`` after *each* pass (the intermediate image is uint8);
* ``(float32(x) - mean / rescale_factor) / (std / rescale_factor)`` in float32 (transformers fuses /255
  into mean and std), mean = std = 0.5 for the OneVision checkpoints; channels first, float32.

The probe that fixed these facts compared this reference with ``torch.nn.functional.interpolate`` under
``ATEN_CPU_CAPABILITY=default``, ``avx2`` and ``avx512`` (bit-identical everywhere; vertical-first order
differs by up to 25 levels on noise, PIL's bicubic by up to 2).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from videosparse.video import (
    Clip,
    VideoProcessorSpec,
    preprocess_frames,
    preprocess_videos,
)

# ---------------------------------------------------------------------------------------------------------
# the reference


def _keys(x, a=-0.5):
    x = np.abs(x)
    return np.where(x < 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                    np.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, 0.0))


def _weights(n_in: int, n_out: int) -> tuple[np.ndarray, int]:
    """(n_out, n_in) integer weight matrix and its precision (bits)."""
    scale = n_in / n_out
    support = 2.0 * scale if scale >= 1 else 2.0
    stretch = scale if scale >= 1 else 1.0
    rows = []
    for i in range(n_out):
        c = scale * (i + 0.5)
        lo = max(int(c - support + 0.5), 0)
        hi = min(int(c + support + 0.5), n_in)
        j = np.arange(lo, hi)
        w = _keys((j + 0.5 - c) / stretch)
        rows.append((lo, w / w.sum()))
    w_max = max(float(w.max()) for _, w in rows)
    p = 0
    while p < 22 and int(0.5 + w_max * 2 ** (p + 1)) < 2 ** 15:
        p += 1
    m = np.zeros((n_out, n_in), dtype=np.float64)  # integers, exact in float64
    for i, (lo, w) in enumerate(rows):
        m[i, lo : lo + len(w)] = np.trunc(w * 2 ** p + np.where(w < 0, -0.5, 0.5))
    return m, p


def _pass(img: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    """One fixed-point pass over `axis` of a uint8 array; sums stay far below 2**53, so float64 is exact."""
    n_in = img.shape[axis]
    if n_in == n_out:
        return img
    m, p = _weights(n_in, n_out)
    x = np.moveaxis(img, axis, -1).astype(np.float64)
    acc = (x @ m.T).astype(np.int64) + (1 << (p - 1))
    return np.moveaxis(np.clip(acc >> p, 0, 255).astype(np.uint8), -1, axis)


def ref_resize(frames: np.ndarray, oh: int, ow: int, vertical_first: bool = False) -> np.ndarray:
    """uint8 (T, H, W, 3) -> uint8 (T, oh, ow, 3)."""
    if vertical_first:  # the wrong order, to show the comparison can tell
        return _pass(_pass(frames, oh, 1), ow, 2)
    return _pass(_pass(frames, ow, 2), oh, 1)


def ref_normalise(u8: np.ndarray, mean=(0.5,) * 3, std=(0.5,) * 3, rescale=1 / 255) -> np.ndarray:
    """uint8 (T, h, w, 3) -> float32 (T, 3, h, w), transformers' fused rescale + normalise."""
    m = np.asarray(mean, dtype=np.float32) * np.float32(1.0 / rescale)
    s = np.asarray(std, dtype=np.float32) * np.float32(1.0 / rescale)
    x = (u8.astype(np.float32) - m) / s
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def ref_onevision(frames: np.ndarray, size: int = 384, **kw) -> np.ndarray:
    return ref_normalise(ref_resize(frames, size, size), **kw)


def _frames(t, h, w, seed=0, c=3):
    shape = (t, h, w) if c is None else (t, h, w, c)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _natural(t, h, w, seed=0):
    """Smooth gradients plus sharp edges and a little noise: ringing, clamping and rounding all occur."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.empty((t, h, w, 3), dtype=np.uint8)
    for k in range(t):
        base = 127 + 100 * np.sin(xx / (7 + k) + yy / 11.0)
        edges = np.where(((xx // 9) + (yy // 13)) % 2 == 0, 255.0, 0.0)
        for ch in range(3):
            v = (0.5 + 0.2 * ch) * base + (0.5 - 0.2 * ch) * edges + rng.normal(0, 6, (h, w))
            out[k, :, :, ch] = np.clip(v, 0, 255).astype(np.uint8)
    return out


ONEVISION = VideoProcessorSpec.llava_onevision()

# (h, w): downscale 640x480, upscale 100x60, one axis only (each way), odd sizes, 720p, already 384x384
SIZES = [(480, 640), (60, 100), (384, 500), (500, 384), (37, 51), (383, 385), (720, 1280), (384, 384)]


# ---------------------------------------------------------------------------------------------------------
# pixel values


@pytest.mark.parametrize("h,w", SIZES)
def test_onevision_pixels_equal_reference(h, w):
    frames = _frames(2, h, w, seed=h * 1000 + w)
    frames[1] = _natural(1, h, w, seed=w)[0]
    ours = preprocess_frames(frames, ONEVISION)
    assert isinstance(ours, torch.Tensor) and ours.dtype == torch.float32
    assert tuple(ours.shape) == (2, 3, 384, 384)
    np.testing.assert_array_equal(ours.numpy(), ref_onevision(frames))  # tolerance 0


def test_reference_is_discriminating():
    """The exact comparison above would catch a wrong pass order, PIL's bicubic, or the float path."""
    from PIL import Image

    frames = _frames(1, 480, 640, seed=3)
    ours = preprocess_frames(frames, ONEVISION, return_tensors="np")
    assert not np.array_equal(ours, ref_normalise(ref_resize(frames, 384, 384, vertical_first=True)))
    pil = np.stack([np.asarray(Image.fromarray(f).resize((384, 384), Image.BICUBIC)) for f in frames])
    assert not np.array_equal(ours, ref_normalise(pil))
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()  # what torchvision does on CUDA
    flt = torch.nn.functional.interpolate(x, size=(384, 384), mode="bicubic", antialias=True, align_corners=False)
    flt = flt.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert not np.array_equal(ours, ref_normalise(flt))
    # and the PIL back end (Video-LLaVA) stays PIL: PIL's pixels, rescaled unfused (float64 /255 -> float32)
    import dataclasses

    pil_spec = dataclasses.replace(ONEVISION, resize_backend="pil")
    unfused = ((pil.astype(np.float64) * (1 / 255)).astype(np.float32) - np.float32(0.5)) / np.float32(0.5)
    np.testing.assert_array_equal(preprocess_frames(frames, pil_spec, return_tensors="np"),
                                  unfused.transpose(0, 3, 1, 2))
    assert not np.array_equal(unfused.transpose(0, 3, 1, 2), ref_normalise(pil))  # fused != unfused (ulps)


def test_identity_size_is_not_resampled():
    frames = _frames(3, 384, 384, seed=5)
    u8 = np.rint(preprocess_frames(frames, ONEVISION, return_tensors="np") * 127.5 + 127.5)
    np.testing.assert_array_equal(u8.transpose(0, 2, 3, 1), frames)


def test_channel_order_and_range():
    frames = np.zeros((1, 50, 70, 3), dtype=np.uint8)
    frames[..., 0] = 255  # pure red
    frames[..., 2] = 128
    x = preprocess_frames(frames, ONEVISION, return_tensors="np")
    assert x.shape == (1, 3, 384, 384) and x.dtype == np.float32
    assert np.all(x[0, 0] == 1.0) and np.all(x[0, 1] == -1.0) and np.all(x[0, 2] == np.float32(0.5) / np.float32(127.5))


@pytest.mark.parametrize("shape", ["gray2d", "gray1", "rgba"])
def test_single_channel_and_rgba_frames(shape):
    rgb = _natural(2, 45, 81, seed=7)
    if shape == "rgba":
        alpha = np.random.default_rng(1).integers(0, 256, (2, 45, 81, 1), dtype=np.uint8)
        inp, expect = np.concatenate([rgb, alpha], axis=-1), rgb  # alpha dropped, as the package does
    else:
        gray = rgb[..., 0]
        inp = gray if shape == "gray2d" else gray[..., None]
        expect = np.repeat(gray[..., None], 3, axis=-1)  # replicated, as transformers does
    ours = preprocess_frames(inp, ONEVISION, return_tensors="np")
    np.testing.assert_array_equal(ours, ref_onevision(expect))
    if shape != "rgba":
        assert np.array_equal(ours[:, 0], ours[:, 1]) and np.array_equal(ours[:, 1], ours[:, 2])


def test_batch_of_frames_and_videos():
    # more frames than one interpolate chunk, so chunking is exercised too
    a = _frames(20, 120, 90, seed=11)
    b = _natural(20, 64, 200, seed=12)
    out = preprocess_videos([a, Clip.from_array(b, fps=4)], ONEVISION)
    assert isinstance(out, torch.Tensor) and tuple(out.shape) == (2, 20, 3, 384, 384)
    np.testing.assert_array_equal(out[0].numpy(), ref_onevision(a))
    np.testing.assert_array_equal(out[1].numpy(), ref_onevision(b))
    # frame-by-frame processing gives the same values as the whole video
    np.testing.assert_array_equal(preprocess_frames(a[7:8], ONEVISION, return_tensors="np")[0], out[0, 7].numpy())


def test_other_size_and_normalisation():
    """Not only the defaults: a 96-px spec with CLIP statistics (the class defaults of the transformers
    processor) follows the same algorithm, the fused mean/std included."""
    from videosparse.video import CLIP_MEAN, CLIP_STD

    spec = VideoProcessorSpec(shortest_edge=None, resize_to=(96, 96), crop_size=96, image_mean=CLIP_MEAN,
                              image_std=CLIP_STD, do_center_crop=False, resize_backend="torch")
    frames = _natural(2, 77, 131, seed=2)
    ours = preprocess_frames(frames, spec, return_tensors="np")
    np.testing.assert_array_equal(ours, ref_normalise(ref_resize(frames, 96, 96), CLIP_MEAN, CLIP_STD))


def test_torch_backend_center_crop_like_torchvision():
    """Shortest-edge resize + center crop on the torch back end (e.g. LLaVA-NeXT-Video's video processor):
    crop at int((size - crop) / 2); a crop larger than the frame pads zeros, the smaller half left/top."""
    spec = VideoProcessorSpec(shortest_edge=24, crop_size=(20, 31), resize_backend="torch",
                              image_mean=(0.5,) * 3, image_std=(0.5,) * 3)
    frames = _natural(2, 45, 70, seed=4)  # -> 24 x int(24 * 70 / 45) = 24 x 37
    u8 = ref_resize(frames, 24, 37)
    top, left = int((24 - 20) / 2), int((37 - 31) / 2)
    expect = ref_normalise(u8[:, top : top + 20, left : left + 31])
    np.testing.assert_array_equal(preprocess_frames(frames, spec, return_tensors="np"), expect)

    big = VideoProcessorSpec(shortest_edge=24, crop_size=(27, 40), resize_backend="torch",
                             image_mean=(0.5,) * 3, image_std=(0.5,) * 3)
    padded = np.zeros((2, 27, 40, 3), dtype=np.uint8)
    padded[:, 1 : 1 + 24, 1 : 1 + 37] = u8  # pad top (27-24)//2 = 1, left (40-37)//2 = 1
    np.testing.assert_array_equal(preprocess_frames(frames, big, return_tensors="np"), ref_normalise(padded))


def test_model_view_of_onevision_spec_is_the_resized_uint8():
    from videosparse import heatmap

    frames = _natural(2, 90, 160, seed=9)
    np.testing.assert_array_equal(heatmap.model_view(frames, ONEVISION), ref_resize(frames, 384, 384))


# ---------------------------------------------------------------------------------------------------------
# the spec and its config

# llava-hf/llava-onevision-qwen2-7b-ov-hf video_preprocessor_config.json as the conversion script wrote it
# (LlavaOnevisionVideoProcessor.from_pretrained("google/siglip-so400m-patch14-384") + save_pretrained,
# transformers 4.45: the video processor was still an image-processor subclass)
ONEVISION_CONFIG_2024 = {
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_processor_type": "LlavaOnevisionVideoProcessor",
    "image_std": [0.5, 0.5, 0.5],
    "processor_class": "LlavaOnevisionProcessor",
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"height": 384, "width": 384},
}

# the same processor saved by transformers 5 (BaseVideoProcessor.to_dict: every attribute, nulls included)
ONEVISION_CONFIG_V5 = {
    "crop_size": None,
    "data_format": "channels_first",
    "default_to_square": False,
    "device": None,
    "do_center_crop": None,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "do_sample_frames": False,
    "fps": None,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "input_data_format": None,
    "num_frames": None,
    "processor_class": "LlavaOnevisionProcessor",
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "return_metadata": False,
    "size": {"height": 384, "width": 384},
    "video_metadata": None,
    "video_processor_type": "LlavaOnevisionVideoProcessor",
}

# Video-LLaVA-7B-hf preprocessor_config.json (CLIP; pillow-based image processor)
VIDEO_LLAVA_CONFIG = {
    "crop_size": {"height": 224, "width": 224},
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_processor_type": "VideoLlavaImageProcessor",
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "processor_class": "VideoLlavaProcessor",
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"shortest_edge": 224},
}


def test_llava_onevision_spec_fields():
    s = VideoProcessorSpec.llava_onevision()
    assert s.resize_to == (384, 384) and s.shortest_edge is None and not s.do_center_crop
    assert s.crop_hw == (384, 384)  # = the output size, for code that reads crop_hw
    assert s.image_mean == (0.5, 0.5, 0.5) and s.image_std == (0.5, 0.5, 0.5)
    assert s.resample == "bicubic" and s.resize_backend == "torch" and s.rescale_factor == 1 / 255
    assert s.do_resize and s.do_rescale and s.do_normalize
    assert VideoProcessorSpec().resize_backend == "pil"


@pytest.mark.parametrize("cfg", [ONEVISION_CONFIG_2024, ONEVISION_CONFIG_V5], ids=["2024", "transformers5"])
def test_onevision_config_gives_onevision_spec(tmp_path, cfg):
    (tmp_path / "video_preprocessor_config.json").write_text(json.dumps(cfg))
    # the image processor's config sits next to it and must not be read first
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(VIDEO_LLAVA_CONFIG))
    assert VideoProcessorSpec.from_pretrained(tmp_path) == VideoProcessorSpec.llava_onevision()
    assert VideoProcessorSpec.from_pretrained(tmp_path / "video_preprocessor_config.json") == \
        VideoProcessorSpec.llava_onevision()
    assert VideoProcessorSpec.from_pretrained({"video_processor": cfg}) == VideoProcessorSpec.llava_onevision()


def test_backend_is_chosen_by_processor_type():
    base = {k: v for k, v in ONEVISION_CONFIG_2024.items() if k not in ("image_processor_type", "processor_class")}
    assert VideoProcessorSpec.from_pretrained(base).resize_backend == "pil"  # nothing names a torch processor
    for key, name in [("video_processor_type", "LlavaNextVideoVideoProcessor"),
                      ("image_processor_type", "SiglipImageProcessorFast"),
                      ("processor_class", "LlavaOnevisionProcessor")]:
        assert VideoProcessorSpec.from_pretrained({**base, key: name}).resize_backend == "torch", name
    for key, name in [("image_processor_type", "VideoLlavaImageProcessor"),
                      ("processor_class", "VideoLlavaProcessor"),
                      ("image_processor_type", "SiglipImageProcessor")]:
        assert VideoProcessorSpec.from_pretrained({**base, key: name}).resize_backend == "pil", name
    # an explicit resize_backend key (e.g. a recorded spec) wins
    assert VideoProcessorSpec.from_pretrained({**ONEVISION_CONFIG_V5, "resize_backend": "pil"}).resize_backend == "pil"


def test_torch_config_with_a_crop_keeps_it():
    cfg = {"video_processor_type": "LlavaNextVideoVideoProcessor", "size": {"shortest_edge": 336},
           "crop_size": {"height": 336, "width": 336}, "do_center_crop": True, "resample": 3}
    s = VideoProcessorSpec.from_pretrained(cfg)
    assert s.resize_backend == "torch" and s.shortest_edge == 336 and s.do_center_crop and s.crop_hw == (336, 336)
    s = VideoProcessorSpec.from_pretrained({**cfg, "do_center_crop": None})  # null + a crop size -> crop
    assert s.do_center_crop


def test_video_llava_config_loads_as_before(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(VIDEO_LLAVA_CONFIG))
    s = VideoProcessorSpec.from_pretrained(tmp_path)
    assert s == VideoProcessorSpec() and s.resize_backend == "pil"
    # a Video-LLaVA-style config without crop information keeps the old defaults (center crop 224)
    bare = {"size": {"height": 100, "width": 120}, "image_processor_type": "VideoLlavaImageProcessor"}
    s = VideoProcessorSpec.from_pretrained(bare)
    assert s.resize_to == (100, 120) and s.shortest_edge == 224 and s.do_center_crop and s.crop_size == 224


def test_invalid_backend_and_filter():
    with pytest.raises(ValueError, match="resize_backend"):
        VideoProcessorSpec(resize_backend="cv2")
    with pytest.raises(ValueError, match="lanczos"):
        VideoProcessorSpec(resample="lanczos", resize_backend="torch")
    assert VideoProcessorSpec(resample="lanczos").resample == "lanczos"  # fine with PIL
    assert VideoProcessorSpec(resize_backend="TORCH").resize_backend == "torch"


def test_spec_round_trips_through_to_dict():
    """Traces record spec.to_dict() and the CLI rebuilds the spec from it (videosparse.cli._spec_from_doc)."""
    d = json.loads(json.dumps(ONEVISION.to_dict()))
    again = VideoProcessorSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
    assert again == ONEVISION
