"""Progress of a long loop: a tqdm bar (items/s, ETA) on a terminal, a plain line every ``log_every``
seconds in a log, or a user callback ``(done, total)``. Thread-safe (judge workers update it)."""

from __future__ import annotations

import sys
import threading
import time
from typing import Callable


class Progress:
    """``total`` items; ``desc`` names the work (``"answering"``, ``"judging (gpt-4o)"``).

    enabled: False prints nothing. callback: called with (done, total) instead of printing.
    bar: allow a tqdm bar on a terminal (e.g. only on rank 0). prefix: put before log lines."""

    def __init__(self, total: int, desc: str, *, enabled: bool = True, callback: Callable | None = None,
                 log_every: float = 30.0, bar: bool = True, prefix: str = "", noun: str = "done") -> None:
        self.total, self.desc, self.prefix, self.noun = total, desc, prefix, noun
        self.done = 0
        self.enabled = enabled and total > 0
        self.callback = callback
        self.log_every = log_every
        self.t0 = self.last = time.monotonic()
        self._lock = threading.Lock()
        self.bar = None
        if self.enabled and callback is None and bar and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="q", desc=desc, dynamic_ncols=True, file=sys.stderr)

    def update(self, n: int = 1) -> None:
        if not self.enabled or n <= 0:
            return
        with self._lock:
            self.done += n
            if self.callback is not None:
                self.callback(self.done, self.total)
            elif self.bar is not None:
                self.bar.update(n)
            else:
                now = time.monotonic()
                if now - self.last >= self.log_every or self.done == self.total:
                    self.last = now
                    rate = self.done / max(now - self.t0, 1e-9)
                    eta = (self.total - self.done) / rate if rate > 0 else float("inf")
                    print(f"{self.prefix}{self.desc}: {self.done}/{self.total} {self.noun}, {rate:.2f} q/s, "
                          f"ETA {_hms(eta)}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _hms(s: float) -> str:
    if s == float("inf"):
        return "?"
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
