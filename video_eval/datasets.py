"""Zero-shot video-QA datasets in the layout of the Video-LLaVA / Video-ChatGPT releases.

Each of MSVD-QA, MSRVTT-QA, ActivityNet-QA and TGIF-QA ships as one folder holding a question file, an
answer file and a video directory::

    MSVD_Zero_Shot_QA/         test_q.json  test_a.json  videos/<name>.avi
    MSRVTT_Zero_Shot_QA/       test_q.json  test_a.json  videos/all/video<N>.mp4
    Activitynet_Zero_Shot_QA/  test_q.json  test_a.json  all_test/v_<name>.mp4|.mkv|.webm
    TGIF_Zero_Shot_QA/         test_q.json  test_a.json  mp4/<name>.mp4  (or the original .gif files)

``test_q.json`` is a JSON list of ``{"video_name", "question_id", "question"}`` and ``test_a.json`` a
JSON list of ``{"question_id", "answer"[, "type"]}``. Questions and answers are joined **by
question id** (never by position), ids are normalised to ``str``, and ``limit=N`` keeps the first N
questions of the question file.

    from video_eval.datasets import load_dataset, check
    ds = load_dataset("msvd", "eval/GPT_Zero_Shot_QA/MSVD_Zero_Shot_QA", limit=1000)
    for item in ds.items:
        path = ds.video_path(item)          # pathlib.Path, or None when the file is missing
    print(check(ds).text())                 # counts, missing/unreadable videos, what to fix

Importing this module imports the standard library only.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

__all__ = [
    "DATASETS",
    "CheckReport",
    "Dataset",
    "DatasetError",
    "DatasetSpec",
    "Item",
    "Problem",
    "check",
    "load_dataset",
]

#: how many ids / names an error message or a report line lists before "..."
SHOW = 10


class DatasetError(ValueError):
    """A dataset cannot be loaded: the message names the problem, the file and what to fix."""


# ----------------------------------------------------------------------------- records
@dataclass(frozen=True)
class Item:
    """One question of a dataset, joined with its answer."""

    question_id: str  # str(original id)
    video_name: str  # as in the question file
    question: str
    answer: str
    type: str | None  # the answer file's "type" as str, None when absent
    index: int  # position in the (joined, limited) dataset = question-file order
    # multiple-choice benchmarks only (video_eval.benchmarks): option texts without letters, the
    # benchmark prompt (options listed), and the breakdown fields as ((key, value), ...) pairs
    options: tuple = ()
    prompt: str | None = None
    breakdown: tuple = ()


@dataclass(frozen=True)
class Problem:
    """One problem found while loading or checking a dataset."""

    kind: str  # e.g. "missing_videos", "duplicate_question_ids", "unanswered_questions"
    message: str  # what is wrong (names files and ids)
    fix: str  # what to do about it
    severity: str = "error"  # "error" (check fails) or "warning"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "severity": self.severity, "message": self.message, "fix": self.fix}


# ----------------------------------------------------------------------------- registry
def _same(name: str) -> list[str]:
    return [name]


def _activitynet_names(name: str) -> list[str]:
    """The question file names videos by YouTube id; the release's files carry a ``v_`` prefix."""
    if name.startswith("v_"):
        return [name, "v_" + name, name[2:]]
    return ["v_" + name, name]


def _msrvtt_names(name: str) -> list[str]:
    """``video7010`` or the original release's bare ``7010``: try both spellings."""
    if name.startswith("video") and name[5:].isdigit():
        return [name, name[5:]]
    if name.isdigit():
        return [name, "video" + name]
    return [name]


@dataclass(frozen=True)
class DatasetSpec:
    """Where one release keeps its files, relative to the dataset root."""

    name: str  # registry key ("msvd", ...)
    title: str  # human name ("MSVD-QA")
    release_dir: str  # folder name in the release (a parent of it is accepted as root)
    video_dirs: tuple  # candidate video directories relative to the root, first existing wins
    extensions: tuple  # video file extensions, tried in order (lower case, with the dot)
    names: Callable[[str], list]  # video_name -> file stems to try, in order
    source: str  # where the files come from (for messages and the README)

    def question_file(self, split: str) -> str:
        return f"{split}_q.json"

    def answer_file(self, split: str) -> str:
        return f"{split}_a.json"


_COMMON_EXTS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".gif")


