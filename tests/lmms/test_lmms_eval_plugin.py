"""videosparse as an lmms-eval model, tested with the real lmms-eval (0.7.3, installed as docs/lmms-eval.md says).

* lmms-eval's own registry finds ``--model videosparse`` through the entry point;
* ``lmms-eval --model videosparse ... --include_path tests/lmms/tasks`` runs on a local Video-MME-format fixture
  (test-bed clips, no hub) and its accuracy, answers and equivalent tokens equal ``python -m video_eval run`` on the
  same files and config: text scoring on the test bed (``preset=none`` and ``preset=video,budget=0.25``), likelihood
  scoring on a tiny checkpoint that reads option letters;
* lmms-eval's own Video-MME prompt and parsing run through the model on the same files;
* every answer's frames, preset, budget, visual tokens, kept counts and equivalent tokens reach lmms-eval's samples
  file (and ``log_file``);
* a bad model_arg is one line on stderr and exit code 2.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

lmms_eval = pytest.importorskip("lmms_eval")  # the one allowed skip: the main suite's environment has no lmms-eval

from tests.lmms.fixtures import make_letter_checkpoint, make_videomme_home  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TASKS = REPO / "tests" / "lmms" / "tasks"
LMMS_EVAL = Path(sys.executable).with_name("lmms-eval")
TIMEOUT = 600
CONFIGS = {"full": "preset=none", "video@0.25": "preset=video,budget=0.25"}


def _env(hf_home: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update({"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false"})
    env.pop("LMMS_EVAL_PLUGINS", None)
    return env


def _jsonl(path) -> list:
    return [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]


def run_lmms_eval(hf_home: Path, model_args: str, tasks: str, out: Path, batch_size: int = 4) -> tuple:
    """The lmms-eval command in ``$HF_HOME/videomme`` (the local tasks name their parquet file from there):
    (completed process, results.json, {task: samples})."""
    cmd = [str(LMMS_EVAL), "--model", "videosparse", "--model_args", model_args, "--tasks", tasks,
           "--include_path", str(TASKS), "--batch_size", str(batch_size), "--output_path", str(out), "--log_samples"]
    p = subprocess.run(cmd, cwd=hf_home / "videomme", env=_env(hf_home), capture_output=True, text=True,
                       timeout=TIMEOUT)
    if p.returncode != 0 or not list(out.rglob("*_results.json")):
        return p, None, {}
    results = json.loads(sorted(out.rglob("*_results.json"))[-1].read_text())
    samples = {t: sorted(_jsonl(next(out.rglob(f"*_samples_{t}.jsonl"))), key=lambda s: s["doc_id"])
               for t in tasks.split(",")}
    return p, results, samples


def run_video_eval(hf_home: Path, model: str, configs: str, scoring: str, out: Path, *extra: str) -> tuple:
    """``python -m video_eval run --dataset videomme`` on the same files: ({(question id, config): record},
    {config: metrics})."""
    cmd = [sys.executable, "-m", "video_eval", "run", "--dataset", "videomme", "--root", str(hf_home / "videomme"),
           "--model", model, "--configs", configs, "--mc-scoring", scoring, "--batch-size", "4", "--quiet",
           "--out", str(out), *extra]
    p = subprocess.run(cmd, env=_env(hf_home), capture_output=True, text=True, timeout=TIMEOUT)
    assert p.returncode == 0, p.stderr[-3000:]
    preds = {(r["question_id"], r["config"]): r for r in _jsonl(out / "predictions.jsonl")}
    return preds, json.loads((out / "results.json").read_text())["metrics"]


def _fail(p) -> str:
    return f"exit {p.returncode}\n--- stdout\n{p.stdout[-4000:]}\n--- stderr\n{p.stderr[-4000:]}"


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """An HF_HOME holding the Video-MME fixture: 4 test-bed clips, 8 questions."""
    hf = tmp_path_factory.mktemp("hf_home")
    fx = make_videomme_home(hf, n_videos=4, questions_per_video=2, seed=0)
    return hf, fx


@pytest.fixture(scope="module")
def text_reference(home, tmp_path_factory):
    hf, _ = home
    return run_video_eval(hf, "testbed", ",".join(CONFIGS), "text", tmp_path_factory.mktemp("ve_text") / "run",
                          "--max-new-tokens", "8")


@pytest.fixture(scope="module")
def letter_ckpt(tmp_path_factory):
    return make_letter_checkpoint(tmp_path_factory.mktemp("letter_ckpt"))


# ----------------------------------------------------------------------------- discovery
def test_entry_point_is_found_by_lmms_evals_registry():
    from importlib.metadata import entry_points

    from lmms_eval.api.model import lmms
    from lmms_eval.models import MODEL_REGISTRY_V2, get_model

    (ep,) = [e for e in entry_points(group="lmms_eval.models") if e.name == "videosparse"]
    assert ep.value == "videosparse.integrations.lmms_eval:manifest"
    m = MODEL_REGISTRY_V2.get_manifest("videosparse")
    assert m.simple_class_path == "videosparse.integrations.lmms_eval.VideoSparse" and m.chat_class_path is None
    cls = get_model("videosparse")  # lmms-eval's own lookup: resolve, import, check the base class
    assert issubclass(cls, lmms) and cls.is_simple and cls.__name__ == "VideoSparse"
    assert "videosparse" in lmms_eval.models.AVAILABLE_MODELS


def test_import_has_no_side_effects():
    code = ("import sys, videosparse.integrations.lmms_eval as m\n"
            "assert 'lmms_eval' not in sys.modules and 'torch' not in sys.modules, sorted(sys.modules)\n"
            "assert m.manifest().model_id == 'videosparse'\n"
            "print('ok')\n")
    p = subprocess.run([sys.executable, "-c", code], env=_env(REPO), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr


# ----------------------------------------------------------------------------- agreement with video_eval
@pytest.mark.parametrize("config", list(CONFIGS))
def test_lmms_eval_run_equals_video_eval_text_scoring(home, text_reference, config, tmp_path):
    hf, fx = home
    preds, metrics = text_reference
    log = tmp_path / "videosparse.jsonl"
    p, results, samples = run_lmms_eval(hf, f"pretrained=testbed,{CONFIGS[config]},log_file={log}",
                                        "videosparse_videomme_text", tmp_path / "out")
    assert results is not None, _fail(p)
    acc = results["results"]["videosparse_videomme_text"]["videosparse_text,none"]
    assert acc == metrics[config]["accuracy"]
    assert 0 < acc < 1  # both right and wrong answers: a meaningful agreement
    rows = samples["videosparse_videomme_text"]
    assert len(rows) == len(fx["items"]) == 8
    logged = _jsonl(log)
    assert len(logged) == 8
    for s in rows:
        mine = s["videosparse_text"]
        ref = preds[(mine["question_id"], config)]
        assert (mine["prediction"], mine["pred_letter"], mine["correct"]) == \
            (ref["prediction"], ref["pred_letter"], ref["correct"]), mine["question_id"]
        rec = s["token_counts"][0]["videosparse"]
        assert rec["error"] is None and rec["doc_id"] == s["doc_id"]
        assert (rec["equivalent_tokens"], rec["counts"], rec["visual_tokens"], rec["new_tokens"]) == \
            (ref["equivalent_tokens"], ref["counts"], ref["visual_tokens"], ref["new_tokens"])
        assert rec["frames"] == 8 and rec["num_frames"] == 8
        assert s["token_counts"][0]["output_tokens"] == ref["new_tokens"]
        if config == "full":
            assert (rec["preset"], rec["budget"], rec["counts"]) == ("none", None, [])
            assert rec["equivalent_tokens"] == rec["visual_tokens"]
        else:
            assert (rec["preset"], rec["budget"]) == ("video", 0.25)
            assert rec["counts"] and rec["equivalent_tokens"] < rec["visual_tokens"]
        assert rec in logged  # log_file holds the same records


def test_likelihood_and_lmms_evals_own_videomme_task(home, letter_ckpt, tmp_path):
    """multiple_choice through loglikelihood equals video_eval's likelihood scoring question by question, and
    lmms-eval's own Video-MME prompt and parsing run through the model on the same files (one lmms-eval run)."""
    hf, fx = home
    preds, metrics = run_video_eval(hf, letter_ckpt, "video@0.25", "likelihood", tmp_path / "ve", "--device", "cpu")
    log = tmp_path / "videosparse.jsonl"
    p, results, samples = run_lmms_eval(
        hf, f"pretrained={letter_ckpt},preset=video,budget=0.25,device=cpu,log_file={log}",
        "videosparse_videomme_likelihood,videosparse_videomme_lmms", tmp_path / "out")
    assert results is not None, _fail(p)
    assert results["results"]["videosparse_videomme_likelihood"]["acc,none"] == metrics["video@0.25"]["accuracy"]
    qids = [it["question_id"] for it in fx["items"]]
    rows = samples["videosparse_videomme_likelihood"]
    assert len(rows) == 8
    letters = "ABCD"
    for s in rows:
        ref = preds[(qids[s["doc_id"]], "video@0.25")]
        losses = [float(r[0]) for r in s["filtered_resps"]]  # lmms-eval's convention: lower is better
        assert letters[losses.index(min(losses))] == ref["pred_letter"]
        assert bool(s["acc"]) == ref["correct"]
        assert losses == pytest.approx([-ref["letter_logprobs"][x] for x in letters], abs=2e-6)
        for tc in s["token_counts"]:
            rec = tc["videosparse"]
            assert rec["request"] == "loglikelihood" and rec["counts"] and rec["error"] is None
            assert rec["equivalent_tokens"] == ref["equivalent_tokens"]
    own = results["results"]["videosparse_videomme_lmms"]["videomme_perception_score,none"]
    assert 0 <= own <= 100
    rows = samples["videosparse_videomme_lmms"]
    assert len(rows) == 8
    for s in rows:
        assert s["input"].startswith("Select the best answer to the following multiple-choice question")
        rec = s["token_counts"][0]["videosparse"]
        assert rec["request"] == "generate_until" and rec["error"] is None and rec["counts"]
    assert len(_jsonl(log)) == 8 * 4 + 8


