"""Multiple-choice video-QA benchmarks, read from their official release layouts (local files only).

==========  ===========================================================================================
name        layout under ``--root``
==========  ===========================================================================================
videomme    ``videomme/test-00000-of-00001.parquet`` (columns video_id, duration, domain, sub_category,
            url, videoID, question_id, task_type, question, options ["A. ...", ...], answer "A"),
            videos ``data/<videoID>.mp4`` (``.MP4`` / ``.mkv`` too), subtitles ``subtitle/<videoID>.srt``.
            Reading parquet needs ``pyarrow``; without it, the same table as JSON / JSON Lines next to
            it (``videomme/*.json`` / ``*.jsonl``, a list of row objects) is read instead.
mvbench     ``json/<task>.json`` (lists of {video, question, candidates, answer (the candidate's text)}),
            videos ``video/<task's folder>/<video>`` (the folders of the release, e.g.
            ``star/Charades_segment`` for action_sequence); ``<task's folder>/<video>`` is accepted too.
egoschema   ``questions.json`` (list of {q_uid, question, option 0..4}) and ``subset_answers.json``
            ({q_uid: answer index}); videos ``good_clips_git/<q_uid>.mp4`` (``videos/`` too). Only the
            questions with a public answer (the 500-question subset) are evaluated.
nextqa      NExT-QA multiple choice (doc-doc/NExT-QA): ``dataset/nextqa/val.csv`` (columns video,
            frame_count, width, height, question, answer (index 0-4), qid, type, a0 .. a4; ``--questions``
            names ``test.csv`` / ``train.csv`` / any split's table), ``dataset/nextqa/map_vid_vidorID.json``
            ({video: "<folder>/<video>"}), videos ``NExTVideo/<folder>/<video>.mp4``. lmms-eval's copy
            (lmms-lab/NExTQA: ``MC/test-00000-of-00001.parquet``, the same columns, videos
            ``NExTVideo/<video>.mp4``) is read when there is no ``val.csv``.
longvideobench
            ``lvb_val.json`` (list of {id, video_id, question, candidates, correct_choice (index),
            duration_group, question_category, video_path, subtitle_path, starting_timestamp_for_subtitles,
            duration, ...}), videos ``videos/<video_path>``, subtitles ``subtitles/<subtitle_path>`` (JSON).
            ``lvb_test_wo_gt.json`` has no answers: refused.
mlvu        MLVU dev, multiple-choice tasks: ``json/<n>_<task>.json`` (``1_plotQA`` ... ``7_topic_reasoning``;
            lists of {video, duration, question, candidates, answer (the candidate's text), question_type}),
            videos ``video/<n>_<task>/<video>``; ``--root`` may also be the folder holding ``MLVU/``. The
            generation tasks (``8_sub_scene``, ``9_summary``) are skipped.
==========  ===========================================================================================

Each loader gives a :class:`MCDataset`, which the runner uses like an open-ended
:class:`video_eval.datasets.Dataset`: items (:class:`video_eval.datasets.Item` with ``options``,
``prompt``, ``breakdown``; ``answer`` is the correct letter), ``video_path``, ``to_dict``.
:func:`check_mc` reports counts, missing and unreadable videos and file problems like
:func:`video_eval.datasets.check`.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from video_eval.datasets import SHOW, CheckReport, DatasetError, Item, Problem, _n, _show
from video_eval.mcq import LETTERS, build_prompt

__all__ = ["BENCHMARKS", "MCDataset", "check_mc", "is_mc", "load_mc", "macro_accuracy"]

VIDEO_EXTS = (".mp4", ".MP4", ".mkv", ".webm", ".avi", ".mov")

# MVBench: task -> video folder of the release (as in the benchmark's own evaluation code)
MVBENCH_TASKS = {
    "action_sequence": "star/Charades_segment",
    "action_prediction": "star/Charades_segment",
    "action_antonym": "ssv2_video",
    "fine_grained_action": "Moments_in_Time_Raw/videos",
    "unexpected_action": "FunQA_test/test",
    "object_existence": "clevrer/video_validation",
    "object_interaction": "star/Charades_segment",
    "object_shuffle": "perception/videos",
    "moving_direction": "clevrer/video_validation",
    "action_localization": "sta/sta_video",
    "scene_transition": "scene_qa/video",
    "action_count": "perception/videos",
    "moving_count": "clevrer/video_validation",
    "moving_attribute": "clevrer/video_validation",
    "state_change": "perception/videos",
    "fine_grained_pose": "nturgbd",
    "character_order": "perception/videos",
    "egocentric_navigation": "vlnqa",
    "episodic_reasoning": "tvqa/frames_fps3_hq",
    "counterfactual_inference": "clevrer/video_validation",
}
# alternative folder names seen in copies of the release (lmms-eval's converted mp4 folders)
MVBENCH_ALT = {
    "ssv2_video": ("ssv2_video_mp4",),
    "sta/sta_video": ("sta/sta_video_segment",),
    "nturgbd": ("nturgbd_convert",),
    "tvqa/frames_fps3_hq": ("tvqa/video_fps3_hq_segment",),
}
# MVBench folders that hold whole source videos whose questions cover a time window (the entry's start / end
# seconds, as the benchmark's own evaluation crops them): the renamed "_segment" copies are cut already. TVQA's
# are folders of frames at 3 frames per second.
MVBENCH_BOUNDED = {"sta/sta_video": None, "tvqa/frames_fps3_hq": 3.0}
_FRAGMENT = re.compile(r"#t=([0-9.]+),([0-9.]+)$")


@dataclass(frozen=True)
class MCSpec:
    name: str
    title: str
    breakdown: tuple  # breakdown keys reported in results.json, in order
    source: str
    # the breakdown key whose per-value accuracies the release averages into its headline number
    # (MLVU's M-Avg: the mean of the per-task accuracies); None: the headline is the overall accuracy
    macro: str | None = None
    # the split read by default (``--questions`` may name another split's file where the release has one)
    split: str = "test"


BENCHMARKS: dict[str, MCSpec] = {
    "videomme": MCSpec("videomme", "Video-MME", ("duration", "domain", "sub_category", "task_type"),
                       "lmms-lab/Video-MME (videomme/test-00000-of-00001.parquet, data/*.mp4, subtitle/*.srt)"),
    "mvbench": MCSpec("mvbench", "MVBench", ("task",), "OpenGVLab/MVBench (json/<task>.json, video/<folder>/...)"),
    "egoschema": MCSpec("egoschema", "EgoSchema", (),
                        "egoschema/EgoSchema (questions.json, subset_answers.json, good_clips_git/<q_uid>.mp4)"),
    "nextqa": MCSpec("nextqa", "NExT-QA", ("family", "type"),
                     "doc-doc/NExT-QA (dataset/nextqa/<split>.csv, map_vid_vidorID.json, NExTVideo/<folder>/<video>.mp4)",
                     split="val"),
    "longvideobench": MCSpec("longvideobench", "LongVideoBench", ("duration_group", "question_category"),
                             "longvideobench/LongVideoBench (lvb_val.json, videos/, subtitles/)", split="val"),
    "mlvu": MCSpec("mlvu", "MLVU", ("task",), "MLVU/MVLU (json/<n>_<task>.json, video/<n>_<task>/<video>)",
                   macro="task", split="dev"),
}
_ALIASES = {"video-mme": "videomme", "video_mme": "videomme", "ego-schema": "egoschema", "next-qa": "nextqa",
            "next_qa": "nextqa", "lvb": "longvideobench", "long-video-bench": "longvideobench",
            "mlvu_dev": "mlvu", "mlvu-dev": "mlvu"}
# benchmarks with a "with subtitles" setting (--subtitles): the prompt starts with the subtitle text
SUBTITLED = ("videomme", "longvideobench")

# NExT-QA question types (the release's ``type`` codes) and the three families the paper reports
# (Acc@C, Acc@T, Acc@D). The official eval_mc.py also merges TP into TN ("Bef&Aft") for its per-type table.
NEXTQA_TYPES = {"CW": "Causal", "CH": "Causal", "TN": "Temporal", "TC": "Temporal", "TP": "Temporal",
                "DC": "Descriptive", "DL": "Descriptive", "DO": "Descriptive"}
NEXTQA_FAMILIES = {"C": "Causal", "T": "Temporal", "D": "Descriptive"}
# MLVU dev: the multiple-choice tasks (file name -> the task name of the benchmark's evaluation code) and the
# open-ended generation tasks, which are skipped (they are scored by a GPT judge, G-Avg)
MLVU_TASKS = {"1_plotQA": "plotQA", "2_needle": "needle", "3_ego": "ego", "4_count": "count", "5_order": "order",
              "6_anomaly_reco": "anomaly_reco", "7_topic_reasoning": "topic_reasoning"}
MLVU_GENERATION = {"8_sub_scene": "sub_scene", "9_summary": "summary"}
# LongVideoBench's duration groups as the release keys them (upper bound in seconds): 8-15 s, 15-60 s,
# 180-600 s, 900-3600 s
LVB_DURATION_GROUPS = ("15", "60", "600", "3600")


def is_mc(name: str) -> bool:
    """Whether ``name`` is a multiple-choice benchmark of this module."""
    key = str(name).strip().lower()
    return _ALIASES.get(key, key) in BENCHMARKS


def _key(name: str) -> str:
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in BENCHMARKS:
        raise DatasetError(f"unknown multiple-choice benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    return key


# ----------------------------------------------------------------------------- dataset
@dataclass
class MCDataset:
    """A loaded benchmark: items in the release's order (limited), with each video's file resolved."""

    name: str
    split: str
    root: Path
    video_dir: Path
    questions_path: Path
    limit: int | None
    total: int
    items: list
    paths: dict  # video_name -> Path | None
    tried: dict  # video_name -> [candidate paths] (messages)
    subtitles: bool = False
    problems: list = field(default_factory=list)
    # video_name -> how to read it (``videosparse.video.load_video`` keywords: a time window ``start`` / ``end``
    # in seconds, ``frame_rate`` for a folder of frames); absent: the whole file
    options: dict = field(default_factory=dict)
    # video_name -> subtitle cues [(start s, end s, text)] (Video-MME's "with subtitles" setting)
    cues: dict = field(default_factory=dict)

    def video_options(self, item: Any) -> dict:
        return dict(self.options.get(str(getattr(item, "video_name", item)), {}))

    def frame_prompt(self, item: Any, timestamps: Any) -> str | None:
        """Video-MME with subtitles: the prompt holding the subtitles shown at the sampled frames (the cues active
        at any of ``timestamps``, seconds, in time order, each once), as the benchmark's protocol pairs subtitles
        with frames; None for an item without cues (its ``prompt`` stands)."""
        cues = self.cues.get(str(getattr(item, "video_name", item)))
        if cues is None:
            return None
        ts = [float(t) for t in timestamps]
        text = "\n".join(c for a, b, c in cues if any(a <= t < b for t in ts))
        return build_prompt(self.name, item.question, list(item.options), subtitles=text)

    @property
    def spec(self) -> MCSpec:
        return BENCHMARKS[self.name]

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self):
        return iter(self.items)

    def video_path(self, item: Any) -> Path | None:
        return self.paths.get(str(getattr(item, "video_name", item)))

    def videos(self) -> list[str]:
        return list(dict.fromkeys(it.video_name for it in self.items))

    def to_dict(self) -> dict:
        return {"name": self.name, "split": self.split, "root": str(self.root), "limit": self.limit,
                "size": len(self.items), "total": self.total, "questions": str(self.questions_path),
                "videos": str(self.video_dir), "kind": "multiple_choice",
                "breakdown": list(self.spec.breakdown), **({"subtitles": True} if self.subtitles else {})}


def _first_file(cands: list) -> Path | None:
    """The first candidate that is a file, or a folder of image frames (MVBench's TVQA frames)."""
    from videosparse.video.frames_dir import frame_files

    for c in cands:
        if c.is_file() or (c.is_dir() and frame_files(str(c))):
            return c
    return None


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except OSError as e:
        raise DatasetError(f"{what} {path}: cannot be read ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise DatasetError(f"{what} {path}: not UTF-8 text (byte {e.start}); re-download the file") from None
    except json.JSONDecodeError as e:
        raise DatasetError(f"{what} {path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}; "
                           "re-download the file") from None


def _read_table(path: Path) -> list:
    """Rows (dicts) of a parquet, JSON (list of objects), JSON Lines or CSV file."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DatasetError(f"{path}: reading parquet needs pyarrow, which is not installed; "
                               "pip install pyarrow (or convert the table to JSON Lines next to it)") from None
        try:
            return pq.read_table(path).to_pylist()
        except Exception as e:  # pyarrow raises its own error types
            raise DatasetError(f"{path}: not a readable parquet file ({e}); re-download it") from None
    if suffix == ".jsonl":
        rows = []
        for k, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines()):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DatasetError(f"{path}:{k + 1}: invalid JSON ({e.msg}); re-download the file") from None
        return rows
    if suffix == ".csv":
        with open(path, newline="", encoding="utf-8-sig") as f:
            return list(csv.DictReader(f))
    data = _read_json(path, "table")
    if not isinstance(data, list):
        raise DatasetError(f"{path}: expected a JSON list of row objects, found a JSON {type(data).__name__}")
    return data


class _Bad:
    """Collects malformed entries of one file: raised together (strict) or recorded as one problem."""

    def __init__(self, path: Path, fix: str):
        self.path, self.fix, self.entries = path, fix, []

    def add(self, msg: str) -> None:
        self.entries.append(msg)

    def finish(self, problems: list | None) -> None:
        if not self.entries:
            return
        msg = (f"{self.path}: {len(self.entries)} bad entr{'y' if len(self.entries) == 1 else 'ies'}: "
               + "; ".join(self.entries[:SHOW]) + (f"; ... ({len(self.entries) - SHOW} more)"
                                                   if len(self.entries) > SHOW else ""))
        if problems is None:
            raise DatasetError(f"{msg}; {self.fix}")
        problems.append(Problem("invalid_entries", msg, self.fix))


_OPTION_RE = re.compile(r"^\s*\(?([A-Z])[\.\):]\s*(.*)$", re.DOTALL)


def _videomme(root: Path, questions: Any, subtitles: bool, problems: list | None) -> tuple:
    if questions is not None:
        qpath = Path(questions)
        if not qpath.is_absolute() and not qpath.is_file():
            qpath = root / qpath
        if not qpath.is_file():
            raise DatasetError(f"question table not found: {questions}; check the --questions path")
    else:
        d = root / "videomme"
        cands = sorted(d.glob("*.parquet")) if d.is_dir() else []
        try:
            __import__("pyarrow")
        except ImportError:
            # the same table exported as JSON / JSON Lines is read without pyarrow
            cands = (sorted(d.glob("*.jsonl")) + sorted(d.glob("*.json")) if d.is_dir() else []) + cands
        if not cands:
            raise DatasetError(f"Video-MME question table not found: no {d}/test-00000-of-00001.parquet; point "
                               "--root at the release folder (holding videomme/, data/, subtitle/)")
        qpath = cands[0]
    rows = _read_table(qpath)
    bad = _Bad(qpath, "each row needs question_id, videoID, question, options (4 strings 'A. ...') and answer "
                      "(a letter); re-download the table")
    out = []
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            bad.add(f"row {i} is not an object")
            continue
        missing = [k for k in ("question_id", "videoID", "question", "options", "answer") if r.get(k) in (None, "")]
        if missing:
            bad.add(f"row {i} has no {' / '.join(missing)}")
            continue
        opts = r["options"]
        if isinstance(opts, str):  # CSV / some exports: a JSON- or Python-style list in a string
            try:
                opts = json.loads(opts)
            except json.JSONDecodeError:
                opts = [o.strip(" '\"") for o in opts.strip("[]").split("', '")]
        if not isinstance(opts, (list, tuple)) or len(opts) < 2:
            bad.add(f"row {i}: options must be a list of 'A. ...' strings, got {r['options']!r}")
            continue
        texts = []
        for k, o in enumerate(opts):
            m = _OPTION_RE.match(str(o))
            texts.append(m.group(2).strip() if m and m.group(1) == LETTERS[k] else str(o).strip())
        ans = str(r["answer"]).strip().upper()
        if ans not in LETTERS[:len(texts)]:
            bad.add(f"row {i}: answer {r['answer']!r} is not one of {LETTERS[:len(texts)]}")
            continue
        vid = str(r["videoID"])
        sub = cues = None
        if subtitles:
            cues = _srt_cues(root / "subtitle" / f"{vid}.srt")
            sub = "\n".join(c for _, _, c in cues)
        prompt = build_prompt("videomme", str(r["question"]), texts, subtitles=sub if subtitles else None)
        bd = tuple((k, str(r.get(k)) if r.get(k) is not None else "unknown") for k in BENCHMARKS["videomme"].breakdown)
        out.append(dict(qid=str(r["question_id"]), video=vid, question=str(r["question"]), answer=ans,
                        options=tuple(texts), prompt=prompt, breakdown=bd, type=str(r.get("task_type") or "") or None,
                        **({"cues": cues} if cues is not None else {})))
    bad.finish(problems)
    vdir = root / "data"

    def cands(v: str) -> list:
        return [vdir / f"{v}{e}" for e in VIDEO_EXTS]
    return qpath, vdir, out, cands


_SRT_TIME = re.compile(r"(\d+):(\d{2}):(\d{2})[,.](\d{1,3})")


def _srt_seconds(s: str) -> float | None:
    m = _SRT_TIME.search(s)
    if m is None:
        return None
    h, mi, se, ms = m.groups()
    return int(h) * 3600 + int(mi) * 60 + int(se) + int(ms.ljust(3, "0")) / 1000


def _srt_cues(path: Path) -> list:
    """The cues of an .srt file as (start s, end s, text without font tags), in file order; [] when absent."""
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    cues = []
    for block in re.split(r"\n\s*\n", text.replace("\r\n", "\n")):
        parts = [p for p in block.strip().split("\n") if p.strip()]
        if len(parts) >= 3 and "-->" in parts[1]:
            a, _, b = parts[1].partition("-->")
            cue = re.sub(r"<[^>]+>", "", " ".join(parts[2:])).strip()
            ta, tb = _srt_seconds(a), _srt_seconds(b)
            if cue and ta is not None and tb is not None:
                cues.append((ta, tb, cue))
    return cues


def _srt_text(path: Path) -> str:
    """The text lines of an .srt file (no indices, no times, no font tags), one per cue; "" when absent."""
    return "\n".join(c for _, _, c in _srt_cues(path))


def _mvbench(root: Path, questions: Any, subtitles: bool, problems: list | None) -> tuple:
    jdir = Path(questions) if questions is not None else root / "json"
    if not jdir.is_absolute() and not jdir.exists():
        jdir = root / jdir
    files = [jdir] if jdir.is_file() else (sorted(jdir.glob("*.json")) if jdir.is_dir() else [])
    if not files:
        raise DatasetError(f"MVBench question files not found: no {root / 'json'}/<task>.json; point --root at "
                           "the release folder (holding json/ and video/)")
    known = [f for f in files if f.stem in MVBENCH_TASKS]
    files = sorted(known, key=lambda f: list(MVBENCH_TASKS).index(f.stem)) + [f for f in files if f not in known]
    out = []
    for f in files:
        task = f.stem
        rows = _read_json(f, "task file")
        bad = _Bad(f, "each entry needs video, question, candidates (a list) and answer (one of the candidates)")
        if not isinstance(rows, list):
            bad.add(f"expected a JSON list, found a JSON {type(rows).__name__}")
            rows = []
        folder = MVBENCH_TASKS.get(task, task)
        for i, r in enumerate(rows):
            if not isinstance(r, dict) or any(k not in r for k in ("video", "question", "candidates", "answer")):
                bad.add(f"entry {i} is not an object with video / question / candidates / answer")
                continue
            cands = [str(c) for c in r["candidates"]] if isinstance(r["candidates"], list) else []
            if str(r["answer"]) not in cands:
                bad.add(f"entry {i}: answer {r['answer']!r} is not one of its candidates")
                continue
            ans = LETTERS[cands.index(str(r["answer"]))]
            video = f"{folder}/{r['video']}"
            if folder in MVBENCH_BOUNDED and r.get("start") is not None and r.get("end") is not None:
                try:
                    a, b = float(r["start"]), float(r["end"])
                except (TypeError, ValueError):
                    bad.add(f"entry {i}: start/end {r['start']!r}/{r['end']!r} are not seconds")
                    continue
                if not 0 <= a < b:
                    bad.add(f"entry {i}: the window start={a:g} .. end={b:g} is empty")
                    continue
                video += f"#t={a:g},{b:g}"  # one decode per (video, window)
            out.append(dict(qid=f"{task}_{i}", video=video, question=str(r["question"]),
                            answer=ans, options=tuple(cands), prompt=build_prompt("mvbench", str(r["question"]), cands),
                            breakdown=(("task", task),), type=task))
        bad.finish(problems)

    def base_folder(v: str) -> str:
        return next((f for f in MVBENCH_TASKS.values() if v.startswith(f + "/")), v.rpartition("/")[0])

    def cands(v: str) -> list:
        v = _FRAGMENT.sub("", v)
        folder = base_folder(v)
        rel = v[len(folder) + 1:]
        out = []
        for h in (folder, *MVBENCH_ALT.get(folder, ())):
            names = [rel] if Path(rel).suffix or h == folder else [rel, rel + ".mp4"]  # segment copies are mp4
            out += [base / h / n for n in names for base in (root / "video", root)]
        return out

    def options(v: str, path: Path | None) -> dict:
        """A window applies to the whole source only (not to a copy cut to it); TVQA frames: 3 per second."""
        m = _FRAGMENT.search(v)
        folder = base_folder(_FRAGMENT.sub("", v))
        if path is None or m is None or folder not in MVBENCH_BOUNDED or f"/{folder}/" not in path.as_posix():
            return {}
        rate = MVBENCH_BOUNDED[folder]
        return {"start": float(m.group(1)), "end": float(m.group(2)), **({"frame_rate": rate} if rate else {})}
    return files[0] if len(files) == 1 else jdir, root / "video", out, cands, None, options


def _egoschema(root: Path, questions: Any, subtitles: bool, problems: list | None) -> tuple:
    qpath = Path(questions) if questions is not None else root / "questions.json"
    if not qpath.is_absolute() and not qpath.is_file():
        qpath = root / qpath
    apath = root / "subset_answers.json"
    for p, what in ((qpath, "questions.json"), (apath, "subset_answers.json")):
        if not p.is_file():
            raise DatasetError(f"EgoSchema {what} not found at {p}; point --root at the release folder")
    rows = _read_json(qpath, "question file")
    answers = _read_json(apath, "answer file")
    if not isinstance(rows, list) or not isinstance(answers, dict):
        raise DatasetError(f"{qpath} must hold a JSON list and {apath} a JSON object {{q_uid: answer index}}")
    bad = _Bad(qpath, "each entry needs q_uid, question and option 0 .. option 4")
    out = []
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or "q_uid" not in r or "question" not in r:
            bad.add(f"entry {i} has no q_uid / question")
            continue
        uid = str(r["q_uid"])
        if uid not in answers:
            continue  # the full set's hidden answers: only the public subset is evaluated
        opts = [str(r[f"option {k}"]) for k in range(5) if f"option {k}" in r]
        try:
            a = int(answers[uid])
        except (TypeError, ValueError):
            a = -1
        if len(opts) < 2 or not 0 <= a < len(opts):
            bad.add(f"entry {i} ({uid}): {len(opts)} options, answer {answers[uid]!r}")
            continue
        out.append(dict(qid=uid, video=uid, question=str(r["question"]), answer=LETTERS[a], options=tuple(opts),
                        prompt=build_prompt("egoschema", str(r["question"]), opts), breakdown=(), type=None))
    bad.finish(problems)
    vdir = root / "good_clips_git"
    if not vdir.is_dir() and (root / "videos").is_dir():
        vdir = root / "videos"

    def cands(v: str) -> list:
        return [vdir / f"{v}{e}" for e in VIDEO_EXTS]
    return qpath, vdir, out, cands


def _resolve(root: Path, questions: Any) -> Path:
    """``--questions``: a path as given, else relative to the root."""
    q = Path(questions).expanduser()
    if not q.is_absolute() and not q.exists():
        q = root / q
    return q


def _columns(rows: list) -> str:
    keys = list(dict.fromkeys(k for r in rows[:50] if isinstance(r, dict) for k in r if k is not None))
    return ", ".join(map(str, keys[:12])) + (", ..." if len(keys) > 12 else "") if keys else "none"


def _not_this(path: Path, what: str, rows: list, required: tuple, fix: str) -> None:
    """Refuse a whole file that is not the benchmark's (no row has the release's fields), in one line."""
    dicts = [r for r in rows if isinstance(r, dict)]
    if not dicts:
        return  # empty or not objects: reported as an empty split / bad entries
    if not any(all(k in r for k in required) for r in dicts):
        missing = [k for k in required if not any(k in r for r in dicts)] or list(required)
        raise DatasetError(f"{path} is not {what} question file: no {' / '.join(missing)} field "
                           f"(it has {_columns(dicts)}); {fix}")


def _index(value: Any) -> int | None:
    """An answer index from an int, a digit string or an integral float (CSV / parquet / JSON); else None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    try:
        f = float(str(value).strip())
    except ValueError:
        return None
    return int(f) if f.is_integer() else None


def _nextqa(root: Path, questions: Any, subtitles: bool, problems: list | None) -> tuple:
    ann = root / "dataset" / "nextqa"
    if questions is not None:
        qpath = _resolve(root, questions)
        if not qpath.is_file():
            raise DatasetError(f"NExT-QA question table not found: {questions}; check the --questions path "
                               "(e.g. dataset/nextqa/test.csv)")
    else:
        cands = [d / "val.csv" for d in (ann, root / "nextqa", root)]
        cands += sorted((root / "MC").glob("*.parquet")) if (root / "MC").is_dir() else []
        qpath = _first_file(cands)
        if qpath is None:
            raise DatasetError(f"NExT-QA question table not found: no {ann / 'val.csv'} (nor lmms-eval's "
                               f"{root / 'MC'}/test-00000-of-00001.parquet); point --root at the NExT-QA folder "
                               "(holding dataset/nextqa/ and NExTVideo/), --questions names another split's table")
    split = qpath.stem.split("-")[0] or "val"
    rows = _read_table(qpath)
    required = ("video", "qid", "question", "answer", "a0", "a1", "a2", "a3", "a4")
    _not_this(qpath, "a NExT-QA multiple-choice", rows, required,
              "the multiple-choice table has columns video, frame_count, width, height, question, answer, qid, "
              "type, a0 .. a4 (the open-ended NExT-OE tables are not supported)")
    csv_file = qpath.suffix.lower() == ".csv"

    def line(i: int) -> str:  # where a row is: the CSV line (the header is line 1), else the row index
        return f"line {i + 2}" if csv_file else f"row {i}"
    bad = _Bad(qpath, "each row needs video, qid, question, answer (the index 0-4 of the correct option) and the "
                      "options a0 .. a4; re-download the table")
    out = []
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            bad.add(f"{line(i)} is not a row object")
            continue
        missing = [k for k in required if r.get(k) is None or (k != "answer" and str(r[k]).strip() == "")]
        if missing:
            bad.add(f"{line(i)} has no {' / '.join(missing)}")
            continue
        opts = [str(r[f"a{k}"]).strip() for k in range(5)]
        a = _index(r["answer"])
        if a is None or not 0 <= a < len(opts):
            bad.add(f"{line(i)} (video {r['video']}, qid {r['qid']}): answer {r['answer']!r} is not an option "
                    "index 0-4")
            continue
        vid, qtype = str(r["video"]).strip(), str(r.get("type") or "").strip().upper()
        family = NEXTQA_TYPES.get(qtype) or NEXTQA_FAMILIES.get(qtype[:1], "unknown")
        question = str(r["question"]).strip()
        out.append(dict(qid=f"{vid}_{str(r['qid']).strip()}", video=vid, question=question, answer=LETTERS[a],
                        options=tuple(opts), prompt=build_prompt("nextqa", question, opts),
                        breakdown=(("family", family), ("type", qtype or "unknown")), type=qtype or None))
    bad.finish(problems)
    mapping: dict = {}
    mpath = _first_file([qpath.parent / "map_vid_vidorID.json", ann / "map_vid_vidorID.json"])
    if mpath is not None:
        m = _read_json(mpath, "video map")
        if not isinstance(m, dict):
            raise DatasetError(f"{mpath} must hold a JSON object {{video: \"<folder>/<video>\"}}; re-download it")
        mapping = {str(k): str(v) for k, v in m.items()}
    vdir = root / "NExTVideo"
    if not vdir.is_dir() and (root / "videos").is_dir():
        vdir = root / "videos"

    def cands(v: str) -> list:
        rels = ([mapping[v]] if v in mapping else []) + [v]  # the release's <folder>/<video>, lmms-eval's flat copy
        return [vdir / f"{rel}{e}" for rel in dict.fromkeys(rels) for e in (".mp4", ".MP4", ".webm", ".mkv")]
    return qpath, vdir, out, cands, split


def _lvb_seconds(value: Any) -> float | None:
    """Seconds of a subtitle time: a number or ``HH:MM:SS(.fff)``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    try:
        parts = [float(p) for p in str(value).strip().replace(",", ".").split(":")]
    except ValueError:
        return None
    total = 0.0
    for p in parts:
        total = total * 60 + p
    return total


def _lvb_subtitles(path: Path, start: Any, duration: Any) -> str | None:
    """The text lines of a LongVideoBench subtitle file within the video's window, in order (a prefix, not
    interleaved with the frames); None when the file is absent or unreadable."""
    if not path.is_file():
        return None
    try:
        subs = json.loads(path.read_text(encoding="utf-8-sig", errors="replace"))
    except json.JSONDecodeError:
        return None
    try:
        t0 = float(start or 0.0)
    except (TypeError, ValueError):
        t0 = 0.0
    try:
        dur = float(duration)
    except (TypeError, ValueError):
        dur = float("inf")
    lines = []
    for s in subs if isinstance(subs, list) else []:
        if not isinstance(s, dict):
            continue
        if "timestamp" in s:  # {"timestamp": [start, end], "text": ...}; end None: until the end
            ts = list(s["timestamp"]) + [None, None] if isinstance(s["timestamp"], (list, tuple)) else [None, None]
            a = None if ts[0] is None else _lvb_seconds(ts[0])
            b = None if ts[1] is None else _lvb_seconds(ts[1])
            text = s.get("text")
        else:  # {"start": "HH:MM:SS.fff", "end": ..., "line": ...}
            a, b, text = _lvb_seconds(s.get("start")), _lvb_seconds(s.get("end")), s.get("line")
        if not text or not str(text).strip():
            continue
        a = 0.0 if a is None else a - t0
        b = (t0 + dur if b is None else b) - t0
        if b < 0 or a > dur:
            continue  # outside the video's window of the original video
        lines.append(str(text).strip())
    return "\n".join(lines)


def _longvideobench(root: Path, questions: Any, subtitles: bool, problems: list | None) -> tuple:
    if questions is not None:
        qpath = _resolve(root, questions)
        if not qpath.is_file():
            raise DatasetError(f"LongVideoBench question file not found: {questions}; check the --questions path")
    else:
        qpath = root / "lvb_val.json"
        if not qpath.is_file():
            test = root / "lvb_test_wo_gt.json"
            extra = f" (only {test.name}, which has no answers)" if test.is_file() else ""
            raise DatasetError(f"LongVideoBench lvb_val.json not found at {qpath}{extra}; point --root at the release "
                               "folder (holding lvb_val.json, videos/, subtitles/)")
    rows = _read_table(qpath) if qpath.suffix.lower() in (".csv", ".parquet", ".jsonl") else _read_json(
        qpath, "question file")
    if not isinstance(rows, list):
        raise DatasetError(f"{qpath}: expected a JSON list of questions, found a JSON {type(rows).__name__}; "
                           "re-download lvb_val.json")
    dicts = [r for r in rows if isinstance(r, dict)]

    def options_of(r: dict) -> Any:
        """``candidates``; the Hugging Face table's ``option0`` .. ``option4`` ("N/A" when unused) too."""
        if "candidates" in r:
            return r["candidates"]
        return [r[f"option{k}"] for k in range(5) if f"option{k}" in r and r[f"option{k}"] != "N/A"] or None
    if dicts and not any("correct_choice" in r for r in dicts):
        if any(options_of(r) and "video_path" in r for r in dicts):
            raise DatasetError(f"{qpath} has no answers (no correct_choice: LongVideoBench's test split, whose "
                               "answers are hidden); evaluate lvb_val.json, or submit test predictions to the "
                               "benchmark's leaderboard")
        _not_this(qpath, "a LongVideoBench", dicts, ("id", "video_path", "candidates", "correct_choice"),
                  "lvb_val.json lists {id, video_id, question, candidates, correct_choice, duration_group, "
                  "question_category, video_path, subtitle_path, ...}")
    bad = _Bad(qpath, "each entry needs id, video_path, question, candidates (a list) and correct_choice (the "
                      "index of the correct candidate); re-download lvb_val.json")
    sdir = root / "subtitles"
    out, no_subs = [], []
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            bad.add(f"entry {i} is not an object")
            continue
        opts = options_of(r)
        missing = [k for k in ("id", "video_path", "question") if r.get(k) in (None, "")]
        missing += [] if isinstance(opts, list) and len(opts) >= 2 else ["candidates"]
        missing += [] if "correct_choice" in r else ["correct_choice"]
        if missing:
            bad.add(f"entry {i}{' (' + str(r['id']) + ')' if r.get('id') else ''} has no {' / '.join(missing)}")
            continue
        opts = [str(o) for o in opts]
        a = _index(r["correct_choice"])
        if a is None or not 0 <= a < len(opts):
            bad.add(f"entry {i} ({r['id']}): correct_choice {r['correct_choice']!r} is not a candidate index "
                    f"0-{len(opts) - 1}")
            continue
        group = r.get("duration_group")
        gi = _index(group)
        group = "unknown" if group is None else str(gi if gi is not None else group)
        question = str(r["question"])
        prompt = build_prompt("longvideobench", question, opts)
        if subtitles:
            sub = None
            if r.get("subtitle_path"):
                sub = _lvb_subtitles(sdir / str(r["subtitle_path"]), r.get("starting_timestamp_for_subtitles"),
                                     r.get("duration"))
            if sub is None:
                no_subs.append(str(r.get("subtitle_path") or r["id"]))
            elif sub:
                prompt = sub + "\n" + prompt
        out.append(dict(qid=str(r["id"]), video=str(r["video_path"]), question=question, answer=LETTERS[a],
                        options=tuple(opts), prompt=prompt,
                        breakdown=(("duration_group", group),
                                   ("question_category", str(r.get("question_category") or "unknown"))),
                        type=str(r.get("question_category") or "") or None))
    bad.finish(problems)
    if no_subs and problems is not None:
        problems.append(Problem("missing_subtitles", f"{len(set(no_subs))} subtitle file(s) not found or unreadable "
                                f"under {sdir}: {_show(list(dict.fromkeys(no_subs)))}",
                                "extract subtitles.tar into the release folder; these questions are asked "
                                "without subtitles", severity="warning"))
    vdir = root / "videos"

    def cands(v: str) -> list:
        if Path(v).suffix:
            return [vdir / v]
        return [vdir / f"{v}{e}" for e in VIDEO_EXTS]
    return qpath, vdir, out, cands


