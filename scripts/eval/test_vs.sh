#!/usr/bin/env bash
# A/B win rates of two generated sets (the reference CLI), five reward models, results in
# <outdir>/<A>_vs_<B>_<timestamp>/ (summary.json, table.txt, per-pair <metric>.json, winrate.png),
# and an HTML report beside them (report.html: the tables and a side-by-side gallery; its path is printed).
#
#   bash scripts/eval/test_vs.sh --json_a A/hpsv2_seed0_512x512_50s_7.5cfg.json \
#        --json_b B/hpsv2_seed0_512x512_50s_7.5cfg.json --label_a sdpo --label_b dpo \
#        [--device cuda] [--batch_size 16] [--outdir outputs/winrate] [--metrics all] [--model_root DIR]
#
# Offline clusters: mirror the reward models under a folder and pass --model_root DIR (or export
# SDPO_REWARD_ROOT=DIR); see the README. Every flag goes to eval/winrate.py unchanged; REPORT=0 skips the report.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PYTHON="${PYTHON:-python}"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
"$PYTHON" "$REPO/eval/winrate.py" "$@" | tee "$log"
results="$(sed -n 's/^results: //p' "$log" | tail -n 1)"
if [[ -n "$results" && "${REPORT:-1}" != 0 ]]; then  # (--help prints no results folder)
  PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m eval.report --winrate "$results" --quiet
fi
