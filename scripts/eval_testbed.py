"""A complete evaluation on the embedded test-bed model, offline: the README's Evaluation example.

Writes an MSVD-layout dataset of held-out test-bed clips (AVI), runs ``python -m video_eval run`` for the
full model and three methods at three budgets, judges with the offline judge, and writes the report
(markdown + PNG) to ``--out`` (default ``docs/eval``).

    python scripts/eval_testbed.py                 # 60 videos x 4 questions, ~1 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIGS = ("full,video@0.2,video@0.1,video@0.05,fastv@0.2,fastv@0.1,fastv@0.05,"
           "random@0.2,random@0.1,random@0.05")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=60)
    ap.add_argument("--questions-per-video", type=int, default=4)
    ap.add_argument("--seed", type=int, default=2026, help="dataset seed (the test bed trained on other clips)")
    ap.add_argument("--configs", default=CONFIGS)
    ap.add_argument("--out", default=str(HERE.parent / "docs" / "eval"))
    ap.add_argument("--lossy", action="store_true",
                    help="MPEG-4 4:2:0 AVI like the real MSVD files (the test bed, trained on clean frames, "
                         "loses accuracy on it)")
    ap.add_argument("--keep", default=None, help="keep the dataset and run directory here")
    args = ap.parse_args()

    sys.path.insert(0, str(HERE))
    from bench_eval import make_dataset

    from video_eval.cli import main as cli

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="eval_testbed_"))
    try:
        root = work / "data" / "MSVD_Zero_Shot_QA"
        if not root.exists():
            make_dataset(work / "data", args.videos, args.questions_per_video, size=48, hold=1, seed=args.seed,
                         lossless=not args.lossy)
        run = work / "run"
        rc = cli(["run", "--dataset", "msvd", "--root", str(root), "--model", "testbed", "--configs", args.configs,
                  "--out", str(run), "--max-new-tokens", "8", "--batch-size", "8"])
        rc = rc or cli(["judge", str(run), "--judge", "offline"])
        rc = rc or cli(["report", str(run), "--out", args.out,
                        "--title", f"Test-bed model, {args.videos * args.questions_per_video} held-out questions"])
        return rc
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
