# Shared launcher for the paper recipes (sourced, not run).  A recipe script sets
#   FAMILY=sd15|sdxl|flux|sd3|cogvideox|wan   and   RECIPE=(--train_method ... --beta_dpo ... --winner_preserving_mu ...)
# and then calls:   launch "$@"
# Video recipes (cogvideox, wan) instead set DEFAULT_MODEL, METHOD (the default method) and METHOD_BETA (an
# associative array method -> beta_dpo); the script option --method NAME picks the method and its beta.
# A flag in RECIPE replaces the shared one of the same name (sd15_kto.sh's schedule).
# A recipe whose source run differs from the SDPO paper's may also set, before `launch`:
#   RECIPE_LR (the family's lr), RECIPE_SCALE_LR=0 (no --scale_lr), RECIPE_TF32=0 (no --allow_tf32),
#   RECIPE_GLOBAL_BATCH, RECIPE_PER_GPU_BATCH, RECIPE_PRECISION (defaults of the variables below),
#   RECIPE_UNIT (what one sample is, for the printed summary: pairs).
#
# What it does: counts the local GPUs, works out the processes over all nodes, scales gradient
# accumulation so that per-GPU batch x processes x accumulation = GLOBAL_BATCH (2048 in the paper),
# prints those numbers, and runs (or with DRY_RUN=1 / --dry-run, prints) one `accelerate launch`
# command.  Extra arguments go to train.py after the recipe's own flags, so they override them.
#
# Online recipes (*_online.sh: iterative on-policy rounds, python -m sdpo.online) also set ONLINE=1 and
# ONLINE_FLAGS=(--rounds ... --reward ...): the same launch runs the round driver in every process instead of
# train.py; its output folder is --out, the training prompts come from PROMPTS (a prompt file), and the
# driver's own flags may be given like train.py flags (python -m sdpo.online --help).
#
# LoRA: with --lora_rank among the extra arguments, the recipe trains adapters instead of the whole
# denoiser: lr 1e-5 not scaled by the batch (diffusers' Diffusion-DPO LoRA example; a later
# --learning_rate wins), AdamW instead of SDXL's Adafactor, and FLUX no longer needs sharding.
#
# Environment (all optional):
#   MODEL, VAE            base model / separate VAE (hub id or local folder); VAE=none drops it
#   DATASET               --dataset_name (hub id, local dataset folder or parquet file); not for online recipes
#   PROMPTS               online recipes: the training prompt file (JSON list of {prompt}, or one per line)
#   TRAIN_DATA_DIR        a local folder of Pick-a-Pic parquet shards (instead of DATASET)
#   OUTPUT_DIR            default outputs/<script name>
#   NUM_GPUS              GPUs per node (default: counted from CUDA_VISIBLE_DEVICES or nvidia-smi -L)
#   NUM_NODES (NNODES, SLURM_NNODES), NODE_RANK (SLURM_NODEID), MASTER_ADDR, MASTER_PORT (29500)
#   GLOBAL_BATCH (2048; flux/sd3/video: 512), PER_GPU_BATCH (8; flux/sd3: 1; video: 4)
#   MIXED_PRECISION (bf16; video: fp16), NUM_WORKERS (4); a recipe's RECIPE_* values replace these defaults
#   ACCEL_CONFIG          an accelerate config file, e.g. configs/accelerate/deepspeed_zero2.yaml
#   SHARDING              none (DDP) | fsdp | hsdp; default hsdp for flux (FSDP inside a node, data parallel
#                         across nodes: the paper's 2 x 8), none otherwise.  --sharding X works too.
#   DP_REPLICATE          hsdp replica groups (default: the number of nodes).  --dp_replicate N works too.
#   ALLOW_CPU=1           run on CPU when no GPU is found (tiny smoke tests only)
#   DRY_RUN=1             print the command instead of running it
#   PYTHON                interpreter used to check train.py flags (default python3)

_SDPO_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

_die() {
    echo "$(basename "$0"): $*" >&2
    exit 2
}

_is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }

