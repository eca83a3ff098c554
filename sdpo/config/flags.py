"""Every training flag in one place, with the reference scripts' names and defaults.

Flag names and defaults follow the Diffusion-DPO / SDPO reference ``train.py`` so launch scripts
written for it keep working.  An objective's own hyper-parameters are declared next to its formula
(``sdpo.losses.<name>.Params``) and become flags here.  The parser only parses; ``sdpo.config.resolve``
checks the values and builds the run's frozen configuration.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, fields

from sdpo.distributed.sharding import REDUCE_DTYPES, STRATEGIES
from sdpo.errors import UserError
from sdpo.families import add_family_arguments
from sdpo.families.flow import WEIGHTING_SCHEMES
from sdpo.losses import LOSSES
from sdpo.safeguard.modes import GRANULARITIES, MODES

_PRECISIONS = ("no", "fp16", "bf16")


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (what, and where to look), exit status 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
        raise UserError(f"{message} (see: python train.py --help)")


def build_parser() -> argparse.ArgumentParser:
    p = _OneLineParser(
        prog="train.py",
        description="Preference-tune image and video diffusion models (SD1.5, SDXL, SD3, FLUX, CogVideoX, Wan) with "
        "Diffusion-DPO, DSPO, DMPO and baselines (+ the SDPO safeguard).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    a = p.add_argument_group("model").add_argument
    a("--pretrained_model_name_or_path", required=True, help="hub id or local diffusers pipeline folder")
    a("--pretrained_vae_model_name_or_path", default=None, help="separate VAE (SDXL: madebyollin/sdxl-vae-fp16-fix)")
    a("--revision", default=None)
    add_family_arguments(a, "model family; auto reads the pipeline's model_index.json (local folder or hub)")
    a(
        "--unet_init",
        default=None,
        help="initial denoiser weights for policy and reference (UNet or transformer): a .pth, or a diffusers folder",
    )
    a(
        "--policy_init",
        default=None,
        help="initial weights of the trained policy only, loaded after --unet_init (the reference keeps the base or "
        "--unet_init): a .pth or diffusers folder; with --lora_rank, a LoRA file or folder whose adapters it starts "
        "from (python -m sdpo.online passes the previous round's weights here)",
    )

    a = p.add_argument_group("LoRA (peft): adapters train, the reference is the base with them off").add_argument
    a("--lora_rank", type=int, default=None, help="train LoRA adapters of this rank instead of the whole denoiser")
    a("--lora_alpha", type=float, default=None, help="LoRA alpha, scale = alpha / rank (None: the rank)")
    a("--lora_dropout", type=float, default=None, help="dropout on the adapters' input (None: 0)")
    a(
        "--lora_target_modules",
        nargs="+",
        default=None,
        help="peft target_modules names, or the family presets 'attn' (attention projections, the default) "
        "and 'ff' (feed-forward), e.g. --lora_target_modules attn ff (None: attn)",
    )
    a("--save_merged", action="store_true", help="LoRA: also write merged full weights (unet.pth / transformer.pth)")

    a = p.add_argument_group("rectified-flow families").add_argument
    a("--weighting_scheme", default="none", choices=WEIGHTING_SCHEMES, help="density of the training sigmas")
    a("--logit_mean", type=float, default=0.0, help="logit_normal: mean")
    a("--logit_std", type=float, default=1.0, help="logit_normal: std")
    a("--mode_scale", type=float, default=1.29, help="mode: scale")
    a("--flux_guidance", type=float, default=1.0, help="FLUX guidance-embedding value during training")
    a(
        "--max_sequence_length",
        type=int,
        default=None,
        help="T5 tokens (default: the pipeline's, flux 512, sd3 256, wan 512)",
    )

    a = p.add_argument_group("data").add_argument
    a("--dataset_name", default="yuvalkirstain/pickapic_v2", help="hub id, local dataset folder or parquet file")
    a("--dataset_config_name", default=None)
    a("--train_data_dir", default=None, help="a local folder of Pick-a-Pic parquet shards (overrides --dataset_name)")
    a("--split", default="train")
    a("--cache_dir", default=None)
    a("--streaming", action="store_true", help="stream the dataset instead of downloading it whole (335 GB)")
    a("--streaming_buffer_size", type=int, default=1000, help="shuffle buffer (rows) when --streaming")
    a("--max_train_samples", type=int, default=None, help="keep this many pairs (after dropping ties)")
    a("--resolution", type=int, default=None, help="training resolution (default 512 for sd15, 1024 for the others)")
    a("--random_crop", action="store_true")
    a("--no_hflip", action="store_true")
    a("--proportion_empty_prompts", type=float, default=0.2, help="fraction of captions blanked (reference: 0.2)")
    a("--dataloader_num_workers", type=int, default=0)
    a(
        "--data_check",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="drop broken rows before training (image headers, labels, captions); cached by datasets",
    )
    a("--max_bad_fraction", type=float, default=0.1, help="abort when more than this fraction of rows is broken")
    a(
        "--precomputed",
        default=None,
        metavar="CACHE",
        help="train from VAE latents and text encodings precomputed by python -m sdpo.precompute (same flags); "
        "the VAE and text encoders are not loaded",
    )

    a = p.add_argument_group("video families").add_argument
    a("--num_frames", type=int, default=None, help="frames per video (default: the model's, cogvideox 49, wan 81)")
    a("--frame_stride", type=int, default=None, help="take every n-th frame of the source video (default 1)")
    a("--height", type=int, default=None, help="video height (default: the model's, 480; --resolution R means RxR)")
    a("--width", type=int, default=None, help="video width (default: the model's, cogvideox 720, wan 832)")
    a(
        "--video_pairs_format",
        default="auto",
        choices=["auto", "parquet", "videodpo", "videoalign"],
        help="pair index: parquet (video_0, video_1, label_0, caption), VideoDPO pair.json, VideoAlign CSV",
    )
    a("--videoalign_dimension", default="VQ", choices=["VQ", "MQ", "TA"], help="which VideoAlign vote decides")

    a = p.add_argument_group("objective").add_argument
    a("--train_method", default="diffusion-dpo", choices=sorted(LOSSES))
    add_objective_flags(a)
    a("--noise_offset", type=float, default=0.0)
    a("--input_perturbation", type=float, default=0.0)

    a = p.add_argument_group("the SDPO safeguard (sdpo/safeguard)").add_argument
    a("--use_winner_preserving", action="store_true", help="enable the SDPO safeguard on the loser branch")
    a("--winner_preserving_mu", type=float, default=0.0, help="safety slack mu in [0, 1]")
    a(
        "--winner_preserving_mode",
        default=None,
        choices=MODES,
        help="where lambda comes from: output-space gradients (Eq. 17, default), a fixed value, or "
        "parameter-space gradients (Eq. 14)",
    )
    a(
        "--winner_preserving_lambda",
        type=float,
        default=None,
        help="lambda in [0, 1] for --winner_preserving_mode fixed",
    )
    a(
        "--winner_preserving_granularity",
        default=None,
        choices=GRANULARITIES,
        help="one lambda per micro-batch (batch, the reference) or per pair (output mode only)",
    )
    a(
        "--log_param_lambda",
        action="store_true",
        help="also compute the parameter-space lambda (Eq. 14) every step and log it as param_lambda, beside "
        "avg_lose_l_scale (the paper's Figure 2); costs what --winner_preserving_mode param costs",
    )

    a = p.add_argument_group("single labelled images (kto: sdpo/data/kto.py)").add_argument
    a(
        "--kto_label_column",
        default=None,
        help="kto: train on a per-image dataset whose boolean column NAME marks desirable images (else: "
        "Pick-a-Pic pairs, winner desirable, loser undesirable)",
    )
    a("--kto_image_column", default="image", help="kto: the image column of a --kto_label_column dataset")

    a = p.add_argument_group("optimisation").add_argument
    a("--seed", type=int, default=0)
    a("--train_batch_size", type=int, default=1, help="pairs per GPU per micro-step")
    a(
        "--max_train_steps",
        type=int,
        default=None,
        help="optimizer steps (2000 when --num_train_epochs is not given either)",
    )
    a(
        "--num_train_epochs",
        type=int,
        default=None,
        help="passes over the pairs; the step count follows from the data (both given: they must agree)",
    )
    a("--gradient_accumulation_steps", type=int, default=1)
    a(
        "--gradient_checkpointing",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="default: on for SDXL, SD3 and FLUX",
    )
    a("--learning_rate", type=float, default=1e-8)
    a("--scale_lr", action="store_true", help="lr *= accumulation * batch * processes")
    a("--lr_scheduler", default="constant_with_warmup")
    a("--lr_warmup_steps", type=int, default=500, help="in optimizer steps")
    a("--use_adafactor", action=argparse.BooleanOptionalAction, default=None, help="default: on for SDXL")
    a("--allow_tf32", action="store_true")
    a("--adam_beta1", type=float, default=0.9)
    a("--adam_beta2", type=float, default=0.999)
    a("--adam_weight_decay", type=float, default=1e-2)
    a("--adam_epsilon", type=float, default=1e-8)
    a("--max_grad_norm", type=float, default=1.0)
    a(
        "--max_nonfinite_steps",
        type=int,
        default=10,
        help="stop (saving the last good state) after this many consecutive steps with a NaN/inf loss",
    )
    a("--mixed_precision", default=None, choices=_PRECISIONS, help="default: accelerate config")

    a = p.add_argument_group("distribution").add_argument
    a(
        "--sharding",
        default="none",
        choices=STRATEGIES,
        help="none: DDP (whole model on every process); fsdp: FSDP2, every parameter, gradient and optimizer "
        "moment sharded over all processes; hsdp: FSDP inside groups, data parallel across them",
    )
    a(
        "--dp_replicate",
        type=int,
        default=None,
        help="hsdp: number of replica groups (the mesh is replicate x shard); default: the number of nodes",
    )
    a(
        "--fsdp_reduce_dtype",
        default=None,
        choices=sorted(REDUCE_DTYPES),
        help="fsdp/hsdp: dtype of the gradient reduce-scatter (default fp32; weights are gathered in the "
        "--mixed_precision dtype)",
    )

    a = p.add_argument_group("validation while training (sdpo/training/validation.py)").add_argument
    a(
        "--validation_prompts",
        default=None,
        help="turns validation on: a prompt file (JSON list of {'prompt': ...}, or one prompt per line), or a set "
        "in prompts/ with a count, e.g. papv2:64 (prompts spread evenly over the set)",
    )
    a("--validation_steps", type=int, default=None, help="validate every N optimizer steps, at 0 and the end (100)")
    a(
        "--validation_metrics",
        default=None,
        help="reward models to score the images with: none (default), all, or a comma list of "
        "pickscore,hpsv2,aesthetics,clip,imagereward; logged as val/<metric>",
    )
    a("--validation_model_root", default=None, help="local mirror of the reward weights (else $SDPO_REWARD_ROOT, hub)")
    a("--validation_num_inference_steps", type=int, default=None, help="sampler steps (evaluation protocol: 50)")
    a(
        "--validation_guidance",
        type=float,
        default=None,
        help="evaluation guidance (sd15/sdxl: cfg 7.5 of cond + cfg*(cond - uncond); sd3/flux: 3.5)",
    )
    a("--validation_resolution", type=int, default=None, help="image size, a multiple of 16 (default --resolution)")
    a("--validation_seed", type=int, default=None, help="seed of the initial latent every prompt starts from (0)")
    a("--validation_batch_size", type=int, default=None, help="prompts per sampler call on each process (4)")

    a = p.add_argument_group("output").add_argument
    a("--output_dir", default="sdpo-model")
    a("--logging_dir", default="logs", help="tensorboard folder, relative to --output_dir")
    a("--report_to", default="tensorboard", choices=["tensorboard", "wandb", "all", "none"])
    a("--tracker_project_name", default="sdpo")
    a("--checkpointing_steps", type=int, default=500)
    a("--checkpoints_total_limit", type=int, default=None, help="keep only the newest N checkpoints")
    a("--resume_from_checkpoint", default="latest", help="'latest', a checkpoint folder, or 'none'")
    return p


_TYPES = {"float": float, "int": int, "str": str}


def add_objective_flags(add) -> None:
    """Every objective's hyper-parameters (its ``Params`` dataclass) as flags, each flag once: objectives that
    share one (``beta_dpo``) declare it alike (tests/test_losses.py checks that)."""
    seen: set[str] = set()
    for obj in LOSSES.values():
        for f in fields(obj.Params):
            if f.name in seen:
                continue
            seen.add(f.name)
            kw = {k: v for k, v in f.metadata.items() if k in ("help", "choices")}
            default = f.default if f.default is not MISSING else None
            add(f"--{f.name}", type=_TYPES[str(f.type)], default=default, **kw)
