"""One trace format (docs/trace-format.md): the API (`RetentionTrace.to_dict` / `save_json`) and the heatmap
(`heatmap.write_json`) write the same versioned document; one reader (`RetentionTrace.from_dict` / `load_json`,
used by `heatmap.trace_from_json`) reads it and the unversioned files of earlier releases.

The fixtures in tests/data were written by the code before the format was versioned (commit 29a50f3), from
`batch_trace()` below (explicit values, no RNG):

* trace_v1_api.json              `batch_trace().save_json(...)` (both samples, 2-D records, pool, timestamps)
* trace_v1_heatmap.json          `heatmap.write_json(batch_trace(), ..., sample=1, timestamps=[0, nan, 1],
                                 meta=..., source=<fingerprint dict>)` (one sample, flat records, token table)
* trace_v0_heatmap_table_only.json  the same writer for sample 0 with "stages", "raters_text_positions",
                                 "pool" and "decoder_visual" removed: a heatmap JSON from before the stage
                                 records were saved (token table only)
* trace_v1_demo_retention.json   `videosparse demo` (test-bed model, seed 7): retention.json
"""

from __future__ import annotations

import errno
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from videosparse import heatmap
from videosparse.core.trace import TRACE_FORMAT, TRACE_VERSION, RetentionTrace, StageRecord

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
NAN = float("nan")
T, ROWS, COLS = 3, 2, 2
P = ROWS * COLS + 1          # CLS + 2x2 patches
NV = T * P                   # 15


def batch_trace():
    """Batch of 2: a pre-decoder pool (layer -1) and two stages with recycling, raters, redundancy flags."""
    pool_kept = torch.tensor([[0, 1, 2, 4, 5, 6, 8, 9, 11, 12, 13, 14],
                              [0, 2, 3, 4, 5, 7, 8, 9, 10, 11, 13, 14]])
    pool_scores = torch.tensor([[0.5, 1.25, -0.75, 0.1, 2.0, 0.3, 1.1, -1.5, 0.9, 1.7, 0.2, 0.6, 1.3, 0.05, 0.8],
                                [1.0, 0.2, 0.4, 0.6, 1.8, 1.1, -0.3, 0.7, 0.9, 1.2, 0.15, 0.35, -2.0, 0.45, 0.55]])
    pool_red = torch.zeros(2, NV, dtype=torch.bool)
    pool_red[0, [3, 7]] = True
    pool_red[1, [1, 6, 12]] = True
    pool = StageRecord(-1, pool_kept, torch.zeros(2, 12, dtype=torch.bool), pool_scores, None, None, pool_red)
    s0 = torch.full((2, NV), NAN)
    for b in range(2):
        ids = pool_kept[b]
        s0[b, ids] = torch.tensor([0.011, 0.42, 0.1, 0.333, 0.07, 0.9, 0.0125, 0.61, 0.2, 0.05, 0.77, 0.3])
    kept0 = torch.tensor([[1, 2, 5, 6, 9, 12], [0, 4, 5, 8, 9, 13]])
    merged0 = torch.tensor([[False, True, False, False, True, False], [False, False, True, False, False, False]])
    cl0 = torch.full((2, NV), -1)
    cl0[0, [0, 4]] = 1
    cl0[0, [8]] = 4
    cl0[1, [2, 3, 7]] = 2
    raters = torch.tensor([[True, False, True], [True, True, False]])
    red0 = torch.zeros(2, NV, dtype=torch.bool)
    red0[0, 9] = True
    st0 = StageRecord(1, kept0, merged0, s0, raters, cl0, red0)
    s1 = torch.full((2, NV), NAN)
    s1[0, kept0[0]] = torch.tensor([0.25, 0.5, 0.125, 0.875, 0.3, 0.6])
    s1[1, kept0[1]] = torch.tensor([0.9, 0.15, 0.45, 0.05, 0.7, 0.35])
    kept1 = torch.tensor([[2, 6, 12], [0, 5, 9]])
    merged1 = torch.tensor([[True, False, False], [False, True, False]])
    cl1 = torch.full((2, NV), -1)
    cl1[0, 1] = 0
    cl1[1, [4, 8]] = 1
    st1 = StageRecord(2, kept1, merged1, s1, raters, cl1, None)
    return RetentionTrace(T, P, True, (ROWS, COLS), 4, 2, [st0, st1], {"name": "fixture", "budget": 0.2},
                          torch.tensor([[20, 21, 22], [19, 20, 21]]), 12, pool, [0.0, 0.5, 1.0])


def fixture(name):
    return os.path.join(DATA, name)


def load(name):
    with open(fixture(name)) as f:
        return json.load(f)


def same_tensor(a, b, name):
    assert (a is None) == (b is None), name
    if a is None:
        return
    a, b = a.cpu(), b.cpu()
    assert a.shape == b.shape and a.dtype == b.dtype, (name, a.shape, b.shape, a.dtype, b.dtype)
    if a.dtype.is_floating_point:
        assert torch.equal(a.isnan(), b.isnan()), name
        assert torch.equal(a[~a.isnan()], b[~b.isnan()]), name  # float32 exact
    else:
        assert torch.equal(a, b), name


