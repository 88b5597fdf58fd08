"""Judges: grade each prediction against the reference answer.

Two judges share one interface (``label``, ``info()``, ``record_info()``, ``judge_many()``):

* :class:`OfflineJudge` -- normalised exact / whole-word "contains" match of the reference answer in the
  prediction: verdict ``("yes", 5)`` or ``("no", 0)``. Free and deterministic, meant for smoke tests: its
  numbers are **not** comparable with GPT-judged accuracy.
* :class:`OpenAIJudge` -- the Video-ChatGPT grading protocol (the judge model compares the predicted
  answer with the correct one and replies with a Python dict string ``{'pred': 'yes'|'no', 'score':
  0..5}``) sent to any OpenAI-compatible chat-completions server (OpenAI, or a local vLLM / SGLang
  server) through the official ``openai`` client. Bounded concurrency, retries with exponential backoff
  and jitter (``Retry-After`` honoured), an sqlite cache of successful verdicts
  (:mod:`video_eval.cache`), and *judge failures* -- an item the judge gave no usable verdict on is
  recorded with ``judge_error`` and never scored as wrong.

:func:`judge_records` turns prediction records into judged records (the prediction fields, then
``judge``, ``judge_pred``, ``judge_score``, ``judge_error``) and returns them with a :class:`JudgeStats`.

The API key is read from an environment variable whose *name* the caller gives; the key itself is
passed to the ``openai`` client only and never stored, logged, cached or put into an error message.
"""

from __future__ import annotations

import ast
import concurrent.futures as cf
import email.utils
import hashlib
import importlib.resources
import json
import logging
import math
import os
import random
import re
import sys
import threading
import time
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import timezone
from pathlib import Path
from typing import Any, NamedTuple, Union

logger = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "video_chatgpt_qa.txt"
"""File name of the shipped prompt template (in ``video_eval/templates/``)."""

PLACEHOLDERS = ("question", "answer", "prediction")
SECTIONS = ("system", "user")
JUDGE_FIELDS = ("judge", "judge_pred", "judge_score", "judge_error")
"""Keys a judged record adds to a prediction record, in this order."""

NO_KEY_PLACEHOLDER = "no-key"
"""Sent as the API key when ``api_key_env=None`` (servers without authentication)."""

_MAX_RETRY_AFTER = 600.0  # never sleep longer than this on a server's say-so
_UNREACHABLE_DELAY_CAP = 0.5  # retry delay while the server has not answered a single request yet
_ERROR_CHARS = 300

ProgressArg = Union[None, bool, Callable[[int, int], Any]]


# ============================================================================ errors
class JudgeError(ValueError):
    """Base class of the judge errors."""


class TemplateError(JudgeError):
    """A prompt template file that cannot be used (unreadable, missing a section or a placeholder)."""


class MalformedReply(JudgeError):
    """A judge reply that is not a verdict: no dict, missing keys, pred not yes/no, score not an int 0..5."""


class JudgeConfigError(JudgeError):
    """A judge that cannot be set up (API key variable unset, bad arguments, ``openai`` not installed)."""


class JudgeAuthError(JudgeError):
    """The server refused the key or the model (HTTP 401 / 403 / 404): judging stops, nothing is recorded."""


class JudgeUnavailable(JudgeError):
    """The judge server cannot be reached (connection refused, unknown host): judging stops.

    Verdicts obtained before the server went away stay in the cache.
    """


class JudgeInputError(JudgeError):
    """A prediction record that lacks the fields a judge needs."""


# ============================================================================ template
@dataclass(frozen=True)
class Template:
    """A judge prompt: a system message and a user message with ``{question}``, ``{answer}``,
    ``{prediction}`` placeholders. ``sha256`` is the hash of the template file's bytes."""

    system: str
    user: str
    sha256: str
    path: str

    def render(self, question: str, answer: str, prediction: str) -> list[dict[str, str]]:
        """The chat messages for one item. Only the three placeholders are substituted (in one pass, so
        braces or placeholder-like text inside the question, answer or prediction are left alone)."""
        values = {"question": question, "answer": answer, "prediction": prediction}

        def fill(text: str) -> str:
            return _PLACEHOLDER_RE.sub(lambda m: values[m.group(1)], text)

        return [{"role": "system", "content": fill(self.system)}, {"role": "user", "content": fill(self.user)}]


_PLACEHOLDER_RE = re.compile(r"\{(question|answer|prediction)\}")
_SECTION_RE = re.compile(r"^\[(system|user)\]$")


