#!/usr/bin/env bash
# SIPO on CogVideoX-5B (the SIPO paper's video setting, its Appendix D / Table A1): lr 2e-5 constant, Adam,
# batch 4 per GPU x accumulation 8 x 16 GPUs = 512 pairs, fp16, beta 0.02 for SIPO and DPO-C&M, 2 for
# Diffusion-DPO.  --method diffusion-dpo | dpo-cm | sipo (default) picks the objective and its beta.
# Where Table A1 is silent: as cogvideox2b_sipo.sh (no warmup, no weight decay, 1000 steps, checkpoints every
# 250, 49 frames at 480x720, stride 1, 20% blanked captions, gradient checkpointing).
# Memory: an fp32 5B policy with Adam state (80 GB) plus its frozen reference does not fit one 80 GB GPU
# under plain DDP, so this recipe launches with DeepSpeed ZeRO-2 (configs/accelerate/deepspeed_zero2.yaml;
# needs `pip install deepspeed`); set ACCEL_CONFIG to another file, or to an empty string for plain DDP.
# The SDPO safeguard is not part of the SIPO paper: add --use_winner_preserving --winner_preserving_mu MU.
# Usage: DATASET=pairs/ NUM_NODES=2 NODE_RANK=... MASTER_ADDR=... bash scripts/train/cogvideox5b_sipo.sh \
#            [--method dpo-cm] [--dry-run] [train.py flags...]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
FAMILY=cogvideox
DEFAULT_MODEL=THUDM/CogVideoX-5b
METHOD=sipo
declare -A METHOD_BETA=([diffusion-dpo]=2 [dpo-cm]=0.02 [sipo]=0.02)
ACCEL_CONFIG="${ACCEL_CONFIG-configs/accelerate/deepspeed_zero2.yaml}"
RECIPE=()
launch "$@"