# ----------------------------------------------------------------------------- bad model_args
@pytest.mark.parametrize("args, words", [
    ("pretrained=testbed,preset=vidoe", "unknown preset 'vidoe'; known: none, fastv"),
    ("preset=video,budget=0.1", "pretrained is required"),
])
def test_bad_model_args_fail_in_one_line(home, tmp_path, args, words):
    hf, _ = home
    cmd = [str(LMMS_EVAL), "--model", "videosparse", "--model_args", args, "--tasks", "videosparse_videomme_text",
           "--include_path", str(TASKS), "--output_path", str(tmp_path / "out")]
    p = subprocess.run(cmd, cwd=hf / "videomme", env=_env(hf), capture_output=True, text=True, timeout=TIMEOUT)
    assert p.returncode == 2, _fail(p)
    lines = [x for x in p.stderr.splitlines() if "error" in x.lower()]
    assert len(lines) == 1 and lines[0].startswith("lmms-eval: error: --model videosparse: ") and words in lines[0], \
        _fail(p)
    assert "Traceback" not in p.stderr + p.stdout
    assert not list((tmp_path / "out").rglob("*.json"))


# ----------------------------------------------------------------------------- the model in process
@pytest.fixture(scope="module")
def lm(home):
    from videosparse.integrations.lmms_eval import VideoSparse

    m = VideoSparse.create_from_arg_string("pretrained=testbed,preset=video,budget=0.25",
                                           {"batch_size": 2, "max_batch_size": None, "device": None})
    hf, fx = home
    docs = [{"video": str(fx["video_files"][it["video_name"]]), "question": it["question"],
             "options": it["options"]} for it in fx["items"]]
    m.task_dict = {"t": {"test": docs}}
    return m, docs


