"""Runner pieces that need no model: config parsing, the work cut, prediction files, merge."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from video_eval.runner import (
    PredictionWriter,
    RunError,
    _open_spec,
    batches_of,
    make_units,
    merge,
    parse_configs,
    read_predictions,
    shard,
)


@dataclass(frozen=True)
class It:
    question_id: str
    video_name: str
    index: int


def _items(videos):
    out = []
    for v, n in videos:
        for _ in range(n):
            out.append(It(str(len(out)), v, len(out)))
    return out


def test_parse_configs_normalises_and_validates():
    cs = parse_configs("full, video@.1,fastv@0.1,sparsevlm-v1@rank,random@30,video")
    assert [c.label for c in cs] == ["full", "video@0.1", "fastv@0.1", "sparsevlm-v1@rank", "random@30", "video"]
    assert cs[0].preset is None and cs[1].budget == 0.1 and cs[4].budget == 30 and cs[5].budget is None
    for bad, words in [("nope@0.1", "unknown preset"), ("video@0", "> 0"), ("video@1.5", "(0, 1]"),
                       ("video@abc", "not a token count"), ("full@0.1", "no budget"), ("video,video", "twice"),
                       ("video,,full", "comma-separated"), ("video@0.1,video@.1", "twice")]:
        with pytest.raises(RunError, match=".") as e:
            parse_configs(bad)
        assert words in str(e.value), (bad, str(e.value))


def test_units_are_video_grouped_and_independent_of_world_size():
    # questions of one video need not be contiguous in the question file
    items = _items([("a", 3), ("b", 1), ("c", 1), ("d", 5), ("e", 1)])
    items.append(It("11", "a", 11))  # a late question about video a
    units = make_units(items, batch_size=4)
    assert [u.videos for u in units] == [["a"], ["b", "c", "d"], ["e"]]
    assert [it.question_id for it in units[0].items] == ["0", "1", "2", "11"]
    assert all(len({it.video_name for it in u.items} & {v for o in units if o is not u for v in o.videos}) == 0
               for u in units)
    # every question in exactly one unit, units dealt round-robin, union over ranks = all
    for world in (1, 2, 3):
        got = sorted(it.question_id for r in range(world) for u in shard(units, r, world) for it in u.items)
        assert got == sorted(it.question_id for it in items)
    # the batches of a unit never depend on the rank count
    assert [[i.question_id for i in b] for b in batches_of(units[1], 4)] == [["3", "4", "5", "6"], ["7", "8", "9"]]


def test_torn_last_line_dropped_and_repaired(tmp_path, caplog):
    p = tmp_path / "predictions.rank0.jsonl"
    w = PredictionWriter(p)
    w.write([{"question_id": "1", "config": "full", "index": 0}, {"question_id": "2", "config": "full", "index": 1}])
    w.close()
    good = p.read_bytes()
    with open(p, "ab") as f:
        f.write(b'{"question_id": "3", "conf')  # a kill in the middle of a write
    recs = read_predictions(tmp_path)  # another rank reading: ignored, file untouched
    assert [r["question_id"] for r in recs] == ["1", "2"]
    assert p.read_bytes() != good
    recs = read_predictions(tmp_path, repair_rank=0)  # the owner resuming: cut
    assert [r["question_id"] for r in recs] == ["1", "2"]
    assert p.read_bytes() == good
    assert "torn last line" in caplog.text
    # a complete JSON line without its newline is torn too (the newline is written last)
    with open(p, "ab") as f:
        f.write(b'{"question_id": "3", "config": "full"}')
    assert len(read_predictions(tmp_path, repair_rank=0)) == 2 and p.read_bytes() == good


def test_bad_line_in_the_middle_is_an_error(tmp_path):
    p = tmp_path / "predictions.rank0.jsonl"
    p.write_text('{"question_id": "1", "config": "full"}\nnot json\n{"question_id": "2", "config": "full"}\n')
    with pytest.raises(RunError, match=r"predictions.rank0.jsonl:2: not a JSON line"):
        read_predictions(tmp_path)


def _spec(**kw):
    s = {"schema": 1, "dataset": {"name": "msvd", "split": "test", "limit": None, "size": 2, "total": 2},
         "model": "m", "configs": ["full"], "num_frames": 8, "frame_strategy": "uniform", "max_new_tokens": 8,
         "prompt_template": "t", "dtype": None, "batch_size": 4, "seed": 0, "created": "now"}
    s.update(kw)
    return s


def test_resume_refuses_a_different_command_and_unions_configs(tmp_path):
    _open_spec(tmp_path, _spec())
    spec = _open_spec(tmp_path, _spec(configs=["video@0.1", "full"]))
    assert spec["configs"] == ["full", "video@0.1"]
    with pytest.raises(RunError, match="different num_frames"):
        _open_spec(tmp_path, _spec(num_frames=16))
    with pytest.raises(RunError, match="different dataset"):
        _open_spec(tmp_path, _spec(dataset={"name": "msvd", "split": "test", "limit": 5, "size": 2, "total": 2}))


def test_merge_orders_canonically_and_resolves_retried_errors(tmp_path):
    _open_spec(tmp_path, _spec(configs=["full", "video"]))
    r = lambda q, i, c, err=None: {"index": i, "question_id": q, "config": c, "error": err}  # noqa: E731
    PredictionWriter(tmp_path / "predictions.rank1.jsonl").write([r("b", 1, "video"), r("b", 1, "full")])
    w = PredictionWriter(tmp_path / "predictions.rank0.jsonl")
    w.write([r("a", 0, "video", "VideoError: x"), r("a", 0, "full")])
    s = merge(tmp_path, partial=False)
    assert s.complete and s.errors == 1
    # a retried pair: the answered record wins whatever the file order
    w.write([r("a", 0, "video")])
    s = merge(tmp_path, partial=False)
    assert s.duplicates == 1 and s.errors == 0
    lines = [json.loads(x) for x in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert [(x["question_id"], x["config"]) for x in lines] == [("a", "full"), ("a", "video"), ("b", "full"),
                                                                ("b", "video")]


def test_incomplete_merge_reports_missing(tmp_path):
    _open_spec(tmp_path, _spec(configs=["full", "video"]))
    PredictionWriter(tmp_path / "predictions.rank0.jsonl").write([{"index": 0, "question_id": "a", "config": "full"}])
    s = merge(tmp_path, partial=False)
    assert not s.complete and s.missing == 3 and s.path is None
    assert not (tmp_path / "predictions.jsonl").exists()
    s = merge(tmp_path, partial=True)
    assert s.path and s.records == 1


# ----------------------------------------------------------------------------- versions on resume
def test_resume_on_other_versions_is_refused_unless_allowed(tmp_path, caplog):
    v1 = {"python": "3.12.0", "videosparse": "0.3.0", "torch": "2.13.0", "transformers": "5.23.0"}
    _open_spec(tmp_path, _spec(versions=v1))
    # another python or accelerate is fine; another transformers is not
    assert _open_spec(tmp_path, _spec(versions=dict(v1, python="3.12.1")))["versions"] == v1
    v2 = dict(v1, transformers="5.30.0")
    before = (tmp_path / "run.json").read_text()
    with pytest.raises(RunError) as e:
        _open_spec(tmp_path, _spec(versions=v2))
    msg = str(e.value)
    assert "\n" not in msg and "transformers 5.23.0" in msg and "transformers 5.30.0" in msg
    assert "--allow-version-change" in msg
    assert (tmp_path / "run.json").read_text() == before  # nothing recorded
    spec = _open_spec(tmp_path, _spec(versions=v2), allow_version_change=True)
    assert spec["versions"] == v1  # the run's first versions stay
    assert [c["versions"]["transformers"] for c in spec["version_changes"]] == ["5.30.0"]
    assert "allow-version-change" in caplog.text
    # once continued on v2, resuming on v2 needs no flag; going back to v1 is another change
    assert len(_open_spec(tmp_path, _spec(versions=v2))["version_changes"]) == 1
    with pytest.raises(RunError, match="transformers 5.30.0"):
        _open_spec(tmp_path, _spec(versions=v1))


# ----------------------------------------------------------------------------- one process per rank
def test_second_process_on_the_same_rank_is_refused_naming_the_holder(tmp_path):
    import socket
    import subprocess
    import sys

    from video_eval.runner import rank_lock

    code = ("import sys, pathlib\nfrom video_eval.runner import rank_lock\n"
            "with rank_lock(pathlib.Path(sys.argv[1]), 0):\n    print('locked', flush=True)\n    sys.stdin.read()\n")
    repo = str(Path(__file__).resolve().parents[2])
    p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True, cwd=repo)
    try:
        assert p.stdout.readline().strip() == "locked"
        with pytest.raises(RunError) as e:
            with rank_lock(tmp_path, 0):
                pass
        msg = str(e.value)
        assert f"pid {p.pid}" in msg and socket.gethostname() in msg and "rank 0" in msg and "\n" not in msg
        with rank_lock(tmp_path, 1):  # another rank of the same run is free
            pass
    finally:
        p.stdin.close()
        p.wait(timeout=60)
    with rank_lock(tmp_path, 0):  # released when the holder ends
        pass


# ----------------------------------------------------------------------------- output files
@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_atomic_writes_respect_the_umask_and_keep_a_replaced_files_mode(tmp_path, umask, mode):
    import os

    from videosparse.fileio import atomic_write_text

    old = os.umask(umask)
    try:
        p = tmp_path / "results.x.json"
        atomic_write_text(p, "{}")
        assert p.stat().st_mode & 0o777 == mode
        os.chmod(p, 0o600)
        atomic_write_text(p, "{}\n")
        assert p.stat().st_mode & 0o777 == 0o600 and p.read_text() == "{}\n"
        s = merge_after_spec(tmp_path)
        assert Path(s.path).stat().st_mode & 0o777 == mode
        assert (tmp_path / "run.json").stat().st_mode & 0o777 == mode
    finally:
        os.umask(old)


def merge_after_spec(run_dir):
    _open_spec(run_dir, _spec(configs=["full"], dataset={"name": "msvd", "split": "test", "limit": None, "size": 1,
                                                          "total": 1}))
    PredictionWriter(run_dir / "predictions.rank0.jsonl").write([{"index": 0, "question_id": "a", "config": "full"}])
    return merge(run_dir, partial=False)


def test_write_errors_are_one_line_naming_the_path(tmp_path):
    from videosparse.fileio import OutputError, atomic_write_text

    # a directory where the file should be: the final path is named, never the temporary file
    (tmp_path / "results.offline.json").mkdir()
    with pytest.raises(OutputError) as e:
        atomic_write_text(tmp_path / "results.offline.json", "{}")
    msg = str(e.value)
    assert msg.startswith(f"cannot write {tmp_path / 'results.offline.json'}: ") and "\n" not in msg
    assert ".tmp" not in msg and [p.name for p in tmp_path.iterdir()] == ["results.offline.json"]
    # a full disk (/dev/full answers every write with ENOSPC)
    w = PredictionWriter(Path("/dev/full"))
    with pytest.raises(OutputError) as e:
        w.write([{"question_id": "1", "config": "full"}])
    w.close()
    msg = str(e.value)
    assert "/dev/full" in msg and "No space left on device" in msg and "re-run the same command" in msg
    assert "\n" not in msg and isinstance(e.value, OSError)
