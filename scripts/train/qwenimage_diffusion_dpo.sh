#!/usr/bin/env bash
# Diffusion-DPO + SDPO on Qwen-Image (20B MM-DiT, Qwen2.5-VL text encoder, rectified flow).  NOT a paper setting:
# no preference-tuning recipe for Qwen-Image is published, so this carries over the paper's only flow-model
# recipe (Appendix B, FLUX.1-dev): beta_dpo 1000, SDPO mu 0.99, lr 1e-5 (not scaled), global batch 512, 1024 px,
# bf16, gradient checkpointing (our choice for this model).  Sharding: FSDP over all GPUs (SHARDING=fsdp, the
# family's default): 16 x 80 GB hold a full fine-tune (bench/memory_plan.py); with --precomputed (sdpo.precompute)
# HSDP 2x8 fits too.  With --lora_rank R: adapters under plain DDP (~67 GB per GPU at rank 16).
# Usage: NUM_NODES=2 NODE_RANK=... MASTER_ADDR=... bash scripts/train/qwenimage_diffusion_dpo.sh [--dry-run] [train.py flags...]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
FAMILY=qwenimage
RECIPE=(--train_method diffusion-dpo --beta_dpo 1000 --use_winner_preserving --winner_preserving_mu 0.99)
launch "$@"
