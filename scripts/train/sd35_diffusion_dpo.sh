#!/usr/bin/env bash
# Diffusion-DPO + SDPO on SD3.5-medium (2.5B MM-DiT, rectified flow).  NOT a paper setting: a starting
# point that borrows the paper's only flow-model recipe (Appendix B, FLUX.1-dev): beta_dpo 1000,
# SDPO mu 0.99, lr 1e-5 (not scaled), global batch 512, 1024 px, bf16, gradient checkpointing.
# SD3.5-large (8B) does not fit plain DDP with its frozen reference; set MODEL to try other SD3 models.
# Usage: bash scripts/train/sd35_diffusion_dpo.sh [--dry-run] [--no-safeguard] [train.py flags...]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
FAMILY=sd3
RECIPE=(--train_method diffusion-dpo --beta_dpo 1000 --use_winner_preserving --winner_preserving_mu 0.99)
launch "$@"
