"""Procedural synthetic video-QA: deterministic clips with known answers and known relevant regions.

A clip is ``num_frames`` RGB frames of ``grid x grid`` cells of ``cell`` pixels (defaults: 8 frames,
6 x 6 cells of 8 px = 48 x 48 px, so a ViT with 8 px patches sees one object per patch). Each clip has

* a cluttered static background: low-frequency coloured noise plus static "clutter" shapes in
  desaturated colours (grey, brown, beige, ...) present in every frame;
* 2-4 *keyed* objects, each with a unique saturated colour (the key a question names), a shape
  (square, circle, triangle, cross), a quadrant, and a visibility span of 2 consecutive frames in
  the first half ("early") or second half ("late") of the clip; half of them move one cell per frame
  inside their quadrant;
* optionally a *group*: 2 or 3 static copies of one more colour, all visible in the same 2 frames
  (the answer to "how many <colour> objects").

Questions (all keyed by colour, so they point at one small region in space and time):

==========  ===========================================  =========================================
type        question                                     answers
==========  ===========================================  =========================================
where       ``where is the red object``                  top left / top right / bottom left / bottom right
when        ``when does the red object appear``          early / late
shape       ``what shape is the red object``             square / circle / triangle / cross
count       ``how many red objects``                     one / two / three
==========  ===========================================  =========================================

The relevant region of a question (``Sample.target``) is the list of (frame, row, col) cells of the
asked-about object(s): 2, 4 or 6 of the clip's 8 x 36 = 288 patch tokens (about 1-2%). Everything here is
numpy only and deterministic from a seed. Scoring is exact match on the normalised answer string.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

# ----------------------------------------------------------------------------- vocabulary
COLORS: dict = {
    "red": (230, 30, 30),
    "green": (30, 200, 40),
    "blue": (40, 70, 240),
    "yellow": (240, 220, 20),
    "purple": (170, 40, 220),
    "cyan": (20, 220, 230),
}
# desaturated clutter colours: never named by a question
CLUTTER_COLORS: tuple = ((128, 128, 128), (120, 85, 50), (190, 175, 140), (90, 100, 90), (170, 150, 160))
SHAPES: tuple = ("square", "circle", "triangle", "cross")
QUADRANTS: tuple = ("top left", "top right", "bottom left", "bottom right")
WHEN: tuple = ("early", "late")
COUNTS: tuple = ("one", "two", "three")
QUESTION_TYPES: tuple = ("where", "when", "shape", "count")

QUESTION_TEMPLATES: dict = {
    "where": "where is the {c} object",
    "when": "when does the {c} object appear",
    "shape": "what shape is the {c} object",
    "count": "how many {c} objects",
}
ANSWERS: dict = {"where": QUADRANTS, "when": WHEN, "shape": SHAPES, "count": COUNTS}

# word used by the grounding targets for patches without a keyed object
BACKGROUND_WORD = "background"
# answer the test-bed model is trained to give when the asked-about tokens were removed from its
# later layers (never a correct answer)
UNKNOWN_WORD = "unknown"


def vocabulary() -> list:
    """Every plain word a prompt, an answer or a grounding target can contain (sorted, unique)."""
    words = {"USER:", "ASSISTANT:", BACKGROUND_WORD, UNKNOWN_WORD}
    for t in QUESTION_TEMPLATES.values():
        words.update(t.replace("{c}", "").split())
    for answers in ANSWERS.values():
        for a in answers:
            words.update(a.split())
    words.update(COLORS)
    words.update(SHAPES)
    return sorted(words)


# ----------------------------------------------------------------------------- data classes
@dataclass(frozen=True)
class GenConfig:
    """Geometry of the generated clips."""

    num_frames: int = 8
    grid: int = 6  # cells per side; must be even (quadrants)
    cell: int = 8  # pixels per cell (= the ViT patch size of the test-bed model)
    min_keyed: int = 2
    max_keyed: int = 4
    min_clutter: int = 5
    max_clutter: int = 9
    noise: float = 6.0  # per-frame pixel noise (std, 0-255 scale)

    @property
    def size(self) -> int:
        return self.grid * self.cell

    def __post_init__(self) -> None:
        if self.grid % 2 or self.grid < 4:
            raise ValueError(f"GenConfig.grid must be even and >= 4, got {self.grid}")
        if self.num_frames < 4 or self.num_frames % 2:
            raise ValueError(f"GenConfig.num_frames must be even and >= 4, got {self.num_frames}")
        if self.cell < 6:
            raise ValueError(f"GenConfig.cell must be >= 6 px, got {self.cell}")


@dataclass
class Obj:
    """One object: colour, shape and its cell (row, col) in each visible frame."""

    color: str
    shape: str
    cells: dict  # frame -> (row, col)
    keyed: bool = True  # colour unique in the clip (False for group copies)

    @property
    def frames(self) -> list:
        return sorted(self.cells)


@dataclass
class Clip:
    frames: np.ndarray  # (T, H, W, 3) uint8
    objects: list
    clutter: list  # [(row, col, shape, rgb)]
    config: GenConfig = field(default_factory=GenConfig)

    def objects_of(self, color: str) -> list:
        return [o for o in self.objects if o.color == color]


@dataclass
class Sample:
    """One question about one clip."""

    question: str
    answer: str
    qtype: str
    color: str
    target: list  # [(frame, row, col)] cells of the relevant object(s)
    frames: np.ndarray | None = None  # (T, H, W, 3) uint8; None once written to disk
    video: str | None = None  # path of the written video file
    seed: int | None = None
    index: int | None = None

    def to_json(self) -> dict:
        d = {k: v for k, v in dataclasses.asdict(self).items() if k != "frames"}
        d["target"] = [list(t) for t in self.target]
        return d


# ----------------------------------------------------------------------------- rendering
def _stamp(shape: str, cell: int) -> np.ndarray:
    """Boolean (cell, cell) mask of a shape centred in the cell (1 px margin)."""
    m = np.zeros((cell, cell), dtype=bool)
    lo, hi = 1, cell - 1  # drawable square [lo, hi)
    n = hi - lo
    yy, xx = np.mgrid[0:n, 0:n]
    c = (n - 1) / 2.0
    if shape == "square":
        s = np.ones((n, n), dtype=bool)
    elif shape == "circle":
        s = (yy - c) ** 2 + (xx - c) ** 2 <= (n / 2.0) ** 2 * 0.95
    elif shape == "triangle":
        # apex at top, base at the bottom row
        half = (yy + 1) / n * (n / 2.0)
        s = np.abs(xx - c) <= half
    elif shape == "cross":
        w = max(1, n // 3)
        a = (n - w) // 2
        s = np.zeros((n, n), dtype=bool)
        s[a : a + w, :] = True
        s[:, a : a + w] = True
    else:
        raise ValueError(f"unknown shape {shape!r}")
    m[lo:hi, lo:hi] = s
    return m


_STAMPS: dict = {}


def stamp(shape: str, cell: int) -> np.ndarray:
    key = (shape, cell)
    if key not in _STAMPS:
        _STAMPS[key] = _stamp(shape, cell)
    return _STAMPS[key]


def _background(rng: np.random.Generator, cfg: GenConfig) -> np.ndarray:
    """Static cluttered background: smooth coloured noise + stripes, dark-to-mid tones. (H, W, 3) float."""
    size = cfg.size
    low = rng.uniform(30, 110, size=(3, 3, 3))
    # bilinear upsample of a 3x3 colour field
    t = np.linspace(0, 2, size)
    i0 = np.clip(np.floor(t).astype(int), 0, 1)
    f = (t - i0)[:, None]
    rows = low[i0] * (1 - f[..., None]) + low[i0 + 1] * f[..., None]  # (size, 3, 3)
    j0 = i0
    g = (t - j0)[None, :, None]
    bg = rows[:, j0] * (1 - g) + rows[:, j0 + 1] * g  # (size, size, 3)
    # faint stripes at a random angle
    ang = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:size, 0:size]
    period = rng.uniform(5, 12)
    stripes = np.sin((xx * np.cos(ang) + yy * np.sin(ang)) * 2 * np.pi / period)
    bg = bg + 12.0 * stripes[..., None]
    bg = bg + rng.normal(0, 8.0, size=(size, size, 3))
    return bg


def render(clip_objects: Sequence[Obj], clutter: Sequence, rng: np.random.Generator, cfg: GenConfig) -> np.ndarray:
    """Draw the frames. Returns (T, H, W, 3) uint8."""
    bg = _background(rng, cfg)
    for (r, c, shape, rgb) in clutter:
        m = stamp(shape, cfg.cell)
        y, x = r * cfg.cell, c * cfg.cell
        bg[y : y + cfg.cell, x : x + cfg.cell][m] = rgb
    frames = np.repeat(bg[None], cfg.num_frames, axis=0)
    for o in clip_objects:
        m = stamp(o.shape, cfg.cell)
        rgb = np.asarray(COLORS[o.color], dtype=np.float64)
        for t, (r, c) in o.cells.items():
            y, x = r * cfg.cell, c * cfg.cell
            frames[t, y : y + cfg.cell, x : x + cfg.cell][m] = rgb
    if cfg.noise > 0:
        frames = frames + rng.normal(0, cfg.noise, size=frames.shape)
    return np.clip(np.rint(frames), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- layout
def quadrant_of(row: int, col: int, grid: int) -> str:
    h = grid // 2
    return QUADRANTS[(0 if row < h else 2) + (0 if col < h else 1)]


def _span(rng: np.random.Generator, cfg: GenConfig, half: int, length: int) -> list:
    """`length` consecutive frames inside half 0 (early) or 1 (late)."""
    hl = cfg.num_frames // 2
    start = int(rng.integers(0, hl - length + 1)) + half * hl
    return list(range(start, start + length))


def _keyed_object(rng, cfg: GenConfig, color: str, occupied: set) -> Obj | None:
    h = cfg.grid // 2
    for _ in range(50):
        quad = int(rng.integers(4))
        r0, c0 = (quad // 2) * h, (quad % 2) * h
        length = 2  # every object is visible in 2 consecutive frames (count = tokens / 2)
        frames = _span(rng, cfg, int(rng.integers(2)), length)
        moving = bool(rng.integers(2))
        if moving:
            axis = int(rng.integers(2))
            step = 1 if rng.integers(2) else -1
            # start so that length-1 steps stay inside the quadrant
            start = int(rng.integers(0, h - length + 1))
            if step < 0:
                start = h - 1 - start
            fixed = int(rng.integers(h))
            cells = {}
            for k, t in enumerate(frames):
                along = start + step * k
                rc = (r0 + along, c0 + fixed) if axis == 0 else (r0 + fixed, c0 + along)
                cells[t] = rc
        else:
            rc = (r0 + int(rng.integers(h)), c0 + int(rng.integers(h)))
            cells = {t: rc for t in frames}
        used = set(cells.values())
        if used & occupied:
            continue
        occupied |= used
        return Obj(color=color, shape=SHAPES[int(rng.integers(len(SHAPES)))], cells=cells, keyed=True)
    return None


def _group(rng, cfg: GenConfig, color: str, count: int, occupied: set) -> list | None:
    frames = _span(rng, cfg, int(rng.integers(2)), 2)
    free = [(r, c) for r in range(cfg.grid) for c in range(cfg.grid) if (r, c) not in occupied]
    if len(free) < count:
        return None
    pick = rng.choice(len(free), size=count, replace=False)
    objs = []
    for i in pick:
        rc = free[int(i)]
        occupied.add(rc)
        objs.append(Obj(color=color, shape=SHAPES[int(rng.integers(len(SHAPES)))], cells={t: rc for t in frames}, keyed=False))
    return objs


def make_clip(rng: np.random.Generator, cfg: GenConfig = GenConfig(), group_count: int | None = None) -> Clip:
    """One random clip. ``group_count`` in {0, 2, 3} forces the group size (None: random)."""
    if group_count is None:
        group_count = int(rng.choice([0, 2, 3]))
    if group_count not in (0, 2, 3):
        raise ValueError(f"group_count must be 0, 2 or 3, got {group_count}")
    n_keyed = int(rng.integers(cfg.min_keyed, cfg.max_keyed + 1))
    colors = list(rng.permutation(list(COLORS)))
    keyed_colors = colors[:n_keyed]
    group_color = colors[n_keyed] if group_count else None
    occupied: set = set()
    # clutter cells first (static, whole clip)
    n_clutter = int(rng.integers(cfg.min_clutter, cfg.max_clutter + 1))
    cells = rng.choice(cfg.grid * cfg.grid, size=n_clutter, replace=False)
    clutter = []
    for i in cells:
        rc = (int(i) // cfg.grid, int(i) % cfg.grid)
        occupied.add(rc)
        rgb = CLUTTER_COLORS[int(rng.integers(len(CLUTTER_COLORS)))]
        clutter.append((rc[0], rc[1], SHAPES[int(rng.integers(len(SHAPES)))], rgb))
    objects = []
    for col in keyed_colors:
        o = _keyed_object(rng, cfg, col, occupied)
        if o is not None:
            objects.append(o)
    if group_color is not None:
        g = _group(rng, cfg, group_color, group_count, occupied)
        if g:
            objects.extend(g)
    if not any(o.keyed for o in objects):  # pragma: no cover - practically impossible
        return make_clip(rng, cfg, group_count)
    frames = render(objects, clutter, rng, cfg)
    return Clip(frames=frames, objects=objects, clutter=clutter, config=cfg)


# ----------------------------------------------------------------------------- questions
def answer_for(clip: Clip, qtype: str, color: str) -> tuple:
    """(answer, target cells) of a question about ``color`` in ``clip`` (from the layout)."""
    objs = clip.objects_of(color)
    if not objs:
        raise ValueError(f"no {color} object in the clip")
    target = sorted((t, r, c) for o in objs for t, (r, c) in o.cells.items())
    if qtype == "count":
        return COUNTS[len(objs) - 1], target
    if len(objs) != 1:
        raise ValueError(f"'{qtype}' question needs a unique {color} object, found {len(objs)}")
    o = objs[0]
    if qtype == "shape":
        return o.shape, target
    if qtype == "when":
        return WHEN[0] if o.frames[0] < clip.config.num_frames // 2 else WHEN[1], target
    if qtype == "where":
        quads = {quadrant_of(r, c, clip.config.grid) for (r, c) in o.cells.values()}
        assert len(quads) == 1, quads
        return quads.pop(), target
    raise ValueError(f"unknown question type {qtype!r}")


def question_for(qtype: str, color: str) -> str:
    return QUESTION_TEMPLATES[qtype].format(c=color)


def questions(clip: Clip, rng: np.random.Generator, n: int, count_weight: int = 2) -> list:
    """``n`` distinct random questions about ``clip`` (fewer if the clip has fewer).

    ``count_weight``: how many times a group's count question is entered in the draw."""
    keyed = [o.color for o in clip.objects if o.keyed]
    group = sorted({o.color for o in clip.objects if not o.keyed})
    pool = [(qt, c) for c in keyed for qt in ("where", "when", "shape")]
    # count questions: one keyed colour ("one") and the group (weighted) so one/two/three balance
    pool += [("count", keyed[int(rng.integers(len(keyed)))])]
    pool += [("count", c) for c in group] * count_weight
    order = rng.permutation(len(pool))
    out, seen = [], set()
    for i in order:
        qt, c = pool[int(i)]
        if (qt, c) in seen:
            continue
        seen.add((qt, c))
        a, target = answer_for(clip, qt, c)
        out.append(Sample(question=question_for(qt, c), answer=a, qtype=qt, color=c, target=target))
        if len(out) == n:
            break
    return out


