"""Which text tokens guide the selection of visual tokens ("raters").

Pure tensor code: no transformers, no modules, no I/O.
"""

from __future__ import annotations

import torch


def text_relevance(visual: torch.Tensor, text: torch.Tensor, text_valid: torch.Tensor) -> torch.Tensor:
    """SparseVLM rater relevance of each text token to the visual tokens.

    r_t = mean over visual v of softmax over (valid) text t of (v . t).

    visual:     (B, Nv, D) visual embeddings (layer-0 input)
    text:       (B, Nt, D) text embeddings (candidate raters)
    text_valid: (B, Nt) bool, False for padding / non-candidates
    returns     (B, Nt) float32, 0 where invalid
    """
    logits = torch.einsum("bvd,btd->bvt", visual.float(), text.float())
    logits = logits.masked_fill(~text_valid[:, None, :], float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    probs = torch.nan_to_num(probs, nan=0.0)  # a sample without valid text rows -> zeros
    return probs.mean(dim=1) * text_valid


def select_raters(
    visual: torch.Tensor,
    text: torch.Tensor,
    text_valid: torch.Tensor,
    mode: str = "sparsevlm",
) -> torch.Tensor:
    """Choose rater tokens among the candidate text tokens.

    visual:     (B, Nv, D)
    text:       (B, Nt, D)
    text_valid: (B, Nt) bool
    mode: 'sparsevlm' -> valid tokens with relevance strictly above the mean relevance of the valid
          tokens (all valid tokens if none is above, e.g. a single candidate or all equal);
          'last' -> the last valid token; 'all' -> every valid token.
    returns (B, Nt) bool rater mask (subset of text_valid; at least one per sample that has one valid)
    """
    if mode == "all":
        return text_valid.clone()
    if mode == "last":
        B, Nt = text_valid.shape
        pos = torch.arange(Nt, device=text_valid.device).expand(B, Nt)
        last = torch.where(text_valid, pos, torch.full_like(pos, -1)).max(dim=1).values
        out = torch.zeros_like(text_valid)
        has = last >= 0
        out[has.nonzero(as_tuple=True)[0], last[has]] = True
        return out
    if mode != "sparsevlm":
        raise ValueError(f"raters: unknown mode {mode!r}")
    rel = text_relevance(visual, text, text_valid)
    count = text_valid.sum(dim=1, keepdim=True).clamp(min=1)
    mean = rel.sum(dim=1, keepdim=True) / count
    raters = (rel > mean) & text_valid
    empty = ~raters.any(dim=1)
    if empty.any():
        raters[empty] = text_valid[empty]
    return raters
