#!/usr/bin/env bash
# tgif: inference + judging + report in one command. See scripts/eval_qa.sh for the flags, e.g.
#   scripts/eval_tgif.sh --root DATA_DIR --out runs/tgif --limit 1000 \
#       --judge openai --judge-model gpt-4o-2024-08-06 --judge-api-key-env OPENAI_API_KEY
exec "$(dirname "$0")/eval_qa.sh" tgif "$@"
