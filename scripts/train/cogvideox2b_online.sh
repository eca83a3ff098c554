#!/usr/bin/env bash
# Iterative on-policy SIPO on CogVideoX-2B: the SIPO paper's Appendix F.2 experiment (the IPO protocol): each
# round samples 2 videos of each of 3,000 prompts from the current weights, ranks them with a fixed reward,
# trains 20 epochs on the best-vs-worst pairs starting from the previous round, 10 rounds.  The training
# settings are cogvideox2b_sipo.sh's (SIPO Table A1; --method diffusion-dpo | dpo-cm | sipo picks the objective
# and its beta).  IPO and the SIPO paper rank with a video reward model (not public in a form this repository
# loads); the default ranks by temporal flickering (VBench's, model-free) and holds out PickScore averaged over
# frames: plug your own in with --reward package.module:factory (docs/online.md).
# Usage: PROMPTS=video_prompts.txt bash scripts/train/cogvideox2b_online.sh [--method sipo] [--dry-run] [flags...]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
FAMILY=cogvideox
DEFAULT_MODEL=THUDM/CogVideoX-2b
METHOD=sipo
declare -A METHOD_BETA=([diffusion-dpo]=2 [dpo-cm]=0.02 [sipo]=0.02)
ONLINE=1
ONLINE_FLAGS=(--rounds 10 --prompts_per_round 3000 --samples_per_prompt 2 --epochs_per_round 20
    --reward temporal_flickering --heldout_prompts papv2:32 --heldout_reward pickscore)
RECIPE=()
launch "$@"
