#!/usr/bin/env bash
# Diffusion-DPO + SDPO on Z-Image (6B single-stream DiT, Qwen3-4B text encoder, rectified flow; the base model,
# not the step-distilled Turbo).  NOT a paper setting: the paper's FLUX.1-dev recipe (Appendix B) carried over:
# beta_dpo 1000, SDPO mu 0.99, lr 1e-5 (not scaled), global batch 512, 1024 px, bf16, gradient checkpointing.
# Sharding: FSDP over all GPUs (33 GB per GPU on 8; bench/memory_plan.py).  With --lora_rank R: DDP (~30 GB).
# Usage: bash scripts/train/zimage_diffusion_dpo.sh [--dry-run] [train.py flags...]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
FAMILY=zimage
RECIPE=(--train_method diffusion-dpo --beta_dpo 1000 --use_winner_preserving --winner_preserving_mu 0.99)
launch "$@"
