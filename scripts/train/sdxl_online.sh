#!/usr/bin/env bash
# Iterative on-policy Diffusion-DPO + SDPO on SDXL (the IPO protocol of the SIPO paper's Appendix F.2, as
# sd15_online.sh): 10 rounds of 3,000 prompts x 2 samples ranked by PickScore, 20 epochs per round on the
# best-vs-worst pairs, 64 held-out Pick-a-Pic test prompts scored with HPSv2.  The objective is the paper's SDXL
# Diffusion-DPO + SDPO (beta 5000, mu 0.6, lr 1e-9 scaled, Adafactor); samples decode with the fp16-fix VAE.
# Usage: PROMPTS=train_prompts.txt bash scripts/train/sdxl_online.sh [--dry-run] [--no-safeguard] [flags...]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
FAMILY=sdxl
ONLINE=1
ONLINE_FLAGS=(--rounds 10 --prompts_per_round 3000 --samples_per_prompt 2 --epochs_per_round 20 --reward pickscore
    --heldout_prompts papv2:64 --heldout_reward hpsv2)
RECIPE=(--train_method diffusion-dpo --beta_dpo 5000 --use_winner_preserving --winner_preserving_mu 0.6)
launch "$@"
