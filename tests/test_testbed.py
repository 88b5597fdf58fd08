"""The shipped test-bed checkpoint: loads like the real one and answers held-out questions with all tokens."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from videosparse.testbed import synthetic as syn  # noqa: E402
from videosparse.testbed import model as tb  # noqa: E402

PATH = tb.default_path()
TRAIN_SEED_DOMAIN = 0x7EA1  # scripts/train_testbed.py: training data never comes from make_dataset seeds

pytestmark = pytest.mark.skipif(
    not os.path.exists(os.path.join(PATH, "model.safetensors")), reason="test-bed checkpoint not shipped yet"
)


@pytest.fixture(scope="module")
def bed():
    torch.manual_seed(0)
    return tb.load_testbed(PATH)


@pytest.fixture(scope="module")
def fixed():
    return tb.fixed_samples(PATH)  # regenerated from their seeds; ValueError if one differs from the record


def test_files_and_size():
    names = set(os.listdir(PATH))
    for required in ("config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"):
        assert required in names
    assert os.path.getsize(os.path.join(PATH, "model.safetensors")) <= 20 * 2**20
    with open(os.path.join(PATH, "preprocessor_config.json")) as fh:
        pp = json.load(fh)
    size = syn.GenConfig().size
    assert pp["size"]["shortest_edge"] == size and pp["crop_size"] == {"height": size, "width": size}
    assert pp["image_mean"] == list(tb.CLIP_MEAN) and pp["image_std"] == list(tb.CLIP_STD)


def test_loads_through_the_real_code_path(bed):
    model, tokenizer, _ = bed
    assert type(model).__name__ == "VideoLlavaForConditionalGeneration"
    assert type(tokenizer).__name__ in ("PreTrainedTokenizerFast", "TokenizersBackend")
    cfg = model.config
    assert cfg.text_config.num_hidden_layers >= 4
    assert cfg.vision_feature_select_strategy == "full" and cfg.vision_feature_layer == -1
    assert tb.tokens_per_frame(cfg) >= 17
    assert tokenizer.convert_tokens_to_ids(tb.VIDEO) == cfg.video_token_id
    # the prompt expands to frames x (patches + CLS) video tokens
    inputs = tb.build_inputs(tokenizer, syn.make_dataset(3, 2), cfg)
    n_video = (inputs["input_ids"] == cfg.video_token_id).sum(1)
    assert n_video.tolist() == [syn.GenConfig().num_frames * tb.tokens_per_frame(cfg)] * 2
    assert inputs["attention_mask"][:, -1].all()  # left padding


def test_fixed_questions_are_held_out(fixed):
    with open(tb.fixed_questions_path(PATH)) as fh:
        seeds = {rec["seed"] for rec in json.load(fh)}
    info_path = os.path.join(PATH, "training_info.json")
    if os.path.exists(info_path):
        with open(info_path) as fh:
            info = json.load(fh)
        assert info["heldout"]["seed"] not in seeds
    assert len(fixed) >= 32
    assert {s.qtype for s in fixed} == set(syn.QUESTION_TYPES)


def test_answers_fixed_questions_with_all_tokens(bed, fixed):
    model, tokenizer, spec = bed
    res = tb.evaluate(model, tokenizer, fixed, batch_size=32, spec=spec, return_predictions=True)
    wrong = [(s.question, s.answer, p) for s, p, ok in zip(fixed, res["predictions"], res["correct"]) if not ok]
    assert res["accuracy"] >= 0.95, wrong
    for t, acc in res["per_type"].items():
        assert acc >= 0.85, (t, res["per_type"], wrong)


def test_video_file_path_gives_the_same_answers(bed, fixed, tmp_path):
    model, tokenizer, spec = bed
    subset = fixed[:8]
    jsonl = syn.write_dataset(subset, str(tmp_path))
    back = syn.load_samples(jsonl)
    for a, b in zip(subset, back):
        np.testing.assert_array_equal(a.frames, b.frames)
    direct = tb.generate_answers(model, tokenizer, subset, spec)
    decoded = tb.generate_answers(model, tokenizer, back, spec)
    assert direct == decoded


def test_preprocessing_matches_package(bed):
    video = pytest.importorskip("videosparse.video")
    if not hasattr(video, "preprocess_frames"):
        pytest.skip("videosparse.video.preprocess_frames not available")
    frames = syn.make_dataset(4, 1)[0].frames
    spec = video.VideoProcessorSpec.from_pretrained(PATH)
    ours = tb.preprocess(frames, None)
    theirs = video.preprocess_frames(frames, spec)
    torch.testing.assert_close(torch.as_tensor(theirs).float(), ours, atol=1e-5, rtol=0)
