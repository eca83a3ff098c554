"""The resolved run configuration: frozen, typed sections, each handed to the part that reads it.

``sdpo.config.resolve`` builds a :class:`RunConfig` once from the parsed flags (family defaults applied, every
value checked); nothing edits it afterwards.  A value that changes during a run (the step count once the data
is counted, the accumulation after an elastic resume) makes a new config with ``dataclasses.replace``.  Field
names are the flag names, so ``--train_batch_size`` is ``cfg.optim.train_batch_size``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace


@dataclass(frozen=True)
class ModelConfig:
    """What a family (``sdpo.families``) reads: where the model is, how to load it, and its LoRA."""

    pretrained_model_name_or_path: str
    pretrained_vae_model_name_or_path: str | None
    revision: str | None
    model_family: str
    unet_init: str | None
    policy_init: str | None  # the trained denoiser only (full weights, or LoRA adapters with lora_rank)
    resolution: int
    gradient_checkpointing: bool
    precomputed: str | None  # a latent/text cache: the VAE and text encoders are not loaded
    seed: int  # LoRA adapters draw their initial weights from it
    # LoRA (sdpo.lora): None when the whole denoiser trains
    lora_rank: int | None
    lora_alpha: float | None
    lora_dropout: float
    lora_target_modules: tuple[str, ...] | None
    save_merged: bool
    # rectified-flow families
    weighting_scheme: str
    logit_mean: float
    logit_std: float
    mode_scale: float
    flux_guidance: float
    max_sequence_length: int | None
    # video families (None for image families)
    num_frames: int | None
    frame_stride: int | None
    height: int | None
    width: int | None


@dataclass(frozen=True)
class DataConfig:
    """What the data path (``sdpo.data``, ``sdpo.cache``) reads."""

    dataset_name: str
    dataset_config_name: str | None
    train_data_dir: str | None
    split: str
    cache_dir: str | None
    streaming: bool
    streaming_buffer_size: int
    max_train_samples: int | None
    resolution: int
    random_crop: bool
    no_hflip: bool
    proportion_empty_prompts: float
    dataloader_num_workers: int
    data_check: bool
    max_bad_fraction: float
    precomputed: str | None
    seed: int
    joint_augment: bool  # one crop/flip for winner and loser (the family's rule)
    video: bool  # frame stacks instead of images (the family's)
    single_images: bool  # the objective trains on labelled single images (kto), not pairs
    # video families
    num_frames: int | None
    frame_stride: int | None
    height: int | None
    width: int | None
    video_pairs_format: str
    videoalign_dimension: str
    # single labelled images (kto)
    kto_label_column: str | None
    kto_image_column: str
    positive_ratio: float


@dataclass(frozen=True)
class ObjectiveConfig:
    """The objective (``sdpo.losses``) and its own hyper-parameters (``params``: the objective's ``Params``)."""

    train_method: str
    params: object
    noise_offset: float
    input_perturbation: float


@dataclass(frozen=True)
class SafeguardConfig:
    """The SDPO safeguard (``sdpo.safeguard``)."""

    use_winner_preserving: bool
    winner_preserving_mu: float
    winner_preserving_mode: str
    winner_preserving_lambda: float | None
    winner_preserving_granularity: str
    log_param_lambda: bool


@dataclass(frozen=True)
class OptimConfig:
    """Batch arithmetic, the optimizer and the schedule (``sdpo.training``)."""

    seed: int
    train_batch_size: int
    max_train_steps: int | None  # None until the data is counted when --num_train_epochs gives the length
    num_train_epochs: int | None
    gradient_accumulation_steps: int
    learning_rate: float
    scale_lr: bool
    lr_scheduler: str
    lr_warmup_steps: int
    use_adafactor: bool
    allow_tf32: bool
    adam_beta1: float
    adam_beta2: float
    adam_weight_decay: float
    adam_epsilon: float
    max_grad_norm: float
    max_nonfinite_steps: int
    mixed_precision: str | None


@dataclass(frozen=True)
class DistConfig:
    """How the model is spread over processes (``sdpo.distributed``)."""

    sharding: str
    dp_replicate: int | None
    fsdp_reduce_dtype: str

    @property
    def sharded(self) -> bool:
        return self.sharding != "none"


@dataclass(frozen=True)
class ValidationConfig:
    """Validation while training (``sdpo.training.validation``); ``prompts`` empty when it is off."""

    prompts: tuple[str, ...]
    metrics: tuple[str, ...]
    model_root: str | None
    steps: int
    num_inference_steps: int
    guidance: float
    resolution: int
    seed: int
    batch_size: int

    @property
    def enabled(self) -> bool:
        return bool(self.prompts)


@dataclass(frozen=True)
class OutputConfig:
    """Where the run writes, what it logs, and its checkpoints (``sdpo.checkpoint``)."""

    output_dir: str
    logging_dir: str
    report_to: str
    tracker_project_name: str
    checkpointing_steps: int
    checkpoints_total_limit: int | None
    resume_from_checkpoint: str | None


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig
    data: DataConfig
    objective: ObjectiveConfig
    safeguard: SafeguardConfig
    optim: OptimConfig
    dist: DistConfig
    validation: ValidationConfig
    output: OutputConfig

    def with_flags(self, **changes) -> RunConfig:
        """A copy with settings changed by flag name, in every section that holds the flag (``resolution`` is in
        ``model`` and ``data``): for derived runs (held-out evaluation, online rounds) and tests.  Nothing is
        re-validated: callers change settings to values a resolved config can hold."""
        sections = {"model": self.model, "data": self.data, "safeguard": self.safeguard, "optim": self.optim,
                    "dist": self.dist, "output": self.output}  # fmt: skip
        out, left = {}, dict(changes)
        for name, section in sections.items():
            mine = {k: v for k, v in changes.items() if k in {f.name for f in fields(section)}}
            if mine:
                out[name] = replace(section, **mine)
                left = {k: v for k, v in left.items() if k not in mine}
        objective = self.objective
        own = {k: v for k, v in changes.items() if k in {f.name for f in fields(objective)} and k != "params"}
        params = {k: v for k, v in changes.items() if k in {f.name for f in fields(objective.params)}}
        if own or params:
            objective = replace(objective, params=replace(objective.params, **params), **own)
            left = {k: v for k, v in left.items() if k not in own and k not in params}
        if left:
            raise ValueError(f"no setting named {', '.join(sorted(left))}")
        return replace(self, objective=objective, **out)

    def flat(self) -> dict:
        """Every scalar setting by its flag name (the trackers' run config)."""
        out: dict = {}
        for section in (self.model, self.data, self.objective.params, self.objective, self.safeguard, self.optim,
                        self.dist, self.output):  # fmt: skip
            for k, v in vars(section).items():
                if isinstance(v, (int, float, str, bool)):
                    out.setdefault(k, v)
        return out
