"""CLIP preprocessing and prompt expansion against transformers' own Video-LLaVA processor."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from videosparse.video import (
    Clip,
    VideoProcessorSpec,
    expand_video_prompt,
    preprocess_frames,
    preprocess_videos,
    video_tokens_per_frame,
)

transformers = pytest.importorskip("transformers")
from transformers import VideoLlavaImageProcessor  # noqa: E402

SIZES = [(240, 320), (320, 240), (224, 224), (35, 63), (481, 17), (100, 100), (720, 1280)]


def _frames(t, h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


def _hf_pixels(frames, **kw):
    ip = VideoLlavaImageProcessor(**kw)
    out = ip(list(frames), return_tensors="np", return_legacy_image_output=False)
    return np.asarray(out["pixel_values"])


@pytest.mark.parametrize("h,w", SIZES)
def test_parity_with_transformers_image_processor(h, w):
    frames = _frames(3, h, w, seed=h * w)
    ours = preprocess_frames(frames)
    assert isinstance(ours, torch.Tensor) and ours.dtype == torch.float32
    assert tuple(ours.shape) == (3, 3, 224, 224)
    ref = _hf_pixels(frames)
    diff = float(np.abs(ours.numpy() - ref).max())
    assert diff <= 1e-6, diff  # bit-identical in practice (0.0): same PIL resize, same float ops


def test_parity_small_spec_from_pretrained(tmp_path):
    cfg = {"size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32}, "do_normalize": True,
           "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25], "resample": 3}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(cfg))
    spec = VideoProcessorSpec.from_pretrained(tmp_path)
    assert spec.shortest_edge == 32 and spec.crop_size == 32 and spec.resample == "bicubic"
    assert VideoProcessorSpec.from_pretrained(cfg) == spec
    assert VideoProcessorSpec.from_pretrained({"video_processor": cfg}) == spec
    frames = _frames(4, 48, 64)
    ours = preprocess_frames(frames, spec).numpy()
    ref = _hf_pixels(frames, size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                     image_mean=[0.5] * 3, image_std=[0.25] * 3)
    assert ours.shape == (4, 3, 32, 32)
    assert float(np.abs(ours - ref).max()) <= 1e-6


def test_default_spec_matches_transformers_defaults():
    ip = VideoLlavaImageProcessor()
    spec = VideoProcessorSpec.from_pretrained(ip.to_dict())
    assert spec == VideoProcessorSpec()


def test_crop_larger_than_resize_pads_like_transformers():
    frames = _frames(2, 40, 50)
    spec = VideoProcessorSpec(shortest_edge=20, crop_size=32)
    ref = _hf_pixels(frames, size={"shortest_edge": 20}, crop_size={"height": 32, "width": 32})
    assert float(np.abs(preprocess_frames(frames, spec, return_tensors="np") - ref).max()) <= 1e-6


def test_batch_and_clip_input():
    a, b = _frames(4, 30, 40, 1), _frames(4, 50, 30, 2)
    spec = VideoProcessorSpec(shortest_edge=16, crop_size=16)
    out = preprocess_videos([a, Clip.from_array(b, fps=4)], spec)
    assert tuple(out.shape) == (2, 4, 3, 16, 16)
    torch.testing.assert_close(out[0], preprocess_frames(a, spec), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"same number of frames, got \[4, 3\]"):
        preprocess_videos([a, b[:3]], spec)
    gray = preprocess_frames(a[..., 0], spec)
    assert torch.allclose(gray[:, 0] * 0.26862954 + 0.48145466, gray[:, 1] * 0.26130258 + 0.4578275, atol=1e-5)


def _tiny_processor(monkeypatch):
    """A real VideoLlavaProcessor built offline. Its video sub-processor needs torchvision, which
    is not installed, so it is replaced by the (pillow) image processor applied per frame; the
    placeholder expansion and tokenisation are transformers' own code."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, VideoLlavaProcessor
    from transformers.feature_extraction_utils import BatchFeature

    vocab = {"<unk>": 0, "<pad>": 1, "<s>": 2, "</s>": 3, "<image>": 4, "<video>": 5, "USER:": 6,
             "ASSISTANT:": 7, "what": 8, "happens?": 9}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
                                  eos_token="</s>",
                                  extra_special_tokens={"image_token": "<image>", "video_token": "<video>"})
    ip = VideoLlavaImageProcessor()

    class FramewiseVideoProcessor:
        def __call__(self, videos, **kw):
            px = [_hf_pixels(v) for v in videos]
            return BatchFeature({"pixel_values_videos": np.stack(px)}, tensor_type="pt")

    orig = VideoLlavaProcessor.check_argument_for_proper_class
    monkeypatch.setattr(
        VideoLlavaProcessor, "check_argument_for_proper_class",
        lambda self, name, arg: None if name == "video_processor" else orig(self, name, arg),
    )
    proc = VideoLlavaProcessor(image_processor=ip, video_processor=FramewiseVideoProcessor(), tokenizer=tok)
    return proc, tok


@pytest.mark.parametrize("num_frames", [1, 8])
@pytest.mark.parametrize("strategy", ["default", "full"])
def test_prompt_expansion_and_pixels_match_videollava_processor(monkeypatch, num_frames, strategy):
    proc, tok = _tiny_processor(monkeypatch)
    proc.vision_feature_select_strategy = strategy  # does not change the *video* count (CLS kept)
    video = _frames(num_frames, 120, 160, seed=num_frames)
    prompt = "USER: <video> what happens? ASSISTANT:"
    out = proc(text=prompt, videos=[video], return_tensors="pt")

    per_frame = video_tokens_per_frame(224, patch_size=14)
    assert per_frame == 257
    ours = expand_video_prompt(prompt, num_frames, per_frame)
    ids = tok(ours, return_tensors="pt")["input_ids"]
    assert torch.equal(ids, out["input_ids"])
    assert int((ids == 5).sum()) == num_frames * 257

    px = preprocess_videos([video])
    assert tuple(px.shape) == tuple(out["pixel_values_videos"].shape) == (1, num_frames, 3, 224, 224)
    assert float((px - out["pixel_values_videos"]).abs().max()) <= 1e-6


def test_expand_video_prompt_errors_and_multiple():
    assert expand_video_prompt("a <video> b", 2, 3) == "a " + "<video>" * 6 + " b"
    assert expand_video_prompt("<v><v>", 1, 2, video_token="<v>") == "<v>" * 4
    with pytest.raises(ValueError, match="no '<video>'"):
        expand_video_prompt("no placeholder", 8, 257)
    with pytest.raises(ValueError):
        expand_video_prompt("<video>", 0, 257)
    assert video_tokens_per_frame(32, patch_size=8) == 17
