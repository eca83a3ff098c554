#!/usr/bin/env bash
# Evaluate a FLUX.2 checkpoint (transformer.pth or a checkpoint folder) with the paper's protocol where it
# carries over: papv2, hpsv2 and partiprompts, 50 steps, seed 0, scored with the five reward models; size, base
# model and guidance are the family's own (1024 px, black-forest-labs/FLUX.2-dev, guidance 4.0: both FLUX.2
# pipelines' default; see docs/families.md). For [klein] name its base model:
#
#   bash scripts/eval/test_flux2.sh [--dry-run] path/to/checkpoint-2000/transformer.pth
#   PRETRAIN_PATH=black-forest-labs/FLUX.2-klein-base-4B bash scripts/eval/test_flux2.sh path/to/transformer.pth
#   LORA_PATH=path/to/lora_run bash scripts/eval/test_flux2.sh [--dry-run]   # a LoRA run (LORA_SCALE)
#
# Settings are environment variables; see scripts/eval/joint_test.sh for the list.
CALLER="$0" KIND=flux2 exec bash "$(dirname "${BASH_SOURCE[0]}")/joint_test.sh" "$@"