def _mlvu(root: Path, questions: Any, subtitles: bool, problems: list | None) -> tuple:
    base = root
    if not (root / "json").is_dir() and (root / "MLVU" / "json").is_dir():
        base = root / "MLVU"
    if questions is not None:
        q = _resolve(root, questions)
        q = q if q.exists() else _resolve(base, questions)
        files = [q] if q.is_file() else (sorted(q.glob("*.json")) if q.is_dir() else [])
        if not files:
            raise DatasetError(f"MLVU task file(s) not found: {questions}; --questions names a json/<n>_<task>.json "
                               "file or the json/ folder")
    else:
        jdir = base / "json"
        # the release's task files are numbered (<n>_<task>.json); other JSON files in the folder are not read
        files = [f for f in sorted(jdir.glob("*.json")) if re.match(r"^\d+_", f.stem)] if jdir.is_dir() else []
        if not any(f.stem in MLVU_TASKS for f in files):
            raise DatasetError(f"MLVU task files not found: no {jdir}/1_plotQA.json ... 7_topic_reasoning.json; point "
                               "--root at the MLVU folder (holding json/ and video/)")

    def order(f: Path) -> tuple:
        m = re.match(r"^(\d+)_", f.stem)
        return (int(m.group(1)) if m else 1 << 30, f.stem)
    files = sorted((f for f in files if f.stem not in MLVU_GENERATION), key=order)
    if not files:
        raise DatasetError(f"{questions}: MLVU's generation tasks (sub_scene, summary) are open-ended and not "
                           "evaluated here; name a multiple-choice task file (1_plotQA.json ... 7_topic_reasoning.json)")
    out = []
    for f in files:
        stem = f.stem
        task = MLVU_TASKS.get(stem) or re.sub(r"^\d+_", "", stem)
        rows = _read_json(f, "task file")
        if isinstance(rows, list):
            _not_this(f, "an MLVU", rows, ("video", "question", "candidates", "answer"),
                      "an MLVU task file lists {video, duration, question, candidates, answer, question_type}")
        bad = _Bad(f, "each entry needs video, question, candidates (a list) and answer (one of the candidates)")
        if not isinstance(rows, list):
            bad.add(f"expected a JSON list, found a JSON {type(rows).__name__}")
            rows = []
        for i, r in enumerate(rows):
            if not isinstance(r, dict) or any(r.get(k) in (None, "") for k in ("video", "question", "answer")) \
                    or not isinstance(r.get("candidates"), list):
                bad.add(f"entry {i} is not an object with video / question / candidates / answer")
                continue
            opts = [str(c) for c in r["candidates"]]
            if str(r["answer"]) not in opts:
                bad.add(f"entry {i} ({r['video']}): answer {r['answer']!r} is not one of its candidates")
                continue
            question = str(r["question"])
            out.append(dict(qid=f"{stem}_{i}", video=f"{stem}/{r['video']}", question=question,
                            answer=LETTERS[opts.index(str(r["answer"]))], options=tuple(opts),
                            prompt=build_prompt("mlvu", question, opts), breakdown=(("task", task),), type=task))
        bad.finish(problems)
    vdir = base / "video"

    def cands(v: str) -> list:
        stem, _, rel = v.partition("/")
        # the release's video/<n>_<task>/ (basenames repeat across tasks), copies with video/<task>/
        heads = list(dict.fromkeys([stem, MLVU_TASKS.get(stem, re.sub(r"^\d+_", "", stem))]))
        return [d / h / rel for h in heads for d in (vdir, base)]
    return files[0] if len(files) == 1 else files[0].parent, vdir, out, cands


