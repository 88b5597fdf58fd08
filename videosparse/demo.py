"""`videosparse demo`: the whole pipeline offline on the embedded test-bed model.

Generates a synthetic clip (seeded), writes it as a real video file, loads the shipped test-bed
checkpoint through the same code path as a real one (`VideoQA.from_pretrained(<dir>)`), asks a
question whose answer is known, prints kept tokens per frame and writes the heatmap files.
"""

from __future__ import annotations

import numbers
import os
from typing import Any, Callable


def run_demo(out_dir: str = "videosparse-demo", seed: int = 7, preset: str = "video", budget: Any = None,
             say: Callable = lambda msg: None, index: int = 0, progress: bool = True) -> dict:
    """Run the demo; ``preset`` "none" (or "full") answers with the full model (no trace, no heatmap: the
    result's "heatmap" is None). ``budget`` None = the preset's default. ``seed`` >= 0 (ValueError otherwise).
    ``progress``: transformers' weight-loading bar (`VideoQA.from_pretrained`)."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if preset in ("none", "full") and budget is not None:
        raise ValueError(f"a budget ({budget!r}) was given with preset {preset!r}: the full model prunes nothing")
    from videosparse.testbed import synthetic as syn

    from videosparse.testbed import path as testbed_path
    from videosparse.heatmap import write_all
    from videosparse.pipeline import VideoQA

    path = testbed_path()
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"the embedded test-bed model is missing at {path}")
    os.makedirs(out_dir, exist_ok=True)
    sample = syn.make_sample(seed, index)
    video = os.path.join(out_dir, "demo_clip.mp4")
    say(f"writing a synthetic clip to {video} ...")
    syn.write_video(sample.frames, video)
    say("loading the embedded test-bed model ...")
    qa = VideoQA.from_pretrained(path, sparsity=None, num_frames=sample.frames.shape[0], progress=progress)
    from videosparse import SparseConfig

    if preset not in ("none", "full"):
        qa.set_sparsity(SparseConfig.preset(preset, budget=budget,
                                            num_layers=qa.frontend.num_layers(qa.model.config)))
    say("answering ...")
    ans = qa.ask(video, sample.question, max_new_tokens=4)
    heat = None
    if ans.trace is not None:
        say(f"writing heatmaps to {out_dir} ...")
        heat = write_all(ans.frames, ans.trace, out_dir, spec=qa.spec, timestamps=ans.timestamps,
                         title=f"Q: {ans.question}  A: {ans.text}  (expected: {sample.answer})",
                         meta={"question": ans.question, "answer": ans.text, "expected": sample.answer,
                               "video": video, "frame_indices": ans.frame_indices,
                               "target_cells": [list(t) for t in sample.target],
                               "preprocessing": qa.spec.to_dict()},
                         source=video)
    qa.close()
    desc = f"seed {seed}, {sample.frames.shape[0]} frames of {sample.frames.shape[2]}x{sample.frames.shape[1]} px, " \
           f"question type '{sample.qtype}'"
    return {"answer": ans, "expected": sample.answer, "video": video, "heatmap": heat, "description": desc,
            "sample": sample}