def same_record(a, b, where):
    assert (a is None) == (b is None), where
    if a is None:
        return
    assert a.layer == b.layer, where
    for name in ("kept", "merged", "scores", "raters", "clusters", "redundant"):
        same_tensor(getattr(a, name), getattr(b, name), f"{where}.{name}")


def same_trace(a, b, rtp=True, timestamps=True):
    assert (a.num_frames, a.tokens_per_frame, a.has_cls, tuple(a.grid), a.num_layers, a.batch_size) == \
           (b.num_frames, b.tokens_per_frame, b.has_cls, tuple(b.grid), b.num_layers, b.batch_size)
    assert a.counts == b.counts and a.equivalent_tokens == b.equivalent_tokens
    assert a.config == b.config and a.decoder_visual == b.decoder_visual
    assert len(a.stages) == len(b.stages)
    for i, (sa, sb) in enumerate(zip(a.stages, b.stages)):
        same_record(sa, sb, f"stage {i}")
    same_record(a.pool, b.pool, "pool")
    if rtp:
        same_tensor(a.raters_text_positions, b.raters_text_positions, "raters_text_positions")
    if timestamps:
        ta, tb = a.timestamps, b.timestamps
        assert (ta is None) == (tb is None)
        if ta is not None:
            assert [None if math.isnan(x) else x for x in ta] == [None if math.isnan(x) else x for x in tb]


# ---------------------------------------------------------------- files of earlier releases are still read

def test_reads_the_unversioned_api_file():
    doc = load("trace_v1_api.json")
    assert "format" not in doc and "version" not in doc  # written before the format was versioned
    back = RetentionTrace.load_json(fixture("trace_v1_api.json"))
    want = batch_trace()
    same_trace(want, back, rtp=False)  # to_dict did not write raters_text_positions then
    assert back.raters_text_positions is None
    for b in range(2):  # both samples are there, and each draws the same token table
        assert heatmap.token_table(back, sample=b) == heatmap.token_table(want, sample=b)


def test_reads_the_unversioned_heatmap_file():
    doc = load("trace_v1_heatmap.json")
    assert "format" not in doc and isinstance(doc["stages"][0]["kept"][0], int)  # flat per-sample records
    back, doc2 = heatmap.trace_from_json(fixture("trace_v1_heatmap.json"))
    assert doc2 == doc
    want = batch_trace().select(1)
    want.timestamps = [0.0, float("nan"), 1.0]
    same_trace(want, back)
    assert heatmap.token_table(back) == doc["tokens"]
    assert RetentionTrace.from_dict(doc).counts == want.counts  # the same reader, without the file


def test_reads_the_heatmap_file_without_stage_records():
    doc = load("trace_v0_heatmap_table_only.json")
    assert "stages" not in doc and "pool" not in doc
    back, _ = heatmap.trace_from_json(fixture("trace_v0_heatmap_table_only.json"))
    want = batch_trace().select(0)
    assert back.counts == want.counts and [s.layer for s in back.stages] == [1, 2]
    for sa, sb in zip(want.stages, back.stages):
        assert torch.equal(sa.kept, sb.kept) and torch.equal(sa.merged, sb.merged)
    assert torch.equal(back.pool.kept, want.pool.kept) and back.decoder_visual == 12  # from the pooled column
    assert heatmap.token_table(back) == doc["tokens"]


def test_reads_the_demo_retention_json():
    doc = load("trace_v1_demo_retention.json")
    back, _ = heatmap.trace_from_json(fixture("trace_v1_demo_retention.json"))
    assert back.counts == [60, 30] and back.num_visual == 296
    assert heatmap.token_table(back, timestamps=doc["timestamps"]) == doc["tokens"]
    assert heatmap.summary_text(back).startswith("296 visual tokens -> 60 after layer 1 -> 30 kept after layer 2")
    assert back.kept_per_frame()[0].tolist() == [0, 9, 10, 0, 8, 2, 0, 1]


def test_old_files_rewritten_are_version_2_and_draw_the_same(tmp_path):
    for name in ("trace_v1_heatmap.json", "trace_v0_heatmap_table_only.json", "trace_v1_demo_retention.json"):
        old = load(name)
        back, _ = heatmap.trace_from_json(fixture(name))
        path = heatmap.write_json(back, str(tmp_path / name), meta=old.get("meta"))
        new = json.load(open(path))
        assert (new["format"], new["version"]) == (TRACE_FORMAT, TRACE_VERSION)
        assert new["tokens"] == old["tokens"], name
        assert new["meta"] == old["meta"] and new["counts"] == old["counts"]
        again, _ = heatmap.trace_from_json(path)
        same_trace(back, again)


# ---------------------------------------------------------------- one document, two writers

