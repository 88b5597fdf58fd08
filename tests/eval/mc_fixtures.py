"""Multiple-choice benchmark fixtures in the official release layouts, with test-bed videos.

* ``make_videomme(root)``: ``root/videomme/test-00000-of-00001.parquet`` (when pyarrow is installed;
  otherwise the same table as ``test-00000-of-00001.jsonl``, which the loader reads without pyarrow),
  ``root/data/<videoID>.mp4``, ``root/subtitle/<videoID>.srt``.
* ``make_mvbench(root)``: ``root/json/<task>.json`` and ``root/video/<task's folder>/<video>``.
* ``make_egoschema(root)``: ``root/questions.json``, ``root/subset_answers.json`` (a subset of the
  questions, as released), ``root/good_clips_git/<q_uid>.mp4``.

Questions are the test bed's (``where is the red object`` ...); the options are the answers of the
question's type padded with other types' answers to 4 (5 for EgoSchema), shuffled, so the correct
letter is known. Each returns ``{"root", "items": [{question_id, video_name, question, answer (letter),
options, answer_text, breakdown}], "missing", "video_files"}`` in the release's order.
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
