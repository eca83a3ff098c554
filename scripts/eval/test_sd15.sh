#!/usr/bin/env bash
# Evaluate an SD1.5 unet.pth as in the paper: generate papv2, hpsv2 and partiprompts at 512x512
# (Euler, 50 steps, cfg 7.5 with the reference formula, seed 0), score them with the five reward
# models, log to joint_test_512.log beside the checkpoint, and print a set x metric table.
#
#   bash scripts/eval/test_sd15.sh [--dry-run] path/to/checkpoint-2000/unet.pth
#   LORA_PATH=path/to/lora_run bash scripts/eval/test_sd15.sh [--dry-run]   # a LoRA run (LORA_SCALE)
#
# Settings are environment variables; see scripts/eval/joint_test.sh for the list.
CALLER="$0" KIND=sd15 exec bash "$(dirname "${BASH_SOURCE[0]}")/joint_test.sh" "$@"