def test_api_document_round_trips_exactly(tmp_path):
    trace = batch_trace()
    doc = trace.to_dict()
    assert (doc["format"], doc["version"], doc["batch_size"]) == (TRACE_FORMAT, TRACE_VERSION, 2)
    assert doc["stage_layers"] == [1, 2] and doc["counts"] == [6, 3]
    same_trace(trace, RetentionTrace.from_dict(json.loads(json.dumps(doc))))
    path = trace.save_json(str(tmp_path / "t.json"))
    assert [n for n in os.listdir(tmp_path) if ".tmp" in n] == []
    same_trace(trace, RetentionTrace.load_json(path))
    assert json.load(open(path)) == json.loads(json.dumps(doc))


def test_heatmap_document_is_the_api_document_plus_its_table(tmp_path):
    trace = batch_trace()
    ts = [0.0, 0.1 + 0.2, float("inf")]
    path = heatmap.write_json(trace, str(tmp_path / "h.json"), sample=1, timestamps=ts, meta={"question": "q"},
                              source={"name": "v.mp4", "size": 3})
    doc = json.load(open(path))
    one = trace.select(1)
    one.timestamps = ts
    api = one.to_dict()
    extras = {k: doc.pop(k) for k in ("meta", "sample", "tokens")}
    assert doc == json.loads(json.dumps(api))  # the same keys and values: one format
    assert extras["sample"] == 1 and extras["meta"] == {"question": "q", "source": {"name": "v.mp4", "size": 3}}
    assert doc["timestamps"] == [0.0, 0.3, None]
    back, _ = heatmap.trace_from_json(path)
    one.timestamps = [0.0, 0.3, float("nan")]
    same_trace(one, back)
    assert heatmap.token_table(back) == extras["tokens"]


def test_api_file_renders_through_the_heatmap_reader(tmp_path):
    trace = batch_trace()
    path = trace.save_json(str(tmp_path / "api.json"))
    back, doc = heatmap.trace_from_json(path)
    assert back.batch_size == 2 and "tokens" not in doc
    assert heatmap.token_table(back, sample=1) == heatmap.token_table(trace, sample=1)


def test_documents_are_strict_json():
    trace = batch_trace()
    trace.timestamps = [0.0, float("nan"), float("inf")]
    text = json.dumps(trace.to_dict(), allow_nan=False)  # NaN scores and bad timestamps are null
    assert json.loads(text)["timestamps"] == [0.0, None, None]


def test_float32_scores_are_written_short_and_read_exactly():
    trace = batch_trace()
    doc = trace.to_dict()
    assert doc["stages"][0]["scores"][0][0] == 0.011  # not 0.010999999940395355
    back = RetentionTrace.from_dict(doc)
    same_tensor(trace.stages[0].scores, back.stages[0].scores, "scores")


# ---------------------------------------------------------------- what the reader refuses

def test_newer_or_foreign_documents_are_refused():
    doc = batch_trace().to_dict()
    with pytest.raises(ValueError, match="newer videosparse"):
        RetentionTrace.from_dict(dict(doc, version=TRACE_VERSION + 1), where="x.json")
    with pytest.raises(ValueError, match="format 'other'"):
        RetentionTrace.from_dict(dict(doc, format="other"))
    with pytest.raises(ValueError, match="without a version"):
        RetentionTrace.from_dict({k: v for k, v in doc.items() if k != "version"})
    with pytest.raises(ValueError, match="not a trace document"):
        RetentionTrace.from_dict([1, 2])


@pytest.mark.parametrize("edit, match", [
    (lambda d: d["stages"][0]["scores"][1].pop(), "scores"),
    (lambda d: d["stages"][1]["kept"][0].__setitem__(0, 99), "out of range"),
    (lambda d: d.__setitem__("counts", [6, 2]), "document says"),
    (lambda d: d.__setitem__("batch_size", 3), "expected \\(3"),
    (lambda d: d["pool"]["merged"][0].append(False), "merged"),
    (lambda d: d.__setitem__("timestamps", [0.0]), "timestamps"),
    (lambda d: d.__setitem__("grid", [4]), "grid"),
])
def test_inconsistent_documents_are_refused(edit, match):
    doc = json.loads(json.dumps(batch_trace().to_dict()))
    edit(doc)
    with pytest.raises(ValueError, match=match):
        RetentionTrace.from_dict(doc, where="t.json")


def test_save_json_is_atomic(tmp_path, monkeypatch):
    from videosparse.fileio import OutputError

    path = batch_trace().save_json(str(tmp_path / "t.json"))
    before = open(path).read()

    def full(doc, f):
        f.write("{")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(json, "dump", full)
    with pytest.raises(OutputError) as err:
        batch_trace().save_json(path)
    assert str(tmp_path / "t.json") in str(err.value) and "\n" not in str(err.value)
    assert open(path).read() == before and [n for n in os.listdir(tmp_path) if ".tmp" in n] == []


def test_the_format_modules_do_not_import_torch():
    code = ("import sys, videosparse, videosparse.core.trace, videosparse.heatmap; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
