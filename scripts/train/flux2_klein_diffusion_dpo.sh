#!/usr/bin/env bash
# Diffusion-DPO + SDPO on FLUX.2 [klein] base 4B (Qwen3-4B text encoder, no guidance embedding; the "base"
# checkpoints are the undistilled ones meant for fine-tuning).  NOT a paper setting: the paper's FLUX.1-dev recipe
# (Appendix B) carried over: beta_dpo 1000, SDPO mu 0.99, lr 1e-5 (not scaled), global batch 512, 1024 px, bf16,
# gradient checkpointing.  Sharding: FSDP over all GPUs (26 GB per GPU on 8; the 9B base: MODEL=
# black-forest-labs/FLUX.2-klein-base-9B, 51 GB on 8; bench/memory_plan.py).  With --lora_rank R: DDP (~23 GB).
# Usage: bash scripts/train/flux2_klein_diffusion_dpo.sh [--dry-run] [train.py flags...]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
FAMILY=flux2
DEFAULT_MODEL=black-forest-labs/FLUX.2-klein-base-4B
RECIPE=(--train_method diffusion-dpo --beta_dpo 1000 --use_winner_preserving --winner_preserving_mu 0.99)
launch "$@"
