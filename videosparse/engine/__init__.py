"""The pruning engine, written once for every model family.

It never replaces a forward and never copies a decoder body: the stock decoder runs as it is, and the
engine works through forward hooks that transformers calls anyway:

* a pre-hook on the family's multimodal model finds the visual tokens of a prefill (the family's
  ``locate``), before the placeholders are replaced by features;
* a pre-hook on the decoder opens a run: a :class:`~videosparse.engine.state.PrefillRun` for a prefill
  with visual tokens, a :class:`~videosparse.engine.state.DecodeRun` for a step on a pruned cache;
* pre-hooks on the decoder layers give each layer the inputs of the current, shorter sequence (rotary
  cos/sin gathered or recomputed, causal mask rebuilt, gapped positions dropped) and, at a stage layer,
  read the rater rows' post-rotary queries from the layer's input;
* a forward hook on each stage layer scores, selects and returns the layer's output with only the kept
  rows, so layers after it run on the shorter sequence;
* a forward hook on the decoder closes the run: the kept indices are stored on the cache for the decode
  steps and the trace is recorded.

The family (``videosparse.models``) answers the questions only it can: where the visual tokens are, how
a layer's queries/keys are projected and rotated, how rotary tables are indexed.
"""

from videosparse.engine.engine import PruningEngine

__all__ = ["PruningEngine"]
