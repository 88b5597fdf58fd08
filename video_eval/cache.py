"""A small sqlite cache of judge verdicts, so that re-judging a run costs nothing but its failures.

One row per judgement, keyed by the sha256 of (judge model, prompt-template sha256, question, answer,
prediction). A row holds the verdict (``pred``, ``score``), the judge's raw reply text, the model name
the server said it served, and when it was stored. Only successful judgements are stored: a judge
failure is never cached, so running the same judge again retries exactly the failures.

The cache never sees an API key: nothing about the connection (URL, key, headers) goes into it.

The database uses write-ahead logging, so several processes can share one cache file; inside one
process a single connection is shared by all threads behind a lock.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

CACHE_VERSION = 1
"""Part of every key: bump it to invalidate all older rows when the key recipe changes."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS judgements (
    key TEXT PRIMARY KEY,
    judge_model TEXT NOT NULL,
    template_sha256 TEXT,
    pred TEXT NOT NULL,
    score INTEGER NOT NULL,
    raw_reply TEXT,
    served_model TEXT,
    created REAL NOT NULL
)
"""


class CacheError(ValueError):
    """The cache file cannot be opened or is not a judge cache (corrupt, or some other database)."""


@dataclass(frozen=True)
class CachedJudgement:
    """One stored verdict."""

    pred: str
    score: int
    raw_reply: str | None
    served_model: str | None
    created: float


def cache_key(judge_model: str, template_sha256: str | None, question: str, answer: str, prediction: str) -> str:
    """The sha256 (hex) that identifies one judgement.

    The parts are serialised as a JSON list, so no choice of text can make two different tuples collide
    by concatenation.
    """
    blob = json.dumps([CACHE_VERSION, judge_model, template_sha256, question, answer, prediction],
                      ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class JudgeCache:
    """Thread-safe sqlite store of successful judgements.

    >>> cache = JudgeCache("/tmp/judge-cache.sqlite")   # doctest: +SKIP
    >>> k = cache_key("gpt-4o-mini", sha, "q?", "a", "pred")   # doctest: +SKIP
    >>> cache.put(k, judge_model="gpt-4o-mini", template_sha256=sha, pred="yes", score=5)   # doctest: +SKIP
    >>> cache.get(k).score   # doctest: +SKIP
    5
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path).expanduser()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CacheError(f"judge cache {self.path}: cannot create its directory ({e})") from None
        self._lock = threading.Lock()
        try:
            self._conn = sqlite3.connect(str(self.path), timeout=30.0, check_same_thread=False,
                                         isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute(_SCHEMA)
            cols = {row[1] for row in self._conn.execute("PRAGMA table_info(judgements)")}
        except sqlite3.DatabaseError as e:
            raise CacheError(f"judge cache {self.path}: not a usable sqlite database ({e}); "
                             f"delete it or choose another cache file") from None
        missing = {"key", "judge_model", "template_sha256", "pred", "score", "raw_reply", "served_model",
                   "created"} - cols
        if missing:
            self._conn.close()
            raise CacheError(f"judge cache {self.path}: table 'judgements' lacks columns {sorted(missing)} "
                             f"(not a video_eval judge cache); delete it or choose another cache file")

    # ------------------------------------------------------------------ access
    def get(self, key: str) -> CachedJudgement | None:
        """The stored judgement for ``key``, or None."""
        with self._lock:
            row = self._conn.execute(
                "SELECT pred, score, raw_reply, served_model, created FROM judgements WHERE key = ?", (key,)
            ).fetchone()
        if row is None:
            return None
        return CachedJudgement(pred=row[0], score=int(row[1]), raw_reply=row[2], served_model=row[3],
                               created=float(row[4]))

    def put(self, key: str, *, judge_model: str, template_sha256: str | None, pred: str, score: int,
            raw_reply: str | None = None, served_model: str | None = None) -> None:
        """Store a successful judgement (replacing an older row with the same key)."""
        if pred not in ("yes", "no") or not isinstance(score, int) or not 0 <= score <= 5:
            raise ValueError(f"refusing to cache an invalid verdict pred={pred!r} score={score!r}")
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO judgements (key, judge_model, template_sha256, pred, score, raw_reply, "
                "served_model, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (key, judge_model, template_sha256, pred, score, raw_reply, served_model, time.time()),
            )

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM judgements").fetchone()[0])

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            try:
                self._conn.close()
            except sqlite3.Error:
                pass

    def __enter__(self) -> "JudgeCache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"JudgeCache({str(self.path)!r})"
