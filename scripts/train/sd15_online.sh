#!/usr/bin/env bash
# Iterative on-policy Diffusion-DPO + SDPO on Stable Diffusion 1.5 (the IPO protocol of the SIPO paper's
# Appendix F.2): each round samples 2 images of each of 3,000 prompts from the current weights, ranks them with
# a fixed reward model (PickScore), trains 20 epochs on the best-vs-worst pairs starting from the previous
# round, and scores 64 held-out Pick-a-Pic test prompts with another reward (HPSv2); 10 rounds.  The objective
# is the paper's SD1.5 Diffusion-DPO + SDPO (beta 5000, mu 0.9) and its batch arithmetic; the reference model
# is the original base every round (--reference previous for the last round's weights).
# PROMPTS names the training prompt file (Pick-a-Pic's training captions are not in this repository).
# Usage: PROMPTS=train_prompts.txt bash scripts/train/sd15_online.sh [--dry-run] [--no-safeguard] \
#            [python -m sdpo.online flags] [train.py flags...]
# Paths and topology come from environment variables: see scripts/train/common.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
FAMILY=sd15
ONLINE=1
ONLINE_FLAGS=(--rounds 10 --prompts_per_round 3000 --samples_per_prompt 2 --epochs_per_round 20 --reward pickscore
    --heldout_prompts papv2:64 --heldout_reward hpsv2)
RECIPE=(--train_method diffusion-dpo --beta_dpo 5000 --use_winner_preserving --winner_preserving_mu 0.9)
launch "$@"
