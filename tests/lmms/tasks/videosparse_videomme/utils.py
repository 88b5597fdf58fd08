"""Local Video-MME-format tasks for the videosparse lmms-eval tests (no hub).

Data: the Video-MME release layout under ``$HF_HOME/videomme`` (``videomme/test-00000-of-00001.parquet``,
``data/<videoID>.mp4``), as lmms-eval's own ``videomme`` task reads it; the YAMLs name the parquet file relative to
the working directory, so lmms-eval runs in ``$HF_HOME/videomme``. The videos are found by lmms-eval's own
``videomme_doc_to_visual``.

Three ways of asking and scoring, each the counterpart of one of ``video_eval``'s ``--mc-scoring`` modes:

* ``videosparse_videomme_text`` (``text``): the question alone; the answer text is mapped to an option with
  ``video_eval.mcq.match_option_text``. For the test-bed model, whose 41-word vocabulary has no option letters.
* ``videosparse_videomme_likelihood`` (``likelihood``): ``video_eval``'s Video-MME prompt, the options ``A``..``D`` as
  continuations scored by the model's ``loglikelihood`` (lmms-eval's ``multiple_choice``).
* ``videosparse_videomme_lmms`` (no counterpart): lmms-eval's own Video-MME prompt and answer parsing
  (``lmms_eval.tasks.videomme.utils``), as ``--tasks videomme`` runs them, on the local files.
"""

from __future__ import annotations

import re

from lmms_eval.tasks.videomme.utils import (  # noqa: F401 (re-exported for the YAMLs)
    videomme_aggregate_results,
    videomme_doc_to_text,
    videomme_doc_to_visual,
    videomme_process_results,
)

from video_eval.mcq import LETTERS, build_prompt, match_option_text

_OPTION = re.compile(r"^\s*\(?([A-Z])[\.\):]\s*(.*)$", re.DOTALL)  # video_eval.benchmarks' reading of "A. red"


def option_texts(doc: dict) -> list:
    """The options without their letters, as video_eval's Video-MME loader reads them."""
    out = []
    for k, o in enumerate(doc["options"]):
        m = _OPTION.match(str(o))
        out.append(m.group(2).strip() if m and m.group(1) == LETTERS[k] else str(o).strip())
    return out


def text_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    """``--mc-scoring text``: the question alone."""
    return str(doc["question"])


def text_process_results(doc: dict, results: list) -> dict:
    pred = results[0]
    letter = match_option_text(pred, option_texts(doc))
    answer = str(doc["answer"]).strip().upper()
    return {"videosparse_text": {"question_id": doc["question_id"], "prediction": pred, "pred_letter": letter,
                                 "answer": answer, "correct": letter is not None and letter == answer}}


def accuracy(results: list) -> float:
    """The fraction of questions answered correctly (video_eval's accuracy: no question here fails)."""
    return sum(1 for r in results if r["correct"]) / len(results) if results else 0.0


def prompt_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    """``--mc-scoring likelihood`` (and ``generate``): video_eval's Video-MME prompt."""
    return build_prompt("videomme", str(doc["question"]), option_texts(doc))


def letter_choices(doc: dict) -> list:
    return list(LETTERS[: len(doc["options"])])


def answer_index(doc: dict) -> int:
    return LETTERS.index(str(doc["answer"]).strip().upper())
