"""Long-video pre-selection: a running pool of at most `capacity` visual tokens, chosen before the decoder.

Frames arrive in chunks (frame-major, in temporal order). Every visual token gets a question-guided
score from the projected features (the decoder's input) and the question tokens' input embeddings, the
layer-0 signal SparseVLM's raters use; the pool keeps each time window's best tokens (the floor) plus the
globally best of the rest. Pure tensor code: no transformers, no modules, no I/O.

Ids: a visual token of the sampled video is ``frame * P + p`` (frame index among the sampled frames,
p the in-frame index, 0 = CLS), the coordinates of `RetentionTrace`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class AffinityStats:
    """Running moments of the visual-to-text affinities, per question q and text token t.

    count (Q, 1), total (Q, Nt), total_sq (Q, Nt): float64 sums over every visual token seen so far.
    """

    count: torch.Tensor
    total: torch.Tensor
    total_sq: torch.Tensor

    @classmethod
    def empty(cls, num_questions: int, num_text: int, device: torch.device | str = "cpu") -> "AffinityStats":
        z = torch.zeros(num_questions, num_text, dtype=torch.float64, device=device)
        return cls(torch.zeros(num_questions, 1, dtype=torch.float64, device=device), z, z.clone())

    def update(self, logits: torch.Tensor) -> "AffinityStats":
        """A new AffinityStats that also counts `logits` (Q, N, Nt)."""
        x = logits.double()
        return AffinityStats(self.count + x.shape[1], self.total + x.sum(1), self.total_sq + (x * x).sum(1))

    def mean_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(Q, Nt) mean and standard deviation (float32; std floored at 1e-6)."""
        n = self.count.clamp(min=1)
        mean = self.total / n
        var = (self.total_sq / n - mean * mean).clamp(min=0)
        return mean.float(), var.sqrt().clamp(min=1e-6).float()


