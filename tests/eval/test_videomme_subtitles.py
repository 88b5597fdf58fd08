"""Video-MME "with subtitles": the prompt holds the subtitles shown at the frames the model sees (cues active at
the sampled frames' times, in time order, each once), as the benchmark's protocol pairs subtitles with frames."""

from __future__ import annotations

import json

from tests.eval.mc_fixtures import make_videomme
from video_eval.benchmarks import load_mc
from video_eval.cli import main


def test_cues_of_the_sampled_frames(tmp_path):
    fx = make_videomme(tmp_path / "vm", n_videos=1, questions_per_video=1, seed=3)
    ds = load_mc("videomme", fx["root"], subtitles=True)
    it = ds.items[0]
    assert ds.cues[it.video_name] == [(0.0, 1.0, "clip 0 starts"), (1.0, 2.0, "and ends")]
    head = "This video's subtitles are listed below: \n"
    assert ds.frame_prompt(it, [0.0, 0.5]).startswith(head + "clip 0 starts\nSelect the best answer")
    assert ds.frame_prompt(it, [0.5, 1.0, 1.5]).startswith(head + "clip 0 starts\nand ends\nSelect")
    assert ds.frame_prompt(it, [1.999]).startswith(head + "and ends\nSelect")
    assert ds.frame_prompt(it, [2.0, 3.0]).startswith(head + "No subtitles available\nSelect")
    assert ds.frame_prompt(it, [0.5]).endswith(it.prompt[it.prompt.index("Select"):])  # the same question block
    assert load_mc("videomme", fx["root"]).frame_prompt(it, [0.5]) is None  # without --subtitles: no cues


def test_a_run_asks_with_the_frames_subtitles(tmp_path, monkeypatch):
    fx = make_videomme(tmp_path / "vm", n_videos=1, questions_per_video=1, seed=4)
    asked = []
    from videosparse.pipeline import VideoQA

    real = VideoQA.ask_many

    def spy(self, pairs, *a, **k):
        asked.extend(q for _, q in pairs)
        return real(self, pairs, *a, **k)

    monkeypatch.setattr(VideoQA, "ask_many", spy)
    out = tmp_path / "run"
    assert main(["run", "--dataset", "videomme", "--root", str(fx["root"]), "--model", "testbed", "--configs", "full",
                 "--out", str(out), "--quiet", "--max-new-tokens", "2", "--mc-scoring", "generate", "--subtitles",
                 "--frames", "1"]) == 0
    # one frame, at 0 s: only the first cue
    assert asked and asked[0].startswith("This video's subtitles are listed below: \nclip 0 starts\nSelect")
    recs = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(recs) == 1
