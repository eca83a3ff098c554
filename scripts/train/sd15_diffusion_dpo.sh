#!/usr/bin/env bash
# Diffusion-DPO + SDPO on Stable Diffusion 1.5.
# Paper setting (REFERENCE section 4): diffusion-dpo, beta_dpo 5000, SDPO safeguard with mu 0.9.
# Usage: bash scripts/train/sd15_diffusion_dpo.sh [--dry-run] [--cpu] [--no-safeguard] [train.py flags...]
# Paths and topology come from environment variables: see scripts/train/common.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
FAMILY=sd15
RECIPE=(--train_method diffusion-dpo --beta_dpo 5000 --use_winner_preserving --winner_preserving_mu 0.9)
launch "$@"
