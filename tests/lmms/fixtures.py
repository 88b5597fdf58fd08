"""Fixtures of the lmms-eval tests: the Video-MME-format data under an ``HF_HOME`` and a tiny checkpoint that reads
option letters.

* ``make_videomme_home(hf_home, ...)``: ``hf_home/videomme/{videomme/test-00000-of-00001.parquet, data/<id>.mp4,
  subtitle/<id>.srt}``, the release layout, written by ``tests.eval.mc_fixtures.make_videomme`` (test-bed clips
  and questions); lmms-eval's Video-MME code finds the videos under ``$HF_HOME/videomme/data``.
* ``make_letter_checkpoint(d)`` (from ``tests.eval.mc_fixtures``): a tiny random Video-LLaVA whose word-level
  vocabulary holds the option letters, so likelihood scoring over the letters can run.
"""

from __future__ import annotations

from pathlib import Path

from tests.eval.mc_fixtures import make_letter_checkpoint  # noqa: F401  (the lmms tests' letter model)


def make_videomme_home(hf_home, *, n_videos: int = 4, questions_per_video: int = 2, seed: int = 0) -> dict:
    from tests.eval.mc_fixtures import make_videomme

    return make_videomme(Path(hf_home) / "videomme", n_videos=n_videos, questions_per_video=questions_per_video,
                         seed=seed, parquet=True)
