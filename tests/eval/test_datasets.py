"""video_eval.datasets: release layouts, the id join, name resolution, limits, every error, check()."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from tests.eval.fixtures import RELEASE_DIRS, make_fixture_dataset, write_clip
from video_eval.datasets import DATASETS, CheckReport, Dataset, DatasetError, Item, check, load_dataset

NAMES = ["msvd", "msrvtt", "activitynet", "tgif"]


def _rw(path, fn):
    data = json.loads(path.read_text())
    data = fn(data)
    path.write_text(json.dumps(data))
    return data


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    """One clean copy of every dataset (3 videos x 3 questions); tests copy before modifying."""
    base = tmp_path_factory.mktemp("fx")
    return {n: make_fixture_dataset(base, n, n_videos=3, questions_per_video=3, seed=7) for n in NAMES}


def _copy(fx, tmp_path):
    dst = tmp_path / fx["root"].name
    shutil.copytree(fx["root"], dst)
    out = dict(fx)
    out["root"] = dst
    out["questions"] = dst / fx["questions"].name
    out["answers"] = dst / fx["answers"].name
    out["video_dir"] = dst / fx["video_dir"].relative_to(fx["root"])
    return out


# ----------------------------------------------------------------------------- fixture layout
@pytest.mark.parametrize("name", NAMES)
def test_fixture_has_the_release_layout(fixtures, name):
    fx = fixtures[name]
    release, vsub = RELEASE_DIRS[name]
    assert fx["root"].name == DATASETS[name].release_dir == release
    assert fx["questions"] == fx["root"] / "test_q.json" and fx["answers"] == fx["root"] / "test_a.json"
    assert fx["video_dir"] == fx["root"] / vsub
    qs, ans = json.loads(fx["questions"].read_text()), json.loads(fx["answers"].read_text())
    assert isinstance(qs, list) and len(qs) == len(ans) == 9
    for q, a in zip(qs, ans):
        assert set(q) == {"video_name", "question", "question_id"}
        assert isinstance(q["question_id"], str) and q["question_id"] == f"v_{q['video_name']}_{q['question_id'].rsplit('_', 1)[1]}"
        assert not q["video_name"].startswith("v_")
        if name in ("activitynet", "tgif"):
            assert set(a) == {"answer", "type", "question_id"} and isinstance(a["type"], int)
        else:
            assert set(a) == {"answer", "question_id"}
    files = sorted(p.name for p in fx["video_dir"].iterdir())
    if name == "msvd":
        assert all(f.endswith(".avi") for f in files) and files[0].startswith("-")
    elif name == "msrvtt":
        assert all(f.startswith("video") and f.endswith(".mp4") for f in files)
    elif name == "activitynet":
        assert all(f.startswith("v_") for f in files)
        assert {os.path.splitext(f)[1] for f in files} == {".mp4", ".mkv", ".webm"}
    else:
        assert all(f.startswith("tumblr_") and f.endswith(".mp4") for f in files)
    # the test bed's vocabulary and answers; 8 frames of 48 x 48 in every file
    from videosparse.testbed.synthetic import vocabulary
    from videosparse.video import probe_video

    vocab = set(vocabulary())
    for it in fx["items"]:
        assert set(it["question"].split()) <= vocab and set(it["answer"].split()) <= vocab
    for p in fx["video_files"].values():
        info = probe_video(p)
        assert (info.num_frames, info.width, info.height) == (8, 48, 48), p


def test_fixture_missing_and_corrupt_and_gif(tmp_path):
    fx = make_fixture_dataset(tmp_path, "tgif", n_videos=4, questions_per_video=2, missing=1, corrupt=1, gif=True)
    assert fx["video_dir"] == fx["root"] / "videos"
    assert len(fx["missing"]) == 1 and len(fx["corrupt"]) == 1 and not set(fx["missing"]) & set(fx["corrupt"])
    assert not any(fx["video_dir"].glob(fx["missing"][0] + ".*"))
    bad = fx["video_files"][fx["corrupt"][0]]
    assert bad.suffix == ".gif" and bad.read_bytes()[:3] != b"GIF"
    good = [p for v, p in fx["video_files"].items() if v not in fx["corrupt"]]
    assert len(good) == 2 and all(p.read_bytes()[:6] == b"GIF89a" for p in good)
    # missing videos' questions are still in the question file
    qs = json.loads(fx["questions"].read_text())
    assert sum(q["video_name"] == fx["missing"][0] for q in qs) == 2


def test_webm_is_written_when_decord_is_loaded(tmp_path):
    """PyAV's VP9 encoder fails once decord is imported; the fixture then writes from a subprocess."""
    import numpy as np

    from videosparse.video import probe_video

    try:
        import decord  # noqa: F401
    except ImportError:
        pass
    frames = np.random.default_rng(0).integers(0, 255, (8, 48, 48, 3), dtype=np.uint8)
    p = write_clip(tmp_path / "v_x.webm", frames)
    info = probe_video(p)
    assert info.num_frames == 8 and not list(tmp_path.glob("*.npy"))


