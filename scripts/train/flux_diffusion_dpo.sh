#!/usr/bin/env bash
# Diffusion-DPO + SDPO on FLUX.1-dev (the paper's Appendix B): beta_dpo 1000, SDPO mu 0.99,
# lr 1e-5 (not scaled), global batch 512, 1024 px, bf16, gradient checkpointing, 16 GPUs as 2 nodes x 8,
# sharded as the paper's run: HSDP, FSDP inside each node and 2-way data parallel across the nodes
# (SHARDING=fsdp|hsdp, DP_REPLICATE=N to change; bench/memory_plan.py prints what fits).
# With --lora_rank R: LoRA adapters under plain DDP instead (no sharding; ~42 GB per GPU at rank 16).
# Usage: NUM_NODES=2 NODE_RANK=... MASTER_ADDR=... bash scripts/train/flux_diffusion_dpo.sh [--dry-run] [train.py flags...]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
FAMILY=flux
RECIPE=(--train_method diffusion-dpo --beta_dpo 1000 --use_winner_preserving --winner_preserving_mu 0.99)
launch "$@"
