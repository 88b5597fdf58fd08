"""The long-video path: chunked decode and vision tower, and a question-guided pool before the decoder.

`build_pools` streams the sampled frames of one video chunk by chunk; every chunk is encoded (vision tower +
projector), scored against each question's text tokens (`videosparse.core.pool`), and merged into one
running pool per question that never holds more than `capacity` tokens. What stays alive between chunks is
the pools, the previous frame's features (for temporal redundancy) and one float per token seen (the score,
for the trace): the memory of features grows with the pool, not with the number of frames.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
import torch

from videosparse.core.pool import (
    AffinityStats,
    floor_windows,
    relevance_scores,
    repeats_previous,
    select_pool,
    text_affinity,
)

logger = logging.getLogger(__name__)

# more sampled frames than this is refused (a clear error, not hours of vision-tower work)
MAX_FRAMES = 10_000
# side (px) of the per-frame thumbnails a long-video Answer keeps for heatmaps
THUMBNAIL_SIDE = 96


@dataclass
class PooledVideo:
    """The pool of one question about one long video: what enters the decoder, and where it came from.

    features: (K, D) projected visual tokens, frame-major in temporal order; ids: (K,) long, their
    coordinates ``frame * P + p`` among the T sampled frames; timestamps / frame_indices: (T,) seconds and
    source indices of the sampled frames; scores: (T * P,) float32 pre-selection score of every sampled
    token (for pooled tokens the final one, for dropped ones the score when it was dropped); redundant:
    (T * P,) bool temporal-redundancy flags; window: (frames per floor window, tokens each window keeps);
    seconds: wall time of the phases shared by the video's questions (video_decode, vision, preselect);
    peak_pool: the most tokens the pool held at any time; thumbnails: uint8 (T, s, s, 3) model-view frames
    for heatmaps (None when not kept).
    """

    features: torch.Tensor
    ids: torch.Tensor
    num_frames: int
    tokens_per_frame: int
    timestamps: np.ndarray
    frame_indices: np.ndarray
    scores: torch.Tensor
    redundant: torch.Tensor
    window: tuple
    method: str
    capacity: int
    video: str = "<array>"
    seconds: dict = field(default_factory=dict)
    peak_pool: int = 0
    thumbnails: np.ndarray | None = None
    # per-token payload gathered with the features (K, A): what a family adds to the pooled tokens besides their
    # features (Qwen3-VL's deepstack features, concatenated); None when the encoder gives none
    aux: torch.Tensor | None = None
    grid: tuple | None = None  # (rows, cols) of a frame's tokens when the family's grid is per video (Qwen-VL)
    extra: dict = field(default_factory=dict)  # the family's per-video metadata (Qwen-VL: grid, times, spans)

    @property
    def num_tokens(self) -> int:
        return int(self.ids.shape[0])


def question_text_tokens(tokenizer: Any, template: str, questions: list, embed: Callable,
                         video_token: str = "<video>") -> tuple[torch.Tensor, torch.Tensor]:
    """Input embeddings of the text after the video in each question's prompt (the raters' candidates).

    The prompt is tokenized whole (with one video token) so the tail is tokenized as in the real prompt.
    returns text (Q, Nt, D) and text_valid (Q, Nt) bool."""
    rows = []
    vid = tokenizer.convert_tokens_to_ids(video_token)
    for q in questions:
        ids = tokenizer(template.format(question=q.strip()), add_special_tokens=True, verbose=False)["input_ids"]
        if vid not in ids:
            raise ValueError(f"the prompt template has no {video_token!r} token after tokenization")
        tail = ids[ids.index(vid) + 1:]
        if not tail:
            raise ValueError("the prompt has no text after the video (the question must follow <video>)")
        rows.append(tail)
    nt = max(len(r) for r in rows)
    ids_t = torch.zeros(len(rows), nt, dtype=torch.long)
    valid = torch.zeros(len(rows), nt, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids_t[i, : len(r)] = torch.tensor(r)
        valid[i, : len(r)] = True
    with torch.no_grad():
        text = embed(ids_t)
    return text, valid


def build_pools(
    chunks: Iterable[Any],
    encode: Callable,
    text: torch.Tensor,
    text_valid: torch.Tensor,
    num_frames: int,
    tokens_per_frame: int,
    capacity: int,
    config: Any,
    *,
    thumbnail: Callable | None = None,
    on_chunk: Callable | None = None,
) -> list:
    """Stream the chunks of one video into one pool per question.

    chunks: iterable of `videosparse.video.Clip` (frames in temporal order, ``num_frames`` in total);
    encode: frames uint8 (Tc, H, W, 3) -> (Tc, P, D) projected features, or (features, aux (Tc, P, A)): a
    per-token payload the pool gathers alongside (PooledVideo.aux); text / text_valid: from
    `question_text_tokens`; capacity: the pool size (pre_budget); config: a SparseConfig (its `long`
    LongVideoConfig, and `seed` for method='random');
    thumbnail: optional frames -> uint8 (Tc, s, s, 3); on_chunk: optional callable(frames_done, pools) run
    after every chunk (pools: (Q, K, D) tensor), e.g. to watch memory.
    returns [PooledVideo] in question order.
    """
    P = tokens_per_frame
    Q = int(text.shape[0])
    dev = text.device
    long = config.long
    fpw, per_window = floor_windows(num_frames, capacity, long.frame_floor, long.floor_share, P)
    n_windows = int(math.ceil(num_frames / fpw))
    global_count = capacity - per_window * n_windows
    stats = AffinityStats.empty(Q, int(text.shape[1]), dev)
    all_scores = torch.full((Q, num_frames * P), float("nan"))
    all_red = torch.zeros(num_frames * P, dtype=torch.bool)
    random_table = None
    if long.method == "random":
        g = torch.Generator(device="cpu").manual_seed(int(config.seed))
        random_table = torch.rand(num_frames * P, generator=g)
    pool_feats: torch.Tensor | None = None  # (Q, K, D)
    pool_aux: torch.Tensor | None = None  # (Q, K, A) when the encoder gives a payload
    pool_ids = torch.zeros(Q, 0, dtype=torch.long, device=dev)
    pool_logits = torch.zeros(Q, 0, int(text.shape[1]), device=dev)
    pool_red = torch.zeros(Q, 0, dtype=torch.bool, device=dev)
    prev = None
    timestamps: list = []
    indices: list = []
    thumbs: list = []
    seconds = {"video_decode": 0.0, "vision": 0.0, "preselect": 0.0}
    peak = 0
    done = 0
    video_name = "<array>"
    it = iter(chunks)
    while True:
        t0 = time.perf_counter()
        try:
            clip = next(it)
        except StopIteration:
            break
        t1 = time.perf_counter()
        seconds["video_decode"] += t1 - t0
        video_name = str(getattr(clip, "path", None) or video_name)
        with torch.no_grad():
            feats = encode(clip.frames)  # (Tc, P, D) or ((Tc, P, D), (Tc, P, A))
        aux = None
        if isinstance(feats, tuple):
            feats, aux = feats
        t2 = time.perf_counter()
        seconds["vision"] += t2 - t1
        Tc = int(feats.shape[0])
        if feats.shape[1] != P:
            raise ValueError(f"the vision tower gave {feats.shape[1]} tokens per frame, expected {P}")
        if done + Tc > num_frames:
            raise ValueError(f"the video yielded more than the {num_frames} sampled frames")
        timestamps.extend(float(x) for x in clip.timestamps)
        indices.extend(int(x) for x in clip.indices)
        if thumbnail is not None:
            thumbs.append(thumbnail(clip.frames))
        del clip
        flat = feats.reshape(Tc * P, -1)
        flat_aux = None if aux is None else aux.reshape(Tc * P, -1)
        new_ids = torch.arange(done * P, (done + Tc) * P, device=dev)
        with torch.no_grad():
            red = repeats_previous(feats, prev, long.temporal_tau) if long.temporal_tau is not None \
                else torch.zeros(Tc, P, dtype=torch.bool, device=dev)
            red = red.reshape(-1)
            prev = feats[-1].clone()
            cand_ids = torch.cat([pool_ids, new_ids.expand(Q, -1)], dim=1)
            cand_red = torch.cat([pool_red, red.expand(Q, -1)], dim=1)
            if random_table is None:
                new_logits = text_affinity(flat, text)
                stats = stats.update(new_logits)
                cand_logits = torch.cat([pool_logits, new_logits], dim=1)
                score = relevance_scores(cand_logits, stats, text_valid)
                score = score - long.temporal_penalty * cand_red.float()
            else:  # the random baseline stays content-blind (no redundancy penalty)
                cand_logits = None
                score = random_table.to(dev)[cand_ids]
            all_scores[:, done * P:(done + Tc) * P] = score[:, -Tc * P:].float().cpu()
            all_red[done * P:(done + Tc) * P] = red.cpu()
            window = (cand_ids // P) // fpw
            keep = select_pool(score, window, per_window, global_count)  # (Q, K) indices into candidates
            K_old = pool_ids.shape[1]
            new_feats, new_aux = [], []
            for q in range(Q):
                k = keep[q]
                old = k[k < K_old]
                fresh = k[k >= K_old] - K_old
                parts, aux_parts = [], []
                if pool_feats is not None and old.numel():
                    parts.append(pool_feats[q].index_select(0, old))
                    if pool_aux is not None:
                        aux_parts.append(pool_aux[q].index_select(0, old))
                if fresh.numel():
                    parts.append(flat.index_select(0, fresh))
                    if flat_aux is not None:
                        aux_parts.append(flat_aux.index_select(0, fresh))
                new_feats.append(torch.cat(parts, dim=0))
                if flat_aux is not None:
                    new_aux.append(torch.cat(aux_parts, dim=0))
                del parts, aux_parts
            pool_feats = torch.stack(new_feats)
            pool_aux = torch.stack(new_aux) if new_aux else None
            pool_ids = cand_ids.gather(1, keep)
            pool_red = cand_red.gather(1, keep)
            # the final scores of the pooled tokens (relevance statistics moved since they were seen)
            all_scores.scatter_(1, pool_ids.cpu(), score.gather(1, keep).float().cpu())
            if cand_logits is not None:
                pool_logits = cand_logits.gather(1, keep[:, :, None].expand(-1, -1, cand_logits.shape[-1]))
            del feats, flat, flat_aux, aux, cand_logits, score, keep, new_feats, new_aux
        peak = max(peak, int(pool_ids.shape[1]))
        done += Tc
        seconds["preselect"] += time.perf_counter() - t2
        if on_chunk is not None:
            on_chunk(done, pool_feats)
    if done != num_frames:
        raise ValueError(f"{video_name}: expected {num_frames} sampled frames, the video yielded {done}")
    thumbs_arr = np.concatenate(thumbs) if thumbs else None
    ts = np.asarray(timestamps, dtype=np.float64)
    ix = np.asarray(indices, dtype=np.int64)
    return [
        PooledVideo(features=pool_feats[q], ids=pool_ids[q].cpu(), num_frames=num_frames, tokens_per_frame=P,
                    timestamps=ts, frame_indices=ix, scores=all_scores[q], redundant=all_red.clone(),
                    window=(fpw, per_window), method=long.method, capacity=capacity, video=video_name,
                    seconds=dict(seconds), peak_pool=peak, thumbnails=thumbs_arr,
                    aux=None if pool_aux is None else pool_aux[q])
        for q in range(Q)
    ]


def thumbnails(frames: np.ndarray, spec: Any, side: int = THUMBNAIL_SIDE) -> np.ndarray:
    """Model-view (resized, center-cropped) frames shrunk to at most ``side`` px, for heatmaps."""
    from PIL import Image

    from videosparse.heatmap import model_view

    view = frames if hasattr(spec, "merge_size") else model_view(frames, spec)  # Qwen-VL: the frames' own aspect
    h, w = view.shape[1:3]
    if max(h, w) <= side:
        return view
    s = side / max(h, w)
    size = (max(1, int(round(w * s))), max(1, int(round(h * s))))
    return np.stack([np.asarray(Image.fromarray(f).resize(size, Image.BILINEAR)) for f in view])
