#!/usr/bin/env bash
# Iterative on-policy Diffusion-DPO + SDPO on FLUX.1-dev (the IPO protocol of the SIPO paper's Appendix F.2, as
# sd15_online.sh): 10 rounds of 3,000 prompts x 2 samples ranked by PickScore, 20 epochs per round, 64
# held-out Pick-a-Pic test prompts scored with HPSv2.  The objective is the paper's Appendix B setting (beta
# 1000, mu 0.99, lr 1e-5, HSDP by default); sampling uses FLUX's 3.5 guidance embedding.
# Usage: PROMPTS=train_prompts.txt bash scripts/train/flux_online.sh [--dry-run] [--lora_rank 64] [flags...]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
FAMILY=flux
ONLINE=1
ONLINE_FLAGS=(--rounds 10 --prompts_per_round 3000 --samples_per_prompt 2 --epochs_per_round 20 --reward pickscore
    --heldout_prompts papv2:64 --heldout_reward hpsv2)
RECIPE=(--train_method diffusion-dpo --beta_dpo 1000 --use_winner_preserving --winner_preserving_mu 0.99)
launch "$@"
