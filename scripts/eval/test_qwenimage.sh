#!/usr/bin/env bash
# Evaluate a Qwen-Image checkpoint (transformer.pth or a checkpoint folder) with the paper's protocol where it
# carries over: papv2, hpsv2 and partiprompts, 50 steps, seed 0, scored with the five reward models; size, base
# model and guidance are the family's own (1024 px, Qwen/Qwen-Image, true CFG 4.0: QwenImagePipeline's
# true_cfg_scale default; see docs/families.md). Log beside the checkpoint; prints the table.
#
#   bash scripts/eval/test_qwenimage.sh [--dry-run] path/to/checkpoint-2000/transformer.pth
#   LORA_PATH=path/to/lora_run bash scripts/eval/test_qwenimage.sh [--dry-run]   # a LoRA run (LORA_SCALE)
#
# Settings are environment variables; see scripts/eval/joint_test.sh for the list.
CALLER="$0" KIND=qwenimage exec bash "$(dirname "${BASH_SOURCE[0]}")/joint_test.sh" "$@"
