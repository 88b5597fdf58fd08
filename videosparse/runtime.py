"""The process around a run: how many torch threads to use, and transformers' progress bars and log.

Used by the CLI and ``VideoQA.from_pretrained``; no torch import at module level.
"""

from __future__ import annotations

import contextlib
import math
import os


def default_threads(cpus: int | None = None, load: float | None = None) -> int:
    """Torch threads for a process that did not choose: the CPUs it may use minus the CPUs other processes keep
    busy, at least 1.

    cpus: the usable CPUs (``os.sched_getaffinity``; ``os.cpu_count`` where that does not exist), capped by a
    cgroup v2 CPU quota (``/sys/fs/cgroup/cpu.max``) when one is set. load: the 1-minute load average
    (``os.getloadavg``; 0 where unavailable). Rule: ``ceil(cpus - load - 0.5)`` clamped to [1, cpus], i.e. a
    core counts as taken once the load on it reaches one half. On 2 CPUs: load < 0.5 -> 2 threads, load >= 0.5
    -> 1. Oversubscribing a busy machine is what costs (on a shared 2-core machine torch's default of one
    thread per core made prefill 7-46x slower than one thread, scripts/bench_threads.py); one thread too few
    costs at most the parallel speed-up. The load average lags by about a minute: a job that has just started
    is not seen."""
    if cpus is None:
        cpus = usable_cpus()
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            load = 0.0
    cpus = max(1, int(cpus))
    return max(1, min(cpus, math.ceil(cpus - float(load) - 0.5)))


def usable_cpus() -> int:
    """CPUs this process may run on: its CPU affinity (``os.cpu_count`` where that does not exist), capped by a
    cgroup v2 CPU quota when one is set."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_cpus()
    return max(1, min(cpus, quota) if quota is not None else cpus)


def _cgroup_cpus(path: str = "/sys/fs/cgroup/cpu.max") -> int | None:
    """CPUs allowed by a cgroup v2 quota ("200000 100000" -> 2), None when unlimited or unknown."""
    try:
        with open(path) as fh:
            quota, period = fh.read().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return max(1, math.ceil(int(quota) / int(period)))
    except (ValueError, ZeroDivisionError):
        return None


@contextlib.contextmanager
def hf_output(progress: bool = True, warnings: bool = True):
    """While inside: transformers' progress bars (the weight-loading bar; the hub's download bars) off unless
    ``progress``, and transformers' log at errors only unless ``warnings``. Uses transformers' own switches
    (``transformers.utils.logging``), and restores the previous settings on exit."""
    if progress and warnings:
        yield
        return
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    try:
        from huggingface_hub.utils import are_progress_bars_disabled

        hub_bars = not are_progress_bars_disabled()
    except ImportError:  # pragma: no cover
        hub_bars = bars
    verbosity = hf_logging.get_verbosity()
    if not progress:
        hf_logging.disable_progress_bar()
    if not warnings:
        hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if not progress:
            if bars:
                hf_logging.enable_progress_bar()  # also the hub's
            if not hub_bars:
                from huggingface_hub.utils import disable_progress_bars

                disable_progress_bars()
