"""Multiple-choice benchmark fixtures in the official release layouts, with test-bed videos.

* ``make_videomme(root)``: ``root/videomme/test-00000-of-00001.parquet`` (when pyarrow is installed;
  otherwise the same table as ``test-00000-of-00001.jsonl``, which the loader reads without pyarrow),
  ``root/data/<videoID>.mp4``, ``root/subtitle/<videoID>.srt``.
* ``make_mvbench(root)``: ``root/json/<task>.json`` and ``root/video/<task's folder>/<video>``.
* ``make_egoschema(root)``: ``root/questions.json``, ``root/subset_answers.json`` (a subset of the
  questions, as released), ``root/good_clips_git/<q_uid>.mp4``.
* ``make_nextqa(root)``: ``root/dataset/nextqa/val.csv`` (the release's columns, answer = option index),
  ``root/dataset/nextqa/map_vid_vidorID.json``, ``root/NExTVideo/<folder>/<video>.mp4``; with
  ``layout="lmms"`` lmms-eval's copy instead: ``root/MC/test-00000-of-00001.parquet`` and
  ``root/NExTVideo/<video>.mp4``.
* ``make_longvideobench(root)``: ``root/lvb_val.json``, ``root/lvb_test_wo_gt.json`` (no answers),
  ``root/videos/<video_id>.mp4``, ``root/subtitles/<video_id>_en.json`` (both subtitle formats).
* ``make_mlvu(root)``: ``root/MLVU/json/<n>_<task>.json`` (multiple-choice tasks, plus the generation
  tasks ``8_sub_scene`` / ``9_summary`` the loader skips), ``root/MLVU/video/<n>_<task>/clip_<j>.mp4``
  (the same basenames in every task folder, as in the release).

``malformed=True`` (the last three) adds one bad entry (an answer that is no option) and returns where it
is as ``"malformed"``; ``missing=N`` leaves the last N videos unwritten.

Questions are the test bed's (``where is the red object`` ...); the options are the answers of the
question's type padded with other types' answers to 4 (5 for EgoSchema), shuffled, so the correct
letter is known. Each returns ``{"root", "items": [{question_id, video_name, question, answer (letter),
options, answer_text, breakdown}], "missing", "video_files"}`` in the release's order (the loader's order).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np

from tests.eval.fixtures import write_clip

LETTERS = "ABCDE"
VIDEOMME_TASKS = {"where": "Spatial Perception", "when": "Temporal Perception", "shape": "Attribute Perception",
                  "count": "Counting Problem"}
DURATIONS = ("short", "medium", "long")
DOMAINS = (("Knowledge", "Astronomy"), ("Sports Competition", "Football"), ("Life Record", "Daily Life"))
MVBENCH = (("action_sequence", "star/Charades_segment", ".mp4"), ("object_shuffle", "perception/videos", ".mp4"),
           ("moving_direction", "clevrer/video_validation", ".mp4"))


def _options(rng: np.random.Generator, qtype: str, answer: str, n: int) -> list:
    from videosparse.testbed.synthetic import ANSWERS

    own = list(ANSWERS[qtype])
    others = [a for t, v in ANSWERS.items() if t != qtype for a in v]
    rng.shuffle(others)
    opts = (own + others)[:n] if len(own) < n else own[:n]
    if answer not in opts:
        opts[-1] = answer
    order = rng.permutation(len(opts))
    return [opts[int(i)] for i in order]


def _clips(n_videos: int, per_video: int, seed: int, n_options: int):
    from videosparse.testbed.synthetic import GenConfig, make_clip, questions

    rng = np.random.default_rng(seed)
    for vi in range(n_videos):
        clip = make_clip(rng, GenConfig())
        samples = questions(clip, rng, per_video)
        yield vi, clip, [(s, _options(rng, s.qtype, s.answer, n_options)) for s in samples]


def make_videomme(root, *, n_videos: int = 3, questions_per_video: int = 3, seed: int = 0, missing: int = 0,
                  parquet: bool | None = None) -> dict:
    root = Path(root)
    (root / "videomme").mkdir(parents=True, exist_ok=True)
    (root / "data").mkdir(exist_ok=True)
    (root / "subtitle").mkdir(exist_ok=True)
    rows, items, files, missing_names = [], [], {}, []
    rng = np.random.default_rng([seed, 7])
    for vi, clip, qs in _clips(n_videos, questions_per_video, seed, 4):
        vid = "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"), 11))
        duration = DURATIONS[vi % 3]
        domain, sub = DOMAINS[vi % len(DOMAINS)]
        if vi >= n_videos - missing:
            missing_names.append(vid)
        else:
            files[vid] = Path(write_clip(root / "data" / f"{vid}.mp4", clip.frames))
            (root / "subtitle" / f"{vid}.srt").write_text(
                f"1\n00:00:00,000 --> 00:00:01,000\n<font color=\"white\" size=\".72c\">clip {vi} starts</font>\n\n"
                f"2\n00:00:01,000 --> 00:00:02,000\n<font color=\"white\" size=\".72c\">and ends</font>\n")
        for k, (s, opts) in enumerate(qs):
            qid = f"{vi + 1:03d}-{k + 1}"
            letter = LETTERS[opts.index(s.answer)]
            bd = {"duration": duration, "domain": domain, "sub_category": sub, "task_type": VIDEOMME_TASKS[s.qtype]}
            rows.append({"video_id": f"{vi + 1:03d}", "duration": duration, "domain": domain, "sub_category": sub,
                         "url": f"https://www.youtube.com/watch?v={vid}", "videoID": vid, "question_id": qid,
                         "task_type": bd["task_type"], "question": s.question,
                         "options": [f"{LETTERS[i]}. {o}" for i, o in enumerate(opts)], "answer": letter})
            items.append({"question_id": qid, "video_name": vid, "question": s.question, "answer": letter,
                          "options": opts, "answer_text": s.answer, "breakdown": bd})
    if parquet is None:
        try:
            import pyarrow  # noqa: F401
            parquet = True
        except ImportError:
            parquet = False
    if parquet:
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = root / "videomme" / "test-00000-of-00001.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        path = root / "videomme" / "test-00000-of-00001.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"root": root, "table": path, "items": items, "missing": missing_names, "video_files": files}


def make_mvbench(root, *, n_videos: int = 3, questions_per_video: int = 2, seed: int = 0, missing: int = 0) -> dict:
    root = Path(root)
    (root / "json").mkdir(parents=True, exist_ok=True)
    items, files, missing_names = [], {}, []
    per_task: dict = {t: [] for t, _, _ in MVBENCH}
    for vi, clip, qs in _clips(n_videos * len(MVBENCH), questions_per_video, seed, 4):
        task, folder, ext = MVBENCH[vi % len(MVBENCH)]
        name = f"clip_{vi:04d}{ext}"
        vdir = root / "video" / folder
        vdir.mkdir(parents=True, exist_ok=True)
        if vi >= n_videos * len(MVBENCH) - missing:
            missing_names.append(f"{folder}/{name}")
        else:
            files[f"{folder}/{name}"] = Path(write_clip(vdir / name, clip.frames))
        for s, opts in qs:
            per_task[task].append({"video": name, "question": s.question, "candidates": opts, "answer": s.answer,
                                   "_opts": opts})
    for task, _, _ in MVBENCH:  # the loader reads tasks in the benchmark's task order
        folder = dict((t, f) for t, f, _ in MVBENCH)[task]
        rows = []
        for i, r in enumerate(per_task[task]):
            opts = r.pop("_opts")
            rows.append(r)
            items.append({"question_id": f"{task}_{i}", "video_name": f"{folder}/{r['video']}", "question": r["question"],
                          "answer": LETTERS[opts.index(r["answer"])], "options": opts, "answer_text": r["answer"],
                          "breakdown": {"task": task}})
        (root / "json" / f"{task}.json").write_text(json.dumps(rows, indent=1))
    from video_eval.benchmarks import MVBENCH_TASKS

    order = list(MVBENCH_TASKS)
    items.sort(key=lambda it: order.index(it["breakdown"]["task"]))
    return {"root": root, "items": items, "missing": missing_names, "video_files": files}


def make_egoschema(root, *, n_videos: int = 4, seed: int = 0, missing: int = 0, hidden: int = 1) -> dict:
    """One question per clip (as in EgoSchema); the last ``hidden`` questions have no public answer."""
    root = Path(root)
    (root / "good_clips_git").mkdir(parents=True, exist_ok=True)
    qrows, answers, items, files, missing_names = [], {}, [], {}, []
    for vi, clip, qs in _clips(n_videos, 1, seed, 5):
        uid = str(uuid.UUID(int=(seed * 1000 + vi + 1) * 7919, version=4))
        s, opts = qs[0]
        if n_videos - missing - hidden <= vi < n_videos - hidden:
            missing_names.append(uid)
        else:
            files[uid] = Path(write_clip(root / "good_clips_git" / f"{uid}.mp4", clip.frames))
        row = {"q_uid": uid, "google_drive_id": f"drive{vi}", "question": s.question}
        row.update({f"option {k}": o for k, o in enumerate(opts)})
        qrows.append(row)
        if vi < n_videos - hidden:
            answers[uid] = opts.index(s.answer)
            items.append({"question_id": uid, "video_name": uid, "question": s.question,
                          "answer": LETTERS[opts.index(s.answer)], "options": opts, "answer_text": s.answer,
                          "breakdown": {}})
    (root / "questions.json").write_text(json.dumps(qrows))
    (root / "subset_answers.json").write_text(json.dumps(answers))
    return {"root": root, "items": items, "missing": missing_names, "video_files": files}


# ----------------------------------------------------------------------------- NExT-QA
# test-bed question types -> NExT-QA type codes (the test bed has no causal "why/how" questions)
NEXTQA_CODES = {"where": "DL", "count": "DC", "shape": "DO", "when": "TC"}
NEXTQA_FAMILY = {"DL": "Descriptive", "DC": "Descriptive", "DO": "Descriptive", "TC": "Temporal"}
NEXTQA_COLUMNS = ["video", "frame_count", "width", "height", "question", "answer", "qid", "type",
                  "a0", "a1", "a2", "a3", "a4"]


def make_nextqa(root, *, n_videos: int = 3, questions_per_video: int = 2, seed: int = 0, missing: int = 0,
                malformed: bool = False, split: str = "val", layout: str = "release") -> dict:
    """NExT-QA multiple choice: five options a0 .. a4, ``answer`` the index of the correct one, question ids
    ``<video>_<qid>`` as the official evaluation keys them."""
    import csv

    root = Path(root)
    rng = np.random.default_rng([seed, 11])
    rows, items, files, missing_names, mapping = [], [], {}, [], {}
    for vi, clip, qs in _clips(n_videos, questions_per_video, seed, 5):
        vid = str(int(rng.integers(2_400_000_000, 13_999_999_999)))
        folder = f"{int(rng.integers(0, 1204)):04d}"
        mapping[vid] = f"{folder}/{vid}"
        rel = f"{folder}/{vid}.mp4" if layout == "release" else f"{vid}.mp4"
        if vi >= n_videos - missing:
            missing_names.append(vid)
        else:
            path = root / "NExTVideo" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            files[vid] = Path(write_clip(path, clip.frames))
        for k, (s, opts) in enumerate(qs):
            code = NEXTQA_CODES[s.qtype]
            a = opts.index(s.answer)
            rows.append({"video": vid, "frame_count": len(clip.frames), "width": clip.frames.shape[2],
                         "height": clip.frames.shape[1], "question": s.question, "answer": a, "qid": k + 1,
                         "type": code, **{f"a{j}": o for j, o in enumerate(opts)}})
            items.append({"question_id": f"{vid}_{k + 1}", "video_name": vid, "question": s.question,
                          "answer": LETTERS[a], "options": opts, "answer_text": s.answer,
                          "breakdown": {"family": NEXTQA_FAMILY[code], "type": code}})
    bad = None
    if malformed:  # an answer index outside 0-4, on the first video
        r = dict(rows[0], qid=99, answer=7)
        rows.append(r)
        bad = {"row": len(rows) - 1, "line": len(rows) + 1, "qid": f"{r['video']}_99"}
    if layout == "release":
        ann = root / "dataset" / "nextqa"
        ann.mkdir(parents=True, exist_ok=True)
        path = ann / f"{split}.csv"
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=NEXTQA_COLUMNS)
            w.writeheader()
            w.writerows(rows)
        (ann / "map_vid_vidorID.json").write_text(json.dumps(mapping))
    else:  # lmms-eval's copy (lmms-lab/NExTQA): the MC subset's parquet table, videos flat in NExTVideo/
        import pyarrow as pa
        import pyarrow.parquet as pq

        (root / "MC").mkdir(parents=True, exist_ok=True)
        path = root / "MC" / "test-00000-of-00001.parquet"
        typed = [dict(r, video=int(r["video"])) for r in rows]
        pq.write_table(pa.Table.from_pylist(typed), path)
    if bad is not None:
        bad["file"] = path
    return {"root": root, "table": path, "items": items, "missing": missing_names, "video_files": files,
            "malformed": bad}


# ----------------------------------------------------------------------------- LongVideoBench
LVB_GROUPS = ((15, 12.3), (60, 41.0), (600, 412.5), (3600, 2210.8))  # (duration_group, duration)
LVB_CATEGORIES = {"where": "S2O", "when": "T2O", "shape": "O2E", "count": "SSS"}


def _hms(t: float) -> str:
    return f"{int(t // 3600):02d}:{int(t % 3600 // 60):02d}:{t % 60:06.3f}"


def make_longvideobench(root, *, n_videos: int = 3, questions_per_video: int = 2, seed: int = 0, missing: int = 0,
                        malformed: bool = False) -> dict:
    """LongVideoBench's validation file with its fields; even videos have five candidates, odd ones four; odd
    videos start 30 s into their original video (``starting_timestamp_for_subtitles``). Each subtitle file holds
    two lines inside the video's window and one outside it; even videos use the ``start/end/line`` format,
    odd ones ``timestamp/text``. ``subtitles`` in the result: the expected in-window text per video."""
    root = Path(root)
    (root / "videos").mkdir(parents=True, exist_ok=True)
    (root / "subtitles").mkdir(exist_ok=True)
    rng = np.random.default_rng([seed, 13])
    rows, items, files, missing_names, subs = [], [], {}, [], {}
    yt = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for vi in range(n_videos):
        n_opts = 5 if vi % 2 == 0 else 4
        (_, clip, qs), = list(_clips(1, questions_per_video, seed * 100 + vi, n_opts))
        vid = "".join(yt[int(i)] for i in rng.integers(0, len(yt), 11))
        group, duration = LVB_GROUPS[vi % len(LVB_GROUPS)]
        t0 = 0.0 if vi % 2 == 0 else 30.0
        if vi >= n_videos - missing:
            missing_names.append(f"{vid}.mp4")
        else:
            files[f"{vid}.mp4"] = Path(write_clip(root / "videos" / f"{vid}.mp4", clip.frames))
        lines = [(t0 + 0.2, t0 + 0.5, f"clip {vi} starts"), (t0 + 0.6, t0 + 0.9, "and ends"),
                 (t0 + duration + 100.0, t0 + duration + 102.0, "long after the clip")]
        if vi % 2 == 0:
            data = [{"start": _hms(a), "end": _hms(b), "line": text} for a, b, text in lines]
        else:
            data = [{"timestamp": [a, b], "text": text} for a, b, text in lines]
        (root / "subtitles" / f"{vid}_en.json").write_text(json.dumps(data))
        subs[f"{vid}.mp4"] = f"clip {vi} starts\nand ends"
        for k, (s, opts) in enumerate(qs):
            a = opts.index(s.answer)
            cat = LVB_CATEGORIES[s.qtype]
            rows.append({"video_id": vid, "question": s.question, "question_wo_referring_query": s.question,
                         "candidates": opts, "correct_choice": a, "position": [int(t0 * 30), int(t0 * 30) + 8],
                         "topic_category": "KS-Test-Bed", "question_category": cat, "level": "L1-Perception",
                         "id": f"{vid}_{k}", "video_path": f"{vid}.mp4", "subtitle_path": f"{vid}_en.json",
                         "duration_group": group, "starting_timestamp_for_subtitles": t0, "duration": duration,
                         "view_count": int(rng.integers(100, 10 ** 6))})
            items.append({"question_id": f"{vid}_{k}", "video_name": f"{vid}.mp4", "question": s.question,
                          "answer": LETTERS[a], "options": opts, "answer_text": s.answer,
                          "breakdown": {"duration_group": str(group), "question_category": cat}})
    bad = None
    if malformed:  # a correct_choice that is no candidate index
        r = dict(rows[0], id=f"{rows[0]['video_id']}_99", correct_choice=9)
        rows.append(r)
        bad = {"entry": len(rows) - 1, "id": r["id"], "file": root / "lvb_val.json"}
    (root / "lvb_val.json").write_text(json.dumps(rows, indent=1))
    (root / "lvb_test_wo_gt.json").write_text(json.dumps([{k: v for k, v in r.items() if k != "correct_choice"}
                                                          for r in rows]))
    return {"root": root, "items": items, "missing": missing_names, "video_files": files, "malformed": bad,
            "subtitles": subs}


# ----------------------------------------------------------------------------- MLVU
# (file stem, the task's name in the benchmark's evaluation code, the files' question_type)
MLVU_FX = (("1_plotQA", "plotQA", "plotQA"), ("2_needle", "needle", "findNeedle"), ("4_count", "count", "count"))


def make_mlvu(root, *, n_videos: int = 3, questions_per_video: int = 2, seed: int = 0, missing: int = 0,
              malformed: bool = False) -> dict:
    """MLVU dev in ``root/MLVU``: videos go to the tasks in turn; each task's videos are ``clip_<j>.mp4``, so the
    same basename names different videos in different task folders (as 363 do in the release)."""
    root = Path(root)
    base = root / "MLVU"
    (base / "json").mkdir(parents=True, exist_ok=True)
    per_task: dict = {stem: [] for stem, _, _ in MLVU_FX}
    items_by_task: dict = {stem: [] for stem, _, _ in MLVU_FX}
    files, missing_names = {}, []
    for vi, clip, qs in _clips(n_videos, questions_per_video, seed, 4):
        stem, task, qtype = MLVU_FX[vi % len(MLVU_FX)]
        j = vi // len(MLVU_FX)
        name = f"clip_{j}.mp4"
        vdir = base / "video" / stem
        vdir.mkdir(parents=True, exist_ok=True)
        if vi >= n_videos - missing:
            missing_names.append(f"{stem}/{name}")
        else:
            files[f"{stem}/{name}"] = Path(write_clip(vdir / name, clip.frames))
        for s, opts in qs:
            i = len(per_task[stem])
            per_task[stem].append({"video": name, "duration": 200.0 + 37 * vi, "question": s.question,
                                   "candidates": opts, "answer": s.answer, "question_type": qtype})
            items_by_task[stem].append({"question_id": f"{stem}_{i}", "video_name": f"{stem}/{name}",
                                        "question": s.question, "answer": LETTERS[opts.index(s.answer)],
                                        "options": opts, "answer_text": s.answer, "breakdown": {"task": task}})
    bad = None
    if malformed:  # an answer that is none of the candidates, in the first task's file
        stem = MLVU_FX[0][0]
        r = dict(per_task[stem][0], answer="purple elephant")
        per_task[stem].append(r)
        bad = {"entry": len(per_task[stem]) - 1, "file": base / "json" / f"{stem}.json"}
    for stem, _, _ in MLVU_FX:
        if per_task[stem]:
            (base / "json" / f"{stem}.json").write_text(json.dumps(per_task[stem], indent=2))
    # the open-ended generation tasks: no candidates, skipped by the loader
    (base / "json" / "8_sub_scene.json").write_text(json.dumps([
        {"video": "subPlot_1.mp4", "duration": 480.0, "question": "describe the scene", "answer": "a scene",
         "question_type": "subPlot", "scoring_points": ["a scene"]}]))
    (base / "json" / "9_summary.json").write_text(json.dumps([
        {"video": "summary_1.mp4", "duration": 900.0, "question": "summarise the video", "answer": "a video",
         "question_type": "summary"}]))
    items = [it for stem, _, _ in MLVU_FX for it in items_by_task[stem]]
    return {"root": root, "items": items, "missing": missing_names, "video_files": files, "malformed": bad}


def make_letter_checkpoint(d) -> str:
    """A tiny random Video-LLaVA saved to ``d`` whose word-level vocabulary holds the option letters, the test-bed
    words and the words of video_eval's prompts, so the benchmark prompt reads as real tokens and likelihood
    scoring over the letters can run (the test bed has no letters)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from tests.conftest import make_model
    from video_eval.mcq import LETTER_INSTRUCTION, VIDEOMME_INSTRUCTION, VIDEOMME_POST
    from videosparse.testbed.synthetic import vocabulary

    specials = ["<pad>", "<s>", "</s>", "<unk>", "<video>", "<image>"]
    prompt_words = set(" ".join([VIDEOMME_INSTRUCTION, VIDEOMME_POST, LETTER_INSTRUCTION]).split())
    words = sorted(set(vocabulary()) | set("ABCDE") | {"A.", "B.", "C.", "D.", "E."} | prompt_words | {"USER:", "ASSISTANT:"})
    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(specials + words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", additional_special_tokens=["<video>", "<image>"])
    model = make_model("sdpa", image_size=32, patch=8, vocab=len(fast), seed=3)
    model.config.video_token_id = fast.convert_tokens_to_ids("<video>")
    model.config.image_token_id = fast.convert_tokens_to_ids("<image>")
    model.config.text_config.eos_token_id = fast.eos_token_id
    model.generation_config.eos_token_id = fast.eos_token_id
    model.generation_config.pad_token_id = fast.pad_token_id
    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(d)
    fast.save_pretrained(d)
    (d / "preprocessor_config.json").write_text(json.dumps(
        {"size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32},
         "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
         "resample": 3}))
    return str(d)
