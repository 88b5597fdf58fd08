"""``python -m video_eval`` (also under ``accelerate launch -m video_eval``)."""

from video_eval.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