def _exts(*first: str) -> tuple:
    return tuple(first) + tuple(e for e in _COMMON_EXTS if e not in first)


DATASETS: dict[str, DatasetSpec] = {
    "msvd": DatasetSpec(
        name="msvd", title="MSVD-QA", release_dir="MSVD_Zero_Shot_QA",
        video_dirs=("videos", "YouTubeClips"), extensions=_exts(".avi"), names=_same,
        source="Video-LLaVA's MSVD_Zero_Shot_QA folder (videos/*.avi from the MSVD corpus, YouTubeClips)",
    ),
    "msrvtt": DatasetSpec(
        name="msrvtt", title="MSRVTT-QA", release_dir="MSRVTT_Zero_Shot_QA",
        video_dirs=("videos/all", "videos", "TestVideo"), extensions=_exts(".mp4"), names=_msrvtt_names,
        source="Video-LLaVA's MSRVTT_Zero_Shot_QA folder (videos/all/video<N>.mp4 from MSR-VTT)",
    ),
    "activitynet": DatasetSpec(
        name="activitynet", title="ActivityNet-QA", release_dir="Activitynet_Zero_Shot_QA",
        video_dirs=("all_test", "videos", "test"), extensions=_exts(".mp4", ".mkv", ".webm"),
        names=_activitynet_names,
        source="Video-LLaVA's Activitynet_Zero_Shot_QA folder (all_test/v_<id>.*, ActivityNet videos; "
               "annotations from MILVLG/activitynet-qa)",
    ),
    "tgif": DatasetSpec(
        name="tgif", title="TGIF-QA (FrameQA)", release_dir="TGIF_Zero_Shot_QA",
        video_dirs=("mp4", "videos_mp4", "videos", "gifs"), extensions=_exts(".mp4", ".gif"), names=_same,
        source="Video-LLaVA's TGIF_Zero_Shot_QA folder (mp4/<gif name>.mp4 converted from the TGIF GIFs)",
    ),
}


def _spec(name: str) -> DatasetSpec:
    key = str(name).strip().lower().replace("-", "").replace("_", "")
    aliases = {"msvdqa": "msvd", "msrvttqa": "msrvtt", "activitynetqa": "activitynet", "anet": "activitynet",
               "tgifqa": "tgif"}
    key = aliases.get(key, key)
    if key not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    return DATASETS[key]


# ----------------------------------------------------------------------------- helpers
def _n(count: int, noun: str, plural: str | None = None) -> str:
    """``"1 question"``, ``"2 questions"``."""
    return f"{count} {noun if count == 1 else (plural or noun + 's')}"


def _show(values: Sequence, n: int = SHOW) -> str:
    vals = list(values)
    text = ", ".join(repr(v) for v in vals[:n])
    return text + (f", ... ({len(vals) - n} more)" if len(vals) > n else "")