def _instance(kind, args):
    from lmms_eval.api.instance import Instance

    return Instance(request_type=kind, arguments=args, idx=0, metadata={"task": "t", "doc_id": args[3], "repeats": 1})


def _path(doc):
    return [doc["video"]]


def test_generate_until_and_loglikelihood_agree(lm):
    from lmms_eval.api.instance import GenerationResult

    m, docs = lm
    greedy = {"max_new_tokens": 8, "temperature": 0, "do_sample": False, "until": ["\n\n"]}
    reqs = [_instance("generate_until", (d["question"], dict(greedy), _path, i, "t", "test")) for i, d in enumerate(docs)]
    out = m.generate_until(reqs)
    assert all(isinstance(o, GenerationResult) for o in out)
    texts = [o.text for o in out]
    assert all(texts)
    # the same questions one at a time: batching changes nothing
    m.settings = dataclasses.replace(m.settings, batch_size=1)
    try:
        assert [o.text for o in m.generate_until(reqs)] == texts
    finally:
        m.settings = dataclasses.replace(m.settings, batch_size=2)
    # stop strings cut the answer, as lmms-eval's models apply `until`
    cut = m.generate_until([_instance("generate_until", (docs[0]["question"], {**greedy, "until": [texts[0].split()[-1]]},
                                                        _path, 0, "t", "test"))])
    assert cut[0].text == texts[0][: texts[0].index(texts[0].split()[-1])]
    # each option as a continuation: the generated answer is the greedy one, and the likeliest single-token option
    for i, d in enumerate(docs[:4]):
        reqs = [_instance("loglikelihood", (d["question"], " " + o, _path, i, "t", "test")) for o in d["options"]]
        out = m.loglikelihood(reqs)
        res = [r.text for r in out]
        assert all(isinstance(loss, float) and loss >= 0 for loss, _ in res)
        for o, (loss, is_greedy) in zip(d["options"], res):
            assert is_greedy == (o == texts[i]), (o, texts[i])
        single = [k for k, o in enumerate(d["options"]) if len(o.split()) == 1]
        if texts[i] in d["options"] and len(texts[i].split()) == 1:
            assert min(single, key=lambda k: res[k][0]) == d["options"].index(texts[i])
        recs = [r.token_counts.videosparse for r in out]
        assert all(r["request"] == "loglikelihood" and r["counts"] for r in recs)


