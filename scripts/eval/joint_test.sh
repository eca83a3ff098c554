#!/usr/bin/env bash
# Shared body of test_sd15.sh / test_sdxl.sh / test_sd3.sh / test_flux.sh and the later image families'
# test_<family>.sh (test_qwenimage.sh, test_flux2.sh, test_zimage.sh): generate the prompt sets
# for one checkpoint, score them with the five reward models, print a set x metric table, and write
# an HTML report of the sets beside them (<output>/report_<size>/report.html; its path is printed).
# Not meant to be called directly.
#
#   KIND=sd15|sdxl|sd3|flux|<family> joint_test.sh [--dry-run] <unet.pth | transformer.pth | checkpoint folder>
#   LORA_PATH=<LoRA run folder | checkpoint | .safetensors> KIND=... joint_test.sh [--dry-run] [<weights>]
#
# Environment (defaults are the paper's settings):
#   PRETRAIN_PATH  base model id or folder    VAE_PATH  VAE id or folder (SDXL: fp16-fix VAE)
#   SIZE (512 / 1024)  STEPS (50)  SEED (0)  CFG (SD1.5/SDXL: 7.5, reference formula = diffusers
#   guidance CFG+1; SD3/FLUX: 3.5, the pipeline's own guidance, FLUX's a distilled embedding; any other
#   family: its own default_resolution, sampling_guidance and default_model, from sdpo/families/<family>.py)
#   BATCH_SIZE (1; does not change the images)  DTYPE (auto)  SETS ("papv2 hpsv2 partiprompts";
#   names under prompts/ or paths to prompt files)  OUTPUT (default: the folder holding unet.pth)
#   LAUNCH ("python"; e.g. "accelerate launch --num_processes 8")  GEN_ARGS (extra generate flags)
#   METRICS (all)  SCORE_BATCH_SIZE  DEVICE  SCORE_PY (eval/score.py)  SUMMARY_PY (eval/summary.py)
#   DRY_RUN=1 (same as --dry-run: print the commands, run nothing)  REPORT=0 (no HTML report)
#   LORA_PATH  a LoRA on top of the base model (or of the weights given); LORA_SCALE (1.0) its weight;
#              the results go beside the LoRA when no weights are given
set -euo pipefail

KIND="${KIND:?KIND must be sd15, sdxl, sd3, flux or another image family (--model_family)}"
DRY_RUN="${DRY_RUN:-0}"
MODEL_PATH=""
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) MODEL_PATH="$arg" ;;
  esac
done
LORA_PATH="${LORA_PATH:-}"
if [[ -z "$MODEL_PATH" && -z "$LORA_PATH" ]]; then
  echo "usage: $(basename "${CALLER:-$0}") [--dry-run] <unet.pth | transformer.pth | checkpoint folder>  (or set LORA_PATH)" >&2
  exit 2
fi
absolute() {  # an absolute path for an existing file or folder: the rest runs from the repository root
  if [[ ! -e "$1" ]]; then echo "error: $1: no such file or folder" >&2; exit 2; fi
  if [[ -d "$1" ]]; then (cd "$1" && pwd); else echo "$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"; fi
}
folder_of() { if [[ -d "$1" ]]; then echo "$1"; else dirname "$1"; fi; }
if [[ -n "$MODEL_PATH" ]]; then MODEL_PATH="$(absolute "$MODEL_PATH")"; DEFAULT_OUTPUT="$(folder_of "$MODEL_PATH")"; fi
if [[ -n "$LORA_PATH" ]]; then
  LORA_PATH="$(absolute "$LORA_PATH")"
  [[ -n "$MODEL_PATH" ]] || DEFAULT_OUTPUT="$(folder_of "$LORA_PATH")"
fi
OUTPUT="${OUTPUT:-$DEFAULT_OUTPUT}"
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

DEFAULT_CFG=7.5
if [[ "$KIND" == sdxl ]]; then
  SIZE="${SIZE:-1024}"
  PRETRAIN_PATH="${PRETRAIN_PATH:-stabilityai/stable-diffusion-xl-base-1.0}"
  VAE_PATH="${VAE_PATH:-madebyollin/sdxl-vae-fp16-fix}"
  KIND_ARGS=(--sdxl)
elif [[ "$KIND" == flux || "$KIND" == sd3 ]]; then
  SIZE="${SIZE:-1024}"
  if [[ "$KIND" == flux ]]; then DEFAULT_BASE=black-forest-labs/FLUX.1-dev; else
    DEFAULT_BASE=stabilityai/stable-diffusion-3.5-medium; fi
  PRETRAIN_PATH="${PRETRAIN_PATH:-$DEFAULT_BASE}"
  VAE_PATH="${VAE_PATH:-}"
  KIND_ARGS=(--model_family "$KIND")
  DEFAULT_CFG=3.5
