#!/usr/bin/env bash
# Diffusion-DPO + SDPO on FLUX.2 [dev] (32B, Mistral Small 3.1 text encoder, guidance-distilled, rectified flow).
# NOT a paper setting: the paper's FLUX.1-dev recipe (Appendix B) carried over: beta_dpo 1000, SDPO mu 0.99,
# lr 1e-5 (not scaled), global batch 512, 1024 px, bf16, gradient checkpointing; the guidance embedding gets
# --flux_guidance 1.0 (what diffusers' FLUX.2 README trains [dev] with).  Sharding: FSDP over all GPUs
# (SHARDING=fsdp): on 16 x 80 GB a full fine-tune fits only with the latent/text cache (python -m sdpo.precompute,
# then --precomputed CACHE: the 24B text encoder alone takes 48 GB per GPU); bench/memory_plan.py prints the plan.
# FLUX.2 [klein]: scripts/train/flux2_klein_diffusion_dpo.sh.
# Usage: NUM_NODES=2 NODE_RANK=... MASTER_ADDR=... bash scripts/train/flux2_diffusion_dpo.sh [--dry-run] [train.py flags...]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
FAMILY=flux2
RECIPE=(--train_method diffusion-dpo --beta_dpo 1000 --use_winner_preserving --winner_preserving_mu 0.99)
launch "$@"