def test_frames_as_images_and_unusable_visuals(lm):
    from PIL import Image

    from videosparse.video import load_video

    m, docs = lm
    greedy = {"max_new_tokens": 8, "temperature": 0}
    clip = load_video(docs[0]["video"], num_frames=8)
    frames = lambda doc: [Image.fromarray(f) for f in clip.frames]  # noqa: E731 (a frame-folder task's visual)
    doubled = lambda doc: [Image.fromarray(f) for f in clip.frames for _ in range(2)]  # noqa: E731 (16 -> 8)
    a = m.generate_until([_instance("generate_until", (docs[0]["question"], greedy, v, 0, "t", "test"))
                          for v in (_path, frames, doubled)])
    assert a[0].text and a[0].text == a[1].text
    assert a[1].token_counts.videosparse["frames"] == 8 and a[2].token_counts.videosparse["frames"] == 8
    bad = {"none": lambda doc: [], "two videos": lambda doc: [doc["video"], doc["video"]],
           "audio": lambda doc: [{"array": [0.0], "sampling_rate": 16000}]}
    out = m.generate_until([_instance("generate_until", (docs[0]["question"], greedy, v, 0, "t", "test"))
                            for v in bad.values()])
    errors = [o.token_counts.videosparse["error"] for o in out]
    assert [o.text for o in out] == ["", "", ""]
    assert "no video" in errors[0] and "2 videos" in errors[1] and "unsupported visual input" in errors[2]
    with pytest.raises(NotImplementedError, match="multi-round"):
        m.generate_until_multi_round([])