def _read_json_list(path: Path, what: str) -> list:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DatasetError(f"{what} {path}: cannot be read ({e.strerror or e})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DatasetError(f"{what} {path}: not UTF-8 text (byte {e.start}); re-download the file") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        hint = ""
        if e.msg.startswith("Extra data") and text.lstrip().startswith("{"):
            hint = " — it looks like JSON Lines; this loader expects one JSON list of objects"
        raise DatasetError(f"{what} {path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}{hint}; "
                           "fix the file or re-download it") from None
    if not isinstance(data, list):
        raise DatasetError(f"{what} {path}: expected a JSON list of objects, found a JSON {type(data).__name__}; "
                           "point --questions/--answers at the release's test_q.json/test_a.json")
    return data


def _scalar_str(value: Any) -> str | None:
    """``str`` of a JSON string/int; None for anything else (bool, float, null, list, object)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    return None


def _resolve_file(given: str | os.PathLike | None, root: Path, default: str, what: str, flag: str) -> Path:
    if given is None:
        p = root / default
        if not p.is_file():
            raise DatasetError(f"{what} not found: {p} does not exist; put the release's {default} there "
                               f"or pass {flag} FILE")
        return p
    p = Path(given).expanduser()
    tried = [p]
    if not p.is_absolute() and not p.is_file():
        tried.append(root / p)
        if (root / p).is_file():
            return root / p
    if not p.is_file():
        raise DatasetError(f"{what} not found: tried {', '.join(str(t) for t in tried)}; check the {flag} path")
    return p


def _resolve_root(spec: DatasetSpec, root: str | os.PathLike, split: str) -> Path:
    """The dataset folder: ``root`` itself, or the release folder inside it (``GPT_Zero_Shot_QA`` given)."""
    r = Path(root).expanduser()
    if not r.exists():
        raise DatasetError(f"dataset root {r} does not exist; pass --root the {spec.release_dir} folder")
    if not r.is_dir():
        raise DatasetError(f"dataset root {r} is a file, not a directory; pass --root the {spec.release_dir} folder")
    if (r / spec.question_file(split)).is_file():
        return r
    for sub in (Path(spec.release_dir), Path("GPT_Zero_Shot_QA") / spec.release_dir,
                Path("eval") / "GPT_Zero_Shot_QA" / spec.release_dir):
        if (r / sub).is_dir():
            return r / sub
    return r


def _resolve_video_dir(spec: DatasetSpec, root: Path, videos: str | os.PathLike | None) -> Path:
    if videos is not None:
        v = Path(videos).expanduser()
        tried = [v]
        if not v.is_absolute() and not v.is_dir():
            tried.append(root / v)
            if (root / v).is_dir():
                return root / v
        if not v.is_dir():
            raise DatasetError(f"video directory not found: tried {', '.join(str(t) for t in tried)}; "
                               "check the --videos path")
        return v
    tried = [root / d for d in spec.video_dirs]
    for d in tried:
        if d.is_dir():
            return d
    raise DatasetError(f"no video directory for {spec.title}: tried {', '.join(str(t) for t in tried)}; "
                       "unpack the videos there or pass --videos DIR")


class _VideoIndex:
    """A directory listed once: file stem -> path (extension preference applied at lookup)."""

    def __init__(self, directory: Path, spec: DatasetSpec):
        self.directory = directory
        self.spec = spec
        self.by_name: dict[str, Path] = {}
        self.by_stem: dict[str, dict[str, Path]] = {}
        try:
            entries = list(os.scandir(directory))
        except OSError as e:
            raise DatasetError(f"video directory {directory}: cannot be listed ({e.strerror or e})") from None
        for entry in entries:
            try:
                if not (entry.is_file() or entry.is_symlink()):
                    continue
            except OSError:
                continue
            path = Path(entry.path)
            self.by_name[entry.name] = path
            stem, ext = os.path.splitext(entry.name)
            if ext:
                self.by_stem.setdefault(stem, {})[ext.lower()] = path
        self.num_files = len(self.by_name)
        self._cache: dict[str, Path | None] = {}

    def lookup(self, video_name: str) -> Path | None:
        if video_name in self._cache:
            return self._cache[video_name]
        found = None
        for stem in self.spec.names(video_name):
            exts = self.by_stem.get(stem)
            if exts:
                for ext in self.spec.extensions:
                    if ext in exts:
                        found = exts[ext]
                        break
                if found is None:  # an extension we do not list: still the video the name means
                    found = exts[sorted(exts)[0]]
            if found is None and stem in self.by_name:  # video_name already carries its extension
                found = self.by_name[stem]
            if found is not None:
                break
        self._cache[video_name] = found
        return found

    def tried(self, video_name: str) -> list[str]:
        """File names looked for (for messages)."""
        return [s + e for s in self.spec.names(video_name) for e in self.spec.extensions]


# ----------------------------------------------------------------------------- dataset
@dataclass
class Dataset:
    """A loaded split: joined items in question-file order (limited), plus where the videos are."""

    name: str
    split: str
    root: Path
    video_dir: Path
    questions_path: Path
    answers_path: Path
    limit: int | None
    total: int  # joined items before the limit
    items: list
    spec: DatasetSpec
    problems: list = field(default_factory=list)  # filled by load_dataset(strict=False) only
    _index: Any = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self):
        return iter(self.items)

    def video_path(self, item: Item | str) -> Path | None:
        """The video file of an item (anything with ``video_name``) or of a video name; None when the
        video directory holds no file for it. Lookups use the directory listing made at load time."""
        name = str(getattr(item, "video_name", item))
        if self._index is None:
            self._index = _VideoIndex(self.video_dir, self.spec)
        return self._index.lookup(name)

    def videos(self) -> list[str]:
        """Unique video names in item order."""
        return list(dict.fromkeys(it.video_name for it in self.items))

    @property
    def num_video_files(self) -> int:
        if self._index is None:
            self._index = _VideoIndex(self.video_dir, self.spec)
        return self._index.num_files

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "split": self.split,
            "root": str(self.root),
            "limit": self.limit,
            "size": len(self.items),
            "total": self.total,
            "questions": str(self.questions_path),
            "answers": str(self.answers_path),
            "videos": str(self.video_dir),
        }


def _shape_problem(i: int, row: Any, keys: tuple) -> str | None:
    """Why entry ``i`` is not an object with ``keys`` (None when it is)."""
    if not isinstance(row, dict):
        return f"entry {i} is a JSON {type(row).__name__}, not an object"
    missing = [k for k in keys if k not in row]
    if missing:
        return f"entry {i} has no {' / '.join(repr(k) for k in missing)} key"
    return None


def _report_bad(bad: list, what: str, path: Path, fix: str, kind: str, problems: list | None) -> None:
    """Raise (strict, ``problems is None``) or record the bad entries of one file."""
    if not bad:
        return
    msg = f"{what} file {path}: {len(bad)} bad entr{'y' if len(bad) == 1 else 'ies'}: " + "; ".join(bad[:SHOW])
    if len(bad) > SHOW:
        msg += f"; ... ({len(bad) - SHOW} more)"
    if problems is None:
        raise DatasetError(f"{msg}; {fix}")
    problems.append(Problem(kind, msg, fix))


def _parse_questions(rows: list, path: Path, problems: list | None) -> list[tuple]:
    """[(qid, video_name, question)] in file order; bad entries raise (strict) or are reported."""
    out, bad = [], []
    for i, row in enumerate(rows):
        shape = _shape_problem(i, row, ("question_id", "video_name", "question"))
        if shape:
            bad.append(shape)
            continue
        qid, video, question = _scalar_str(row["question_id"]), _scalar_str(row["video_name"]), row["question"]
        if qid is None:
            bad.append(f"entry {i}: 'question_id' must be a string or an integer, got {row['question_id']!r}")
        elif video is None or not video:
            bad.append(f"entry {i}: 'video_name' must be a non-empty string, got {row['video_name']!r}")
        elif not isinstance(question, str):
            bad.append(f"entry {i}: 'question' must be a string, got {question!r}")
        else:
            out.append((qid, video, question))
    _report_bad(bad, "question", path,
                "each entry needs \"video_name\", \"question_id\" and \"question\"; fix or re-download the file",
                "invalid_question_entries", problems)
    return out


def _parse_answers(rows: list, path: Path, problems: list | None) -> list[tuple]:
    """[(qid, answer, type)] in file order."""
    out, bad = [], []
    for i, row in enumerate(rows):
        shape = _shape_problem(i, row, ("question_id", "answer"))
        if shape:
            bad.append(shape)
            continue
        qid = _scalar_str(row["question_id"])
        ans = row["answer"]
        if isinstance(ans, (int, float)) and not isinstance(ans, bool):
            ans = str(ans)
        typ = row.get("type")
        if qid is None:
            bad.append(f"entry {i}: 'question_id' must be a string or an integer, got {row['question_id']!r}")
        elif not isinstance(ans, str):
            bad.append(f"entry {i}: 'answer' must be a string, got {row['answer']!r}")
        elif isinstance(typ, (dict, list)):
            bad.append(f"entry {i}: 'type' must be a string or an integer, got {typ!r}")
        else:
            out.append((qid, ans, None if typ is None else str(typ)))
    _report_bad(bad, "answer", path,
                "each entry needs \"question_id\" and \"answer\" (\"type\" is optional); fix or re-download the file",
                "invalid_answer_entries", problems)
    return out


def _duplicates(ids: Iterable[str]) -> list[str]:
    seen, dup = set(), {}
    for i in ids:
        if i in seen:
            dup[i] = None
        seen.add(i)
    return list(dup)


def load_dataset(
    name: str,
    root: str | os.PathLike,
    *,
    questions: str | os.PathLike | None = None,
    answers: str | os.PathLike | None = None,
    videos: str | os.PathLike | None = None,
    limit: int | None = None,
    split: str = "test",
    strict: bool = True,
) -> Dataset:
    """Load one split of a zero-shot QA release.

    Args:
        name: ``msvd``, ``msrvtt``, ``activitynet`` or ``tgif`` (see :data:`DATASETS`).
        root: the release folder (e.g. ``.../GPT_Zero_Shot_QA/MSVD_Zero_Shot_QA``); its parent
            ``GPT_Zero_Shot_QA`` folder is accepted too.
        questions, answers: question / answer files (default ``<root>/<split>_q.json`` /
            ``<split>_a.json``); relative paths are tried against the working directory, then ``root``.
        videos: video directory (default: the release's, e.g. ``videos/all`` for MSRVTT).
        limit: keep the first ``limit`` questions in question-file order (``None``: all).
        split: the file-name prefix (``test``; the Video-ChatGPT copies of MSVD/MSRVTT use ``val``...).
        strict: raise on duplicate ids, questions without answers and malformed entries (default).
            ``False`` keeps what is usable (first occurrence of a duplicate id, joined questions only)
            and records each problem in ``Dataset.problems`` — :func:`check` uses this.

    Raises:
        DatasetError: unknown dataset, missing files/directories, invalid JSON (file, line, column),
            entries without required keys (file, entry index, key), duplicate question ids, questions
            whose id has no answer, an empty split, ``limit < 1``.
    """
    spec = _spec(name)
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise DatasetError(f"limit must be a positive integer (the first N questions), got {limit!r}")
    split = str(split)
    droot = _resolve_root(spec, root, split)
    qpath = _resolve_file(questions, droot, spec.question_file(split), "question file", "--questions")
    apath = _resolve_file(answers, droot, spec.answer_file(split), "answer file", "--answers")
    vdir = _resolve_video_dir(spec, droot, videos)

    problems: list | None = None if strict else []
    qrows = _parse_questions(_read_json_list(qpath, "question file"), qpath, problems)
    arows = _parse_answers(_read_json_list(apath, "answer file"), apath, problems)
    if not qrows and (strict or not problems):
        raise DatasetError(f"question file {qpath} holds no questions (empty split {split!r}); "
                           "check that it is the right file")

    dq = _duplicates(q[0] for q in qrows)
    if dq:
        msg = (f"question file {qpath}: {len(dq)} duplicate question_id value{'s' if len(dq) > 1 else ''} "
               f"(ids are compared as strings): {_show(dq)}")
        fix = "every question needs its own question_id; fix or re-download the question file"
        if problems is None:
            raise DatasetError(f"{msg}; {fix}")
        problems.append(Problem("duplicate_question_ids", msg, fix))
    da = _duplicates(a[0] for a in arows)
    if da:
        msg = (f"answer file {apath}: {len(da)} duplicate question_id value{'s' if len(da) > 1 else ''}: "
               f"{_show(da)}")
        fix = "each question_id may have one answer; fix or re-download the answer file"
        if problems is None:
            raise DatasetError(f"{msg}; {fix}")
        problems.append(Problem("duplicate_answer_ids", msg, fix))

    answers_by_id: dict[str, tuple] = {}
    for qid, ans, typ in arows:
        answers_by_id.setdefault(qid, (ans, typ))
    seen: set = set()
    joined, unanswered = [], []
    for qid, video, question in qrows:
        if qid in seen:
            continue
        seen.add(qid)
        if qid in answers_by_id:
            joined.append((qid, video, question) + answers_by_id[qid])
        else:
            unanswered.append(qid)
    orphans = [a for a in answers_by_id if a not in seen]
    if unanswered:
        have = "has" if len(unanswered) == 1 else "have"
        msg = (f"{len(unanswered)} of {_n(len(seen), 'question')} in {qpath} {have} no answer in {apath}: "
               f"{_show(unanswered)}")
        if orphans:
            msg += (f"; {_n(len(orphans), 'answer')} {'matches' if len(orphans) == 1 else 'match'} no question: "
                    f"{_show(orphans)}")
        fix = ("the question and answer files must come from the same release and split "
               "(questions and answers are joined by question_id)")
        if problems is None:
            raise DatasetError(f"{msg}; {fix}")
        problems.append(Problem("unanswered_questions", msg, fix))
    elif orphans:
        # extra answers are harmless (a subset question file): report, never fail
        msg = (f"{_n(len(orphans), 'answer')} in {apath} {'matches' if len(orphans) == 1 else 'match'} no question "
               f"in {qpath}: {_show(orphans)}")
        fix = "nothing to do if the question file is a deliberate subset; otherwise check the file pair"
        if problems is not None:
            problems.append(Problem("unmatched_answers", msg, fix, severity="warning"))

    if not joined and problems is None:
        raise DatasetError(f"no question in {qpath} has an answer in {apath}; "
                           "the files must come from the same release and split")
    total = len(joined)
    if limit is not None:
        joined = joined[:limit]
    items = [Item(question_id=qid, video_name=video, question=q, answer=a, type=t, index=i)
             for i, (qid, video, q, a, t) in enumerate(joined)]
    ds = Dataset(name=spec.name, split=split, root=droot.resolve(), video_dir=vdir.resolve(),
                 questions_path=qpath.resolve(), answers_path=apath.resolve(), limit=limit, total=total,
                 items=items, spec=spec, problems=list(problems or []))
    ds._index = _VideoIndex(ds.video_dir, spec)  # one listing, shared by every lookup
    return ds


# ----------------------------------------------------------------------------- check
@dataclass
class CheckReport:
    """What :func:`check` found. ``ok`` is False when any error-severity problem was found."""

    dataset: str
    split: str
    root: str | None
    questions_file: str | None = None
    answers_file: str | None = None
    video_dir: str | None = None
    video_files: int = 0  # files in the video directory
    questions: int = 0  # questions checked (after the limit)
    total: int = 0  # joined questions before the limit
    limit: int | None = None
    videos: int = 0  # unique videos of the checked questions
    missing_videos: list = field(default_factory=list)  # names
    missing_questions: int = 0  # questions whose video is missing
    unreadable_videos: list = field(default_factory=list)  # [(name, reason)]
    unreadable_questions: int = 0
    probed: int = 0  # files the probe tried to open (0 with probe=False)
    problems: list = field(default_factory=list)  # [Problem]
    fatal: bool = False  # the dataset could not be loaded at all

    @property
    def ok(self) -> bool:
        return not any(p.severity == "error" for p in self.problems)

    @property
    def opened(self) -> int:
        """Probed files that opened."""
        return self.probed - len(self.unreadable_videos)

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "dataset": self.dataset,
            "split": self.split,
            "root": self.root,
            "questions_file": self.questions_file,
            "answers_file": self.answers_file,
            "video_dir": self.video_dir,
            "video_files": self.video_files,
            "questions": self.questions,
            "total": self.total,
            "limit": self.limit,
            "videos": self.videos,
            "missing_videos": list(self.missing_videos),
            "missing_questions": self.missing_questions,
            "unreadable_videos": [{"video": n, "reason": r} for n, r in self.unreadable_videos],
            "unreadable_questions": self.unreadable_questions,
            "probed": self.probed,
            "opened": self.opened,
            "problems": [p.to_dict() for p in self.problems],
        }

    def text(self) -> str:
        """A human summary: what was checked, the counts, one block per problem with a fix line."""
        title = DATASETS[self.dataset].title if self.dataset in DATASETS else self.dataset
        lines = [f"{title} ({self.dataset}), split {self.split!r}" + (f" at {self.root}" if self.root else "")]
        if not self.fatal:
            lim = f"limit {self.limit} of {self.total}" if self.limit is not None else "no limit"
            lines += [
                f"  questions: {self.questions_file}",
                f"  answers:   {self.answers_file}",
                f"  videos:    {self.video_dir} ({_n(self.video_files, 'file')})",
                f"  {_n(self.questions, 'question')} ({lim}) on {_n(self.videos, 'video')}",
            ]
            found = self.videos - len(self.missing_videos)
            vid = f"  {found} of {_n(self.videos, 'video')} found"
            if self.probed:
                vid += f", {self.opened} opened, {len(self.unreadable_videos)} unreadable"
            elif self.videos:
                vid += " (not opened: --no-probe)"
            lines.append(vid)
        errors = [p for p in self.problems if p.severity == "error"]
        warnings = [p for p in self.problems if p.severity != "error"]
        for label, group in (("ERROR", errors), ("WARNING", warnings)):
            for p in group:
                lines.append(f"{label} {p.kind}: {p.message}")
                lines.append(f"  fix: {p.fix}")
        if self.ok:
            lines.append("OK: every question has an answer and a readable video" if self.probed or not self.videos
                         else "OK: every question has an answer and a video file (files not opened)")
        else:
            lines.append(f"NOT OK: {len(errors)} problem{'s' if len(errors) != 1 else ''} to fix (see above)")
        return "\n".join(lines)


def check(
    dataset: Dataset | str,
    root: str | os.PathLike | None = None,
    *,
    questions: str | os.PathLike | None = None,
    answers: str | os.PathLike | None = None,
    videos: str | os.PathLike | None = None,
    limit: int | None = None,
    split: str = "test",
    probe: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> CheckReport:
    """Check a dataset before a run: files, id join, every video present and (``probe``) openable.

    ``dataset`` is a loaded :class:`Dataset` or a dataset name (then ``root`` and the other arguments
    are those of :func:`load_dataset`; the dataset is loaded leniently so that duplicate ids, questions
    without answers and malformed entries are all reported together instead of stopping at the first).
    Probing opens each video's container and stream header (``videosparse.video.probe_video``), it does
    not decode the video. ``progress(done, total)`` is called after each video.

    Never raises for data problems: a dataset that cannot be loaded at all gives a report with one
    fatal problem.
    """
    if isinstance(dataset, Dataset):
        ds = dataset
    else:
        try:
            ds = load_dataset(dataset, root if root is not None else ".", questions=questions, answers=answers,
                              videos=videos, limit=limit, split=split, strict=False)
        except DatasetError as e:
            fix = "see the message"
            msg = str(e)
            if "; " in msg:
                msg, fix = msg.rsplit("; ", 1)
            name = str(dataset).lower()
            return CheckReport(dataset=name, split=str(split), root=None if root is None else str(root),
                               limit=limit, problems=[Problem("not_loadable", msg, fix)], fatal=True)
    rep = CheckReport(dataset=ds.name, split=ds.split, root=str(ds.root), questions_file=str(ds.questions_path),
                      answers_file=str(ds.answers_path), video_dir=str(ds.video_dir),
                      video_files=ds.num_video_files, questions=len(ds.items), total=ds.total, limit=ds.limit,
                      problems=list(ds.problems))
    if not ds.items and not any(p.kind == "unanswered_questions" for p in rep.problems):
        rep.problems.append(Problem("empty", f"no usable question in {ds.questions_path}",
                                    "check that the question and answer files are the release's"))
    names = ds.videos()
    rep.videos = len(names)
    per_video: dict[str, int] = {}
    for it in ds.items:
        per_video[it.video_name] = per_video.get(it.video_name, 0) + 1
    probe_fn, probe_errors = None, (OSError,)
    if probe:
        from videosparse.video import VideoError, probe_video

        # check() reports its own progress: no decode bar
        probe_fn, probe_errors = functools.partial(probe_video, progress=False), (VideoError, OSError)
    for k, name in enumerate(names):
        path = ds.video_path(name)
        if path is None:
            rep.missing_videos.append(name)
            rep.missing_questions += per_video[name]
        elif probe_fn is not None:
            rep.probed += 1
            try:
                probe_fn(path)
            except probe_errors as e:
                reason = getattr(e, "reason", None) or str(e)
                rep.unreadable_videos.append((name, str(reason).splitlines()[0] if str(reason) else type(e).__name__))
                rep.unreadable_questions += per_video[name]
        if progress is not None:
            progress(k + 1, len(names))
    if rep.missing_videos:
        stems = ds.spec.names(rep.missing_videos[0])
        example = f"{stems[0]}{ds.spec.extensions[0]}"
        rep.problems.append(Problem(
            "missing_videos",
            f"{len(rep.missing_videos)} of {_n(rep.videos, 'video')} ({_n(rep.missing_questions, 'question')}) "
            f"{'is' if len(rep.missing_videos) == 1 else 'are'} not in {ds.video_dir}: {_show(rep.missing_videos)}",
            f"put the files in {ds.video_dir} named like {example} (extensions tried: "
            f"{' '.join(ds.spec.extensions)}) or pass --videos DIR; a run records these questions as "
            "errors, it does not skip them",
        ))
    if rep.unreadable_videos:
        shown = "; ".join(f"{n}: {r}" for n, r in rep.unreadable_videos[:SHOW])
        if len(rep.unreadable_videos) > SHOW:
            shown += f"; ... ({len(rep.unreadable_videos) - SHOW} more)"
        rep.problems.append(Problem(
            "unreadable_videos",
            f"{len(rep.unreadable_videos)} of {_n(rep.probed, 'probed video')} "
            f"({_n(rep.unreadable_questions, 'question')}) cannot be read: {shown}",
            "re-download these files (or re-encode them, e.g. ffmpeg -i in.avi -c:v libx264 out.mp4); a run "
            "records their questions as errors",
        ))
    return rep