def text_affinity(visual: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Affinity of every visual token to every text token: dot products of the embeddings.

    visual: (N, D) projected visual features of the chunk (shared by all questions)
    text:   (Q, Nt, D) input embeddings of each question's text tokens (after the video)
    returns (Q, N, Nt) float32
    """
    return torch.einsum("nd,qtd->qnt", visual.float(), text.float())


def relevance_scores(logits: torch.Tensor, stats: AffinityStats, text_valid: torch.Tensor) -> torch.Tensor:
    """Question relevance of visual tokens: max over the valid text tokens of the standardised affinity.

    Each text token's affinity is standardised over the visual tokens seen so far (z-score), so a template
    word every token is close to adds nothing and a word only a few tokens match (the asked-about object)
    stands out. This is SparseVLM's rater idea (text tokens whose relevance stands above the rest) made
    per visual token, and it does not dilute as the video grows (a mean over all tokens would).

    logits: (Q, N, Nt) from `text_affinity`; text_valid: (Q, Nt) bool. returns (Q, N) float32.
    """
    mean, std = stats.mean_std()
    z = (logits.float() - mean[:, None, :]) / std[:, None, :]
    z = z.masked_fill(~text_valid[:, None, :], float("-inf"))
    out = z.max(dim=-1).values
    return torch.nan_to_num(out, neginf=0.0)


def repeats_previous(features: torch.Tensor, previous: torch.Tensor | None, tau: float) -> torch.Tensor:
    """Temporal redundancy: tokens nearly identical to the same spatial token of the previous frame.

    features: (T, P, D) projected features of consecutive sampled frames; previous: (P, D) features of the
    frame before features[0] (None: features[0] is the first frame). returns (T, P) bool, True where
    cos(features[t, p], frame before[p]) > tau.
    """
    T, P, _ = features.shape
    out = torch.zeros(T, P, dtype=torch.bool, device=features.device)
    f = features.float()
    if previous is not None:
        out[0] = torch.nn.functional.cosine_similarity(f[0], previous.float(), dim=-1, eps=1e-8) > tau
    if T > 1:
        out[1:] = torch.nn.functional.cosine_similarity(f[1:], f[:-1], dim=-1, eps=1e-8) > tau
    return out


def floor_windows(num_frames: int, capacity: int, frame_floor: int, floor_share: float,
                  tokens_per_frame: int) -> tuple[int, int]:
    """How the per-frame floor is kept when many frames share one pool.

    Floor tokens may use at most ``floor_share * capacity`` of the pool. When ``num_frames * frame_floor``
    fits, every frame keeps its best ``frame_floor`` tokens (window = 1 frame). Otherwise consecutive frames
    are grouped into windows of ``ceil(num_frames / slots)`` frames and each window keeps its best token,
    so the timeline keeps evenly spaced coverage. returns (frames_per_window, tokens_per_window); (1, 0) = no
    floor.
    """
    if frame_floor <= 0 or num_frames <= 0:
        return 1, 0
    slots = int(floor_share * capacity + 1e-9)
    per_frame = min(frame_floor, tokens_per_frame)
    if num_frames * per_frame <= slots:
        return 1, per_frame
    if slots < 1:
        return 1, 0
    return int(math.ceil(num_frames / slots)), 1


def select_pool(scores: torch.Tensor, window: torch.Tensor, per_window: int, global_count: int) -> torch.Tensor:
    """Choose the pool among the candidates (old pool + new chunk), for every question.

    scores: (Q, C) float; window: (Q, C) or (C,) long time window of each candidate (non-decreasing along C:
    the candidates are in temporal order); per_window: best tokens every window keeps (the floor); global_count: further
    tokens chosen by score among the rest. returns (Q, K) long candidate indices, ascending (temporal order
    kept); K = floor picks + min(global_count, the rest), the same for every question.
    Ties go to the earlier token.
    """
    Q, C = scores.shape
    dev = scores.device
    s = torch.nan_to_num(scores.float(), nan=float("-inf"))
    order = torch.argsort(s, dim=1, descending=True, stable=True)  # score desc, earlier first on ties
    floor_mask = torch.zeros(Q, C, dtype=torch.bool, device=dev)
    window = window.expand(Q, C)
    if per_window > 0:
        w_sorted = window.gather(1, order)
        by_window = torch.argsort(w_sorted, dim=1, stable=True)  # windows ascending, score desc inside
        perm = order.gather(1, by_window)
        w_perm = window.gather(1, perm)
        pos = torch.arange(C, device=dev).expand(Q, C)
        starts = torch.ones(Q, C, dtype=torch.bool, device=dev)
        starts[:, 1:] = w_perm[:, 1:] != w_perm[:, :-1]
        first = torch.where(starts, pos, torch.zeros_like(pos)).cummax(dim=1).values
        floor_mask.scatter_(1, perm, (pos - first) < per_window)
    rest = C - int(floor_mask[0].sum()) if Q else 0
    g = max(0, min(int(global_count), rest))
    if g > 0:
        ranked = torch.argsort(s.masked_fill(floor_mask, float("-inf")), dim=1, descending=True, stable=True)
        ranked_free = ~floor_mask.gather(1, ranked)
        # stable: the first g entries of `ranked` that are not floor picks
        take = ranked_free & (ranked_free.long().cumsum(dim=1) <= g)
        keep_mask = floor_mask.clone()
        keep_mask.scatter_(1, ranked, take | floor_mask.gather(1, ranked))
    else:
        keep_mask = floor_mask
    return keep_mask.nonzero()[:, 1].view(Q, -1)


def time_positions(ids: torch.Tensor, num_frames: int, tokens_per_frame: int, pool_size: int) -> torch.Tensor:
    """Position offsets (from the first visual token) of pooled tokens laid out on a virtual clip.

    The pool of ``pool_size`` tokens stands for ``S = pool_size // P`` frames spanning the whole video:
    sampled frame f of ``num_frames`` falls in slot ``f * S // num_frames`` and its token p sits at
    ``slot * P + p``, where it would be in an S-frame clip. Slots are non-decreasing in temporal order and
    offsets stay below ``S * P <= pool_size``; tokens of successive frames sharing a slot restart at the slot's
    start (so offsets may repeat or step back inside a slot; the causal order is the sequence order).

    ids: (..., K) long ``frame * P + p``. returns (..., K) long.
    """
    P = int(tokens_per_frame)
    S = max(1, int(pool_size) // P)
    frame = torch.div(ids, P, rounding_mode="floor")
    slot = torch.div(frame * S, max(1, int(num_frames)), rounding_mode="floor").clamp(max=S - 1)
    return slot * P + ids % P