def default_template_path() -> str:
    """Path of the shipped Video-ChatGPT-protocol template."""
    return str(importlib.resources.files("video_eval").joinpath("templates", DEFAULT_TEMPLATE))


def load_template(path: str | os.PathLike | None = None) -> Template:
    """Read a template file (default: the shipped one).

    Format: optional ``#`` comment lines, then a line ``[system]`` followed by the system message and a
    line ``[user]`` followed by the user message (each section once, in either order, surrounding blank
    lines stripped). ``{question}``, ``{answer}`` and ``{prediction}`` must each appear somewhere; other
    braces are literal text. Raises :class:`TemplateError` naming the file and the problem.
    """
    p = Path(path) if path is not None else Path(default_template_path())
    try:
        data = p.read_bytes()
    except OSError as e:
        raise TemplateError(f"judge template {p}: cannot read it ({e.strerror or e})") from None
    sha = hashlib.sha256(data).hexdigest()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise TemplateError(f"judge template {p}: not UTF-8 text ({e})") from None
    sections: dict[str, list[str]] = {}
    current: str | None = None
    for lineno, line in enumerate(text.splitlines(), 1):
        m = _SECTION_RE.match(line.strip())
        if m:
            name = m.group(1)
            if name in sections:
                raise TemplateError(f"judge template {p}: section [{name}] appears twice (line {lineno})")
            sections[name] = []
            current = name
        elif current is None:
            if line.strip() and not line.lstrip().startswith("#"):
                raise TemplateError(f"judge template {p}: line {lineno} is outside any section (only '#' "
                                    f"comments may come before the first [system] / [user] line)")
        else:
            sections[current].append(line)
    missing_sections = [s for s in SECTIONS if s not in sections]
    if missing_sections:
        raise TemplateError(f"judge template {p}: missing section(s) "
                            + ", ".join(f"[{s}]" for s in missing_sections)
                            + " (a line '[system]' then the system message, a line '[user]' then the user message)")
    bodies = {s: "\n".join(sections[s]).strip() for s in SECTIONS}
    empty = [s for s in SECTIONS if not bodies[s]]
    if empty:
        raise TemplateError(f"judge template {p}: section(s) {', '.join(f'[{s}]' for s in empty)} are empty")
    found = set(_PLACEHOLDER_RE.findall(bodies["system"] + "\n" + bodies["user"]))
    missing = [ph for ph in PLACEHOLDERS if ph not in found]
    if missing:
        raise TemplateError(f"judge template {p}: missing placeholder(s) "
                            + ", ".join("{" + ph + "}" for ph in missing))
    return Template(system=bodies["system"], user=bodies["user"], sha256=sha, path=str(p))


# ============================================================================ reply parsing
_FLAT_DICT_RE = re.compile(r"\{[^{}]*\}", re.S)


def _literal(s: str) -> Any:
    try:
        return ast.literal_eval(s)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        pass
    try:
        return json.loads(s)
    except (ValueError, RecursionError):
        return None


def _verdict_from_dict(d: Mapping[Any, Any]) -> tuple[str, int]:
    keys = {str(k).strip().lower(): v for k, v in d.items()}
    missing = [k for k in ("pred", "score") if k not in keys]
    if missing:
        raise MalformedReply(f"reply dict lacks {' and '.join(repr(k) for k in missing)}")
    pred, score = keys["pred"], keys["score"]
    if not isinstance(pred, str):
        raise MalformedReply(f"'pred' must be 'yes' or 'no', got {pred!r}")
    p = pred.strip().strip(".!'\"` ").lower()
    if p not in ("yes", "no"):
        raise MalformedReply(f"'pred' must be 'yes' or 'no', got {pred!r}")
    s: Any = score
    if isinstance(s, str):
        try:
            s = float(s.strip())
        except ValueError:
            raise MalformedReply(f"'score' must be an integer 0..5, got {score!r}") from None
    if isinstance(s, bool) or not isinstance(s, (int, float)):
        raise MalformedReply(f"'score' must be an integer 0..5, got {score!r}")
    if isinstance(s, float):
        if not math.isfinite(s) or not s.is_integer():
            raise MalformedReply(f"'score' must be an integer 0..5, got {score!r}")
        s = int(s)
    if not 0 <= s <= 5:
        raise MalformedReply(f"'score' {score!r} is outside 0..5")
    return p, int(s)


