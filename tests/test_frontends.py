"""Front ends (videosparse.frontends): the registry, and the one tokens-per-frame computation against what the
models really produce."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from videosparse import frontends
from videosparse.frontends import FrontEnd, frontend_for, get_frontend, register_frontend, registered_frontends

from tests.conftest import make_model


def test_registry_is_keyed_by_model_type_and_matches_loading():
    from videosparse import loading

    reg = registered_frontends()
    assert set(reg) == set(loading.SUPPORTED_MODEL_TYPES)  # every loadable checkpoint has a front end
    fe = reg["video_llava"]
    assert get_frontend("video_llava") is fe and frontend_for("video_llava") is fe
    assert (fe.name, fe.has_cls, fe.default_num_frames) == ("video_llava", True, 8)


def test_unknown_model_type_names_the_supported_ones():
    with pytest.raises(ValueError, match=r"no front end for model_type 'gemma3'; supported: llava_onevision: "
                                         r".*; qwen2_5_vl: .*; qwen3_vl: .*; video_llava: "):
        get_frontend("gemma3")

    class Cfg:
        model_type = "llama"

    with pytest.raises(ValueError, match=r"'llama'.*supported: llava_onevision.*video_llava"):
        frontend_for(Cfg())


def test_duplicate_registration_fails_and_leaves_the_registry_alone():
    before = registered_frontends()

    class Other(FrontEnd):
        name = "other"
        model_types = ("brand_new_type", "video_llava")  # the second key is taken

    with pytest.raises(ValueError, match=r"model_type 'video_llava' already has a front end \(VideoLlavaFrontEnd"):
        register_frontend(Other)
    assert registered_frontends() == before  # nothing half-registered

    class Nameless(FrontEnd):
        model_types = ("x",)

    with pytest.raises(ValueError, match="needs a name and model_types"):
        register_frontend(Nameless)
    assert registered_frontends() == before


def test_registering_a_new_family_and_re_registering_are_fine():
    class Fake(FrontEnd):
        name = "fake"
        model_types = ("fake_vlm",)
        has_cls = False

        def frame_grid(self, config):
            return (3, 5)

    try:
        register_frontend(Fake)
        register_frontend(Fake)  # the same class again (a re-imported module): not a duplicate
        fe = get_frontend("fake_vlm")
        assert fe.tokens_per_frame(None) == 15  # no CLS
    finally:
        frontends.base._REGISTRY.pop("fake_vlm", None)
    assert "fake_vlm" not in registered_frontends()


def test_tokens_per_frame_is_what_the_tiny_model_produces():
    from videosparse.models.video_llava import VideoLlavaAdapter
    from videosparse.pipeline import tokens_per_frame
    from videosparse.config import SparseConfig

    for image_size, patch in ((16, 4), (32, 8), (28, 14)):
        model = make_model(image_size=image_size, patch=patch, layers=2)
        fe = frontend_for(model.config)
        P = fe.tokens_per_frame(model.config)
        assert fe.frame_grid(model.config) == (image_size // patch,) * 2
        assert P == (image_size // patch) ** 2 + 1 == tokens_per_frame(model.config)  # the pipeline's re-export
        pix = torch.randn(3, 3, image_size, image_size)
        with torch.no_grad():
            feats = fe.video_features(model, pix)
        assert tuple(feats.shape[:2]) == (3, P)  # (frames, tokens per frame) out of the vision tower
        adapter = VideoLlavaAdapter(model, SparseConfig.preset("video", num_layers=2))
        assert (adapter.tokens_per_frame, tuple(adapter.grid), adapter.has_cls) == \
               (P, fe.frame_grid(model.config), fe.has_cls)  # the family adapter's layout agrees
        assert fe.max_positions(model.config) == 1024 and fe.num_layers(model.config) == 2


def test_tokens_per_frame_of_the_test_bed(qa, sample):
    from videosparse.testbed import model as tb

    cfg = qa.model.config
    P = qa.frontend.tokens_per_frame(cfg)
    assert P == qa.tokens_per_frame == tb.tokens_per_frame(cfg) == 37
    assert cfg.video_seq_length == P * (cfg.video_seq_length // P)  # the checkpoint's own count agrees
    with torch.no_grad():
        feats = qa._features(sample.frames[:2])
    assert tuple(feats.shape[:2]) == (2, P)
    ans = qa.ask(sample.frames, sample.question, max_new_tokens=2)
    assert ans.visual_tokens == sample.frames.shape[0] * P and ans.trace.tokens_per_frame == P


def test_prompt_template_and_expansion():
    fe = get_frontend("video_llava")
    assert fe.prompt_template == "USER: <video>\n{question} ASSISTANT:"
    assert fe.prompt("  what is it ", 2, 3) == "USER: " + "<video>" * 6 + "\nwhat is it ASSISTANT:"
    with pytest.raises(ValueError, match=r"prompt_template must contain '<video>' and '\{question\}'"):
        fe.check_template("USER: {question}")


def test_importing_frontends_imports_neither_torch_nor_transformers():
    code = ("import sys, videosparse.frontends, videosparse.pipeline; "
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
