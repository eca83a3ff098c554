"""Every training flag in one place, with the reference scripts' names and defaults.

Flag names and defaults follow the Diffusion-DPO / SDPO reference ``train.py`` so launch scripts
written for it keep working.  ``parse_args`` validates everything that can be checked without
loading a model, and turns bad input into one ``UserError`` line.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from sdpo.distributed.sharding import REDUCE_DTYPES, STRATEGIES
from sdpo.errors import UserError
from sdpo.families import FAMILIES, add_family_arguments, get_family, requested_family, resolve_family
from sdpo.families.flow import WEIGHTING_SCHEMES
from sdpo.losses import LOSSES, processes
from sdpo.losses.kto import HALOS
from sdpo.safeguard.modes import GRANULARITIES, MODES
from sdpo.training import validation

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

    a = p.add_argument_group("rectified flow (sd3, flux, wan)").add_argument
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

    a = p.add_argument_group("video (cogvideox, wan)").add_argument
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
    a("--beta_dpo", type=float, default=5000.0)
    a("--dmpo_alpha", type=float, default=0.0)
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
    a("--beta_mapo", type=float, default=0.1, help="mapo: weight of the odds-ratio term")
    a("--mapo_snr", type=float, default=0.5, help="mapo: the s in s*l / (exp(s*l) - 1)")
    a("--dpop_lambda", type=float, default=50.0, help="dpop: weight of relu(L_w - L_ref_w) inside the margin")
    a("--sipo_clip_eps", type=float, default=0.1, help="dpo-cm / sipo: importance weights clipped to [1-e, 1+e]")
    a(
        "--sipo_mask_threshold",
        type=float,
        default=0.9,
        help="dpo-cm: pairs whose importance weight is below this are masked",
    )
    # Diffusion-KTO (sdpo/losses/kto.py, sdpo/kto_data.py); names and defaults of its public code.
    a("--kto_beta", type=float, default=1000.0, help="kto: scale of the implicit reward L_ref - L_theta")
    a("--halo", default="sigmoid", choices=sorted(HALOS), help="kto: the utility function of the scaled reward")
    a("--lambda_d_kto", type=float, default=1.0, help="kto: weight of desirable images")
    a("--lambda_u_kto", type=float, default=1.0, help="kto: weight of undesirable images")
    a("--positive_ratio", type=float, default=0.5, help="kto: probability that a sample is a desirable image")
    a(
        "--kto_label_column",
        default=None,
        help="kto: train on a per-image dataset whose boolean column NAME marks desirable images (else: "
        "Pick-a-Pic pairs, winner desirable, loser undesirable)",
    )
    a("--kto_image_column", default="image", help="kto: the image column of a --kto_label_column dataset")
    a("--noise_offset", type=float, default=0.0)
    a("--input_perturbation", type=float, default=0.0)

    a = p.add_argument_group("optimisation").add_argument
    a("--seed", type=int, default=0)
    a("--train_batch_size", type=int, default=1, help="pairs per GPU per micro-step")
    a("--max_train_steps", type=int, default=2000, help="optimizer steps; overrides --num_train_epochs")
    a("--num_train_epochs", type=int, default=None)
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

    a = p.add_argument_group("validation while training (sdpo/validation.py)").add_argument
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


def _looks_local(path: str) -> bool:
    """A path the user clearly meant as a folder on disk (a hub id is 'org/name')."""
    return path.startswith(("/", ".", "~")) or path.count("/") > 1 or os.sep == "\\" and "\\" in path


def validate(cfg: argparse.Namespace) -> argparse.Namespace:
    """Fill family-dependent defaults and reject impossible settings; one line per problem."""
    if not 0.0 <= cfg.winner_preserving_mu <= 1.0:
        raise UserError(f"--winner_preserving_mu must be in [0, 1], got {cfg.winner_preserving_mu}")
    _validate_kto(cfg)  # before the safeguard's own checks: with kto the answer is "drop it", not "add it"
    _validate_safeguard(cfg)
    _validate_lora(cfg)
    _validate_extra_objectives(cfg)
    _validate_sharding(cfg)
    if not 0.0 <= cfg.proportion_empty_prompts <= 1.0:
        raise UserError(f"--proportion_empty_prompts must be in [0, 1], got {cfg.proportion_empty_prompts}")
    if not 0.0 <= cfg.max_bad_fraction <= 1.0:
        raise UserError(f"--max_bad_fraction must be in [0, 1], got {cfg.max_bad_fraction}")
    if not 0.0 <= cfg.dmpo_alpha < 1.0:
        raise UserError(f"--dmpo_alpha must be in [0, 1), got {cfg.dmpo_alpha}")
    if cfg.beta_dpo <= 0:
        raise UserError(f"--beta_dpo must be positive, got {cfg.beta_dpo}")
    for name in ("train_batch_size", "gradient_accumulation_steps", "checkpointing_steps"):
        if getattr(cfg, name) < 1:
            raise UserError(f"--{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.max_train_steps is not None and cfg.max_train_steps < 1:
        raise UserError(f"--max_train_steps must be >= 1, got {cfg.max_train_steps}")
    if cfg.max_sequence_length is not None and cfg.max_sequence_length < 1:
        raise UserError(f"--max_sequence_length must be >= 1, got {cfg.max_sequence_length}")
    if cfg.precomputed and (cfg.random_crop or cfg.streaming):
        flag = "--random_crop" if cfg.random_crop else "--streaming"
        why = "a cache holds centre crops only" if cfg.random_crop else "the cache is read by index"
        raise UserError(f"{flag} cannot be combined with --precomputed ({why}); drop {flag}")
    if cfg.precomputed and cfg.train_method == "kto":
        raise UserError("--precomputed caches preference pairs; --train_method kto draws single images: drop one")
    if cfg.precomputed and not Path(cfg.precomputed).expanduser().is_dir():
        raise UserError(f"--precomputed {cfg.precomputed}: no such folder; build it with python -m sdpo.precompute")
    if cfg.streaming and cfg.max_train_steps is None:
        raise UserError("--streaming needs --max_train_steps (a stream has no length to count epochs by)")
    for flag in ("pretrained_model_name_or_path", "pretrained_vae_model_name_or_path"):
        path = getattr(cfg, flag)
        if path and _looks_local(path) and not Path(path).expanduser().exists():
            raise UserError(f"--{flag} {path}: no such folder; pass a local diffusers folder or a hub id")
    _validate_family(cfg)  # before the data is read
    get_family(cfg.model_family).check_resolution(cfg.resolution)
    validation.check_flags(cfg, get_family(cfg.model_family))  # prompts and metrics: before any model loads
    if cfg.unet_init and not Path(cfg.unet_init).expanduser().exists():
        raise UserError(f"--unet_init {cfg.unet_init}: no such file or folder")
    if cfg.train_data_dir and not Path(cfg.train_data_dir).is_dir():
        raise UserError(f"--train_data_dir {cfg.train_data_dir}: no such folder")
    if _looks_local(cfg.dataset_name) and not cfg.train_data_dir and not Path(cfg.dataset_name).exists():
        raise UserError(f"--dataset_name {cfg.dataset_name}: no such folder or file")
    if cfg.resume_from_checkpoint in ("none", "None", ""):
        cfg.resume_from_checkpoint = None
    return cfg


def _validate_family(cfg: argparse.Namespace) -> None:
    """Resolve the family, fill its defaults, and refuse objectives it cannot run."""
    _resolve_family(cfg)
    family = get_family(cfg.model_family)
    family.configure(cfg)  # video families: frame count, size; image families refuse the video flags
    if cfg.resolution is None:
        cfg.resolution = family.default_resolution
    # The reference SDXL runs always use gradient checkpointing and Adafactor; explicit flags win.
    if cfg.gradient_checkpointing is None:
        cfg.gradient_checkpointing = family.heavy
    if cfg.use_adafactor is None:  # AdamW when sharded (Adafactor cannot run on sharded parameters) or LoRA
        cfg.use_adafactor = family.adafactor_by_default(sharded=cfg.sharding != "none", lora=bool(cfg.lora_rank))
    objective = LOSSES[cfg.train_method]
    if getattr(cfg, "precomputed", None) and getattr(family, "video", False):
        raise UserError(f"--precomputed caches image pairs; the {family.name} family trains on video: drop it")
    if cfg.train_method == "kto" and getattr(family, "video", False):
        raise UserError(f"--train_method kto reads labelled images; it has no video data path ({family.name})")
    if family.process not in processes(objective):
        where = ", ".join(n for n, f in FAMILIES.items() if f.process in processes(objective))
        raise UserError(
            f"--train_method {cfg.train_method} is defined on DDPM quantities and does not run on the {family.name} "
            f"family (rectified flow); it works on: {where}"
        )


def _resolve_family(cfg: argparse.Namespace) -> None:
    """``--model_family`` (or a family's alias flag) against the folder or hub config, before any weights load."""
    path = cfg.pretrained_model_name_or_path
    requested, flag = requested_family(cfg)
    root = Path(path).expanduser()
    if requested != "auto" and root.is_dir():
        get_family(requested).check_folder(root, flag)
    cfg.model_family = resolve_family(path, requested, cfg.revision, flag)


def _validate_safeguard(cfg: argparse.Namespace) -> None:
    """Mode flags without ``--use_winner_preserving`` would be silently ignored: reject them instead."""
    given = [f"--{n}" for n in (*_SAFEGUARD_FLAGS, "log_param_lambda") if _given(cfg, n)]
    if given and not cfg.use_winner_preserving:
        raise UserError(f"{', '.join(given)} only act with --use_winner_preserving; add it or drop them")
    cfg.winner_preserving_mode = cfg.winner_preserving_mode or "output"
    cfg.winner_preserving_granularity = cfg.winner_preserving_granularity or "batch"
    mode, lam = cfg.winner_preserving_mode, cfg.winner_preserving_lambda
    if mode == "fixed" and lam is None:
        raise UserError("--winner_preserving_mode fixed needs --winner_preserving_lambda (a value in [0, 1])")
    if lam is not None and mode != "fixed":
        raise UserError(f"--winner_preserving_lambda is only used with --winner_preserving_mode fixed (mode is {mode})")
    if lam is not None and not 0.0 <= lam <= 1.0:
        raise UserError(f"--winner_preserving_lambda must be in [0, 1], got {lam}")
    if cfg.winner_preserving_granularity == "pair" and mode != "output":
        # param: one lambda per pair needs two backward passes per pair; fixed: one value anyway.
        raise UserError(f"--winner_preserving_granularity pair needs --winner_preserving_mode output (mode is {mode})")


def _validate_lora(cfg: argparse.Namespace) -> None:
    """LoRA flags without ``--lora_rank`` would be silently ignored: reject them, and impossible values."""
    given = [f"--{n}" for n in _LORA_FLAGS if _given(cfg, n)]
    if cfg.lora_rank is None:
        if given:
            raise UserError(f"{', '.join(given)} only act with --lora_rank; add it or drop them")
        return
    if cfg.lora_rank <= 0:
        raise UserError(f"--lora_rank must be a positive integer, got {cfg.lora_rank} (omit it for a full fine-tune)")
    if cfg.lora_alpha is not None and cfg.lora_alpha <= 0:
        raise UserError(f"--lora_alpha must be positive, got {cfg.lora_alpha}")
    cfg.lora_dropout = cfg.lora_dropout or 0.0
    if not 0.0 <= cfg.lora_dropout < 1.0:
        raise UserError(f"--lora_dropout must be in [0, 1), got {cfg.lora_dropout}")


_LORA_FLAGS = ("lora_alpha", "lora_dropout", "lora_target_modules", "save_merged")


def _validate_extra_objectives(cfg: argparse.Namespace) -> None:
    if cfg.beta_mapo < 0:
        raise UserError(f"--beta_mapo must be >= 0, got {cfg.beta_mapo}")
    if cfg.mapo_snr <= 0:
        raise UserError(f"--mapo_snr must be positive, got {cfg.mapo_snr}")
    if cfg.dpop_lambda < 0:
        raise UserError(f"--dpop_lambda must be >= 0, got {cfg.dpop_lambda}")
    if not 0.0 < cfg.sipo_clip_eps < 1.0:
        raise UserError(f"--sipo_clip_eps must be in (0, 1), got {cfg.sipo_clip_eps}")
    if not 0.0 <= cfg.sipo_mask_threshold <= 1.0:
        raise UserError(f"--sipo_mask_threshold must be in [0, 1], got {cfg.sipo_mask_threshold}")


def _validate_sharding(cfg: argparse.Namespace) -> None:
    """What FSDP/HSDP cannot do here is refused now, in one line, rather than failing mid-step."""
    sharded = cfg.sharding != "none"
    if cfg.dp_replicate is not None and cfg.sharding != "hsdp":
        raise UserError(
            f"--dp_replicate is the HSDP replica count; it needs --sharding hsdp (sharding is {cfg.sharding})"
        )
    if cfg.dp_replicate is not None and cfg.dp_replicate < 1:
        raise UserError(f"--dp_replicate must be >= 1, got {cfg.dp_replicate}")
    if cfg.fsdp_reduce_dtype is not None and not sharded:
        raise UserError("--fsdp_reduce_dtype only acts with --sharding fsdp or hsdp; add one or drop it")
    cfg.fsdp_reduce_dtype = cfg.fsdp_reduce_dtype or "fp32"
    if not sharded:
        return
    if cfg.use_winner_preserving and (cfg.winner_preserving_mode == "param" or cfg.log_param_lambda):
        raise UserError(
            f"--sharding {cfg.sharding}: the parameter-space lambda (--winner_preserving_mode param, "
            "--log_param_lambda) needs whole per-parameter gradients, which sharded training never holds; use the "
            "output-space lambda (the paper's method) or --sharding none"
        )
    if getattr(cfg, "validation_prompts", None):
        raise UserError(
            f"--sharding {cfg.sharding}: in-training validation samples with the whole denoiser on each process, "
            "which sharded runs never hold; drop --validation_prompts and evaluate the checkpoints instead"
        )
    if cfg.use_adafactor:  # given explicitly (the SDXL default is filled in later, off when sharded)
        raise UserError(
            f"--sharding {cfg.sharding}: transformers' Adafactor does not run on sharded (DTensor) parameters; "
            "pass --no-use_adafactor (AdamW) or use --sharding none"
        )
    if cfg.lora_rank:
        raise UserError(
            f"--sharding {cfg.sharding} with --lora_rank: LoRA keeps one frozen base copy per process and trains "
            "only the adapters with plain data parallelism; drop --sharding (bench/lora_memory.py prints what fits)"
        )


def _validate_kto(cfg: argparse.Namespace) -> None:
    if cfg.train_method != "kto":
        if cfg.kto_label_column:
            raise UserError(f"--kto_label_column only acts with --train_method kto (method is {cfg.train_method})")
        return
    given = [f"--{n}" for n in ("use_winner_preserving", *_SAFEGUARD_FLAGS, "log_param_lambda") if _given(cfg, n)]
    if given:
        raise UserError(
            f"{', '.join(given)}: the SDPO safeguard needs a winner/loser pair, and --train_method kto trains on "
            "single labelled images (the paper reports no Diff.-KTO + SDPO row); drop the safeguard flags"
        )
    if cfg.kto_beta <= 0:
        raise UserError(f"--kto_beta must be positive, got {cfg.kto_beta}")
    if not 0.0 <= cfg.positive_ratio <= 1.0:
        raise UserError(f"--positive_ratio must be in [0, 1], got {cfg.positive_ratio}")
    for name in ("lambda_d_kto", "lambda_u_kto"):
        if getattr(cfg, name) < 0:
            raise UserError(f"--{name} must be >= 0, got {getattr(cfg, name)}")
    if cfg.kto_label_column and cfg.streaming:
        raise UserError("--kto_label_column cannot stream: drawing --positive_ratio needs every label up front")


_SAFEGUARD_FLAGS = ("winner_preserving_mode", "winner_preserving_lambda", "winner_preserving_granularity")


def _given(cfg: argparse.Namespace, name: str) -> bool:
    v = getattr(cfg, name, None)
    return v is not None and v is not False


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return validate(build_parser().parse_args(argv))
