"""The shipped LLaVA-OneVision test bed ("testbed-onevision"): loads by name like the real family, answers
held-out questions with all tokens and under pruning, and its geometry (36 pooled tokens per frame, no
CLS, one closing newline that is never a visual token) reaches the trace and the target indices."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from videosparse import testbed  # noqa: E402
from videosparse.testbed import model as tb  # noqa: E402
from videosparse.testbed import synthetic as syn  # noqa: E402

NAME = "testbed-onevision"
PATH = testbed.path(NAME)
FRAMES = syn.GenConfig().num_frames
P = 36  # 12 x 12 SigLIP patches pooled 2 x 2 -> 6 x 6, no CLS
NUM_VISUAL = FRAMES * P  # 288; the newline closing the video is placeholder 289, not visual
# measured on the shipped checkpoint: `video` at 25 % of the visual tokens answers 64 / 64 fixed questions
# (target recall 100 %); the floor leaves margin for thread-count / BLAS differences
PRUNED_FLOOR = 0.90

pytestmark = pytest.mark.skipif(
    not os.path.exists(os.path.join(PATH, "model.safetensors")), reason="OneVision test-bed checkpoint not shipped"
)


@pytest.fixture(scope="module")
def bed():
    torch.manual_seed(0)
    return tb.load_testbed(NAME)


@pytest.fixture(scope="module")
def fixed():
    return tb.fixed_samples(NAME)  # regenerated from their seeds; ValueError if one differs from the record


@pytest.fixture(scope="module")
def video_file(fixed, tmp_path_factory):
    """The first fixed question's clip written as an MP4 (read back by the package's decoder)."""
    d = tmp_path_factory.mktemp("ov-clip")
    syn.write_dataset(fixed[:1], str(d))
    name = [f for f in os.listdir(d) if f.endswith(syn.VIDEO_EXT)][0]
    return os.path.join(d, name), fixed[0]


def test_files_config_and_size():
    names = set(os.listdir(PATH))
    for required in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                     "generation_config.json", "video_preprocessor_config.json", "fixed_questions.json",
                     "training_info.json"):
        assert required in names, required
    assert os.path.getsize(os.path.join(PATH, "model.safetensors")) <= 8 * 2**20
    with open(os.path.join(PATH, "config.json")) as fh:
        cfg = json.load(fh)
    assert cfg["model_type"] == "llava_onevision"
    assert cfg["vision_config"]["model_type"] == "siglip_vision_model"
    assert (cfg["vision_config"]["image_size"], cfg["vision_config"]["patch_size"]) == (48, 4)
    assert cfg["vision_feature_select_strategy"] == "full"
    t = cfg["text_config"]
    assert t["model_type"] == "qwen2"
    assert (t["hidden_size"], t["num_hidden_layers"], t["num_attention_heads"], t["num_key_value_heads"]) == (128, 4, 4, 2)
    with open(os.path.join(PATH, "video_preprocessor_config.json")) as fh:
        pp = json.load(fh)
    assert pp["video_processor_type"] == "LlavaOnevisionVideoProcessor"
    assert pp["size"] == {"height": 48, "width": 48} and pp["resample"] == 3
    assert pp["image_mean"] == [0.5] * 3 and pp["image_std"] == [0.5] * 3
    with open(os.path.join(PATH, "training_info.json")) as fh:
        info = json.load(fh)
    assert info["family"] == "llava_onevision"
    assert info["heldout"]["accuracy"] >= 0.95 and info["heldout"]["n"] >= 1000
    with open(tb.fixed_questions_path(NAME)) as fh:
        assert info["heldout"]["seed"] not in {rec["seed"] for rec in json.load(fh)}


def test_names_resolve():
    assert testbed.resolve(NAME) == PATH and testbed.resolve("testbed") == testbed.path()
    assert testbed.path() != PATH
    from videosparse.loading import resolve_checkpoint

    ck = resolve_checkpoint(NAME)
    assert ck.source == PATH and ck.model_type == "llava_onevision" and ck.local_files_only
    assert resolve_checkpoint("testbed").model_type == "video_llava"  # the default stays Video-LLaVA


def test_loads_through_the_real_code_path(bed):
    model, tokenizer, spec = bed
    assert type(model).__name__ == "LlavaOnevisionForConditionalGeneration"
    assert type(model.model.language_model).__name__ == "Qwen2Model"
    attn = model.model.language_model.layers[0].self_attn
    assert attn.q_proj.bias is not None and attn.k_proj.bias is not None and attn.v_proj.bias is not None
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()  # tied
    cfg = model.config
    assert tb.tokens_per_frame(cfg) == P and tb.frame_grid(cfg) == (6, 6) and not tb.has_cls(cfg)
    # answers end with <|im_end|>: tokenizer, text config and generation config agree
    im_end = tokenizer.convert_tokens_to_ids(tb.IM_END)
    assert tokenizer.eos_token == tb.IM_END
    assert cfg.text_config.eos_token_id == im_end == model.generation_config.eos_token_id
    # package preprocessing from the checkpoint's video_preprocessor_config.json: torch back end, 48 x 48
    assert spec is not None and spec.resize_backend == "torch" and tuple(spec.resize_to) == (48, 48)
    frames = syn.make_dataset(4, 1)[0].frames
    torch.testing.assert_close(tb.preprocess(frames, spec), tb.preprocess(frames, None, tb.LLAVA_ONEVISION),
                               atol=0, rtol=0)
    # the chat template expands <video> to frames x 36 + the closing newline, what the model expects
    inputs = tb.build_inputs(tokenizer, syn.make_dataset(3, 2), cfg, spec)
    ids = inputs["input_ids"]
    assert ((ids == cfg.video_token_id).sum(1) == NUM_VISUAL + 1).all()
    assert inputs["attention_mask"][:, -1].all()  # left padding
    toks = tokenizer.convert_ids_to_tokens(ids[0].tolist())
    assert toks[-3:] == [tb.IM_END, tb.IM_START, "assistant"]
    with torch.no_grad():
        feats = model.model.get_video_features(pixel_values_videos=inputs["pixel_values_videos"][:1],
                                               vision_feature_layer=cfg.vision_feature_layer,
                                               vision_feature_select_strategy=cfg.vision_feature_select_strategy)
    assert feats.pooler_output.shape[1] == NUM_VISUAL + 1


def test_answers_fixed_questions_with_all_tokens(bed, fixed):
    model, tokenizer, spec = bed
    res = tb.evaluate(model, tokenizer, fixed, batch_size=32, spec=spec, return_predictions=True)
    wrong = [(s.question, s.answer, p) for s, p, ok in zip(fixed, res["predictions"], res["correct"]) if not ok]
    assert res["accuracy"] >= 0.95, wrong
    for t, acc in res["per_type"].items():
        assert acc >= 0.85, (t, res["per_type"], wrong)


def test_target_indices_have_no_cls(bed, fixed):
    cfg = bed[0].config
    s = fixed[0]
    assert tb.target_indices(s, cfg) == [t * P + r * 6 + c for (t, r, c) in s.target]
    assert all(0 <= i < NUM_VISUAL for s in fixed for i in tb.target_indices(s, cfg))


def test_pruned_video_quarter_keeps_accuracy_and_targets(bed, fixed):
    from videosparse import SparseConfig, sparsify

    model, tokenizer, spec = bed
    cfg = SparseConfig.preset("video", budget=0.25, num_layers=model.config.text_config.num_hidden_layers)
    with sparsify(model, cfg) as h:
        res = tb.evaluate(model, tokenizer, fixed, batch_size=64, spec=spec, handle=h, return_predictions=True)
        trace = h.trace
    assert res["accuracy"] >= PRUNED_FLOOR, (res["accuracy"], res["per_type"])
    assert res["target_recall"] >= 0.9, res["target_recall"]
    # the trace carries the family's geometry; the closing newline (index 288) is never a kept visual token
    assert trace.tokens_per_frame == P and trace.num_visual == NUM_VISUAL
    assert tuple(trace.grid) == (6, 6) and trace.has_cls is False
    assert trace.counts[-1] == round(0.25 * NUM_VISUAL)
    for st in trace.stages:
        assert int(st.kept.max()) < NUM_VISUAL and int(st.kept.min()) >= 0
    # recall with the Video-LLaVA formula (CLS at in-frame 0: every index shifted by one) is far lower:
    # the no-CLS indices are the ones the selection actually kept
    kept = trace.stages[-1].kept.tolist()
    merged = trace.stages[-1].merged
    merged = merged.tolist() if merged is not None else [[False] * len(k) for k in kept]

    def recall(shift):
        out = []
        for s, k, m in zip(fixed, kept, merged):
            alive = {i for i, mm in zip(k, m) if not mm}
            tgt = [t * P + shift + r * 6 + c for (t, r, c) in s.target]
            out.append(np.mean([i in alive for i in tgt]))
        return float(np.mean(out))

    assert recall(0) == pytest.approx(res["target_recall"])
    assert recall(1) < recall(0) - 0.3, (recall(0), recall(1))


def test_videoqa_from_pretrained_by_name(video_file):
    from videosparse import SparseConfig, VideoQA

    path, sample = video_file
    # no num_frames: the checkpoint's own (its video processor's num_frames, 8), not the family's 32, which
    # would not fit this model's 1,024 positions
    qa = VideoQA.from_pretrained(NAME, sparsity=None, progress=False)
    assert qa.num_frames == FRAMES == 8 and qa.frontend.default_num_frames == 32
    assert type(qa.model).__name__ == "LlavaOnevisionForConditionalGeneration"
    assert qa.tokens_per_frame == P
    ans = qa.ask(path, sample.question)
    assert syn.exact_match(ans.text, sample.answer), (ans.text, sample.answer)
    assert ans.visual_tokens == NUM_VISUAL
    qa.set_sparsity(SparseConfig.preset("video", budget=0.25, num_layers=4))
    ans = qa.ask(path, sample.question)
    assert syn.exact_match(ans.text, sample.answer), (ans.text, sample.answer)
    tr = ans.trace
    assert tr.has_cls is False and tuple(tr.grid) == (6, 6) and tr.tokens_per_frame == P
    assert int(tr.stages[-1].kept.max()) < NUM_VISUAL


def test_cli_model_name(video_file, capsys):
    from videosparse import cli

    path, sample = video_file
    rc = cli.main(["ask", path, sample.question, "--model", NAME, "--budget", "0.25",  # the checkpoint's frames
                   "--max-new-tokens", "4", "--json", "--quiet"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert syn.exact_match(doc["text"], sample.answer), (doc["text"], sample.answer)
    assert doc["visual_tokens"] == NUM_VISUAL and doc["counts"][-1] == round(0.25 * NUM_VISUAL)
    assert len(doc["per_frame_kept"]) == FRAMES and sum(doc["per_frame_kept"]) == doc["counts"][-1]