# GPUs on this node: NUM_GPUS wins, then CUDA_VISIBLE_DEVICES, then nvidia-smi -L.
count_local_gpus() {
    if [[ -n "${NUM_GPUS:-}" ]]; then
        _is_uint "$NUM_GPUS" || _die "NUM_GPUS must be a whole number, got '$NUM_GPUS'"
        echo "$NUM_GPUS"
    elif [[ -n "${CUDA_VISIBLE_DEVICES+x}" ]]; then
        local ids n=0
        IFS=',' read -ra ids <<<"$CUDA_VISIBLE_DEVICES"
        for id in "${ids[@]}"; do [[ -n "$id" && "$id" != "-1" ]] && n=$((n + 1)); done
        echo "$n"
    elif command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true
    else
        echo 0
    fi
}

_recipe_sets() {
    local f
    for f in "${RECIPE[@]}"; do [[ "$f" == "$1" ]] && return 0; done
    return 1
}

# The family's recipe numbers and train.py flags, from Python (sdpo/config/launch.py: one source of truth
# with train.py's own defaults).  Sets MODEL_DEFAULT VAE_DEFAULT LR SCALE_LR GLOBAL_BATCH_DEFAULT
# PER_GPU_BATCH_DEFAULT PRECISION_DEFAULT SHARDING_DEFAULT VIDEO TRAIN_FLAGS and, for some families, SCHEDULE.
_family_defaults() {
    local out
    out="$(cd "$_SDPO_REPO" && "${PYTHON:-python3}" -m sdpo.config.launch "$@")" ||
        _die "could not read the $FAMILY family's recipe with ${PYTHON:-python3} (is the project's Python environment active?)"
    eval "$out"
    # Anything that is neither a script option nor a train.py flag stops here, named.
    if [[ "${ARGS_ERROR:-}" == *" would reject"* ]]; then
        _die "$ARGS_ERROR"
    elif [[ -n "${ARGS_ERROR:-}" ]]; then
        local what="a train.py flag spelled in full, see: python train.py --help"
        ((${ONLINE:-0})) && what="a python -m sdpo.online or train.py flag spelled in full, see: python -m sdpo.online --help"
        _die "$ARGS_ERROR (script options: --dry-run --cpu --no-safeguard --help; anything else must be $what)"
    fi
    [[ -z "${ERROR:-}" ]] || _die "$ERROR"
}

