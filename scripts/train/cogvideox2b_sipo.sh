#!/usr/bin/env bash
# SIPO on CogVideoX-2B (the SIPO paper's video setting, its Appendix D / Table A1): lr 2e-5 constant, Adam,
# batch 4 per GPU x accumulation 8 x 16 GPUs = 512 pairs, fp16, beta 0.02 for SIPO and DPO-C&M, 2 for
# Diffusion-DPO.  --method diffusion-dpo | dpo-cm | sipo (default) picks the objective and its beta.
# Where Table A1 is silent (choices of this repository): no warmup, no weight decay (Adam), 1000 steps with a
# checkpoint every 250 (the paper reports 500 and 1000), the model's own 49 frames at 480x720, frames from the
# start of each clip at stride 1, 20% blanked captions (the SDPO reference default), gradient checkpointing.
# The SDPO safeguard is not part of the SIPO paper: add --use_winner_preserving --winner_preserving_mu MU.
# The paper's 10k in-house pairs are not public: DATASET (or TRAIN_DATA_DIR) names a local video-pair set.
# Usage: DATASET=pairs/ NUM_NODES=2 NODE_RANK=... MASTER_ADDR=... bash scripts/train/cogvideox2b_sipo.sh \
#            [--method dpo-cm] [--dry-run] [train.py flags...]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
FAMILY=cogvideox
DEFAULT_MODEL=THUDM/CogVideoX-2b
METHOD=sipo
declare -A METHOD_BETA=([diffusion-dpo]=2 [dpo-cm]=0.02 [sipo]=0.02)
RECIPE=()
launch "$@"