def parse_reply(text: str | None) -> tuple[str, int]:
    """``(pred, score)`` from a judge reply.

    Accepts a Python-dict string or JSON object, inside code fences or surrounded by prose; ``pred`` in
    any case (``'Yes'``, ``'YES'``); ``score`` as ``4``, ``4.0`` or ``"4"``. Raises
    :class:`MalformedReply` when no dict with ``pred`` and ``score`` is found, ``pred`` is not yes/no,
    ``score`` is not an integer in 0..5 (out of range is malformed, never clamped), or the reply holds
    several verdicts that disagree.
    """
    if text is None or not str(text).strip():
        raise MalformedReply("empty reply")
    text = str(text)
    candidates = [m.group(0) for m in _FLAT_DICT_RE.finditer(text)]
    first, last = text.find("{"), text.rfind("}")
    if 0 <= first < last:
        candidates.append(text[first:last + 1])  # a dict with nested braces
    verdicts: list[tuple[str, int]] = []
    problems: list[str] = []
    for c in candidates:
        obj = _literal(c)
        if not isinstance(obj, dict):
            continue
        try:
            verdicts.append(_verdict_from_dict(obj))
        except MalformedReply as e:
            problems.append(str(e))
    if not verdicts:
        if problems:
            raise MalformedReply(f"{problems[0]} (reply: {_one_line(text, 120)})")
        raise MalformedReply(f"no {{'pred': ..., 'score': ...}} dict in the reply: {_one_line(text, 120)}")
    if len(set(verdicts)) > 1:
        raise MalformedReply(f"the reply holds several different verdicts: {_one_line(text, 120)}")
    return verdicts[0]


# ============================================================================ results and stats
class Verdict(NamedTuple):
    """One item's outcome: a verdict (``pred``, ``score``) or a judge failure (``error``)."""

    pred: str | None
    score: int | None
    error: str | None = None
    cached: bool = False
    served: str | None = None  # the model name the server said it used (OpenAI judge)


@dataclass
class JudgeStats:
    """Counters of one :func:`judge_records` call.

    ``total`` records; ``errored`` records with a prediction error (not sent); ``judged`` verdicts
    (including ``cached`` ones taken from the cache); ``failures`` judge failures; ``requests`` HTTP
    requests made (every attempt counts); ``retries`` of them that were repeats; ``deduplicated`` records
    that shared a (question, answer, prediction) with another record and so needed no request of their
    own; ``seconds`` wall time.
    """

    total: int = 0
    errored: int = 0
    judged: int = 0
    failures: int = 0
    cached: int = 0
    requests: int = 0
    retries: int = 0
    deduplicated: int = 0
    seconds: float = 0.0
    served_models: dict = field(default_factory=dict)  # model name the server reported -> verdicts
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        """Thread-safe increment."""
        with self._lock:
            for k, v in counts.items():
                setattr(self, k, getattr(self, k) + v)

    def add_served(self, model: str | None, n: int = 1) -> None:
        """Count ``n`` verdicts given by the served model ``model`` (thread-safe; None is not counted)."""
        if not model:
            return
        with self._lock:
            self.served_models[model] = self.served_models.get(model, 0) + n

    def warnings(self, requested: str | None) -> list[str]:
        """One line per served model name that differs from the ``requested`` one."""
        if not requested:
            return []
        return [f"the judge server answered {n} verdict{'s' if n != 1 else ''} with model {m!r}, not the requested "
                f"{requested!r} (a dated snapshot or an alias?); they are recorded under {requested!r}"
                for m, n in sorted(self.served_models.items()) if m != requested]

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}
        d["seconds"] = round(self.seconds, 3)
        d["served_models"] = dict(sorted(self.served_models.items()))
        return d

    def summary(self) -> str:
        return (f"{self.judged} judged ({self.cached} from cache), {self.failures} judge failures, "
                f"{self.errored} errored predictions not sent; {self.requests} requests, {self.retries} retries")


def _progress(progress: ProgressArg, total: int, desc: str) -> Any:
    """Progress over ``total`` items: a user callable ``(done, total)``, a tqdm bar on a terminal, or a
    plain stderr line every 10 s; nothing when ``progress`` is falsy."""
    from video_eval.progress import Progress

    return Progress(total, desc, enabled=bool(progress), callback=progress if callable(progress) else None,
                    log_every=10.0, noun="judged")


# ============================================================================ offline judge
def normalize_answer(text: str) -> str:
    """Lowercase; every character that is neither a letter/digit nor whitespace becomes a space; the
    articles a / an / the are dropped; whitespace is collapsed."""
    s = unicodedata.normalize("NFKC", str(text)).lower()
    s = "".join(c if c.isalnum() or c.isspace() else " " for c in s)
    return " ".join(w for w in s.split() if w not in ("a", "an", "the"))


