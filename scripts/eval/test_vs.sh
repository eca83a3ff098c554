#!/usr/bin/env bash
# A/B win rates of two generated sets (the reference CLI), five reward models, results in
# <outdir>/<A>_vs_<B>_<timestamp>/ (summary.json, table.txt, per-pair <metric>.json, winrate.png).
#
#   bash scripts/eval/test_vs.sh --json_a A/hpsv2_seed0_512x512_50s_7.5cfg.json \
#        --json_b B/hpsv2_seed0_512x512_50s_7.5cfg.json --label_a sdpo --label_b dpo \
#        [--device cuda] [--batch_size 16] [--outdir outputs/winrate] [--metrics all] [--model_root DIR]
#
# Offline clusters: mirror the reward models under a folder and pass --model_root DIR (or export
# SDPO_REWARD_ROOT=DIR); see the README. Every flag goes to eval/winrate.py unchanged.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
exec "${PYTHON:-python}" "$REPO/eval/winrate.py" "$@"