def macro_accuracy(per_value: dict) -> float | None:
    """The mean of the per-value accuracies of one breakdown key (MLVU's M-Avg over its tasks), from a config's
    ``per_breakdown[key]`` of ``results.json``; values without an answered question are left out."""
    accs = [c.get("accuracy") for c in per_value.values() if isinstance(c, dict) and c.get("accuracy") is not None]
    return sum(accs) / len(accs) if accs else None


_LOADERS: dict[str, Callable] = {"videomme": _videomme, "mvbench": _mvbench, "egoschema": _egoschema,
                                 "nextqa": _nextqa, "longvideobench": _longvideobench, "mlvu": _mlvu}


def load_mc(name: str, root: str | os.PathLike, *, questions: Any = None, limit: int | None = None,
            subtitles: bool = False, strict: bool = True) -> MCDataset:
    """Load a multiple-choice benchmark from its release folder (see the module docstring).

    ``subtitles``: the "with subtitles" setting of Video-MME and LongVideoBench (the prompt starts with the
    video's subtitle text; for LongVideoBench a prefix, not interleaved with the frames).
    ``strict=False`` keeps the usable entries and records problems (``check_mc``)."""
    key = _key(name)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise DatasetError(f"limit must be a positive integer (the first N questions), got {limit!r}")
    if subtitles and key not in SUBTITLED:
        raise DatasetError(f"--subtitles is a setting of Video-MME and LongVideoBench; {BENCHMARKS[key].title} "
                           "has no subtitles")
    r = Path(root).expanduser()
    if not r.is_dir():
        raise DatasetError(f"dataset root {r} is not a directory; pass --root the {BENCHMARKS[key].title} "
                           "release folder")
    problems: list | None = None if strict else []
    loaded = _LOADERS[key](r, questions, subtitles, problems)
    qpath, vdir, rows, cands = loaded[:4]
    split = (loaded[4] if len(loaded) > 4 else None) or BENCHMARKS[key].split
    read_options = loaded[5] if len(loaded) > 5 else None
    seen, dups, uniq = set(), [], []
    for row in rows:
        if row["qid"] in seen:
            dups.append(row["qid"])
            continue
        seen.add(row["qid"])
        uniq.append(row)
    if dups:
        msg = f"{qpath}: {len(dups)} duplicate question id{'s' if len(dups) > 1 else ''}: {_show(dups)}"
        fix = "every question needs its own id; re-download the release"
        if problems is None:
            raise DatasetError(f"{msg}; {fix}")
        problems.append(Problem("duplicate_question_ids", msg, fix))
    if not uniq and problems is None:
        raise DatasetError(f"{qpath} holds no usable question (empty split); check that it is the release's file")
    total = len(uniq)
    if limit is not None:
        uniq = uniq[:limit]
    items = [Item(question_id=row["qid"], video_name=row["video"], question=row["question"], answer=row["answer"],
                  type=row["type"], index=i, options=row["options"], prompt=row["prompt"], breakdown=row["breakdown"])
             for i, row in enumerate(uniq)]
    cues = {row["video"]: row["cues"] for row in uniq if "cues" in row}
    paths, tried, options = {}, {}, {}
    for v in dict.fromkeys(it.video_name for it in items):
        c = cands(v)
        tried[v] = c
        paths[v] = _first_file(c)
        how = read_options(v, paths[v]) if read_options is not None else None
        if how:
            options[v] = how
    return MCDataset(name=key, split=split, root=r.resolve(), video_dir=vdir, questions_path=qpath, limit=limit,
                     total=total, items=items, paths=paths, tried=tried, subtitles=subtitles,
                     problems=list(problems or []), options=options, cues=cues)