def make_sample(seed: int, index: int, cfg: GenConfig = GenConfig()) -> Sample:
    """Sample ``index`` of the evaluation stream ``seed``: question types cycle where/when/shape/count,
    answers of count questions cycle one/two/three (the clip is drawn to fit the chosen answer)."""
    qtype = QUESTION_TYPES[index % len(QUESTION_TYPES)]
    for attempt in range(100):
        rng = np.random.default_rng([int(seed), int(index), attempt, 0x5EED])
        if qtype == "count":
            want = (index // len(QUESTION_TYPES)) % len(COUNTS) + 1
            group_count = int(rng.choice([0, 2, 3])) if want == 1 else want
            clip = make_clip(rng, cfg, group_count=group_count)
            if want == 1:
                color = str(rng.choice([o.color for o in clip.objects if o.keyed]))
            else:
                group = [o.color for o in clip.objects if not o.keyed]
                if len(group) != want:  # the group did not fit: redraw
                    continue
                color = group[0]
        else:
            clip = make_clip(rng, cfg)
            color = str(rng.choice([o.color for o in clip.objects if o.keyed]))
        answer, target = answer_for(clip, qtype, color)
        return Sample(
            question=question_for(qtype, color), answer=answer, qtype=qtype, color=color, target=target,
            frames=clip.frames, seed=int(seed), index=int(index),
        )
    raise RuntimeError(f"could not draw sample {index} of seed {seed}")  # pragma: no cover


def make_dataset(seed: int, n: int, cfg: GenConfig = GenConfig()) -> list:
    """``n`` evaluation samples (one question per clip), deterministic from ``seed``."""
    return [make_sample(seed, i, cfg) for i in range(n)]


def training_batch(rng: np.random.Generator, batch: int, qa_per_clip: int, cfg: GenConfig = GenConfig(),
                   count_weight: int = 2) -> list:
    """[(clip, [Sample, ...])] for training: several questions packed per clip."""
    out = []
    for _ in range(batch):
        clip = make_clip(rng, cfg)
        out.append((clip, questions(clip, rng, qa_per_clip, count_weight)))
    return out


def patch_labels(clip: Clip) -> tuple:
    """Per-patch grounding words: (colour_words, shape_words), each a (T, grid, grid) array of str.

    A patch holding a keyed or group object gets its colour and shape word, every other patch
    (background, clutter) gets ``BACKGROUND_WORD``.
    """
    cfg = clip.config
    colors = np.full((cfg.num_frames, cfg.grid, cfg.grid), BACKGROUND_WORD, dtype=object)
    shapes = colors.copy()
    for o in clip.objects:
        for t, (r, c) in o.cells.items():
            colors[t, r, c] = o.color
            shapes[t, r, c] = o.shape
    return colors, shapes


def normalize_answer(text: str) -> str:
    """Lower-case, strip punctuation and special tokens, collapse spaces."""
    text = text.replace("</s>", " ").replace("<s>", " ").replace("<pad>", " ")
    keep = "".join(ch if ch.isalnum() or ch.isspace() else " " for ch in text.lower())
    return " ".join(keep.split())


def exact_match(prediction: str, answer: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(answer)


# ----------------------------------------------------------------------------- video files
VIDEO_EXT = ".mp4"


def write_video(frames: np.ndarray, path: str, fps: int = 4) -> None:
    """Write (T, H, W, 3) uint8 frames losslessly: H.264 RGB (``libx264rgb``, crf 0) in MP4.

    PyAV decodes these files bit-exactly. (decord 0.6 cannot read frames whose width is not a
    multiple of its row alignment, e.g. 48 px; ``videosparse.video.load_video`` falls back to PyAV.)
    """
    import av

    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    with av.open(path, mode="w") as container:
        stream = container.add_stream("libx264rgb", rate=fps)
        stream.width = frames.shape[2]
        stream.height = frames.shape[1]
        stream.pix_fmt = "rgb24"
        stream.options = {"crf": "0", "preset": "ultrafast"}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def read_video_pyav(path: str) -> np.ndarray:
    """All frames of a video as (T, H, W, 3) uint8 via PyAV (fallback reader)."""
    import av

    with av.open(path) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def write_dataset(samples: Iterable[Sample], out_dir: str) -> str:
    """Write each sample's clip as a video file plus ``questions.jsonl``. Returns the jsonl path.

    The frames are dropped from the returned/written records; read them back with
    ``load_samples`` (through ``videosparse.video`` when available).
    """
    os.makedirs(out_dir, exist_ok=True)
    jsonl = os.path.join(out_dir, "questions.jsonl")
    with open(jsonl, "w") as fh:
        for i, s in enumerate(samples):
            name = f"clip_{s.seed}_{s.index if s.index is not None else i:06d}{VIDEO_EXT}"
            write_video(s.frames, os.path.join(out_dir, name))
            rec = s.to_json()
            rec["video"] = name
            fh.write(json.dumps(rec) + "\n")
    return jsonl


def load_samples(jsonl: str, num_frames: int = 8, with_frames: bool = True) -> list:
    """Read ``questions.jsonl`` written by ``write_dataset``; decode each video (through
    ``videosparse.video.load_video`` when that module exists, PyAV otherwise)."""
    base = os.path.dirname(os.path.abspath(jsonl))
    out = []
    with open(jsonl) as fh:
        for line in fh:
            rec = json.loads(line)
            rec["target"] = [tuple(t) for t in rec["target"]]
            path = os.path.join(base, rec["video"])
            s = Sample(**{**rec, "video": path})
            if with_frames:
                s.frames = decode_video(path, num_frames)
            out.append(s)
    return out


def decode_video(path: str, num_frames: int = 8) -> np.ndarray:
    """(num_frames, H, W, 3) uint8 through the package's decoder (uniform sampling), PyAV fallback."""
    try:
        from videosparse.video import load_video  # type: ignore
    except ImportError:
        load_video = None
    if load_video is not None:
        clip = load_video(path, num_frames=num_frames, strategy="uniform")
        return np.asarray(clip.frames)
    frames = read_video_pyav(path)
    idx = np.linspace(0, len(frames) - 1, num_frames).round().astype(int)
    return frames[idx]
