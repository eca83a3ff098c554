#!/usr/bin/env bash
# DMPO + SDPO on Stable Diffusion 1.5.
# Paper setting (REFERENCE section 4): dmpo, beta_dpo 2000, SDPO safeguard with mu 0.9, --dmpo_alpha 0.01.
# Usage: bash scripts/train/sd15_dmpo.sh [--dry-run] [--cpu] [--no-safeguard] [train.py flags...]
# Paths and topology come from environment variables: see scripts/train/common.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
FAMILY=sd15
RECIPE=(--train_method dmpo --beta_dpo 2000 --dmpo_alpha 0.01 --use_winner_preserving --winner_preserving_mu 0.9)
launch "$@"
