"""Multiple-choice video QA: prompts, answer parsing and scoring (no judge).

* :func:`build_prompt`: the prompt a benchmark's reference evaluation (lmms-eval) writes — the options
  listed with their letters and an instruction to answer with the option's letter.
* :func:`parse_letter`: the option letter of a generated answer, parsed the way lmms-eval parses it for
  that benchmark (see the function for the rules and fallbacks).
* :func:`match_option_text`: the option a free-text answer names (normalised exact match, then a unique
  option contained in the answer). This is the ``text`` scoring: the question is asked alone, without
  options, and the answer text is mapped to an option. It exists for models that cannot read a
  multiple-choice prompt, like the embedded test-bed model (41-word vocabulary, no option letters).
* :func:`score`: a record's ``pred_letter`` and ``correct`` for one scoring mode.

Scoring modes (``--mc-scoring``): ``generate`` (the benchmark prompt, a generated answer, the letter parsed
from it), ``text`` (the question alone, the answer text mapped to an option) and ``likelihood`` (the
benchmark prompt, one forward pass; the option letter the model gives the highest probability as its first
answer token is the answer, no parsing — the runner does it, see ``video_eval.runner``).

Standard library only.
"""

from __future__ import annotations

import re
import string
from typing import Sequence

__all__ = ["LETTERS", "SCORINGS", "build_prompt", "match_option_text", "model_question", "normalise",
           "parse_letter", "score"]

LETTERS = string.ascii_uppercase
SCORINGS = ("generate", "text", "likelihood")

# ----------------------------------------------------------------------------- prompts
VIDEOMME_INSTRUCTION = ("Select the best answer to the following multiple-choice question based on the video. "
                        "Respond with only the letter (A, B, C, or D) of the correct option.")
VIDEOMME_INSTRUCTION_SUBS = ("Select the best answer to the following multiple-choice question based on the video "
                             "and the subtitles. Respond with only the letter (A, B, C, or D) of the correct option.")
VIDEOMME_POST = "The best answer is:"
SUBTITLES_HEAD = "This video's subtitles are listed below: \n"
LETTER_INSTRUCTION = "Answer with the option's letter from the given choices directly."


def _lettered(options: Sequence[str], style: str) -> list[str]:
    if style == "paren":
        return [f"({LETTERS[i]}) {o}" for i, o in enumerate(options)]
    return [f"{LETTERS[i]}. {o}" for i, o in enumerate(options)]


def build_prompt(benchmark: str, question: str, options: Sequence[str], subtitles: str | None = None) -> str:
    """The benchmark's multiple-choice prompt for ``question`` with ``options`` (texts, without letters).

    * ``videomme``: instruction, question, ``A. ...`` lines, ``The best answer is:``; with ``subtitles``
      (the "with subtitles" setting) the subtitle block comes first and the instruction names them.
    * ``mvbench``: ``Question:<q>``, ``Option:`` and ``(A) ...`` lines, then the letter instruction.
    * anything else (EgoSchema, NExT-QA, ...): question, ``A. ...`` lines, the letter instruction.
    """
    if benchmark == "videomme":
        lines = _lettered(options, "dot")
        if subtitles is not None:
            body = subtitles if subtitles.strip() else "No subtitles available"
            return (SUBTITLES_HEAD + body + "\n" + VIDEOMME_INSTRUCTION_SUBS + "\n" + question + "\n"
                    + "\n".join(lines) + "\n" + VIDEOMME_POST)
        return VIDEOMME_INSTRUCTION + "\n" + question + "\n" + "\n".join(lines) + "\n" + VIDEOMME_POST
    if benchmark == "mvbench":
        opts = "".join(line + "\n" for line in _lettered(options, "paren"))
        return "Question:" + question + "\nOption:\n" + opts + LETTER_INSTRUCTION
    return question + "\n" + "\n".join(_lettered(options, "dot")) + "\n" + LETTER_INSTRUCTION