elif [[ "$KIND" != sd15 ]]; then  # a later family: what it evaluates at is the family's own, not this script's
  FAMILY_DEFAULTS="$("${PYTHON:-python}" -m sdpo.families.eval_defaults "$KIND")" || exit 2
  read -r FAMILY_SIZE DEFAULT_CFG DEFAULT_BASE <<< "$FAMILY_DEFAULTS"
  SIZE="${SIZE:-$FAMILY_SIZE}"
  PRETRAIN_PATH="${PRETRAIN_PATH:-$DEFAULT_BASE}"
  VAE_PATH="${VAE_PATH:-}"
  KIND_ARGS=(--model_family "$KIND")
else
  SIZE="${SIZE:-512}"
  PRETRAIN_PATH="${PRETRAIN_PATH:-stable-diffusion-v1-5/stable-diffusion-v1-5}"
  VAE_PATH="${VAE_PATH:-}"
  KIND_ARGS=()
fi
STEPS="${STEPS:-${STEP:-50}}"
CFG="${CFG:-$DEFAULT_CFG}"
SEED="${SEED:-0}"
BATCH_SIZE="${BATCH_SIZE:-1}"
DTYPE="${DTYPE:-auto}"
SETS="${SETS:-papv2 hpsv2 partiprompts}"
LAUNCH="${LAUNCH:-python}"
METRICS="${METRICS:-all}"
PYTHON="${PYTHON:-python}"
SCORE_PY="${SCORE_PY:-eval/score.py}"
SUMMARY_PY="${SUMMARY_PY:-eval/summary.py}"

LOG_PATH="${OUTPUT}/joint_test_${SIZE}.log"
if [[ "$DRY_RUN" != 1 ]]; then
  mkdir -p "$OUTPUT"
  exec > >(tee -a "$LOG_PATH") 2>&1
  echo "== $(date '+%F %T') joint test ($KIND) of ${MODEL_PATH:-the base model}${LORA_PATH:+ + LoRA $LORA_PATH}, log $LOG_PATH"
fi

run() {  # print a command; run it unless this is a dry run
  echo "+ $*"
  if [[ "$DRY_RUN" != 1 ]]; then "$@"; fi
}

GEN_COMMON=(--pretrain_path "$PRETRAIN_PATH" --output_path "$OUTPUT"
  --height "$SIZE" --width "$SIZE" --steps "$STEPS" --cfg "$CFG" --seed "$SEED" --dtype "$DTYPE" "${KIND_ARGS[@]}")
if [[ -n "$MODEL_PATH" ]]; then GEN_COMMON+=(--weights_path "$MODEL_PATH"); fi
if [[ -n "$LORA_PATH" ]]; then GEN_COMMON+=(--lora_path "$LORA_PATH" --lora_scale "${LORA_SCALE:-1.0}"); fi
if [[ -n "$VAE_PATH" ]]; then GEN_COMMON+=(--vae_path "$VAE_PATH"); fi
read -r -a LAUNCH_CMD <<< "$LAUNCH"
read -r -a EXTRA <<< "${GEN_ARGS:-}"
SCORE_ARGS=(--metrics "$METRICS")
if [[ -n "${SCORE_BATCH_SIZE:-}" ]]; then SCORE_ARGS+=(--batch_size "$SCORE_BATCH_SIZE"); fi
if [[ -n "${DEVICE:-}" ]]; then SCORE_ARGS+=(--device "$DEVICE"); fi

MANIFESTS=()
for set in $SETS; do
  if [[ "$set" == *.json ]]; then test_json="$set"; else test_json="prompts/${set}.json"; fi
  # generate.py names the manifest, so the names here always match its rules (e.g. cfg 5 -> "5.0cfg").
  manifest="$("$PYTHON" eval/generate.py "${GEN_COMMON[@]}" --test_json "$test_json" --print_manifest_path)"
  MANIFESTS+=("$manifest")
  echo "== $test_json -> $manifest"
  if [[ -e "$manifest" ]]; then
    echo "generation skipped: $manifest exists (the set is complete)"
  else
    run "${LAUNCH_CMD[@]}" eval/generate.py "${GEN_COMMON[@]}" --test_json "$test_json" \
      --batch_size "$BATCH_SIZE" "${EXTRA[@]}"
  fi
  if [[ -f "$SCORE_PY" ]]; then
    run "$PYTHON" "$SCORE_PY" --json_path "$manifest" "${SCORE_ARGS[@]}"
  else
    echo "scoring skipped: $SCORE_PY not found in this checkout"
  fi
done

echo "== summary ($KIND, ${SIZE}x${SIZE}, ${STEPS} steps, cfg ${CFG}, seed ${SEED})"
if [[ -f "$SUMMARY_PY" && -f "$SCORE_PY" ]]; then
  run "$PYTHON" "$SUMMARY_PY" "${MANIFESTS[@]}"
else
  echo "no score table: $SUMMARY_PY or $SCORE_PY not found; manifests:"
  printf '  %s\n' "${MANIFESTS[@]}"
fi
if [[ "${REPORT:-1}" != 0 ]]; then
  run "$PYTHON" -m eval.report "${MANIFESTS[@]}" --out "$OUTPUT/report_${SIZE}" --quiet
fi