def offline_match(answer: str, prediction: str) -> bool:
    """True when the normalised answer equals the normalised prediction or occurs in it as whole words.
    An answer that normalises to nothing (e.g. only punctuation or articles) never matches."""
    a, p = normalize_answer(answer), normalize_answer(prediction)
    if not a:
        return False
    return a == p or f" {a} " in f" {p} "


class OfflineJudge:
    """String-match judge: ``("yes", 5)`` when the normalised reference answer equals the normalised
    prediction or occurs in it as whole words, else ``("no", 0)``.

    A smoke-test judge: its accuracies are **not** comparable with GPT-judged numbers (it misses
    paraphrases and synonyms, and accepts a prediction that merely mentions the answer, e.g. "not a dog"
    for "dog").
    """

    kind = "offline"
    model = "offline-match"
    label = "offline"

    def info(self) -> dict[str, Any]:
        return {"kind": self.kind, "model": self.model, "template_sha256": None}

    def record_info(self) -> dict[str, Any]:
        """The ``judge`` field of judged records."""
        return self.info()

    def judge(self, question: str, answer: str, prediction: str) -> tuple[str, int]:
        """Verdict for one item (the question is not used)."""
        return ("yes", 5) if offline_match(answer, prediction) else ("no", 0)

    def judge_many(self, items: Sequence[tuple[str, str, str]], stats: JudgeStats | None = None,
                   progress: ProgressArg = None) -> list[Verdict]:
        """Verdicts for ``(question, answer, prediction)`` triples, in order."""
        bar = _progress(progress, len(items), "judging (offline)")
        out = []
        for q, a, p in items:
            out.append(Verdict(*self.judge(q, a, p)))
            bar.update()
        bar.close()
        if stats is not None:
            stats.add(judged=len(out))
        return out

    def __repr__(self) -> str:
        return "OfflineJudge()"