def check_mc(name: str, root: Any, *, questions: Any = None, limit: int | None = None, subtitles: bool = False,
             probe: bool = True) -> CheckReport:
    """Check a benchmark folder: tables, answers, every video present and (``probe``) openable."""
    try:
        ds = load_mc(name, root if root is not None else ".", questions=questions, limit=limit, subtitles=subtitles,
                     strict=False)
    except DatasetError as e:
        msg, fix = (str(e).rsplit("; ", 1) + ["see the message"])[:2] if "; " in str(e) else (str(e), "see the message")
        key = _ALIASES.get(str(name).strip().lower(), str(name).strip().lower())
        return CheckReport(dataset=key, split=BENCHMARKS[key].split if key in BENCHMARKS else "test",
                           root=None if root is None else str(root),
                           limit=limit, problems=[Problem("not_loadable", msg, fix)], fatal=True)
    rep = CheckReport(dataset=ds.name, split=ds.split, root=str(ds.root), questions_file=str(ds.questions_path),
                      answers_file=str(ds.questions_path), video_dir=str(ds.video_dir),
                      video_files=sum(1 for p in ds.paths.values() if p is not None), questions=len(ds.items),
                      total=ds.total, limit=ds.limit, problems=list(ds.problems))
    if not ds.items:
        rep.problems.append(Problem("empty", f"no usable question in {ds.questions_path}",
                                    "check that the files are the release's"))
    names = ds.videos()
    rep.videos = len(names)
    per_video: dict = {}
    for it in ds.items:
        per_video[it.video_name] = per_video.get(it.video_name, 0) + 1
    probe_fn, errs = None, (OSError,)
    if probe:
        from videosparse.video import VideoError, probe_video

        probe_fn, errs = functools.partial(probe_video, progress=False), (VideoError, OSError)
    for v in names:
        path = ds.paths.get(v)
        if path is None:
            rep.missing_videos.append(v)
            rep.missing_questions += per_video[v]
        elif probe_fn is not None:
            rep.probed += 1
            try:
                rate = ds.options.get(v, {}).get("frame_rate")
                probe_fn(path, **({"frame_rate": rate} if rate else {}))
            except errs as e:
                reason = str(getattr(e, "reason", None) or e).splitlines()
                rep.unreadable_videos.append((v, reason[0] if reason else type(e).__name__))
                rep.unreadable_questions += per_video[v]
    if rep.missing_videos:
        example = ds.tried[rep.missing_videos[0]][0]
        rep.problems.append(Problem(
            "missing_videos",
            f"{len(rep.missing_videos)} of {_n(rep.videos, 'video')} ({_n(rep.missing_questions, 'question')}) "
            f"{'is' if len(rep.missing_videos) == 1 else 'are'} not found: {_show(rep.missing_videos)}",
            f"put the files where the release has them (e.g. {example}); a run records these questions as errors"))
    if rep.unreadable_videos:
        shown = "; ".join(f"{n}: {r}" for n, r in rep.unreadable_videos[:SHOW])
        rep.problems.append(Problem(
            "unreadable_videos",
            f"{len(rep.unreadable_videos)} of {_n(rep.probed, 'probed video')} "
            f"({_n(rep.unreadable_questions, 'question')}) cannot be read: {shown}",
            "re-download these files; a run records their questions as errors"))
    return rep
