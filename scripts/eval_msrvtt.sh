#!/usr/bin/env bash
# msrvtt: inference + judging + report in one command. See scripts/eval_qa.sh for the flags, e.g.
#   scripts/eval_msrvtt.sh --root DATA_DIR --out runs/msrvtt --limit 1000 \
#       --judge openai --judge-model gpt-4o-2024-08-06 --judge-api-key-env OPENAI_API_KEY
exec "$(dirname "$0")/eval_qa.sh" msrvtt "$@"
