#!/usr/bin/env bash
# Evaluate a SD3 checkpoint (transformer.pth or a checkpoint folder) with the paper's protocol where it
# carries over: papv2, hpsv2 and partiprompts at 1024x1024, 50 steps, seed 0, guidance 3.5 (the
# pipeline's own: classifier-free guidance in diffusers' convention, SD3.5's model card value),
# scored with the five reward models; log beside the checkpoint; prints the table.
#
#   bash scripts/eval/test_sd3.sh [--dry-run] path/to/checkpoint-2000/transformer.pth
#   LORA_PATH=path/to/lora_run bash scripts/eval/test_sd3.sh [--dry-run]   # a LoRA run (LORA_SCALE)
#
# Settings are environment variables; see scripts/eval/joint_test.sh for the list.
CALLER="$0" KIND=sd3 exec bash "$(dirname "${BASH_SOURCE[0]}")/joint_test.sh" "$@"
