#!/usr/bin/env bash
# GenEval (the paper's Table 6 column) for one checkpoint: generate GenEval's 553 prompts x 4 images in
# its official layout, score them with the GenEval rules (python -m eval.geneval), log to
# geneval_<size>.log beside the checkpoint, and print the six task scores and the overall score.
#
#   bash scripts/eval/geneval.sh [--dry-run] path/to/checkpoint-2000/unet.pth
#
# Environment (defaults: SD1.5 at the paper's evaluation settings):
#   KIND (sd15 | sdxl; other families: their generate.py flags in GEN_ARGS)   PRETRAIN_PATH  VAE_PATH
#   SIZE (512 / 1024)  STEPS (50)  CFG (7.5, reference formula = diffusers guidance CFG+1)  SEED (0)
#   IMAGES (4 per prompt, image k from seed SEED+k)  BATCH_SIZE (1; does not change the images)  DTYPE (auto)
#   METADATA (prompts/geneval/evaluation_metadata.jsonl)  OUTPUT (default: the folder holding unet.pth)
#   LAUNCH ("python"; e.g. "accelerate launch --num_processes 8")  GEN_ARGS (extra generate.py flags)
#   DEVICE  EVAL_BATCH_SIZE (8)  MODEL_ROOT (detector + CLIP mirror; default $SDPO_REWARD_ROOT)  PYTHON
#   DRY_RUN=1 (same as --dry-run: print the commands, run nothing)
set -euo pipefail

DRY_RUN="${DRY_RUN:-0}"
MODEL_PATH=""
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) MODEL_PATH="$arg" ;;
  esac
done
if [[ -z "$MODEL_PATH" ]]; then
  echo "usage: $(basename "$0") [--dry-run] <unet.pth | checkpoint folder>" >&2
  exit 2
fi
if [[ ! -e "$MODEL_PATH" ]]; then
  echo "error: $MODEL_PATH: no such file or folder" >&2
  exit 2
fi

if [[ -d "$MODEL_PATH" ]]; then
  MODEL_PATH="$(cd "$MODEL_PATH" && pwd)"
  DEFAULT_OUTPUT="$MODEL_PATH"
else
  MODEL_PATH="$(cd "$(dirname "$MODEL_PATH")" && pwd)/$(basename "$MODEL_PATH")"
  DEFAULT_OUTPUT="$(dirname "$MODEL_PATH")"
fi
OUTPUT="${OUTPUT:-$DEFAULT_OUTPUT}"
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

KIND="${KIND:-sd15}"
case "$KIND" in
  sdxl)
    SIZE="${SIZE:-1024}"
    PRETRAIN_PATH="${PRETRAIN_PATH:-stabilityai/stable-diffusion-xl-base-1.0}"
    VAE_PATH="${VAE_PATH:-madebyollin/sdxl-vae-fp16-fix}"
    KIND_ARGS=(--sdxl) ;;
  sd15)
    SIZE="${SIZE:-512}"
    PRETRAIN_PATH="${PRETRAIN_PATH:-stable-diffusion-v1-5/stable-diffusion-v1-5}"
    VAE_PATH="${VAE_PATH:-}"
    KIND_ARGS=() ;;
  *)  # another family: generate.py's own flags for it come in GEN_ARGS
    SIZE="${SIZE:-1024}"
    PRETRAIN_PATH="${PRETRAIN_PATH:?PRETRAIN_PATH is needed for KIND=$KIND}"
    VAE_PATH="${VAE_PATH:-}"
    KIND_ARGS=() ;;
esac
STEPS="${STEPS:-50}"
CFG="${CFG:-7.5}"
SEED="${SEED:-0}"
IMAGES="${IMAGES:-4}"
BATCH_SIZE="${BATCH_SIZE:-1}"
DTYPE="${DTYPE:-auto}"
METADATA="${METADATA:-prompts/geneval/evaluation_metadata.jsonl}"
LAUNCH="${LAUNCH:-python}"
PYTHON="${PYTHON:-python}"

LOG_PATH="${OUTPUT}/geneval_${SIZE}.log"
if [[ "$DRY_RUN" != 1 ]]; then
  mkdir -p "$OUTPUT"
  exec > >(tee -a "$LOG_PATH") 2>&1
  echo "== $(date '+%F %T') GenEval ($KIND) of $MODEL_PATH, log $LOG_PATH"
fi

run() {  # print a command; run it unless this is a dry run
  echo "+ $*"
  if [[ "$DRY_RUN" != 1 ]]; then "$@"; fi
}

read -r -a LAUNCH_CMD <<< "$LAUNCH"
read -r -a EXTRA <<< "${GEN_ARGS:-}"
GEN=(--unet_path "$MODEL_PATH" --pretrain_path "$PRETRAIN_PATH" --output_path "$OUTPUT"
  --height "$SIZE" --width "$SIZE" --steps "$STEPS" --cfg "$CFG" --seed "$SEED" --dtype "$DTYPE"
  --layout geneval --images_per_prompt "$IMAGES" --test_json "$METADATA" "${KIND_ARGS[@]}" "${EXTRA[@]}")
if [[ -n "$VAE_PATH" ]]; then GEN+=(--vae_path "$VAE_PATH"); fi
EVAL=()
if [[ -n "${DEVICE:-}" ]]; then EVAL+=(--device "$DEVICE"); fi
if [[ -n "${EVAL_BATCH_SIZE:-}" ]]; then EVAL+=(--batch_size "$EVAL_BATCH_SIZE"); fi
if [[ -n "${MODEL_ROOT:-}" ]]; then EVAL+=(--model_root "$MODEL_ROOT"); fi

# generate.py names the folder, so the name here always follows its rules.
manifest="$("$PYTHON" eval/generate.py "${GEN[@]}" --print_manifest_path)"
folder="${manifest%.json}"
echo "== $METADATA -> $folder"
if [[ -e "$manifest" ]]; then
  echo "generation skipped: $manifest exists (every image is there)"
else
  run "${LAUNCH_CMD[@]}" eval/generate.py "${GEN[@]}" --batch_size "$BATCH_SIZE"
fi
run "$PYTHON" -m eval.geneval "$folder" "${EVAL[@]}"
