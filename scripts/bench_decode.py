#!/usr/bin/env python
"""Benchmark video decoding for Video-LLaVA-style sampling.

Generates (once, cached) an H.264 video (default 5 min, 1280x720, 25 fps), then measures in one run:

* 8 uniformly sampled frames: decord vs PyAV (seek) vs PyAV (sequential decode), wall time
  (best of --repeat for the fast ones, one run of the sequential one);
* peak memory of the chunked reader (``iter_chunks``) vs loading all frames, each measured in a
  fresh child process (peak RSS minus the child's RSS before decoding, plus numpy's traced peak).
  Loading all frames of the whole video would need T*H*W*3 bytes (~20 GB at 5 min 720p), so it is
  measured on the first --window seconds, and the chunked reader on that window and on the whole
  video.

With ``--unseekable`` it measures instead what files without reliable seeking cost (generated once
in the temp directory, default 30 min at 160x120, 25 fps, GOP 250, never committed): an MPEG-TS
(H.264; indexed by demuxing, then decoded sequentially up to the last sampled frame), a raw ``.h264``
stream (no timestamps: decoded in full at open to count the frames, then decoded again up to the last
sampled frame) and the same video as MP4 (seeking) for comparison. Each row runs in a fresh process:
wall time, peak RSS over the process's baseline, numpy's traced peak and how many frames were
decoded / converted to RGB.

Usage:  python scripts/bench_decode.py [--minutes 5] [--video /tmp/bench_720p.mp4]
        python scripts/bench_decode.py --unseekable [--minutes 30 --height 120 --width 160]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from videosparse.video import iter_chunks, load_video, probe_video  # noqa: E402
from videosparse.video.backends import PyAVReader, decord_available  # noqa: E402
from videosparse.video.sampling import uniform_indices  # noqa: E402
from videosparse.video.synth import pattern_frame, write_video  # noqa: E402


def make_video(path: str, minutes: float, height: int, width: int, fps: int, container_format: str | None = None,
               gop: int = 250) -> None:
    n = int(minutes * 60 * fps)
    base = [pattern_frame(i, height, width) for i in range(48)]

    def frames():
        for i in range(n):
            f = base[i % len(base)].copy()
            f[: height // 20, : (i * width) // n + 1] = 0  # progress bar: every frame distinct
            yield f

    t = time.perf_counter()
    write_video(path, frames(), fps=fps, codec="libx264", container_format=container_format,
                options={"preset": "ultrafast", "g": str(gop), "crf": "28", "bf": "0" if path.endswith(".h264") else "2"})
    print(f"generated {path}: {n} frames {width}x{height} @ {fps} fps, {os.path.getsize(path) / 1e6:.1f} MB "
          f"in {time.perf_counter() - t:.1f} s", flush=True)


def timed(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _child(job, path, kw, q):
    import tracemalloc

    from videosparse.video import backends as B

    counts = {"decoded": 0, "converted": 0}
    real_packets, real_rgb = B.PyAVReader._decode_packets, B.PyAVReader._to_rgb

    def decode_packets(self, *a, **k):
        for fr in real_packets(self, *a, **k):
            counts["decoded"] += 1
            yield fr

    def to_rgb(self, frame):
        counts["converted"] += 1
        return real_rgb(self, frame)

    B.PyAVReader._decode_packets, B.PyAVReader._to_rgb = decode_packets, to_rgb
    base = _rss_mb()
    tracemalloc.start()
    t = time.perf_counter()
    frames = 0
    if job == "probe":
        frames = probe_video(path, **kw).num_frames
    elif job == "chunks":
        for c in iter_chunks(path, **kw):
            frames += c.num_frames
            del c
    else:
        clip = load_video(path, **kw)
        frames = clip.num_frames
    dt = time.perf_counter() - t
    _, traced = tracemalloc.get_traced_memory()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    q.put({"frames": frames, "seconds": dt, "rss_mb": peak - base, "traced_mb": traced / 2**20, **counts})


def measure(job, path, **kw):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(job, path, kw, q))
    p.start()
    out = q.get()
    p.join()
    return out


def bench_unseekable(args) -> None:
    """Files without reliable seeking (see the module docstring)."""
    tmp = tempfile.gettempdir()
    stem = f"videosparse_bench_{args.minutes:g}min_{args.width}x{args.height}"
    files = {"MPEG-TS (H.264)": os.path.join(tmp, stem + ".ts"),
             "raw .h264": os.path.join(tmp, stem + ".h264"),
             "MP4 (H.264), seekable": os.path.join(tmp, stem + ".mp4")}
    for path in files.values():
        if not os.path.exists(path):
            make_video(path, args.minutes, args.height, args.width, args.fps)
    k, chunk = args.num_frames, args.chunk_size
    frame_mb = args.width * args.height * 3 / 2**20
    print(f"\nfiles without reliable seeking, {args.minutes:g} min {args.width}x{args.height} @ {args.fps} fps "
          f"(one frame = {frame_mb * 1024:.1f} KiB; all frames = {frame_mb * args.minutes * 60 * args.fps:.0f} MiB); "
          f"fresh process per row, backend pyav:")
    for label, path in files.items():
        with PyAVReader(path, progress=False) as r:
            seeks = r.seek_reliable and r.index_mode == "pts"
            how = f"index {r.index_mode}, {'seeks' if seeks else 'sequential decode (no seeking)'}"
        print(f"  {label} [{os.path.getsize(path) / 1e6:.1f} MB; {how}]")
        for name, job, kw in [("probe_video (open + index)", "probe", {}),  # (auto uses PyAV for the first two)
                              (f"load_video {k} uniform frames", "load", {"num_frames": k}),
                              (f"iter_chunks({chunk}), {4 * k} uniform frames", "chunks",
                               {"chunk_size": chunk, "num_frames": 4 * k})]:
            r = measure(job, path, backend="pyav", progress=False, **kw)
            print(f"    {name:34s} {r['seconds']:7.2f} s  frames={r['frames']:6d}  decoded={r['decoded']:6d}  "
                  f"converted={r['converted']:3d}  peak RSS +{r['rss_mb']:6.1f} MiB  numpy peak "
                  f"{r['traced_mb']:5.2f} MiB", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--video", default=os.path.join(tempfile.gettempdir(), "videosparse_bench_720p.mp4"))
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--fps", type=int, default=25)
    ap.add_argument("--num-frames", type=int, default=8)
    ap.add_argument("--chunk-size", type=int, default=16)
    ap.add_argument("--window", type=float, default=10.0, help="seconds decoded for the load-all comparison")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--unseekable", action="store_true",
                    help="measure files without reliable seeking (MPEG-TS, raw .h264) instead; default 30 min 160x120")
    args = ap.parse_args()
    if args.unseekable:
        dflt = {"minutes": 5.0, "height": 720, "width": 1280}
        for key, value in {"minutes": 30.0, "height": 120, "width": 160}.items():
            if getattr(args, key) == dflt[key]:
                setattr(args, key, value)
        return bench_unseekable(args)

    if not os.path.exists(args.video):
        make_video(args.video, args.minutes, args.height, args.width, args.fps)
    info = probe_video(args.video, backend="pyav")
    print(f"video: {info.num_frames} frames, {info.width}x{info.height}, {info.fps:.2f} fps, "
          f"{info.duration:.1f} s", flush=True)
    k = args.num_frames
    idx = uniform_indices(info.num_frames, k)
    rows = {}
    if decord_available():
        rows["decord"], ref = timed(lambda: load_video(args.video, k, backend="decord"), args.repeat)
    else:
        ref = None
        print("decord not importable: skipped")
    rows["pyav_seek"], seek = timed(lambda: load_video(args.video, k, backend="pyav"), args.repeat)

    def sequential():
        with PyAVReader(args.video, mode="sequential") as r:
            return r.get_frames(idx)

    rows["pyav_sequential"], seq = timed(sequential, 1)
    same = np.array_equal(seek.frames, seq)
    print(f"\n{k} uniform frames of a {info.duration / 60:.1f}-min {info.height}p video (indices {idx.tolist()}):")
    for name, sec in rows.items():
        print(f"  {name:16s} {sec * 1000:9.1f} ms")
    if "decord" in rows:
        print(f"  ratio pyav_seek / decord       = {rows['pyav_seek'] / rows['decord']:.2f}x")
        print(f"  ratio pyav_sequential / decord = {rows['pyav_sequential'] / rows['decord']:.1f}x")
        diff = np.abs(ref.frames.astype(int) - seek.frames.astype(int)).max()
        print(f"  decord vs pyav frames: max abs diff {diff} (uint8 levels)")
    print(f"  ratio pyav_sequential / pyav_seek = {rows['pyav_sequential'] / rows['pyav_seek']:.1f}x")
    print(f"  pyav seek == pyav sequential frames: {same}")

    frame_mb = info.width * info.height * 3 / 2**20
    print(f"\nmemory (fresh process each; one frame = {frame_mb:.2f} MiB; "
          f"all {info.num_frames} frames would be {frame_mb * info.num_frames / 1024:.1f} GiB):")
    full = measure("load", args.video, num_frames=None, end=args.window)
    ch_w = measure("chunks", args.video, chunk_size=args.chunk_size, end=args.window)
    ch_all = measure("chunks", args.video, chunk_size=args.chunk_size)
    ch_pyav = measure("chunks", args.video, chunk_size=args.chunk_size, backend="pyav")
    for name, r in [(f"load_video all frames, first {args.window:g} s", full),
                    (f"iter_chunks({args.chunk_size}), first {args.window:g} s", ch_w),
                    (f"iter_chunks({args.chunk_size}), whole video", ch_all),
                    (f"iter_chunks({args.chunk_size}, pyav), whole video", ch_pyav)]:
        print(f"  {name:40s} frames={r['frames']:5d}  peak RSS +{r['rss_mb']:8.1f} MiB  "
              f"numpy peak {r['traced_mb']:8.1f} MiB  {r['seconds']:.1f} s")
    print(f"  ratio load-all / chunked, same {args.window:g} s window (peak RSS) = "
          f"{full['rss_mb'] / max(ch_w['rss_mb'], 1e-6):.1f}x")
    print(f"  chunked whole video vs chunked window (peak RSS) = {ch_all['rss_mb'] / max(ch_w['rss_mb'], 1e-6):.2f}x "
          f"(frames held by numpy stay constant; the rest is decoder buffers and allocator)")
    print(f"  extrapolated load-all for the whole video / chunked whole video = "
          f"{frame_mb * info.num_frames / max(ch_all['rss_mb'], 1e-6):.0f}x")


if __name__ == "__main__":
    main()
