"""Integrations of videosparse with other tools.

* :mod:`videosparse.integrations.lmms_eval`: an lmms-eval model (``lmms-eval --model videosparse``), found by
  lmms-eval through the ``lmms_eval.models`` entry point this package declares. Importing it imports neither
  lmms-eval nor torch; see ``docs/lmms-eval.md``.
"""
