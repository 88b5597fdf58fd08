"""Write a JSON reference of the SHORT (8-frame) question-answering path's outputs.

Usage::

    python scripts/make_short_path_reference.py OUT.json

The script imports ``videosparse`` normally, so it records whatever checkout is on ``sys.path``
(e.g. ``PYTHONPATH=/path/to/other/checkout``). It only uses APIs that exist both before and after the
long-video work: ``VideoQA.from_pretrained``, ``ask``, ``ask_many``, ``set_sparsity`` and
``Answer.trace.stages``.

The committed fixture ``tests/data/short_path_reference.json`` was produced from commit a7c9942,
i.e. BEFORE the long-video path was added, with::

    git worktree add /tmp/oldtree a7c9942
    PYTHONPATH=/tmp/oldtree python scripts/make_short_path_reference.py tests/data/short_path_reference.json

``tests/test_short_path_unchanged.py`` recomputes the same records with the current code (through
``compute_reference`` below) and compares them with the fixture, so the short path is proven unchanged.

What is recorded, all with the embedded "testbed" model, the "video" preset as it was at a7c9942 (one stage
after layer 1; the preset has two stages since the seed-fidelity work), CPU, greedy decoding,
``max_new_tokens=4``, on ``videosparse.testbed.synthetic.make_sample(seed=77, index=i)`` for i < 6
(8-frame uint8 clips):

* ``single``: ``qa.ask(frames, question)`` per sample: text, counts, equivalent_tokens, new_tokens,
  visual_tokens, timestamps, frame_indices, and per trace stage its layer, kept ids and scores
  (rounded to 5 decimals, NaN -> None);
* ``batched``: ``qa.ask_many(all six, batch_size=3)``: texts and the kept ids of every stage;
* ``beams``: sample 0 with ``num_beams=2, num_return_sequences=2``: ``ans.sequences``;
* ``file``: sample 0's frames written with ``synthetic.write_video`` and asked about by path
  (8 uniform frames decoded): the same fields as ``single``;
* ``full``: after ``qa.set_sparsity(None)``, the texts of ``ask`` per sample (run last).
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile

SEED = 77
NUM_SAMPLES = 6
MAX_NEW_TOKENS = 4
BATCH_SIZE = 3
SCORE_DECIMALS = 5


def _scores(tensor) -> list:
    return [None if math.isnan(v) else round(float(v), SCORE_DECIMALS) for v in tensor.float().tolist()]


def stage_records(ans, with_scores: bool = True) -> list:
    out = []
    for st in (ans.trace.stages if ans.trace is not None else []):
        rec = {"layer": int(st.layer), "kept": st.kept[0].tolist()}
        if with_scores:
            rec["scores"] = _scores(st.scores[0])
        out.append(rec)
    return out


def answer_record(ans) -> dict:
    return {
        "text": ans.text,
        "counts": [int(c) for c in ans.counts],
        "equivalent_tokens": float(ans.equivalent_tokens),
        "new_tokens": int(ans.new_tokens),
        "visual_tokens": int(ans.visual_tokens),
        "timestamps": [float(t) for t in ans.timestamps],
        "frame_indices": [int(i) for i in ans.frame_indices],
        "stages": stage_records(ans),
    }


def compute_reference() -> dict:
    import videosparse
    from videosparse import SparseConfig, VideoQA
    from videosparse.testbed import synthetic

    samples = [synthetic.make_sample(seed=SEED, index=i) for i in range(NUM_SAMPLES)]
    # the "video" preset as it was at a7c9942: one stage after layer 1 (the preset has two stages since
    # the seed-fidelity work; the fixture pins the short path's mechanics, not the preset's design)
    one_stage = SparseConfig.preset("video", num_layers=4).replace(layers=(1,), stage_shape=None)
    qa = VideoQA.from_pretrained("testbed", sparsity=one_stage)
    ref: dict = {
        "inputs": {"model": "testbed", "sparsity": "video", "seed": SEED, "num_samples": NUM_SAMPLES,
                   "max_new_tokens": MAX_NEW_TOKENS, "batch_size": BATCH_SIZE,
                   "questions": [s.question for s in samples]},
        "sparsity": qa.sparsity.to_dict() if hasattr(qa.sparsity, "to_dict") else repr(qa.sparsity),
    }
    ref["single"] = [answer_record(qa.ask(s.frames, s.question, max_new_tokens=MAX_NEW_TOKENS)) for s in samples]
    batched = qa.ask_many([(s.frames, s.question) for s in samples], batch_size=BATCH_SIZE,
                          max_new_tokens=MAX_NEW_TOKENS)
    ref["batched"] = [{"text": a.text, "stages": stage_records(a, with_scores=False)} for a in batched]
    beam = qa.ask(samples[0].frames, samples[0].question, max_new_tokens=MAX_NEW_TOKENS, num_beams=2,
                  num_return_sequences=2)
    ref["beams"] = {"sequences": list(beam.sequences)}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "sample0.mp4")
        synthetic.write_video(samples[0].frames, path)
        ref["file"] = answer_record(qa.ask(path, samples[0].question, max_new_tokens=MAX_NEW_TOKENS))
    qa.set_sparsity(None)
    ref["full"] = [{"text": qa.ask(s.frames, s.question, max_new_tokens=MAX_NEW_TOKENS).text} for s in samples]
    qa.close()
    ref["source"] = _source(os.path.dirname(os.path.abspath(videosparse.__file__)))
    return ref


def _source(package_dir: str) -> dict:
    """The git commit of the checkout the package was imported from (informational)."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", package_dir, *args], capture_output=True, text=True,
                              timeout=10).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--", "."))
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"commit": commit, "package_modified": dirty} if commit else {}


def main(argv: list | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    import videosparse

    print(f"videosparse from {videosparse.__file__}", file=sys.stderr)
    ref = compute_reference()
    out = argv[0]
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as fh:
        json.dump(ref, fh, indent=1)
        fh.write("\n")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
