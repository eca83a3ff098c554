#!/usr/bin/env bash
# Diffusion-KTO on Stable Diffusion 1.5 (the Diff.-KTO baseline row; no SDPO variant exists).
# Settings of the public Diffusion-KTO example (jacklishufan/diffusion-kto, exps/example.sh):
# kto with the sigmoid utility, beta 1000 and 80% desirable samples; lr 1e-7, not scaled, constant
# with 200 warmup steps; 2 images per GPU on 4 GPUs, no accumulation (global batch 8); fp16;
# gradient checkpointing; no TF32; 20000 steps, a checkpoint every 5000, the newest 4 kept; seed 0.
# Its earlier revision (and REFERENCE section 10) accumulated 256 micro-batches: GLOBAL_BATCH=2048.
# On 8 GPUs use PER_GPU_BATCH=1: 8 images per micro-batch over all GPUs, as the example's, which is
# also the batch the reference point z is averaged over.
# Not carried over: 8-bit Adam (AdamW here), xformers (PyTorch attention), its in-run validation images.
# Usage: bash scripts/train/sd15_kto.sh [--dry-run] [--cpu] [--help] [train.py flags...]
# Paths and topology come from environment variables: see scripts/train/common.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
FAMILY=sd15
RECIPE=(
    --train_method kto --kto_beta 1000 --halo sigmoid --positive_ratio 0.8
    --lr_warmup_steps 200 --max_train_steps 20000 --checkpointing_steps 5000 --checkpoints_total_limit 4
    --gradient_checkpointing --seed 0
)
RECIPE_LR=1e-7
RECIPE_SCALE_LR=0
RECIPE_TF32=0
RECIPE_GLOBAL_BATCH=8
RECIPE_PER_GPU_BATCH=2
RECIPE_PRECISION=fp16
RECIPE_UNIT=images
launch "$@"
