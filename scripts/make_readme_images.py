#!/usr/bin/env python
"""Regenerate the README's heatmap images (docs/demo_retention.png, docs/heatmap_64_frames.png,
docs/long_video_timeline.png, docs/long_video_grid.png).

    python scripts/make_readme_images.py [--out docs]

1. demo_retention.png: exactly what `videosparse demo` writes (embedded test-bed model, seed 7).
2. heatmap_64_frames.png: 64 frames of synthetic 1280x720 footage (static sky and ground, a disc
   crossing the frame) through a random-weight Video-LLaVA with the real token geometry (224 px,
   14 px patches: 257 tokens per frame, 16,448 visual tokens; a small decoder so it runs on a CPU),
   `video` preset at 5 %. The weights are random, so the scores mean nothing; what the picture
   shows is the grid's legibility at 64 frames and the temporal-redundancy discount (static
   background kept once, the budget following the moving disc).
3. long_video_timeline.png / long_video_grid.png: the long-video path on the embedded test-bed model: the
   first question of held-out seed 2024 about a 256-frame synthetic clip (a 64 s MP4 at 4 fps) in which
   each object is visible in 2 frames, `qa.ask(path, question, num_frames=256)` (a pool of 296 tokens,
   then the `video` preset's in-decoder stage).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time


def footage(frames: int = 64, h: int = 720, w: int = 1280):
    """uint8 (T, H, W, 3): sky gradient over ground, a disc moving left to right."""
    import numpy as np

    yy, xx = np.mgrid[0:h, 0:w]
    base = np.zeros((h, w, 3), np.float32)
    sky = yy < h * 0.6
    base[sky] = np.stack([90 + 60 * yy[sky] / h, 140 + 60 * yy[sky] / h, np.full(sky.sum(), 230.0)], -1)
    base[~sky] = np.stack([np.full((~sky).sum(), 70.0), 120 + 40 * (xx[~sky] % 160 < 80), np.full((~sky).sum(), 50.0)], -1)
    out = np.empty((frames, h, w, 3), np.uint8)
    for t in range(frames):
        f = base.copy()
        cx, cy, r = int(w * (0.1 + 0.8 * t / max(frames - 1, 1))), int(h * 0.45), 60
        f[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = (230, 60, 40)
        out[t] = f.astype(np.uint8)
    return out


def many_frames_image(path: str, frames: int = 64) -> None:
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, VideoLlavaConfig, VideoLlavaForConditionalGeneration

    from videosparse import SparseConfig, sparsify
    from videosparse.heatmap import write_all
    from videosparse.video import VideoProcessorSpec, preprocess_frames

    torch.manual_seed(0)
    vcfg = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                            image_size=224, patch_size=14, projection_dim=64)
    tcfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=32768, pad_token_id=0)
    cfg = VideoLlavaConfig(vision_config=vcfg, text_config=tcfg, video_token_id=5, image_token_id=6,
                           vision_feature_layer=-1, vision_feature_select_strategy="full")
    model = VideoLlavaForConditionalGeneration(cfg).eval()
    model.set_attn_implementation("sdpa")
    clip = footage(frames)
    spec = VideoProcessorSpec()
    pv = preprocess_frames(clip, spec)[None]
    P = 257
    prompt = [1, 10, 11] + [5] * (frames * P) + [20, 21, 22, 23, 24]
    ids = torch.tensor([prompt])
    sparse = SparseConfig.preset("video", budget=0.05, num_layers=tcfg.num_hidden_layers)
    with torch.no_grad(), sparsify(model, sparse) as handle:
        model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values_videos=pv, logits_to_keep=1)
    tmp = tempfile.mkdtemp()
    try:
        ts = [t * 4.0 for t in range(frames)]  # one frame every 4 s of a ~4-min video
        paths = write_all(clip, handle.trace, tmp, spec=spec, timestamps=ts, video=False,
                          title=f"{frames} frames of 1280x720, random-weight model with the real geometry "
                                f"(video preset, 5 %)")
        shutil.copy(paths["png"], path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def long_video_images(out: str) -> str:
    """Timeline + grid of the long-video path on the test bed; returns a one-line summary."""
    from videosparse import VideoQA
    from videosparse.heatmap import write_all
    from videosparse.testbed import synthetic as syn

    s = syn.make_sample(2024, 0, syn.GenConfig(num_frames=256))
    qa = VideoQA.from_pretrained("testbed")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "needle.mp4")
        syn.write_video(s.frames, path, fps=4)
        ans = qa.ask(path, s.question, num_frames=256, max_new_tokens=4)
        paths = write_all(ans.frames, ans.trace, tmp, spec=qa.spec, timestamps=ans.timestamps, video=False,
                          title=f"Q: {s.question}  A: {ans.text} (expected {s.answer}); object visible at "
                                f"{', '.join(f'{f / 4:g}' for f in sorted({f for f, _, _ in s.target}))} s")
        shutil.copy(paths["timeline"], os.path.join(out, "long_video_timeline.png"))
        shutil.copy(paths["png"], os.path.join(out, "long_video_grid.png"))
    return (f"answer {ans.text!r} (expected {s.answer!r}); kept tokens at "
            f"{sorted(set(ans.kept_timestamps))} s")


def main(argv: list | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs")
    ap.add_argument("--frames", type=int, default=64)
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    from videosparse.demo import run_demo

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = run_demo(out_dir=tmp)
        shutil.copy(res["heatmap"]["png"], os.path.join(args.out, "demo_retention.png"))
        print(f"demo_retention.png: answer {res['answer'].text!r} (expected {res['expected']!r}), "
              f"{time.perf_counter() - t0:.1f}s")
    t0 = time.perf_counter()
    many_frames_image(os.path.join(args.out, "heatmap_64_frames.png"), args.frames)
    print(f"heatmap_64_frames.png: {args.frames} frames, {time.perf_counter() - t0:.1f}s")
    t0 = time.perf_counter()
    summary = long_video_images(args.out)
    print(f"long_video_timeline.png, long_video_grid.png: {summary}, {time.perf_counter() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
