#!/usr/bin/env bash
# Evaluate an SDXL unet.pth as in the paper: generate papv2, hpsv2 and partiprompts at 1024x1024
# with the fp16-fix VAE (Euler, 50 steps, cfg 7.5 with the reference formula, seed 0), score them
# with the five reward models, log to joint_test_1024.log beside the checkpoint, print the table.
#
#   bash scripts/eval/test_sdxl.sh [--dry-run] path/to/checkpoint-2000/unet.pth
#   LORA_PATH=path/to/lora_run bash scripts/eval/test_sdxl.sh [--dry-run]   # a LoRA run (LORA_SCALE)
#
# Settings are environment variables; see scripts/eval/joint_test.sh for the list.
CALLER="$0" KIND=sdxl exec bash "$(dirname "${BASH_SOURCE[0]}")/joint_test.sh" "$@"