# ----------------------------------------------------------------------------- join and types
@pytest.mark.parametrize("name", ["msvd", "activitynet"])
def test_join_is_by_id_not_position(tmp_path, name):
    fx = make_fixture_dataset(tmp_path, name, n_videos=3, questions_per_video=3, seed=3, shuffle_answers=True)
    qids = [q["question_id"] for q in json.loads(fx["questions"].read_text())]
    aids = [a["question_id"] for a in json.loads(fx["answers"].read_text())]
    assert sorted(qids) == sorted(aids) and qids != aids  # really shuffled
    ds = load_dataset(name, fx["root"])
    assert [it.question_id for it in ds.items] == qids  # question-file order
    want = {it["question_id"]: it for it in fx["items"]}
    assert all(isinstance(it, Item) for it in ds.items)
    for i, it in enumerate(ds.items):
        w = want[it.question_id]
        assert (it.video_name, it.question, it.answer, it.type, it.index) == (
            w["video_name"], w["question"], w["answer"], w["type"], i)
    if name == "activitynet":
        assert all(it.type in {"2", "5", "6", "7"} for it in ds.items)
    else:
        assert all(it.type is None for it in ds.items)


def test_int_ids_numeric_answers_and_string_types(fixtures, tmp_path):
    fx = _copy(fixtures["msrvtt"], tmp_path)
    qs = json.loads(fx["questions"].read_text())
    ids = {q["question_id"]: 1000 + i for i, q in enumerate(qs)}

    def q_ints(rows):
        for r in rows:
            r["question_id"] = ids[r["question_id"]]  # int ids, like the original MSRVTT-QA release
            r["video_name"] = int(r["video_name"][5:])  # bare video number
        return rows

    def a_strs(rows):
        for k, r in enumerate(rows):
            r["question_id"] = str(ids[r["question_id"]])  # the same ids as strings
            r["type"] = "what" if k % 2 else 3
        rows[0]["answer"] = 2
        return rows

    _rw(fx["questions"], q_ints)
    _rw(fx["answers"], a_strs)
    ds = load_dataset("msrvtt", fx["root"])
    assert [it.question_id for it in ds.items] == [str(1000 + i) for i in range(len(qs))]
    assert ds.items[0].answer == "2" and ds.items[0].type == "3" and ds.items[1].type == "what"
    assert all(ds.video_path(it) is not None for it in ds.items)  # 7010 -> video7010.mp4
    assert ds.video_path(ds.items[0]).name == f"video{ds.items[0].video_name}.mp4"


# ----------------------------------------------------------------------------- name resolution
@pytest.mark.parametrize("name", NAMES)
def test_every_video_resolves_to_its_file(fixtures, name):
    fx = fixtures[name]
    ds = load_dataset(name, fx["root"])
    assert ds.video_dir == fx["video_dir"].resolve()
    for it in ds.items:
        assert ds.video_path(it) == fx["video_files"][it.video_name].resolve()
        assert ds.video_path(it.video_name) == ds.video_path(it)
    assert ds.video_path("no_such_video") is None
    assert ds.num_video_files == 3