launch() {
    local name dry="${DRY_RUN:-0}" cpu="${ALLOW_CPU:-0}" safeguard=1 accum="" batch="" method="${METHOD:-}" lora=0
    local sharding="${SHARDING:-}" replicate="${DP_REPLICATE:-}"
    local -a extra=()
    name="$(basename "$0" .sh)"
    while (($#)); do
        case "$1" in
            --dry-run) dry=1 ;;
            --cpu) cpu=1 ;;
            --no-safeguard) safeguard=0 ;;
            --method | --method=*)
                if [[ "$1" == --method ]]; then
                    (($# >= 2)) || _die "--method needs a value"
                    method="$2"
                    shift
                else
                    method="${1#*=}"
                fi
                [[ -n "${METHOD:-}" ]] || _die "--method is for the video recipes; this recipe's method is fixed (use --train_method)"
                ;;
            -h | --help)
                awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
                echo "Script options: --dry-run, --cpu, --no-safeguard, --method (video recipes), --help; any other --flag goes to train.py."
                echo "Environment: MODEL VAE DATASET TRAIN_DATA_DIR OUTPUT_DIR NUM_GPUS NUM_NODES NODE_RANK MASTER_ADDR"
                echo "  MASTER_PORT GLOBAL_BATCH PER_GPU_BATCH MIXED_PRECISION NUM_WORKERS ACCEL_CONFIG SHARDING DP_REPLICATE"
                echo "  ALLOW_CPU DRY_RUN"
                echo "  (see scripts/train/common.sh)."
                exit 0
                ;;
            --train_batch_size | --gradient_accumulation_steps)
                (($# >= 2)) || _die "$1 needs a value"
                [[ "$1" == --train_batch_size ]] && batch="$2" || accum="$2"
                shift
                ;;
            --sharding | --dp_replicate)
                (($# >= 2)) || _die "$1 needs a value"
                [[ "$1" == --sharding ]] && sharding="$2" || replicate="$2"
                shift
                ;;
            --sharding=*) sharding="${1#*=}" ;;
            --dp_replicate=*) replicate="${1#*=}" ;;
            --train_batch_size=*) batch="${1#*=}" ;;
            --gradient_accumulation_steps=*) accum="${1#*=}" ;;
            --lora_rank | --lora_rank=*) lora=1; extra+=("$1") ;;
            *) extra+=("$1") ;;
        esac
        shift
    done
    [[ "$dry" == 1 || "$dry" == 0 ]] || _die "DRY_RUN must be 0 or 1, got '$dry'"

    # --- the family's recipe (Python), then video's method (SIPO paper Table A1 betas) and data ----
    local -a recipe_args=("$FAMILY")
    [[ -n "$sharding" ]] && recipe_args+=(--sharding "$sharding")
    ((lora)) && recipe_args+=(--lora)
    [[ -n "$method" ]] && recipe_args+=(--method "$method")
    local online="${ONLINE:-0}"
    ((online)) && recipe_args+=(--online)
    if [[ -n "${METHOD:-}" ]]; then
        [[ -n "${METHOD_BETA[$method]+x}" ]] ||
            _die "unknown --method '$method'; choose one of: ${!METHOD_BETA[*]}"
    fi
    _family_defaults "${recipe_args[@]}" -- "${extra[@]}"
    local video="$VIDEO"
    batch="${batch:-${PER_GPU_BATCH:-${RECIPE_PER_GPU_BATCH:-$PER_GPU_BATCH_DEFAULT}}}"
    if ((online)); then
        [[ -n "${PROMPTS:-}" ]] ||
            _die "set PROMPTS to the training prompt file (JSON list of {\"prompt\": ...} or one prompt per line): the rounds sample from it"
    elif ((video)); then
        [[ -n "${DATASET:-}${TRAIN_DATA_DIR:-}" ]] ||
            _die "set DATASET (or TRAIN_DATA_DIR) to a local video-pair folder or file (parquet, VideoDPO pair.json or VideoAlign CSV; the SIPO paper's 10k pairs are not public)"
    fi

    # --- processes: GPUs on this node x nodes -------------------------------------------------
    local gpus nodes rank procs_per_node world device
    gpus="$(count_local_gpus)"
    nodes="${NUM_NODES:-${NNODES:-${SLURM_NNODES:-1}}}"
    rank="${NODE_RANK:-${SLURM_NODEID:-0}}"
    _is_uint "$nodes" && ((nodes >= 1)) || _die "NUM_NODES must be a whole number >= 1, got '$nodes'"
    _is_uint "$rank" && ((rank < nodes)) || _die "NODE_RANK must be in [0, $((nodes - 1))], got '$rank'"
    if ((gpus == 0)); then
        if [[ "$cpu" != 1 ]]; then
            _die "no GPU found (NUM_GPUS unset, CUDA_VISIBLE_DEVICES unset or empty, nvidia-smi lists none); refusing to start a paper run on CPU. Set NUM_GPUS=N if the GPUs are there but not visible, or ALLOW_CPU=1 (or --cpu) to run on CPU anyway."
        fi
        device=cpu
        procs_per_node=1
    else
        device=gpu
        procs_per_node="$gpus"
    fi
    world=$((procs_per_node * nodes))

    # --- batch: per-GPU batch x processes x accumulation = global batch -----------------------
    local global="${GLOBAL_BATCH:-${RECIPE_GLOBAL_BATCH:-$GLOBAL_BATCH_DEFAULT}}"
    _is_uint "$batch" && ((batch >= 1)) || _die "per-GPU batch must be a whole number >= 1, got '$batch'"
    if [[ -z "$accum" ]]; then
        _is_uint "$global" && ((global >= 1)) || _die "GLOBAL_BATCH must be a whole number >= 1, got '$global'"
        if ((global % (batch * world) != 0)); then
            _die "global batch $global is not divisible by per-GPU batch $batch x $world process(es) = $((batch * world)); change PER_GPU_BATCH, GLOBAL_BATCH or the GPU count"
        fi
        accum=$((global / (batch * world)))
    else
        _is_uint "$accum" && ((accum >= 1)) || _die "--gradient_accumulation_steps must be a whole number >= 1, got '$accum'"
        global=$((batch * world * accum))
    fi

    # --- sharding: none (DDP) | fsdp | hsdp (replicate x shard = processes) -----------------------
    # The family's default when not given (FLUX full fine-tunes: HSDP, as the paper); LoRA runs DDP.
    [[ -n "$sharding" ]] || sharding="$SHARDING_DEFAULT"
    if ((lora)) && [[ "$sharding" != none ]]; then
        _die "--lora_rank runs without sharding (one frozen base copy per GPU, DDP on the adapters); drop --sharding / SHARDING=$sharding"
    fi
    local -a shard_flags=()
    case "$sharding" in
        none | fsdp)
            [[ -z "$replicate" ]] || _die "--dp_replicate needs SHARDING=hsdp (sharding is $sharding)"
            [[ "$sharding" == fsdp ]] && shard_flags=(--sharding fsdp)
            ;;
        hsdp)
            replicate="${replicate:-$nodes}"
            _is_uint "$replicate" && ((replicate >= 1)) || _die "DP_REPLICATE must be a whole number >= 1, got '$replicate'"
            ((world % replicate == 0)) || _die "HSDP: $replicate replica group(s) do not divide $world process(es); set DP_REPLICATE to a divisor of $world"
            shard_flags=(--sharding hsdp --dp_replicate "$replicate")
            ;;
        *) _die "SHARDING must be none, fsdp or hsdp, got '$sharding'" ;;
    esac

    # --- train.py flags: family defaults, the recipe, then the user's extras ------------------
    local model vae lr="$LR" scale_lr=(--scale_lr)
    model="${MODEL:-${DEFAULT_MODEL:-$MODEL_DEFAULT}}"
    vae="${VAE:-$VAE_DEFAULT}"
    ((SCALE_LR)) || scale_lr=()
    lr="${RECIPE_LR:-$lr}"
    [[ "${RECIPE_SCALE_LR:-1}" == 1 ]] || scale_lr=()
    if ((lora)); then  # LoRA: the adapters' lr, as is (diffusers' LoRA Diffusion-DPO example uses 1e-5 to 5e-5)
        lr=1e-5
        scale_lr=()
    fi
    local precision="${MIXED_PRECISION:-${RECIPE_PRECISION:-$PRECISION_DEFAULT}}"
    [[ "$device" == cpu && -z "${MIXED_PRECISION:-}" ]] && precision=no
    local -a train=(--pretrained_model_name_or_path "$model")
    [[ "$vae" != none ]] && train+=(--pretrained_vae_model_name_or_path "$vae")
    train+=("${TRAIN_FLAGS[@]}")
    ((video)) && train+=(--train_method "$method" --beta_dpo "${METHOD_BETA[$method]}")
    if ((online)); then
        train+=(--prompts "$PROMPTS" "${ONLINE_FLAGS[@]}")  # the rounds make their own pairs
    elif [[ -n "${TRAIN_DATA_DIR:-}" ]]; then
        train+=(--train_data_dir "$TRAIN_DATA_DIR")
    else
        train+=(--dataset_name "${DATASET:-yuvalkirstain/pickapic_v2}")
    fi
    local recipe=()
    local i=0
    while ((i < ${#RECIPE[@]})); do  # --no-safeguard drops the safeguard flags (the paper's baselines)
        case "${RECIPE[i]}" in
            --use_winner_preserving) ((safeguard)) && recipe+=("${RECIPE[i]}") ;;
            --winner_preserving_mu) ((safeguard)) && recipe+=("${RECIPE[i]}" "${RECIPE[i + 1]}"); i=$((i + 1)) ;;
            *) recipe+=("${RECIPE[i]}") ;;
        esac
        i=$((i + 1))
    done
    local -a schedule=(--lr_scheduler constant_with_warmup --lr_warmup_steps 500 --max_train_steps 2000
        --checkpointing_steps 500)
    local out="${OUTPUT_DIR:-outputs/$name}"
    [[ -n "${SCHEDULE+x}" ]] && schedule=("${SCHEDULE[@]}")  # the family's own (video: SIPO Table A1)
    ((video)) && out="${OUTPUT_DIR:-outputs/$name-$method}"
    if ((online)); then  # a round's length is --steps_per_round / --epochs_per_round, each round starts afresh:
        local -a kept=(--lr_scheduler constant --lr_warmup_steps 0 --checkpointing_steps 100)  # no warmup per round
        local j
        for ((j = 0; j < ${#schedule[@]}; j += 2)); do
            case "${schedule[j]}" in
                --lr_scheduler | --lr_warmup_steps | --checkpointing_steps | --max_train_steps) ;;
                *) kept+=("${schedule[j]}" "${schedule[j + 1]}") ;;
            esac
        done
        schedule=("${kept[@]}")
    fi
    local -a tf32=(--allow_tf32)
    [[ "${RECIPE_TF32:-1}" == 1 ]] || tf32=()
    local j
    for ((j = 0; j < ${#schedule[@]}; j += 2)); do  # a flag the recipe sets itself is left to the recipe
        _recipe_sets "${schedule[j]}" || train+=("${schedule[j]}" "${schedule[j + 1]}")
    done
    train+=(
        "${recipe[@]}"
        --learning_rate "$lr" "${scale_lr[@]}"
        --train_batch_size "$batch" --gradient_accumulation_steps "$accum"
        "${shard_flags[@]}"
        --mixed_precision "$precision" "${tf32[@]}"
        --dataloader_num_workers "${NUM_WORKERS:-4}"
    )
    if ((online)); then
        train+=(--out "$out" "${extra[@]}")
    else
        train+=(--output_dir "$out" "${extra[@]}")
    fi

    # --- accelerate launch ----------------------------------------------------------------------
    local -a cmd=(accelerate launch)
    [[ -n "${ACCEL_CONFIG:-}" ]] && cmd+=(--config_file "$ACCEL_CONFIG")
    if [[ "$device" == cpu ]]; then
        cmd+=(--cpu)
    elif ((world > 1)) && [[ -z "${ACCEL_CONFIG:-}" ]]; then
        cmd+=(--multi_gpu)  # with a config file, its distributed_type (DDP / DeepSpeed) decides
    fi
    cmd+=(--num_processes "$world" --num_machines "$nodes" --mixed_precision "$precision" --dynamo_backend no)
    if ((nodes > 1)); then
        [[ -n "${MASTER_ADDR:-}" ]] || _die "NUM_NODES=$nodes needs MASTER_ADDR (the address of node 0) and NODE_RANK on every node"
        cmd+=(--machine_rank "$rank" --main_process_ip "$MASTER_ADDR" --main_process_port "${MASTER_PORT:-29500}")
    fi
    if ((online)); then
        export PYTHONPATH="$_SDPO_REPO${PYTHONPATH:+:$PYTHONPATH}"  # every process imports sdpo.online
        cmd+=(--module sdpo.online "${train[@]}")
    else
        cmd+=("$_SDPO_REPO/train.py" "${train[@]}")
    fi

    local scaled
    scaled="$(awk -v lr="$lr" -v g="$global" 'BEGIN { printf "%.4g", lr * g }')"
    local unit="GPU(s)" lr_line
    [[ "$device" == cpu ]] && unit="CPU process"
    lr_line="lr $lr x $global (--scale_lr) = $scaled"
    ((${#scale_lr[@]})) || lr_line="lr $lr (not scaled)"
    ((lora)) && lr_line="LoRA: $lr_line, AdamW on the adapters"
    echo "$name: $nodes node(s) x $procs_per_node $unit = $world process(es) (this node: rank $rank)"
    echo "$name: per-GPU batch $batch x $world x accumulation $accum = global batch $global ${RECIPE_UNIT:-pairs}"
    echo "$name: $lr_line; output $out"
    if [[ "$sharding" == hsdp ]]; then
        echo "$name: HSDP: $replicate replica group(s) x $((world / replicate)) shard(s) (FSDP inside a group, data parallel across groups)"
    elif [[ "$sharding" == fsdp ]]; then
        echo "$name: FSDP over all $world process(es)"
    fi
    if [[ "$dry" == 1 ]]; then
        printf '%q ' "${cmd[@]}" | sed 's/ $//'
        echo
        return 0
    fi
    exec "${cmd[@]}"
}
