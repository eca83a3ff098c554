#!/usr/bin/env bash
# DSPO + SDPO on Stable Diffusion 1.5.
# Paper setting (REFERENCE section 4): dspo, beta_dpo 0.001, SDPO safeguard with mu 0.2.
# Usage: bash scripts/train/sd15_dspo.sh [--dry-run] [--cpu] [--no-safeguard] [train.py flags...]
# Paths and topology come from environment variables: see scripts/train/common.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
FAMILY=sd15
RECIPE=(--train_method dspo --beta_dpo 0.001 --use_winner_preserving --winner_preserving_mu 0.2)
launch "$@"
