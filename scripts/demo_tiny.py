#!/usr/bin/env python
"""Main job (for now): pruned generation on a tiny random Video-LLaVA, kept tokens per frame.

Builds a small VideoLlavaForConditionalGeneration from configs (random weights, no download),
prunes with the `video` preset and prints what survived in every frame. Runs in seconds on a CPU.

    python scripts/demo_tiny.py [--budget 0.1] [--frames 8] [--preset video] [--attn sdpa]
"""

from __future__ import annotations

import argparse
import sys
import time


def main(argv: list | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=0.1, help="fraction of visual tokens kept (default 0.1)")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--preset", default="video")
    ap.add_argument("--attn", default="sdpa", choices=["eager", "sdpa"])
    ap.add_argument("--new-tokens", type=int, default=8)
    args = ap.parse_args(argv)

    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, VideoLlavaConfig, VideoLlavaForConditionalGeneration

    from videosparse import SparseConfig, sparsify
    from videosparse.frontends import tokens_per_frame

    torch.manual_seed(0)
    vcfg = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                            image_size=64, patch_size=16, projection_dim=64)
    tcfg = LlamaConfig(vocab_size=128, hidden_size=128, intermediate_size=256, num_hidden_layers=8,
                       num_attention_heads=4, num_key_value_heads=4, pad_token_id=0)
    cfg = VideoLlavaConfig(vision_config=vcfg, text_config=tcfg, video_token_id=5, image_token_id=6,
                           vision_feature_layer=-1)
    model = VideoLlavaForConditionalGeneration(cfg).eval()
    model.set_attn_implementation(args.attn)
    P = tokens_per_frame(cfg)  # the Video-LLaVA front end's geometry: 4 x 4 patches + CLS
    prompt = [1, 10, 11] + [5] * (args.frames * P) + [20, 21, 22, 23, 24]
    inputs = {
        "input_ids": torch.tensor([prompt]),
        "attention_mask": torch.ones(1, len(prompt), dtype=torch.long),
        "pixel_values_videos": torch.randn(1, args.frames, 3, 64, 64),
    }
    sparse = SparseConfig.preset(args.preset, budget=args.budget, num_layers=tcfg.num_hidden_layers)
    with torch.no_grad():
        t0 = time.perf_counter()
        full = model.generate(**inputs, max_new_tokens=args.new_tokens, do_sample=False)
        t_full = time.perf_counter() - t0
        with sparsify(model, sparse) as handle:
            t0 = time.perf_counter()
            out = model.generate(**inputs, max_new_tokens=args.new_tokens, do_sample=False)
            t_sparse = time.perf_counter() - t0
    trace = handle.trace
    print(f"tiny random Video-LLaVA: {args.frames} frames x {P} tokens = {trace.num_visual} visual tokens, "
          f"{tcfg.num_hidden_layers} decoder layers, attn={args.attn}")
    print(f"preset {sparse.name}: stage layers {list(sparse.stage_layers)}, kept after each stage {trace.counts}, "
          f"equivalent tokens {trace.equivalent_tokens:.1f}")
    per_frame = trace.kept_per_frame()[0].tolist()
    for t, k in enumerate(per_frame):
        print(f"  frame {t}: kept {k:3d}/{P}  " + "#" * k)
    merged = int(trace.stages[-1].merged.sum())
    print(f"recycled (merged) tokens: {merged}; generated ids full={full[0, len(prompt):].tolist()} "
          f"pruned={out[0, len(prompt):].tolist()}")
    print(f"generate time: full {t_full:.3f}s, pruned {t_sparse:.3f}s (random weights: answers are noise)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