def test_activitynet_v_prefix_and_extensions(fixtures, tmp_path):
    fx = _copy(fixtures["activitynet"], tmp_path)
    files = {p.suffix for p in fx["video_dir"].iterdir()}
    assert files == {".mp4", ".mkv", ".webm"}
    ds = load_dataset("activitynet", fx["root"])
    got = {ds.video_path(it).suffix for it in ds.items}
    assert got == {".mp4", ".mkv", ".webm"}
    # question file already carrying the prefix
    _rw(fx["questions"], lambda rows: [dict(r, video_name="v_" + r["video_name"]) for r in rows])
    ds = load_dataset("activitynet", fx["root"])
    assert all(ds.video_path(it) is not None and ds.video_path(it).name.startswith("v_") for it in ds.items)
    # files without the prefix (e.g. renamed downloads), question names with and without it
    for p in list(fx["video_dir"].iterdir()):
        p.rename(p.with_name(p.name[2:]))
    ds = load_dataset("activitynet", fx["root"])
    assert all(ds.video_path(it) is not None and not ds.video_path(it).name.startswith("v_") for it in ds.items)
    _rw(fx["questions"], lambda rows: [dict(r, video_name=r["video_name"][2:]) for r in rows])
    ds = load_dataset("activitynet", fx["root"])
    assert all(ds.video_path(it) is not None for it in ds.items)


def test_extension_order_case_and_explicit_names(fixtures, tmp_path):
    fx = _copy(fixtures["msvd"], tmp_path)
    ds = load_dataset("msvd", fx["root"])
    v0, v1 = ds.videos()[:2]
    avi = fx["video_dir"] / f"{v0}.avi"
    shutil.copy(avi, fx["video_dir"] / f"{v0}.mp4")  # both: the release's .avi wins
    (fx["video_dir"] / f"{v1}.avi").rename(fx["video_dir"] / f"{v1}.AVI")  # upper-case extension
    (fx["video_dir"] / "subdir").mkdir()
    ds = load_dataset("msvd", fx["root"])
    assert ds.video_path(v0).name == f"{v0}.avi"
    assert ds.video_path(v1).name == f"{v1}.AVI"
    # a question file naming the file with its extension
    assert ds.video_path(f"{v0}.mp4").name == f"{v0}.mp4"
    # MSRVTT prefers .mp4, ActivityNet .mp4 > .mkv > .webm: the registry order, not the alphabet
    fx = _copy(fixtures["msrvtt"], tmp_path / "r")
    v = load_dataset("msrvtt", fx["root"]).videos()[0]
    shutil.copy(fx["video_dir"] / f"{v}.mp4", fx["video_dir"] / f"{v}.avi")
    assert load_dataset("msrvtt", fx["root"]).video_path(v).suffix == ".mp4"
    fx = _copy(fixtures["activitynet"], tmp_path / "a")
    webm = next(fx["video_dir"].glob("*.webm"))
    shutil.copy(webm, webm.with_suffix(".mkv"))
    assert load_dataset("activitynet", fx["root"]).video_path(webm.stem).suffix == ".mkv"


def test_lookups_use_one_directory_listing(fixtures, monkeypatch):
    fx = fixtures["msrvtt"]
    calls = {"scandir": 0}
    real_scandir = os.scandir

    def counting_scandir(path):
        calls["scandir"] += 1
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", counting_scandir)
    ds = load_dataset("msrvtt", fx["root"])
    assert calls["scandir"] == 1

    def no_stat(*a, **k):
        raise AssertionError("video lookup touched the file system")

    monkeypatch.setattr(os, "stat", no_stat)
    monkeypatch.setattr(os, "scandir", no_stat)
    for _ in range(3):
        for it in ds.items:
            assert ds.video_path(it) is not None
    assert ds.video_path("video1") is None


