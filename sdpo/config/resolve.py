"""Parsed flags -> one resolved, validated, frozen :class:`~sdpo.config.sections.RunConfig`.

Everything that can be checked without loading a model is checked here, once, in the order a user would want
to hear about it; each problem is one ``UserError`` line (what, where, what to do).  The family is resolved
from the model folder (or hub config) here and nowhere else, and its defaults (resolution, gradient
checkpointing, optimizer, video sizes) are applied here.  The namespace is scratch: what leaves is the frozen
config.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import fields
from pathlib import Path

from sdpo.config.sections import (
    DataConfig,
    DistConfig,
    ModelConfig,
    ObjectiveConfig,
    OptimConfig,
    OutputConfig,
    RunConfig,
    SafeguardConfig,
    ValidationConfig,
)
from sdpo.errors import UserError
from sdpo.families import FAMILIES, get_family, requested_family, resolve_family
from sdpo.losses import LOSSES, processes

DEFAULT_STEPS = 2000  # --max_train_steps when neither it nor --num_train_epochs is given (the reference's)
VALIDATION_DEFAULTS = dict(steps=100, num_inference_steps=50, seed=0, batch_size=4)  # the protocol: 50 steps


def looks_local(path: str) -> bool:
    """A path the user clearly meant as a folder on disk (a hub id is 'org/name')."""
    return path.startswith(("/", ".", "~")) or path.count("/") > 1 or os.sep == "\\" and "\\" in path


def given(ns: argparse.Namespace, name: str) -> bool:
    v = vars(ns).get(name)
    return v is not None and v is not False


def resolve(ns: argparse.Namespace) -> RunConfig:
    """Validate ``ns`` (the parser's output) and build the frozen run configuration."""
    if not 0.0 <= ns.winner_preserving_mu <= 1.0:
        raise UserError(f"--winner_preserving_mu must be in [0, 1], got {ns.winner_preserving_mu}")
    objective = LOSSES[ns.train_method]
    _check_single_images(ns, objective)  # before the safeguard's own checks: there the answer is "drop it"
    _check_safeguard(ns)
    _check_lora(ns)
    params = _objective_params(ns, objective)
    _check_sharding(ns)
    _check_ranges(ns)
    _check_paths(ns)
    family = _resolve_family(ns)  # before the data is read
    _check_family(ns, family, objective)
    validation = _validation(ns, family)  # prompts and metrics: before any model loads
    return RunConfig(
        model=_section(ModelConfig, ns),
        data=_section(
            DataConfig,
            ns,
            joint_augment=family.joint_augment,
            video=family.video,
            single_images=getattr(objective, "NEEDS_LABELS", False),
        ),  # fmt: skip
        objective=ObjectiveConfig(ns.train_method, params, ns.noise_offset, ns.input_perturbation),
        safeguard=_section(SafeguardConfig, ns),
        optim=_section(OptimConfig, ns),
        dist=_section(DistConfig, ns),
        validation=validation,
        output=_section(OutputConfig, ns),
    )


def _section(cls, ns: argparse.Namespace, **extra):
    values = {f.name: extra[f.name] if f.name in extra else getattr(ns, f.name) for f in fields(cls)}
    if "lora_target_modules" in values and values["lora_target_modules"] is not None:
        values["lora_target_modules"] = tuple(values["lora_target_modules"])
    return cls(**values)


def _objective_params(ns: argparse.Namespace, objective):
    """The objective's own hyper-parameters (its ``Params``), each checked by its objective (``Params.check``);
    every objective's are checked: a flag out of range is a mistake whichever objective runs."""
    for obj in LOSSES.values():
        _params(ns, obj).check()
    return _params(ns, objective)


def _params(ns: argparse.Namespace, objective):
    return objective.Params(**{f.name: getattr(ns, f.name) for f in fields(objective.Params)})


# ----------------------------------------------------------------------------- individual checks


def _check_ranges(ns: argparse.Namespace) -> None:
    if not 0.0 <= ns.proportion_empty_prompts <= 1.0:
        raise UserError(f"--proportion_empty_prompts must be in [0, 1], got {ns.proportion_empty_prompts}")
    if not 0.0 <= ns.max_bad_fraction <= 1.0:
        raise UserError(f"--max_bad_fraction must be in [0, 1], got {ns.max_bad_fraction}")
    for name in ("train_batch_size", "gradient_accumulation_steps", "checkpointing_steps"):
        if getattr(ns, name) < 1:
            raise UserError(f"--{name} must be >= 1, got {getattr(ns, name)}")
    for name in ("max_train_steps", "num_train_epochs", "max_sequence_length"):
        if getattr(ns, name) is not None and getattr(ns, name) < 1:
            raise UserError(f"--{name} must be >= 1, got {getattr(ns, name)}")
    if ns.streaming and ns.num_train_epochs is not None:
        raise UserError("--num_train_epochs needs a dataset of known length; a --streaming run counts "
                        "--max_train_steps instead")  # fmt: skip
    if ns.max_train_steps is None and ns.num_train_epochs is None:
        if ns.streaming:
            raise UserError("--streaming needs --max_train_steps (a stream has no length to count epochs by)")
        ns.max_train_steps = DEFAULT_STEPS
    if ns.resume_from_checkpoint in ("none", "None", ""):
        ns.resume_from_checkpoint = None


def _check_paths(ns: argparse.Namespace) -> None:
    if ns.precomputed and (ns.random_crop or ns.streaming):
        flag = "--random_crop" if ns.random_crop else "--streaming"
        why = "a cache holds centre crops only" if ns.random_crop else "the cache is read by index"
        raise UserError(f"{flag} cannot be combined with --precomputed ({why}); drop {flag}")
    if ns.precomputed and ns.train_method == "kto":
        raise UserError("--precomputed caches preference pairs; --train_method kto draws single images: drop one")
    if ns.precomputed and not Path(ns.precomputed).expanduser().is_dir():
        raise UserError(f"--precomputed {ns.precomputed}: no such folder; build it with python -m sdpo.precompute")
    for flag in ("pretrained_model_name_or_path", "pretrained_vae_model_name_or_path"):
        path = getattr(ns, flag)
        if path and looks_local(path) and not Path(path).expanduser().exists():
            raise UserError(f"--{flag} {path}: no such folder; pass a local diffusers folder or a hub id")
    if ns.unet_init and not Path(ns.unet_init).expanduser().exists():
        raise UserError(f"--unet_init {ns.unet_init}: no such file or folder")
    if ns.policy_init:
        _check_policy_init(ns)
    if ns.train_data_dir and not Path(ns.train_data_dir).is_dir():
        raise UserError(f"--train_data_dir {ns.train_data_dir}: no such folder")
    if looks_local(ns.dataset_name) and not ns.train_data_dir and not Path(ns.dataset_name).exists():
        raise UserError(f"--dataset_name {ns.dataset_name}: no such folder or file")


def _check_policy_init(ns: argparse.Namespace) -> None:
    """``--policy_init`` must be what the run trains: full weights, or (``--lora_rank``) a LoRA file or folder."""
    path = Path(ns.policy_init).expanduser()
    if not path.exists():
        raise UserError(f"--policy_init {ns.policy_init}: no such file or folder")
    lora_file = path if path.suffix == ".safetensors" else path / "pytorch_lora_weights.safetensors"
    is_lora = lora_file.is_file() and (path.is_file() or not (path / "config.json").is_file())
    if ns.lora_rank and not is_lora:
        raise UserError(f"--policy_init {ns.policy_init}: with --lora_rank it must be a LoRA "
                        "(pytorch_lora_weights.safetensors or the folder holding it); full weights go to --unet_init")  # fmt: skip
    if not ns.lora_rank and is_lora:
        raise UserError(f"--policy_init {ns.policy_init}: a LoRA file; add --lora_rank (the run's rank) to start "
                        "the adapters from it, or pass full weights")  # fmt: skip


def _resolve_family(ns: argparse.Namespace):
    """``--model_family`` (or a family's alias flag) against the folder or hub config, before any weights load."""
    path = ns.pretrained_model_name_or_path
    requested, flag = requested_family(ns)
    root = Path(path).expanduser()
    if requested != "auto" and root.is_dir():
        get_family(requested).check_folder(root, flag)
    ns.model_family = resolve_family(path, requested, ns.revision, flag)
    return get_family(ns.model_family)


def _check_family(ns: argparse.Namespace, family, objective) -> None:
    """The family's defaults and refusals: its video sizes, resolution, checkpointing and optimizer."""
    family.configure(ns)  # video families: frame count, size; image families refuse the video flags
    if ns.resolution is None:
        ns.resolution = family.default_resolution
    family.check_resolution(ns.resolution)
    if ns.gradient_checkpointing is None:
        ns.gradient_checkpointing = family.heavy
    if ns.use_adafactor is None:
        ns.use_adafactor = family.adafactor_by_default(sharded=ns.sharding != "none", lora=bool(ns.lora_rank))
    if ns.precomputed and family.video:
        raise UserError(f"--precomputed caches image pairs; the {family.name} family trains on video: drop it")
    if getattr(objective, "NEEDS_LABELS", False) and family.video:
        raise UserError(f"--train_method {ns.train_method} reads labelled images; it has no video data path "
                        f"({family.name})")  # fmt: skip
    if family.process not in processes(objective):
        where = ", ".join(n for n, f in FAMILIES.items() if f.process in processes(objective))
        raise UserError(
            f"--train_method {ns.train_method} is defined on DDPM quantities and does not run on the {family.name} "
            f"family (rectified flow); it works on: {where}"
        )


_SAFEGUARD_FLAGS = ("winner_preserving_mode", "winner_preserving_lambda", "winner_preserving_granularity")


def _check_safeguard(ns: argparse.Namespace) -> None:
    """Mode flags without ``--use_winner_preserving`` would be silently ignored: reject them instead."""
    flags = [f"--{n}" for n in (*_SAFEGUARD_FLAGS, "log_param_lambda") if given(ns, n)]
    if flags and not ns.use_winner_preserving:
        raise UserError(f"{', '.join(flags)} only act with --use_winner_preserving; add it or drop them")
    ns.winner_preserving_mode = ns.winner_preserving_mode or "output"
    ns.winner_preserving_granularity = ns.winner_preserving_granularity or "batch"
    mode, lam = ns.winner_preserving_mode, ns.winner_preserving_lambda
    if mode == "fixed" and lam is None:
        raise UserError("--winner_preserving_mode fixed needs --winner_preserving_lambda (a value in [0, 1])")
    if lam is not None and mode != "fixed":
        raise UserError(f"--winner_preserving_lambda is only used with --winner_preserving_mode fixed (mode is {mode})")
    if lam is not None and not 0.0 <= lam <= 1.0:
        raise UserError(f"--winner_preserving_lambda must be in [0, 1], got {lam}")
    if ns.winner_preserving_granularity == "pair" and mode != "output":
        # param: one lambda per pair needs two backward passes per pair; fixed: one value anyway.
        raise UserError(f"--winner_preserving_granularity pair needs --winner_preserving_mode output (mode is {mode})")


_LORA_FLAGS = ("lora_alpha", "lora_dropout", "lora_target_modules", "save_merged")


def _check_lora(ns: argparse.Namespace) -> None:
    """LoRA flags without ``--lora_rank`` would be silently ignored: reject them, and impossible values."""
    flags = [f"--{n}" for n in _LORA_FLAGS if given(ns, n)]
    if ns.lora_rank is None:
        if flags:
            raise UserError(f"{', '.join(flags)} only act with --lora_rank; add it or drop them")
        ns.lora_dropout = 0.0
        return
    if ns.lora_rank <= 0:
        raise UserError(f"--lora_rank must be a positive integer, got {ns.lora_rank} (omit it for a full fine-tune)")
    if ns.lora_alpha is not None and ns.lora_alpha <= 0:
        raise UserError(f"--lora_alpha must be positive, got {ns.lora_alpha}")
    ns.lora_dropout = ns.lora_dropout or 0.0
    if not 0.0 <= ns.lora_dropout < 1.0:
        raise UserError(f"--lora_dropout must be in [0, 1), got {ns.lora_dropout}")


def _check_sharding(ns: argparse.Namespace) -> None:
    """What FSDP/HSDP cannot do here is refused now, in one line, rather than failing mid-step."""
    sharded = ns.sharding != "none"
    if ns.dp_replicate is not None and ns.sharding != "hsdp":
        raise UserError(
            f"--dp_replicate is the HSDP replica count; it needs --sharding hsdp (sharding is {ns.sharding})"
        )
    if ns.dp_replicate is not None and ns.dp_replicate < 1:
        raise UserError(f"--dp_replicate must be >= 1, got {ns.dp_replicate}")
    if ns.fsdp_reduce_dtype is not None and not sharded:
        raise UserError("--fsdp_reduce_dtype only acts with --sharding fsdp or hsdp; add one or drop it")
    ns.fsdp_reduce_dtype = ns.fsdp_reduce_dtype or "fp32"
    if not sharded:
        return
    if ns.use_winner_preserving and (ns.winner_preserving_mode == "param" or ns.log_param_lambda):
        raise UserError(
            f"--sharding {ns.sharding}: the parameter-space lambda (--winner_preserving_mode param, "
            "--log_param_lambda) needs whole per-parameter gradients, which sharded training never holds; use the "
            "output-space lambda (the paper's method) or --sharding none"
        )
    if ns.validation_prompts:
        raise UserError(
            f"--sharding {ns.sharding}: in-training validation samples with the whole denoiser on each process, "
            "which sharded runs never hold; drop --validation_prompts and evaluate the checkpoints instead"
        )
    if ns.use_adafactor:  # given explicitly (the family's Adafactor default is off when sharded)
        raise UserError(
            f"--sharding {ns.sharding}: transformers' Adafactor does not run on sharded (DTensor) parameters; "
            "pass --no-use_adafactor (AdamW) or use --sharding none"
        )
    if ns.lora_rank:
        raise UserError(
            f"--sharding {ns.sharding} with --lora_rank: LoRA keeps one frozen base copy per process and trains "
            "only the adapters with plain data parallelism; drop --sharding (bench/lora_memory.py prints what fits)"
        )


def _check_single_images(ns: argparse.Namespace, objective) -> None:
    """Objectives on single labelled images (kto) have no pair for the safeguard, and their own data flags."""
    if not getattr(objective, "NEEDS_LABELS", False):
        if ns.kto_label_column:
            raise UserError(f"--kto_label_column only acts with --train_method kto (method is {ns.train_method})")
        return
    flags = [f"--{n}" for n in ("use_winner_preserving", *_SAFEGUARD_FLAGS, "log_param_lambda") if given(ns, n)]
    if flags:
        raise UserError(
            f"{', '.join(flags)}: the SDPO safeguard needs a winner/loser pair, and --train_method {ns.train_method} "
            "trains on single labelled images (the paper reports no Diff.-KTO + SDPO row); drop the safeguard flags"
        )
    if ns.kto_label_column and ns.streaming:
        raise UserError("--kto_label_column cannot stream: drawing --positive_ratio needs every label up front")


_VALIDATION_FLAGS = ("validation_steps", "validation_metrics", "validation_model_root", "validation_num_inference_steps",
                     "validation_guidance", "validation_resolution", "validation_seed", "validation_batch_size")  # fmt: skip


def _validation(ns: argparse.Namespace, family) -> ValidationConfig:
    """``--validation_*``: the prompts read and the reward names checked now, the sampler's defaults filled."""
    from sdpo.rewards import METRICS, parse_metrics
    from sdpo.sampling.prompts import read_prompt_spec

    flags = [f"--{f}" for f in _VALIDATION_FLAGS if given(ns, f)]
    if not ns.validation_prompts:
        if flags:
            raise UserError(f"{', '.join(flags)} only act with --validation_prompts; add it or drop them")
        return ValidationConfig((), (), None, 0, 0, 0.0, 0, 0, 0)
    prompts = tuple(read_prompt_spec(ns.validation_prompts, "--validation_prompts"))
    spec = ns.validation_metrics
    metrics: tuple[str, ...] = ()
    if spec is not None and spec.strip().lower() not in ("", "none"):
        try:
            metrics = tuple(parse_metrics(spec))
        except UserError:
            raise UserError(f"--validation_metrics {spec}: unknown reward model; use none, all or a comma list of "
                            f"{', '.join(METRICS)}") from None  # fmt: skip
    root = ns.validation_model_root
    if root and not Path(root).expanduser().is_dir():
        raise UserError(f"--validation_model_root {root}: no such folder")
    d = VALIDATION_DEFAULTS
    out = ValidationConfig(
        prompts=prompts, metrics=metrics, model_root=root,
        steps=d["steps"] if ns.validation_steps is None else ns.validation_steps,
        num_inference_steps=(d["num_inference_steps"] if ns.validation_num_inference_steps is None
                             else ns.validation_num_inference_steps),
        guidance=family.sampling_guidance if ns.validation_guidance is None else ns.validation_guidance,
        resolution=ns.resolution if ns.validation_resolution is None else ns.validation_resolution,
        seed=d["seed"] if ns.validation_seed is None else ns.validation_seed,
        batch_size=d["batch_size"] if ns.validation_batch_size is None else ns.validation_batch_size,
    )  # fmt: skip
    for name in ("steps", "num_inference_steps", "batch_size"):
        if getattr(out, name) < 1:
            raise UserError(f"--validation_{name} must be >= 1, got {getattr(out, name)}")
    if out.resolution < 16 or out.resolution % 16:
        raise UserError(f"--validation_resolution must be a positive multiple of 16 (the sampler's latent grid), "
                        f"got {out.resolution}; pass --validation_resolution")  # fmt: skip
    return out
