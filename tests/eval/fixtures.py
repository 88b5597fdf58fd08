"""Fixture datasets in the real layouts of the Video-LLaVA zero-shot QA releases, with test-bed videos.

``make_fixture_dataset(root, "msvd")`` writes ``root/MSVD_Zero_Shot_QA/{test_q.json, test_a.json,
videos/*.avi}`` (and likewise ``MSRVTT_Zero_Shot_QA/videos/all/video<N>.mp4``,
``Activitynet_Zero_Shot_QA/all_test/v_<id>.mp4|.mkv|.webm``, ``TGIF_Zero_Shot_QA/mp4/<gif>.mp4``):
the releases' folder and file names, JSON structure and id types, and video containers. Clips and
questions come from the procedural test bed (``videosparse.testbed.synthetic``: 8 frames of 48 x 48,
the test bed's small vocabulary), so the embedded test-bed model can answer them.

Question ids follow the releases' ``"v_<video_name>_<k>"`` string scheme; answer files carry an int
``type`` where the release has one (ActivityNet-QA's codes, TGIF FrameQA's codes) and none for
MSVD/MSRVTT.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

__all__ = ["make_fixture_dataset", "RELEASE_DIRS", "write_clip"]

RELEASE_DIRS = {
    "msvd": ("MSVD_Zero_Shot_QA", "videos"),
    "msrvtt": ("MSRVTT_Zero_Shot_QA", "videos/all"),
    "activitynet": ("Activitynet_Zero_Shot_QA", "all_test"),
    "tgif": ("TGIF_Zero_Shot_QA", "mp4"),
}
# ActivityNet-QA answer types: 2 temporal relation, 5 object, 6 location, 7 number
ACTIVITYNET_TYPES = {"where": 6, "when": 2, "shape": 5, "count": 7}
# TGIF FrameQA types: 0 object, 1 number, 2 color, 3 location (no temporal type: "when" -> object)
TGIF_TYPES = {"where": 3, "when": 0, "shape": 0, "count": 1}
ACTIVITYNET_EXTS = (".mp4", ".mkv", ".webm")
_YT = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
FPS = 8


def _youtube_id(rng: np.random.Generator, first: str | None = None) -> str:
    chars = [_YT[int(i)] for i in rng.integers(0, len(_YT), 11)]
    if first is not None:
        chars[0] = first
    return "".join(chars)


def _video_names(name: str, n: int, rng: np.random.Generator) -> list[str]:
    if name == "msvd":  # <youtube id>_<start>_<end>; the first starts with "-" like many real ones
        out = []
        for i in range(n):
            start = int(rng.integers(0, 200))
            out.append(f"{_youtube_id(rng, '-' if i == 0 else None)}_{start}_{start + int(rng.integers(3, 20))}")
        return out
    if name == "msrvtt":  # the test split is video7010 .. video9999
        return [f"video{7010 + 3 * i}" for i in range(n)]
    if name == "activitynet":  # bare YouTube ids in the question file
        return [_youtube_id(rng, "_" if i == 1 else None) for i in range(n)]
    if name == "tgif":
        return ["tumblr_" + "".join(_YT[int(i)] for i in rng.integers(0, 62, 16)) + "o1_250" for _ in range(n)]
    raise ValueError(f"unknown fixture dataset {name!r}")


def _write_vp9(path: str, frames: np.ndarray) -> None:
    """VP9 in WebM. PyAV's libvpx encoders cannot be opened once decord is imported in the process,
    so then the file is written by a clean subprocess."""
    from videosparse.video.synth import write_video

    opts = {"crf": "4", "b:v": "0", "deadline": "good", "cpu-used": "8"}
    if "decord" not in sys.modules:
        write_video(path, iter(frames), codec="libvpx-vp9", fps=FPS, options=opts)
        return
    npy = path + ".npy"
    np.save(npy, frames)
    code = ("import sys, json, numpy as np\n"
            "from videosparse.video.synth import write_video\n"
            "write_video(sys.argv[2], iter(np.load(sys.argv[1])), codec='libvpx-vp9', fps=int(sys.argv[3]), "
            "options=json.loads(sys.argv[4]))\n")
    env = dict(os.environ)
    repo = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
    try:
        subprocess.run([sys.executable, "-c", code, npy, path, str(FPS), json.dumps(opts)], check=True, env=env,
                       capture_output=True, timeout=120)
    finally:
        os.unlink(npy)


def _write_gif(path: str, frames: np.ndarray) -> None:
    from PIL import Image

    imgs = [Image.fromarray(f) for f in frames]
    imgs[0].save(path, save_all=True, append_images=imgs[1:], duration=1000 // FPS, loop=0, optimize=False)


def write_clip(path: str | os.PathLike, frames: np.ndarray) -> str:
    """Write ``frames`` (T, H, W, 3) uint8 in the container/codec the extension implies, each frame once."""
    from videosparse.video.synth import write_video

    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    if ext == ".avi":  # MSVD: MPEG-4 part 2 (xvid-like) at the finest quantiser, no B-frames
        write_video(path, iter(frames), codec="mpeg4", fps=FPS, options={"qscale": "1", "bf": "0"})
    elif ext in (".mp4", ".mkv"):  # H.264, low crf
        write_video(path, iter(frames), codec="libx264", fps=FPS,
                    options={"crf": "8", "preset": "ultrafast", "bf": "0"})
    elif ext == ".webm":
        _write_vp9(path, frames)
    elif ext == ".gif":
        _write_gif(path, frames)
    else:
        raise ValueError(f"no writer for {ext!r}")
    return path


def make_fixture_dataset(
    root: str | os.PathLike,
    name: str,
    *,
    n_videos: int = 4,
    questions_per_video: int = 3,
    seed: int = 0,
    missing: int = 0,
    corrupt: int = 0,
    gif: bool = False,
    shuffle_answers: bool = False,
    split: str = "test",
) -> dict:
    """Write a small dataset in the real layout of ``name``'s release under ``root``.

    Args:
        root: parent folder; the dataset goes to ``root/<release folder>`` (e.g. ``MSVD_Zero_Shot_QA``).
        name: ``msvd``, ``msrvtt``, ``activitynet`` or ``tgif``.
        n_videos, questions_per_video: size (each video gets that many distinct questions).
        seed: everything is deterministic from it.
        missing: the last ``missing`` videos are listed in the question file but not written.
        corrupt: the ``corrupt`` videos before those are written as random bytes (right extension).
        gif: TGIF only — write the original GIFs into ``videos/`` instead of the release's ``mp4/``.
        shuffle_answers: write the answer file in a different order than the question file.

    Returns:
        ``{"name", "root", "questions", "answers", "video_dir", "items", "videos", "video_files",
        "missing", "corrupt"}`` — ``items`` are dicts ``question_id, video_name, question, answer, type``
        (``type`` as ``str`` or ``None``, as the loader reports it) in question-file order.
    """
    from videosparse.testbed.synthetic import GenConfig, make_clip, questions as draw_questions

    if name not in RELEASE_DIRS:
        raise ValueError(f"unknown fixture dataset {name!r}; one of {', '.join(RELEASE_DIRS)}")
    if missing + corrupt > n_videos:
        raise ValueError("missing + corrupt exceeds n_videos")
    release, vsub = RELEASE_DIRS[name]
    if name == "tgif" and gif:
        vsub = "videos"
    droot = Path(root) / release
    vdir = droot / vsub
    vdir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    cfg = GenConfig()
    names = _video_names(name, n_videos, rng)
    n_missing_start = n_videos - missing
    n_corrupt_start = n_missing_start - corrupt

    qrows, arows, items, files = [], [], [], {}
    for vi, vname in enumerate(names):
        clip = make_clip(rng, cfg)
        samples = draw_questions(clip, rng, questions_per_video)
        if name == "activitynet":
            fname = f"v_{vname}{ACTIVITYNET_EXTS[vi % len(ACTIVITYNET_EXTS)]}"
        elif name == "msvd":
            fname = vname + ".avi"
        elif name == "tgif" and gif:
            fname = vname + ".gif"
        else:
            fname = vname + ".mp4"
        path = vdir / fname
        if vi < n_corrupt_start:
            write_clip(path, clip.frames)
            files[vname] = path
        elif vi < n_missing_start:
            path.write_bytes(np.random.default_rng([seed, vi]).integers(0, 256, 4096, dtype=np.uint8).tobytes())
            files[vname] = path
        for k, s in enumerate(samples):
            qid = f"v_{vname}_{k}"
            qrows.append({"video_name": vname, "question": s.question, "question_id": qid})
            a = {"answer": s.answer, "question_id": qid}
            typ = None
            if name == "activitynet":
                typ = ACTIVITYNET_TYPES[s.qtype]
            elif name == "tgif":
                typ = TGIF_TYPES[s.qtype]
            if typ is not None:
                a = {"answer": s.answer, "type": typ, "question_id": qid}
            arows.append(a)
            items.append({"question_id": qid, "video_name": vname, "question": s.question, "answer": s.answer,
                          "type": None if typ is None else str(typ)})
    if name == "activitynet":  # the release orders questions by template, not by video
        order = rng.permutation(len(qrows))
        qrows = [qrows[i] for i in order]
        arows = [arows[i] for i in order]
        items = [items[i] for i in order]
    if shuffle_answers:
        order = rng.permutation(len(arows))
        if len(arows) > 1 and (order == np.arange(len(arows))).all():
            order = np.roll(order, 1)
        arows = [arows[i] for i in order]
    qpath, apath = droot / f"{split}_q.json", droot / f"{split}_a.json"
    qpath.write_text(json.dumps(qrows))
    apath.write_text(json.dumps(arows))
    return {
        "name": name,
        "root": droot,
        "questions": qpath,
        "answers": apath,
        "video_dir": vdir,
        "items": items,
        "videos": list(names),
        "video_files": files,
        "missing": list(names[n_missing_start:]),
        "corrupt": list(names[n_corrupt_start:n_missing_start]),
    }