def model_question(item, scoring: str) -> str:
    """What the model is asked: the benchmark prompt (``generate``) or the bare question (``text``)."""
    if scoring == "text" or not getattr(item, "prompt", None):  # likelihood and generate: the prompt
        return item.question
    return item.prompt


# ----------------------------------------------------------------------------- parsing
# phrases a model puts before its letter; removed before looking for the letter (lmms-eval's Video-MME list)
ANSWER_PREFIXES = ("The best answer is", "The correct answer is", "The answer is", "The answer",
                   "The best option is", "The correct option is", "Best answer:", "Best option:", "Answer:")


def parse_letter(text: str, n_options: int, benchmark: str = "") -> str | None:
    """The option letter of a generated answer, or None when none can be found.

    Video-MME (lmms-eval's ``extract_characters_regex`` behaviour): strip, remove the answer phrases of
    :data:`ANSWER_PREFIXES`; a reply of more than 10 words with no capital option letter in it is
    unparsed; otherwise the first capital option letter anywhere in the reply (``A``-``D``) — also inside
    a word, as the reference does.

    Every other benchmark (lmms-eval's MVBench ``mcq_acc`` behaviour, with the option range of the item):
    a reply starting ``X.`` gives ``X``; otherwise punctuation is removed, surrounding quotes and
    parentheses stripped, and the first stand-alone option letter (either case) is taken — ``(B) dog``
    and ``answer: b`` both give ``B``. With no stand-alone letter, the reply is unparsed.
    """
    if not isinstance(text, str):
        return None
    n = max(1, min(int(n_options), len(LETTERS)))
    valid = LETTERS[:n]
    s = text.strip()
    if not s:
        return None
    if benchmark == "videomme":
        for p in ANSWER_PREFIXES:
            s = s.replace(p, "")
        cls = f"[{valid}]"
        if len(s.split()) > 10 and not re.search(cls, s):
            return None
        m = re.search(cls, s)
        return m.group(0) if m else None
    m = re.match(rf"^([{valid}{valid.lower()}])\.\s*(.+)$", s, re.DOTALL)
    if m:
        return m.group(1).upper()
    s = s.replace("\n", " ").replace("\t", " ")
    s = re.sub(r"[;/\[\]\"{}()=+\\_\-><@`,?!:]", " ", s)
    s = re.sub(r"(?<!\d)\.(?!\d)", " ", s)
    s = s.strip().strip("'\"()").strip()
    m = re.search(rf"\b([{valid}])\b", s, re.IGNORECASE)
    return m.group(1).upper() if m else None


def normalise(text: str) -> str:
    """Lower case, punctuation to spaces, no a/an/the, single spaces."""
    t = "".join(ch if ch.isalnum() or ch.isspace() else " " for ch in str(text).lower())
    return " ".join(w for w in t.split() if w not in ("a", "an", "the"))


def match_option_text(text: str, options: Sequence[str]) -> str | None:
    """The letter of the option an answer text names: the option whose normalised text equals the
    answer's; else the one option whose normalised text occurs in the answer as whole words (None when
    none or several do)."""
    a = normalise(text)
    if not a:
        return None
    norm = [normalise(o) for o in options]
    for i, o in enumerate(norm):
        if o and o == a:
            return LETTERS[i]
    hits = [i for i, o in enumerate(norm) if o and re.search(rf"(?:^| ){re.escape(o)}(?: |$)", a)]
    return LETTERS[hits[0]] if len(hits) == 1 else None


def score(prediction: str, options: Sequence[str], answer: str, scoring: str, benchmark: str = "") -> tuple:
    """(pred_letter or None, correct) of one answer under ``scoring``."""
    if scoring == "text":
        letter = match_option_text(prediction, options)
    else:
        letter = parse_letter(prediction, len(options), benchmark)
    return letter, letter is not None and letter == str(answer).strip().upper()
