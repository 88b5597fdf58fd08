#!/usr/bin/env bash
# Video-QA evaluation in one command: inference for every config (multi-GPU through accelerate when
# more than one GPU is used), then judging, then the report.
#
#   scripts/eval_qa.sh DATASET --root DIR --out DIR [--gpus N] [--configs LIST] [run flags] [--judge... flags]
#
# DATASET: msvd, msrvtt, activitynet or tgif (scripts/eval_<dataset>.sh call this).
# --gpus N: processes to launch (default: every visible CUDA device; 1 = a plain python process).
# Flags starting with --judge go to `video_eval judge`; every other flag goes to `video_eval run`
# (defaults below: Video-LLaVA-7B in float16, and the configs of DEFAULT_CONFIGS).
# Re-running the same command resumes an interrupted run. Judge API keys are read from the variable
# named by --judge-api-key-env (default OPENAI_API_KEY); they are never written anywhere.
set -euo pipefail

DATASET=${1:?usage: $0 DATASET --root DIR --out DIR [--gpus N] [flags]}
shift
DEFAULT_CONFIGS="full,video@0.1,video@0.05,sparsevlm-v1.5,sparsevlm-v2,fastv@0.1,random@0.1"
PY=python
GPUS=""
OUT=""
RUN_ARGS=()
JUDGE_ARGS=()
HAVE_MODEL=0
HAVE_CONFIGS=0
HAVE_DTYPE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --gpus) GPUS=${2:-}; [ -n "$GPUS" ] || { echo "$0: error: --gpus needs a number" >&2; exit 2; }; shift 2 ;;
    --gpus=*) GPUS=${1#*=}; shift ;;
    --judge*=*) JUDGE_ARGS+=("$1"); shift ;;
    --judge*) JUDGE_ARGS+=("$1" "$2"); shift 2 ;;
    --out) OUT=${2:-}; [ -n "$OUT" ] || { echo "$0: error: --out needs a directory" >&2; exit 2; }
           RUN_ARGS+=("$1" "$2"); shift 2 ;;
    --out=*) OUT=${1#*=}; RUN_ARGS+=("$1"); shift ;;
    --model|--model=*) HAVE_MODEL=1; RUN_ARGS+=("$1"); shift ;;
    --configs|--configs=*) HAVE_CONFIGS=1; RUN_ARGS+=("$1"); shift ;;
    --dtype|--dtype=*) HAVE_DTYPE=1; RUN_ARGS+=("$1"); shift ;;
    *) RUN_ARGS+=("$1"); shift ;;
  esac
done
if [ -z "$OUT" ]; then echo "$0: error: --out DIR is required" >&2; exit 2; fi
[ "$HAVE_MODEL" = 1 ] || RUN_ARGS+=(--model LanguageBind/Video-LLaVA-7B-hf)
[ "$HAVE_CONFIGS" = 1 ] || RUN_ARGS+=(--configs "$DEFAULT_CONFIGS")
if [ -z "$GPUS" ]; then
  GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())")
fi
if [ "$HAVE_DTYPE" = 0 ] && [ "$GPUS" -ge 1 ]; then RUN_ARGS+=(--dtype float16); fi

if [ "$GPUS" -gt 1 ]; then
  accelerate launch --multi_gpu --num_processes "$GPUS" -m video_eval run --dataset "$DATASET" "${RUN_ARGS[@]}"
else
  "$PY" -m video_eval run --dataset "$DATASET" "${RUN_ARGS[@]}"
fi
"$PY" -m video_eval merge "$OUT"
"$PY" -m video_eval judge "$OUT" "${JUDGE_ARGS[@]}"
"$PY" -m video_eval report "$OUT" --out "$OUT/report"