# ----------------------------------------------------------------------------- roots, files, limit
def test_root_may_be_the_parent_folder_and_files_may_be_explicit(fixtures, tmp_path):
    fx = fixtures["tgif"]
    parent = tmp_path / "eval" / "GPT_Zero_Shot_QA"
    shutil.copytree(fx["root"], parent / fx["root"].name)
    for root in (parent, tmp_path / "eval", tmp_path):
        ds = load_dataset("tgif", root)
        assert ds.root == (parent / fx["root"].name).resolve() and len(ds) == 9
    # explicit files (relative to the root) and video dir; a "val" split name
    d = parent / fx["root"].name
    shutil.copy(d / "test_q.json", d / "val_q.json")
    shutil.copy(d / "test_a.json", d / "val_a.json")
    ds = load_dataset("tgif", d, split="val")
    assert ds.split == "val" and ds.questions_path.name == "val_q.json"
    ds = load_dataset("tgif", d, questions="val_q.json", answers=d / "test_a.json", videos="mp4")
    assert ds.questions_path == (d / "val_q.json").resolve() and len(ds) == 9
    assert load_dataset("TGIF-QA", d).name == "tgif"


def test_limit_is_the_first_n_questions(fixtures):
    fx = fixtures["activitynet"]
    full = load_dataset("activitynet", fx["root"])
    assert len(full) == full.total == 9 and full.limit is None
    ds = load_dataset("activitynet", fx["root"], limit=4)
    assert len(ds) == 4 and ds.total == 9 and ds.limit == 4
    assert [it.question_id for it in ds.items] == [it["question_id"] for it in fx["items"][:4]]
    assert [it.index for it in ds.items] == [0, 1, 2, 3]
    assert ds.videos() == list(dict.fromkeys(it["video_name"] for it in fx["items"][:4]))
    d = ds.to_dict()
    assert d["size"] == 4 and d["total"] == 9 and d["limit"] == 4 and d["name"] == "activitynet"
    assert d["split"] == "test" and d["questions"].endswith("test_q.json") and d["answers"].endswith("test_a.json")
    assert d["root"] == str(fx["root"].resolve())
    json.dumps(d)
    assert len(load_dataset("activitynet", fx["root"], limit=100)) == 9
    for bad in (0, -1, True, 2.5, "3"):
        with pytest.raises(DatasetError, match="limit must be a positive integer"):
            load_dataset("activitynet", fx["root"], limit=bad)


# ----------------------------------------------------------------------------- errors
def _err(fn, *words):
    with pytest.raises(DatasetError) as e:
        fn()
    msg = str(e.value)
    for w in words:
        assert w in msg, (w, msg)
    return msg


def test_errors_for_names_paths_and_directories(fixtures, tmp_path):
    fx = _copy(fixtures["msvd"], tmp_path)
    root = fx["root"]
    _err(lambda: load_dataset("nextqa", root), "unknown dataset 'nextqa'", "msvd, msrvtt, activitynet, tgif")
    _err(lambda: load_dataset("msvd", tmp_path / "nope"), "does not exist", str(tmp_path / "nope"))
    _err(lambda: load_dataset("msvd", fx["questions"]), "is a file, not a directory")
    _err(lambda: load_dataset("msvd", root, questions="missing_q.json"), "question file not found",
         "missing_q.json", str(root / "missing_q.json"), "--questions")
    _err(lambda: load_dataset("msvd", root, answers=tmp_path / "a.json"), "answer file not found", "a.json")
    _err(lambda: load_dataset("msvd", root, split="val"), "question file not found", "val_q.json")
    fx["answers"].unlink()
    _err(lambda: load_dataset("msvd", root), "answer file not found", "test_a.json", "--answers")
    shutil.copy(fixtures["msvd"]["answers"], fx["answers"])
    _err(lambda: load_dataset("msvd", root, videos="clips"), "video directory not found", "clips", "--videos")
    shutil.rmtree(fx["video_dir"])
    _err(lambda: load_dataset("msvd", root), "no video directory", str(root / "videos"), str(root / "YouTubeClips"))


