"""The lmms-eval tests run only where lmms-eval is installed (its own environment, docs/lmms-eval.md); the main
suite's environment lacks it on purpose and skips them. ``--require-lmms`` (the CI step's) turns that skip into a
failure: there lmms-eval must be importable and no test of this folder may be skipped."""

from __future__ import annotations

import importlib.util

import pytest


def pytest_addoption(parser):
    parser.addoption("--require-lmms", action="store_true", default=False,
                     help="fail (instead of skipping) when lmms-eval is not importable or a test in tests/lmms is "
                          "skipped")


def _required(config) -> bool:
    try:
        return bool(config.getoption("--require-lmms"))
    except ValueError:  # the option is registered only when tests/lmms is on the command line
        return False


def pytest_configure(config):
    if _required(config) and importlib.util.find_spec("lmms_eval") is None:
        raise pytest.UsageError("--require-lmms: lmms-eval is not importable in this environment; install it as "
                                "docs/lmms-eval.md says (pip install -e '.[lmms]' && pip install --no-deps lmms-eval==0.7.3)")


def pytest_sessionfinish(session, exitstatus):
    if not _required(session.config):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter is not None else 0
    if skipped:
        if reporter is not None:
            reporter.write_line(f"--require-lmms: {skipped} test(s) skipped; every lmms-eval test must run here",
                                red=True)
        session.exitstatus = 1