def test_model_args_checked_in_process(home):
    from videosparse.integrations.lmms_eval import ModelArgError, VideoSparse, generation_kwargs, merge_args

    assert merge_args({"batch_size": 4}, {"batch_size": 1, "device": None}) == {"batch_size": 4}  # --batch_size default
    with pytest.raises(ModelArgError, match="batch_size is given twice"):
        merge_args({"batch_size": 4}, {"batch_size": "2"})
    for arg_string, words in [("preset=video", "pretrained is required"), ("pretrained=testbed,frames=8", "unknown"),
                              ("pretrained=testbed,budget=2.5", "fraction must be in (0, 1]"),
                              ("pretrained=testbed,num_frames=8,max_frames_num=16", "disagree"),
                              ("pretrained=/no/such/dir", "pretrained=/no/such/dir"),
                              ("pretrained=testbed,budget=5000", "budget"), ("pretrained", "key=value")]:
        with pytest.raises(ModelArgError) as e:
            VideoSparse.create_from_arg_string(arg_string, {"batch_size": 1})
        assert words in str(e.value) and "\n" not in str(e.value), (arg_string, str(e.value))
    gen, until, ignored = generation_kwargs({"max_new_tokens": 16, "temperature": 0, "top_p": 1.0, "num_beams": 1,
                                             "do_sample": False, "until": "\n\n", "image_aspect_ratio": "pad"}, 128)
    assert gen == {"max_new_tokens": 16, "do_sample": False} and until == ["\n\n"] and ignored == ["image_aspect_ratio"]
    gen, _, _ = generation_kwargs({"temperature": 0.7, "top_p": 0.9, "num_beams": 2}, 128)
    assert gen == {"max_new_tokens": 128, "do_sample": True, "temperature": 0.7, "top_p": 0.9, "num_beams": 2}


def test_long_video_options_reach_the_model_and_the_log(home, tmp_path):
    """fps / num_frames / pre_budget: the long-video path (a pool before the decoder), logged per answer."""
    from videosparse.integrations.lmms_eval import VideoSparse

    hf, fx = home
    m = VideoSparse.create_from_arg_string(
        f"pretrained=testbed,preset=video,budget=0.25,fps=8,max_frames_num=16,pre_budget=148,"
        f"log_file={tmp_path / 'log.jsonl'}", {"batch_size": 1})
    it = fx["items"][0]
    m.task_dict = {"t": {"test": [{"video": str(fx["video_files"][it["video_name"]])}]}}
    out = m.generate_until([_instance("generate_until", (it["question"], {"max_new_tokens": 8}, _path, 0, "t", "test"))])
    rec = out[0].token_counts.videosparse
    ref = m.qa.ask(m.task_dict["t"]["test"][0]["video"], it["question"], fps=8, num_frames=16, pre_budget=148,
                   max_new_tokens=8)
    assert out[0].text == ref.text and rec["error"] is None
    assert (rec["fps"], rec["num_frames"], rec["pre_budget"], rec["preset"], rec["budget"]) == (8.0, 16, 148, "video", 0.25)
    assert rec["pool_tokens"] == ref.pool_tokens == 148 and rec["frames"] == len(ref.frame_indices) == 8
    assert rec["equivalent_tokens"] == round(ref.equivalent_tokens, 4) < 148 and rec["counts"] == list(ref.counts)
    assert _jsonl(tmp_path / "log.jsonl") == [rec]