def test_errors_for_malformed_files(fixtures, tmp_path):
    fx = _copy(fixtures["msrvtt"], tmp_path)
    root, q, a = fx["root"], fx["questions"], fx["answers"]
    good_q = q.read_text()
    q.write_text('[\n  {"video_name": "video7010",\n   "question_id": "x" "question": "q"}\n]')
    _err(lambda: load_dataset("msrvtt", root), "invalid JSON", "line 3, column", str(q))
    q.write_text('{"video_name": "video7010", "question_id": 1, "question": "q"}\n'
                 '{"video_name": "video7010", "question_id": 2, "question": "q"}\n')
    _err(lambda: load_dataset("msrvtt", root), "line 2, column 1", "JSON Lines")
    q.write_text('{"questions": []}')
    _err(lambda: load_dataset("msrvtt", root), "expected a JSON list", "dict")
    q.write_text("[]")
    _err(lambda: load_dataset("msrvtt", root), "holds no questions", "empty split")
    q.write_bytes(b"\xff\xfe[]")
    _err(lambda: load_dataset("msrvtt", root), "not UTF-8")
    rows = json.loads(good_q)
    del rows[2]["video_name"]
    rows[4]["question_id"] = 1.5
    rows[5] = "not an object"
    q.write_text(json.dumps(rows))
    msg = _err(lambda: load_dataset("msrvtt", root), str(q), "3 bad entries", "entry 2 has no 'video_name' key",
               "entry 4: 'question_id' must be a string or an integer", "entry 5 is a JSON str")
    assert "video_name" in msg
    q.write_text(good_q)
    _rw(a, lambda r: [r[0], {k: v for k, v in r[1].items() if k != "answer"}] + r[2:])
    _err(lambda: load_dataset("msrvtt", root), str(a), "entry 1 has no 'answer' key")


def test_errors_for_duplicates_and_unjoined_ids(fixtures, tmp_path):
    fx = _copy(fixtures["msvd"], tmp_path)
    root, q, a = fx["root"], fx["questions"], fx["answers"]
    good_q, good_a = q.read_text(), a.read_text()
    # 12 duplicated ids: the message names 10 of them and the count
    rows = json.loads(good_q)
    extra = [dict(r, question_id=f"d{i}") for i, r in enumerate(rows[:6] * 2)]
    extra += [dict(r, question_id=f"d{i}") for i, r in enumerate(rows[:6] * 2)]
    q.write_text(json.dumps(rows + extra))
    msg = _err(lambda: load_dataset("msvd", root), "12 duplicate question_id values", "'d0'", "(2 more)")
    assert msg.count("'d") == 10
    # int 3 and "3" are the same id
    q.write_text(json.dumps([dict(rows[0], question_id=3), dict(rows[1], question_id="3")]))
    _err(lambda: load_dataset("msvd", root), "1 duplicate question_id value", "'3'")
    q.write_text(good_q)
    _rw(a, lambda r: r + [r[0]])
    _err(lambda: load_dataset("msvd", root), "answer file", "1 duplicate question_id value", repr(rows[0]["question_id"]))
    a.write_text(good_a)
    # questions without answers, answers without questions: counts and ids on both sides
    _rw(a, lambda r: r[2:] + [{"answer": "one", "question_id": "ghost_1"}])
    _err(lambda: load_dataset("msvd", root), "2 of 9 questions", "have no answer", repr(rows[0]["question_id"]),
         repr(rows[1]["question_id"]), "1 answer matches no question", "'ghost_1'", "same release and split")
    # extra answers alone are fine (a subset question file)
    a.write_text(good_a)
    _rw(a, lambda r: r + [{"answer": "one", "question_id": "ghost_2"}])
    assert len(load_dataset("msvd", root)) == 9