# ============================================================================ OpenAI-compatible judge
def sanitize_label(text: str) -> str:
    """A file-name-safe version of ``text`` (letters, digits, ``.``, ``_``, ``-``)."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")
    return re.sub(r"-{2,}", "-", s) or "model"


def retry_after_seconds(headers: Mapping[str, str] | None, now: float | None = None) -> float | None:
    """Seconds to wait according to ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date);
    None when absent or unparseable. Never negative."""
    if headers is None:
        return None
    get = headers.get
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = get(name)
        if value is None:
            continue
        try:
            v = float(str(value).strip())
        except ValueError:
            continue
        if math.isfinite(v):
            return max(0.0, v * scale)
    value = get("retry-after")
    if value:
        try:
            when = email.utils.parsedate_to_datetime(str(value).strip())
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        t = time.time() if now is None else now
        return max(0.0, when.timestamp() - t)
    return None


def _one_line(text: Any, limit: int = _ERROR_CHARS) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


class _Abort(Exception):
    """Internal: stop this work item because the batch is being aborted."""


class _BadResponse(Exception):
    """Internal: an HTTP 200 whose body is not a usable chat completion (retried like a 5xx)."""


class _Batch:
    """Shared state of one :meth:`OpenAIJudge.judge_many` call."""

    def __init__(self) -> None:
        self.abort = threading.Event()
        self.reachable = False  # the server has answered at least one request (any status)
        self.unreachable_items = 0  # consecutive items whose every attempt got no response
        self.lock = threading.Lock()


class OpenAIJudge:
    """Video-ChatGPT-protocol judge on an OpenAI-compatible chat-completions server.

    Parameters
    ----------
    base_url: server URL up to the API version, e.g. ``https://api.openai.com/v1`` or
        ``http://127.0.0.1:8000/v1`` (vLLM / SGLang).
    model: the judge model name as the server knows it.
    api_key_env: NAME of the environment variable holding the API key, read once here; it must be set
        and non-empty. ``None``: the server needs no key (a placeholder is sent).
    template: a :class:`Template`, a template file path, or None for the shipped template.
    concurrency: parallel requests. max_retries: retries per item after the first attempt.
    timeout: seconds per request. cache: path of the sqlite verdict cache (or a
        :class:`~video_eval.cache.JudgeCache`), None for no cache.
    backoff / max_backoff: the n-th retry waits about ``min(max_backoff, backoff * 2**n)`` seconds
        (jittered to 50-100 %), or what the server's ``Retry-After`` says. temperature: sampling
        temperature of the judge (0 = as deterministic as the server allows).

    Retried: HTTP 408, 409, 429, 5xx, timeouts, connection errors, malformed or out-of-range replies, and
    HTTP 200 responses that are not a chat completion (truncated or non-JSON body, no choices, null
    content: a flaky proxy); what still fails is a judge failure whose error names the server.
    Not retried: other 4xx -- 401/403/404 (bad key, no access, unknown model or wrong URL) abort
    everything with :class:`JudgeAuthError`; others (e.g. 400) make that item a judge failure.
    A server that never answers (connection refused, unknown host) aborts with
    :class:`JudgeUnavailable` naming the URL.
    """

    kind = "openai"

    def __init__(self, base_url: str, model: str, api_key_env: str | None = "OPENAI_API_KEY",
                 template: Template | str | os.PathLike | None = None, concurrency: int = 8,
                 max_retries: int = 5, timeout: float = 60.0, cache: Any = None, backoff: float = 1.0,
                 max_backoff: float = 60.0, temperature: float = 0.0) -> None:
        if not isinstance(base_url, str) or not re.match(r"^https?://[^/\s]+", base_url.strip()):
            raise JudgeConfigError(f"judge base URL must start with http:// or https://, got {base_url!r}")
        if not isinstance(model, str) or not model.strip():
            raise JudgeConfigError("judge model name is empty (give the name the server serves)")
        if not isinstance(concurrency, int) or concurrency < 1:
            raise JudgeConfigError(f"judge concurrency must be an integer >= 1, got {concurrency!r}")
        if not isinstance(max_retries, int) or max_retries < 0:
            raise JudgeConfigError(f"judge max_retries must be an integer >= 0, got {max_retries!r}")
        if not (isinstance(timeout, (int, float)) and timeout > 0):
            raise JudgeConfigError(f"judge timeout must be > 0 seconds, got {timeout!r}")
        if not (isinstance(backoff, (int, float)) and backoff >= 0):
            raise JudgeConfigError(f"judge backoff must be >= 0 seconds, got {backoff!r}")
        if not (isinstance(max_backoff, (int, float)) and max_backoff >= backoff):
            raise JudgeConfigError(f"judge max_backoff must be >= backoff ({backoff}), got {max_backoff!r}")
        self.base_url = base_url.strip().rstrip("/")
        # what is shown in info(), logs and errors: never credentials embedded in the URL
        self.display_url = re.sub(r"^(https?://)[^/@\s]*@", r"\1", self.base_url)
        self.model = model.strip()
        self.api_key_env = api_key_env
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.timeout = float(timeout)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.temperature = float(temperature)
        self.template = template if isinstance(template, Template) else load_template(template)
        self.label = "openai-" + sanitize_label(self.model)

        key = self._read_key(api_key_env)
        self._secret = key  # only for scrubbing error texts; never logged, cached or written
        try:
            import openai
        except ImportError:
            raise JudgeConfigError("the openai judge needs the 'openai' package (pip install openai)") from None
        self._openai = openai
        self._client = openai.OpenAI(base_url=self.base_url, api_key=key, timeout=self.timeout, max_retries=0)

        if cache is None or hasattr(cache, "get"):
            self.cache = cache
        else:
            from video_eval.cache import JudgeCache

            self.cache = JudgeCache(cache)
        self._warned_models: set[str] = set()
        self._warn_lock = threading.Lock()

    @staticmethod
    def _read_key(api_key_env: str | None) -> str:
        if api_key_env is None:
            return NO_KEY_PLACEHOLDER
        name = str(api_key_env)
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or len(name) > 100:
            # do not echo it: it may be the key itself, passed by mistake
            raise JudgeConfigError("the judge API key variable must be the NAME of an environment variable "
                                   "(letters, digits, underscores), not the key itself")
        value = os.environ.get(name)
        if not value or not value.strip():
            raise JudgeConfigError(f"the judge API key variable {name} is not set (or empty): export {name}=... "
                                   f"first, name another variable with --judge-api-key-env NAME, or pass "
                                   f"--judge-api-key-env none for a server without authentication (a local "
                                   f"vLLM / SGLang server)")
        return value.strip()

    # ------------------------------------------------------------------ identity
    def info(self) -> dict[str, Any]:
        return {"kind": self.kind, "model": self.model, "template_sha256": self.template.sha256,
                "base_url": self.display_url}

    def record_info(self) -> dict[str, Any]:
        """The ``judge`` field of judged records (kind, model, template hash)."""
        return {"kind": self.kind, "model": self.model, "template_sha256": self.template.sha256}

    def __repr__(self) -> str:
        return (f"OpenAIJudge(base_url={self.display_url!r}, model={self.model!r}, api_key_env={self.api_key_env!r}, "
                f"template={self.template.path!r})")

    def close(self) -> None:
        """Close the HTTP client and the cache."""
        try:
            self._client.close()
        except Exception:  # noqa: BLE001 - closing is best effort
            pass
        if self.cache is not None and hasattr(self.cache, "close"):
            self.cache.close()

    # ------------------------------------------------------------------ helpers
    def _scrub(self, text: Any) -> str:
        s = _one_line(text, 10_000)
        if self._secret and self._secret != NO_KEY_PLACEHOLDER:
            s = s.replace(self._secret, "***")
        return _one_line(s)

    def _cache_key(self, q: str, a: str, p: str) -> str:
        from video_eval.cache import cache_key

        return cache_key(self.model, self.template.sha256, q, a, p)

    def _delay(self, attempt: int) -> float:
        base = min(self.max_backoff, self.backoff * (2.0 ** attempt))
        return base * (0.5 + 0.5 * random.random())

    def _warn_served(self, served: str | None) -> None:
        if not served or served == self.model:
            return
        with self._warn_lock:
            if served in self._warned_models:
                return
            self._warned_models.add(served)
        logger.warning("judge server %s answered with model %r, not the requested %r (a dated snapshot or "
                       "an alias?): results are recorded under %r", self.display_url, served, self.model, self.model)

    def _read_completion(self, raw: Any) -> tuple[str, str | None]:
        """(reply text, served model) of an HTTP 200 response, or :class:`_BadResponse` naming the server
        and what is wrong with the body: not JSON (e.g. an HTML page from a proxy), truncated or
        otherwise invalid JSON, no choices, no message content."""
        where = f"the judge server at {self.display_url} answered HTTP 200"
        headers = getattr(raw, "headers", None) or {}
        ctype = str(headers.get("content-type") or "")
        try:
            body = raw.content
        except Exception as e:  # noqa: BLE001 - a body that cannot even be read is a bad response
            raise _BadResponse(f"{where} with an unreadable body ({type(e).__name__}: {self._scrub(e)})") from None
        size = f"{len(body)} bytes"
        if "json" not in ctype.lower():
            snippet = self._scrub(body[:80].decode("utf-8", "replace")) or "empty"
            raise _BadResponse(f"{where} with a {ctype or 'untyped'} body, not JSON ({size}: {snippet})")
        try:
            completion = raw.parse()
        except Exception as e:  # noqa: BLE001 - json.JSONDecodeError, validation errors, ...
            raise _BadResponse(f"{where} with a body that is not valid JSON ({size}, truncated?): "
                               f"{type(e).__name__}: {self._scrub(e)}") from None
        served = getattr(completion, "model", None)
        served = served if isinstance(served, str) else None
        choices = getattr(completion, "choices", None)
        if not isinstance(choices, list) or not choices:
            what = "an empty 'choices' list" if isinstance(choices, list) else "no 'choices'"
            raise _BadResponse(f"{where} with {what} ({size})")
        message = getattr(choices[0], "message", None)
        content = getattr(message, "content", None)
        if not isinstance(content, str):
            reason = getattr(choices[0], "finish_reason", None)
            refusal = getattr(message, "refusal", None)
            detail = f"finish_reason {reason!r}" + (f", refusal {self._scrub(refusal)!r}" if refusal else "")
            raise _BadResponse(f"{where} without message content ({detail})")
        return content, served

    # ------------------------------------------------------------------ one item
    def _judge_item(self, item: tuple[str, str, str], key: str | None, stats: JudgeStats, batch: _Batch) -> Verdict:
        o = self._openai
        messages = self.template.render(*item)
        last_error = "no attempt made"
        attempts = 0
        no_response_only = True
        attempt = 0
        while True:
            if batch.abort.is_set():
                raise _Abort()
            attempts += 1
            stats.add(requests=1)
            retry_after: float | None = None
            retryable = True
            no_response = False
            try:
                raw = self._client.chat.completions.with_raw_response.create(
                    model=self.model, messages=messages, temperature=self.temperature)
            except o.APIStatusError as e:
                with batch.lock:
                    batch.reachable = True
                    batch.unreachable_items = 0
                no_response_only = False
                code = int(e.status_code)
                msg = self._scrub(getattr(e, "message", "") or str(e))
                if code in (401, 403):
                    raise JudgeAuthError(
                        f"the judge server at {self.display_url} refused the request (HTTP {code}): a bad or missing "
                        f"API key in {self.api_key_env or '(no key)'}, or no access to model {self.model!r}") from None
                if code == 404:
                    raise JudgeAuthError(
                        f"the judge server at {self.display_url} answered HTTP 404 for model {self.model!r}: wrong "
                        f"model name or wrong base URL (it usually ends in /v1): {msg}") from None
                last_error = f"HTTP {code}: {msg}"
                if code in (408, 409, 429) or code >= 500:
                    retry_after = retry_after_seconds(e.response.headers)
                else:
                    retryable = False
            except o.APITimeoutError as e:
                cause = type(e.__cause__).__name__ if e.__cause__ is not None else ""
                no_response = cause == "ConnectTimeout"
                if not no_response:
                    no_response_only = False
                last_error = f"timeout after {self.timeout:g} s" + (" (connecting)" if no_response else "")
            except o.APIConnectionError as e:
                no_response = True
                cause = e.__cause__
                last_error = "connection error: " + self._scrub(cause if cause is not None else e)
            except o.OpenAIError as e:  # anything else the client raises: retried like a bad reply
                no_response_only = False
                last_error = f"{type(e).__name__} from the judge server at {self.display_url}: {self._scrub(e)}"
            else:
                with batch.lock:
                    batch.reachable = True
                    batch.unreachable_items = 0
                no_response_only = False
                try:
                    content, served = self._read_completion(raw)
                    self._warn_served(served)
                    pred, score = parse_reply(content)
                except _BadResponse as e:
                    # a 200 that is not a chat completion (a flaky proxy): a transient fault, like a 5xx
                    last_error = str(e)
                except MalformedReply as e:
                    last_error = f"MalformedReply: {self._scrub(e)}"
                else:
                    if self.cache is not None and key is not None:
                        self.cache.put(key, judge_model=self.model, template_sha256=self.template.sha256,
                                       pred=pred, score=score, raw_reply=content, served_model=served)
                    return Verdict(pred, score, served=served)

            if not retryable or attempt >= self.max_retries:
                break
            with batch.lock:
                reachable = batch.reachable
            if retry_after is not None:
                delay = min(retry_after, _MAX_RETRY_AFTER) * (1.0 + 0.1 * random.random())
                delay = max(delay, 0.01)
            else:
                delay = self._delay(attempt)
                if no_response and not reachable:
                    delay = min(delay, _UNREACHABLE_DELAY_CAP)
            if batch.abort.wait(delay):
                raise _Abort()
            attempt += 1
            stats.add(retries=1)

        if no_response_only and retryable:
            with batch.lock:
                batch.unreachable_items += 1
                never = not batch.reachable
                streak = batch.unreachable_items
            if never or streak >= max(2, self.concurrency):
                what = "cannot be reached" if never else "stopped responding"
                raise JudgeUnavailable(
                    f"the judge server at {self.display_url} {what} ({last_error}, {attempts} attempt(s)); is it "
                    f"running, and is the URL right? Verdicts obtained so far are kept in the cache")
        plural = "s" if attempts > 1 else ""
        return Verdict(None, None, error=_one_line(f"{last_error} (after {attempts} attempt{plural})"))

    # ------------------------------------------------------------------ batch
    def judge_many(self, items: Sequence[tuple[str, str, str]], stats: JudgeStats | None = None,
                   progress: ProgressArg = None) -> list[Verdict]:
        """Verdicts for ``(question, answer, prediction)`` triples, in order.

        Cached verdicts are used first; identical triples are sent once; the rest go out on
        ``concurrency`` threads. Raises :class:`JudgeAuthError` / :class:`JudgeUnavailable` (after
        stopping the other requests) when the judge cannot work at all.
        """
        stats = stats if stats is not None else JudgeStats()
        out: list[Verdict | None] = [None] * len(items)
        bar = _progress(progress, len(items), f"judging ({self.model})")
        groups: dict[str, list[int]] = {}
        for i, (q, a, p) in enumerate(items):
            key = self._cache_key(q, a, p)
            hit = self.cache.get(key) if self.cache is not None else None
            if hit is not None:
                out[i] = Verdict(hit.pred, hit.score, cached=True, served=hit.served_model)
                stats.add(cached=1, judged=1)
                stats.add_served(hit.served_model)
                bar.update()
            else:
                groups.setdefault(key, []).append(i)
        stats.add(deduplicated=sum(len(v) - 1 for v in groups.values()))
        if groups:
            batch = _Batch()
            ex = cf.ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="judge")
            futures = {ex.submit(self._judge_item, items[idx[0]], key, stats, batch): key
                       for key, idx in groups.items()}
            try:
                for fut in cf.as_completed(futures):
                    v = fut.result()
                    idx = groups[futures[fut]]
                    for i in idx:
                        out[i] = v
                    if v.error is None:
                        stats.add(judged=len(idx))
                        stats.add_served(v.served, len(idx))
                    else:
                        stats.add(failures=len(idx))
                    bar.update(len(idx))
            except BaseException as e:
                batch.abort.set()
                # on Ctrl-C do not wait for requests in flight (they end within `timeout` anyway)
                ex.shutdown(wait=not isinstance(e, KeyboardInterrupt), cancel_futures=True)
                bar.close()
                raise
            ex.shutdown(wait=True)
        bar.close()
        if any(v is None for v in out):
            raise RuntimeError(f"internal error: {sum(v is None for v in out)} items got no verdict")
        return out  # type: ignore[return-value]

    def judge(self, question: str, answer: str, prediction: str) -> tuple[str, int]:
        """Verdict for one item; raises :class:`JudgeError` on a judge failure."""
        v = self.judge_many([(question, answer, prediction)])[0]
        if v.error is not None:
            raise JudgeError(f"judge failure: {v.error}")
        return v.pred, v.score  # type: ignore[return-value]


# ============================================================================ records
def _rid(i: int, rec: Mapping[str, Any]) -> str:
    return f"record {i} (question_id={rec.get('question_id')!r}, config={rec.get('config')!r})"


def judge_records(records: Iterable[Mapping[str, Any]], judge: Any,
                  progress: ProgressArg = None) -> tuple[list[dict[str, Any]], JudgeStats]:
    """Judge prediction records (or previously judged records): ``(judged_records, stats)``.

    Judged records keep the input order and fields (older judge fields are replaced) and add ``judge``
    (kind, model, template hash), ``judge_pred``, ``judge_score`` and ``judge_error``. A record whose
    prediction ``error`` is set is not sent: its judge fields are null and it is counted as errored. A
    judge failure has ``judge_error`` set and null verdict fields -- it is not a wrong answer.

    Calling this again on the same records with an :class:`OpenAIJudge` that has a cache sends only
    the earlier failures: every successful verdict comes from the cache.

    ``progress``: None/False for silence, True for a bar (terminal) or periodic stderr lines, or a
    callable ``(done, total)``.
    """
    t0 = time.monotonic()
    recs = list(records)
    stats = JudgeStats(total=len(recs))
    rinfo = judge.record_info()
    todo: list[int] = []
    items: list[tuple[str, str, str]] = []
    out: list[dict[str, Any]] = []
    for i, r in enumerate(recs):
        if not isinstance(r, Mapping):
            raise JudgeInputError(f"record {i}: expected a JSON object, got {type(r).__name__}")
        missing = [k for k in ("question", "answer", "prediction", "error") if k not in r]
        if missing:
            raise JudgeInputError(f"{_rid(i, r)}: missing field(s) {', '.join(missing)}")
        base = {k: v for k, v in r.items() if k not in JUDGE_FIELDS}
        base.update({"judge": dict(rinfo), "judge_pred": None, "judge_score": None, "judge_error": None})
        out.append(base)
        if r["error"] is not None:
            stats.errored += 1
            continue
        q, a, p = r["question"], r["answer"], r["prediction"]
        bad = [k for k, v in (("question", q), ("answer", a), ("prediction", p)) if not isinstance(v, str)]
        if bad:
            raise JudgeInputError(f"{_rid(i, r)}: field(s) {', '.join(bad)} must be strings")
        todo.append(i)
        items.append((q, a, p))
    verdicts = judge.judge_many(items, stats=stats, progress=progress) if items else []
    for i, v in zip(todo, verdicts):
        out[i]["judge_pred"], out[i]["judge_score"], out[i]["judge_error"] = v.pred, v.score, v.error
    stats.seconds = time.monotonic() - t0
    return out, stats


__all__ = [
    "DEFAULT_TEMPLATE", "JUDGE_FIELDS", "JudgeAuthError", "JudgeConfigError", "JudgeError", "JudgeInputError",
    "JudgeStats", "JudgeUnavailable", "MalformedReply", "OfflineJudge", "OpenAIJudge", "Template",
    "TemplateError", "Verdict", "default_template_path", "judge_records", "load_template", "normalize_answer",
    "offline_match", "parse_reply", "retry_after_seconds", "sanitize_label",
]
