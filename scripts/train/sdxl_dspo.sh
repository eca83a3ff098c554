#!/usr/bin/env bash
# DSPO + SDPO on SDXL (fp16-fix VAE, Adafactor, gradient checkpointing).
# Paper setting (REFERENCE section 4): dspo, beta_dpo 5000, SDPO safeguard with mu 0.6.
# Usage: bash scripts/train/sdxl_dspo.sh [--dry-run] [--cpu] [--no-safeguard] [train.py flags...]
# Paths and topology come from environment variables: see scripts/train/common.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
FAMILY=sdxl
RECIPE=(--train_method dspo --beta_dpo 5000 --use_winner_preserving --winner_preserving_mu 0.6)
launch "$@"