# ----------------------------------------------------------------------------- check
def test_check_reports_every_problem_at_once(tmp_path):
    fx = make_fixture_dataset(tmp_path, "activitynet", n_videos=5, questions_per_video=2, seed=5, missing=1, corrupt=1)
    q, a = fx["questions"], fx["answers"]
    rows = json.loads(q.read_text())
    dup_id = rows[0]["question_id"]
    rows.append(dict(rows[1], question_id=dup_id))  # duplicate question id
    rows.append({"video_name": fx["videos"][0], "question": "where is the red object", "question_id": "no_answer"})
    rows.append({"video_name": fx["videos"][0], "question_id": "broken"})  # no "question"
    q.write_text(json.dumps(rows))
    _rw(a, lambda r: r + [{"answer": "one", "type": 7, "question_id": "orphan"}])
    with pytest.raises(DatasetError):
        load_dataset("activitynet", fx["root"])  # strict loading stops at the first problem

    seen = []
    rep = check("activitynet", fx["root"], progress=lambda done, total: seen.append((done, total)))
    assert isinstance(rep, CheckReport) and not rep.ok and not rep.fatal
    kinds = {p.kind for p in rep.problems}
    assert kinds == {"invalid_question_entries", "duplicate_question_ids", "unanswered_questions",
                     "missing_videos", "unreadable_videos"}, kinds
    assert rep.questions == 10 and rep.videos == 5  # duplicates and unanswered are left out
    assert rep.missing_videos == fx["missing"] and rep.missing_questions == 2
    assert [n for n, _ in rep.unreadable_videos] == fx["corrupt"] and rep.unreadable_questions == 2
    assert rep.probed == 4 and seen == [(i, 5) for i in range(1, 6)]
    text = rep.text()
    for w in (dup_id, "'no_answer'", "'orphan'", "entry 12", fx["missing"][0], fx["corrupt"][0], "NOT OK"):
        assert w in text, (w, text)
    assert text.count("  fix: ") == len(rep.problems)
    d = rep.to_dict()
    assert d["ok"] is False and len(d["problems"]) == 5 and d["missing_videos"] == fx["missing"]
    json.dumps(d)

    quick = check("activitynet", fx["root"], probe=False)
    assert quick.probed == 0 and not quick.unreadable_videos and quick.missing_videos == fx["missing"]
    assert "not opened" in quick.text()


def test_check_of_good_datasets_and_unloadable_ones(fixtures, tmp_path):
    for name in NAMES:  # probing is a header read: the whole fixture set checks quickly
        ds = load_dataset(name, fixtures[name]["root"])
        rep = check(ds)
        assert rep.ok and rep.probed == rep.videos == 3 and rep.questions == 9 and not rep.problems, rep.text()
        assert rep.text().splitlines()[-1].startswith("OK")
    rep = check("msvd", fixtures["msvd"]["root"], limit=2)
    assert rep.ok and rep.questions == 2 and rep.total == 9 and rep.limit == 2
    # extra answers: a warning, still ok
    fx = _copy(fixtures["tgif"], tmp_path)
    _rw(fx["answers"], lambda r: r + [{"answer": "one", "type": 1, "question_id": "extra"}])
    rep = check("tgif", fx["root"])
    assert rep.ok and [p.kind for p in rep.problems] == ["unmatched_answers"] and "WARNING" in rep.text()
    # nothing to load: a report, not an exception
    for args, words in ((("msvd", tmp_path / "none"), "does not exist"), (("imagenet", tmp_path), "unknown dataset")):
        rep = check(*args)
        assert not rep.ok and rep.fatal and rep.problems[0].kind == "not_loadable"
        assert words in rep.text() and "fix:" in rep.text()
        json.dumps(rep.to_dict())
    assert isinstance(load_dataset("msvd", fixtures["msvd"]["root"]), Dataset)


def test_check_counts_only_videos_that_opened_and_pluralises(tmp_path):
    fx = make_fixture_dataset(tmp_path, "msvd", n_videos=3, questions_per_video=1, seed=9, missing=1, corrupt=1)
    rep = check("msvd", fx["root"])
    assert (rep.probed, rep.opened, len(rep.unreadable_videos)) == (2, 1, 1)
    assert rep.to_dict()["opened"] == 1
    text = rep.text()
    assert "2 of 3 videos found, 1 opened, 1 unreadable" in text, text
    assert "1 of 3 videos (1 question) is not in" in text and "1 of 2 probed videos (1 question) cannot" in text
    assert "3 questions (no limit) on 3 videos" in text
    assert "1 questions" not in text and " 1 videos" not in text
