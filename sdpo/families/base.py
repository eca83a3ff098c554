"""The one interface between the training code and a model family (SD1.5, SDXL, SD3, FLUX, ...).

A family owns everything model-specific: which pipeline folders it recognises, how its parts load,
how prompts become conditioning, how pixels become latents, the noise process (DDPM epsilon/v or
rectified flow) with its regression target, and how the denoiser is called.  The loop, the
objectives, the safeguard, checkpointing and metrics only ever call the methods below, so adding a
family is adding a module.

Shapes are never assumed to be 4-D outside a family: a latent is ``(N, *latent_shape)`` and a
per-sample loss averages over every non-batch axis.  Conditioning is a dict of batch-first tensors,
so the caller can repeat it for winners and losers, or slice rows, without knowing what it holds.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import ClassVar

import torch

from sdpo.errors import UserError
from sdpo.families.recipe import LaunchDefaults

log = logging.getLogger(__name__)
Conditioning = dict[str, torch.Tensor]


def from_pretrained(cls, path: str, what: str | None = None, **kw):
    """``cls.from_pretrained`` with a one-line error that says what is missing and what to do (``what``: the
    part's name for the evaluation loaders' wording)."""
    try:
        return cls.from_pretrained(path, **kw)
    except (OSError, ValueError) as e:
        where = kw.get("subfolder") or ""
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        if what:
            raise UserError(f"cannot load the {what} from {path}{'/' + where if where else ''} ({first}); pass a "
                            "local folder or a reachable hub id") from None  # fmt: skip
        raise UserError(
            f"could not load {cls.__name__} from {path!r}{'/' + where if where else ''}: {first} "
            "(offline? pass a local folder)"
        ) from None


def freeze(module: torch.nn.Module, device, dtype: torch.dtype) -> torch.nn.Module:
    """Frozen parts run in the weight dtype (fp32 already: skip diffusers' cast warning).  Cast before the
    move, so the device never holds an fp32 copy of a bf16 part."""
    module.requires_grad_(False).eval()
    if dtype != torch.float32:
        module.to(dtype=dtype)
    return module.to(device)


class ModelFamily:
    """Base class: the loaded parts of one model plus the family's own maths.

    Subclasses set the class attributes and implement the ``NotImplemented`` methods.
    """

    name: ClassVar[str]
    display_name: ClassVar[str] = ""  # the model's own name in messages (SD1.5, FLUX.1, Wan2.1, ...)
    pipeline_classes: ClassVar[tuple[str, ...]]  # model_index.json ``_class_name`` values
    launch: ClassVar[LaunchDefaults | None] = None  # the paper recipe of scripts/train (sdpo.config.launch)
    # The paper's objective settings for this family: method -> (beta_dpo, mu, extra flags); the demo runs them.
    paper_methods: ClassVar[dict[str, tuple[float, float, tuple[str, ...]]]] = {}
    alias_flag: ClassVar[str | None] = None  # a flag that means --model_family <name> (the SD-era --sdxl)
    default_model: ClassVar[str | None] = None  # the hub id evaluation and the launch recipes use by default
    default_sampling_vae: ClassVar[str | None] = None  # the VAE evaluation decodes with (None: the model's own)
    denoiser_folder: ClassVar[str] = "unet"  # subfolder of the pipeline, and the export folder name
    process: ClassVar[str] = "ddpm"  # "ddpm" or "flow": objectives that need DDPM quantities check it
    default_resolution: ClassVar[int] = 512
    resolution_multiple: ClassVar[int] = 8  # training sizes: the VAE's factor (times the latent patch size)
    heavy: ClassVar[bool] = False  # gradient checkpointing on by default (the reference SDXL script's)
    prefers_adafactor: ClassVar[bool] = False  # the reference script's optimizer when a whole model trains, unsharded
    joint_augment: ClassVar[bool] = False  # one crop/flip for winner and loser (the SDXL reference script)
    dspo_form: ClassVar[str | None] = "residual"  # which form of the reference DSPO loss applies (sdpo.losses.dspo)
    # Recognising a state dict (``owns_weights``): every marker is a prefix some key starts with, no key starts
    # with an exclude; ``weights_label`` names the model in messages.
    weights_label: ClassVar[str] = "a diffusers model"
    lora_label: ClassVar[str | None] = None  # what a LoRA of this family is called (None: weights_label)
    weights_markers: ClassVar[tuple[str, ...]] = ()
    weights_excludes: ClassVar[tuple[str, ...]] = ()
    shard_blocks: ClassVar[tuple[str, ...]] = ()  # denoiser classes that are FSDP units (sdpo.distributed)
    video: ClassVar[bool] = False  # samples are frame stacks (F, 3, H, W) rather than images (3, H, W)
    channel_axis: ClassVar[int] = 0  # the axis of one sample's latent that holds the channels (noise offset)
    # Model flags (``ModelConfig`` fields) beyond the latents and the text that change a training draw or the
    # denoiser's input: a precomputed reference loss (``sdpo.cache.reference``) depends on them.
    forward_flags: ClassVar[tuple[str, ...]] = ()
    # LoRA (``sdpo.lora.adapters``): peft ``target_modules`` names per preset of ``--lora_target_modules``;
    # ``attn`` (the attention projections) is the default, ``ff`` adds the feed-forward layers.
    lora_targets: ClassVar[dict[str, tuple[str, ...]]] = {}
    lora_default: ClassVar[tuple[str, ...]] = ("attn",)
    # Key names in the saved LoRA file: diffusers' UNet naming (``lora.down``/``lora.up``, what
    # ``convert_state_dict_to_diffusers`` writes) or peft's (``lora_A``/``lora_B``, what diffusers' SD3 and
    # FLUX LoRA trainers write; their loaders expect it).
    lora_key_style: ClassVar[str] = "diffusers"
    # Evaluation sampling: the protocol's default guidance and what the number means (manifests say it).
    sampling_guidance: ClassVar[float] = 7.5  # the reference scripts' cfg: cond + cfg (cond - uncond)
    guidance_kind: ClassVar[str | None] = None  # None: manifests keep the reference scripts' layout (SD1.5/SDXL)
    # Classifier-free guidance with an empty-prompt pass (False: guidance-distilled, the number feeds the model).
    classifier_free: ClassVar[bool] = True

    _registry: ClassVar[dict[str, type[ModelFamily]]] = {}

    def __init_subclass__(cls, **kw):
        """Every concrete family (one with a ``name``) is known to the base class, so that recognising weights
        can ask all of them without the base importing any."""
        super().__init_subclass__(**kw)
        if "name" in cls.__dict__:
            ModelFamily._registry[cls.name] = cls

    def __init__(self, cfg, device: torch.device, weight_dtype: torch.dtype):
        self.cfg, self.device, self.weight_dtype = cfg, device, weight_dtype
        self.denoiser: torch.nn.Module | None = None
        self.reference: torch.nn.Module | None = None
        self.vae: torch.nn.Module | None = None
        self.scheduler = None
        self.tokenizers: list = []
        self.text_encoders: list = []

    # ------------------------------------------------------------------ names and files

    @classmethod
    def weights_name(cls) -> str:
        """The plain state-dict file a run writes (``unet.pth`` for UNet families, as the reference)."""
        return f"{cls.denoiser_folder}.pth"

    @classmethod
    def denoiser_class(cls):
        raise NotImplementedError

    @classmethod
    def adafactor_by_default(cls, sharded: bool, lora: bool) -> bool:
        """The optimizer default: the family's reference optimizer (SDXL's Adafactor) for a whole, unsharded model;
        AdamW when sharded (Adafactor cannot run on sharded parameters) or for LoRA adapters."""
        return cls.prefers_adafactor and not sharded and not lora

    @classmethod
    def flag_hint(cls) -> str:
        """The flag that selects this family."""
        return cls.alias_flag or f"--model_family {cls.name}"

    @classmethod
    def owns_weights(cls, keys) -> bool:
        """Whether a state dict with these keys is this family's denoiser (see ``weights_markers``)."""
        keys = list(keys)
        return (bool(cls.weights_markers) and all(any(k.startswith(m) for k in keys) for m in cls.weights_markers)
                and not any(k.startswith(e) for k in keys for e in cls.weights_excludes))  # fmt: skip

    @classmethod
    def owner_of(cls, keys) -> type[ModelFamily] | None:
        """The family whose denoiser a state dict with these keys is: of the families whose markers all match, the
        one with the most markers (a later model may keep an earlier one's block names and add its own: FLUX.2 keeps
        FLUX.1's ``single_transformer_blocks``), so no family needs to know the families that came after it."""
        keys = list(keys)
        owners = [fam for fam in ModelFamily._registry.values() if fam.owns_weights(keys)]
        return max(owners, key=lambda fam: len(fam.weights_markers), default=None)

    @classmethod
    def describe_weights(cls, keys) -> str:
        """A human name for the denoiser a set of state-dict keys belongs to, and its family.  No flag: which one
        fixes a mismatch (the base model's path, ``--model_family``, ``--sdxl``) depends on the command and on how
        its family was chosen, and naming a flag that was never given misleads."""
        fam = cls.owner_of(keys)
        return f"{fam.weights_label} (family {fam.name})" if fam else "no denoiser of a supported family"

    @classmethod
    def describe_lora(cls, keys) -> str:
        """What a LoRA file's keys (``<denoiser folder>.<layer>.lora_...``) were trained on; a LoRA covers only its
        target layers, so families whose markers it lacks are named by the denoiser kind alone."""
        keys = list(keys)
        owners = []
        for fam in ModelFamily._registry.values():
            prefix = fam.denoiser_folder + "."
            mine = [k[len(prefix) :] for k in keys if k.startswith(prefix)]
            if mine and fam.owns_weights(mine):
                owners.append(fam)
        if owners:  # the most specific, as owner_of
            fam = max(owners, key=lambda f: len(f.weights_markers))
            return fam.lora_label or fam.weights_label
        kinds = sorted({k.split(".", 1)[0] for k in keys})
        return f"a {'/'.join(kinds)} of a family not recognised from its LoRA keys" if kinds else "no denoiser"

    @classmethod
    def load_weights_file(cls, model: torch.nn.Module, path) -> None:
        """Load a weights file (``unet.pth``, ``transformer.pth``, safetensors, a diffusers folder) into ``model``
        strictly; a mismatch names the family the file looks like."""
        from sdpo.checkpoint.weights import load_denoiser_weights

        load_denoiser_weights(model, path, describe=cls.describe_weights, model_label=cls.weights_label)

    @classmethod
    def check_resolution(cls, resolution: int, flag: str = "--resolution") -> None:
        """Training sizes the VAE and the latent patching can take (one line otherwise)."""
        if resolution <= 0 or resolution % cls.resolution_multiple:
            why = "the VAE downsamples by 8" if cls.resolution_multiple == 8 else (
                f"VAE factor 8 x {cls.resolution_multiple // 8}x{cls.resolution_multiple // 8} latent patches")  # fmt: skip
            raise UserError(f"{flag} must be a multiple of {cls.resolution_multiple} for {cls.name} ({why}), "
                            f"got {resolution}")  # fmt: skip

    @classmethod
    def configure(cls, cfg) -> None:
        """Fill this family's config defaults and reject flags it cannot use (one line each); image
        families refuse the video flags (``sdpo.families.video`` overrides this)."""
        given = [f"--{k}" for k in ("num_frames", "frame_stride", "height", "width") if getattr(cfg, k) is not None]
        if cfg.video_pairs_format != "auto":
            given.append("--video_pairs_format")
        if given:
            raise UserError(f"{', '.join(given)} only apply to video families (cogvideox, wan), not {cls.name}")

    @classmethod
    def pipeline_class(cls):
        """The family's diffusers pipeline (its ``save_lora_weights`` / ``load_lora_weights`` define the LoRA format)."""
        import diffusers

        return getattr(diffusers, cls.pipeline_classes[0])

    @classmethod
    def check_folder(cls, root: Path, flag: str) -> None:
        """Raise a one-line UserError when the local pipeline folder ``root``, named by ``flag``, is plainly
        not this family's (checked before any weights are read)."""

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(
        cls, cfg, device: torch.device, weight_dtype: torch.dtype, needs_reference: bool, shard_later: bool = False
    ) -> ModelFamily:
        """Every part training needs: the trained denoiser (fp32, train mode), the frozen reference
        (weight dtype) if the objective needs one, the text encoders, the VAE and the scheduler.

        ``shard_later``: the denoisers stay on the CPU (the reference already in the weight dtype), so that
        ``sdpo.distributed.sharding`` moves only each process's shards to the device, never a whole 12B model.

        With ``--lora_rank`` the denoiser itself stays frozen in the weight dtype with trainable fp32
        adapters, and the reference is that same module with its adapters off (``sdpo.lora.adapters``).

        ``--policy_init`` starts the trained denoiser (its adapters, with LoRA) from other weights than the
        reference's: an online round's policy continues from the previous round while the reference stays the
        base (``sdpo.online``)."""
        from sdpo.lora import adapters as lora

        fam = cls(cfg, device, weight_dtype)
        fam.scheduler = fam.load_scheduler()
        if not cfg.precomputed:  # with a latent/text cache (sdpo.cache.store) neither is loaded
            fam.load_encoders()
        fam.denoiser = fam.load_denoiser()
        if lora.enabled(cfg):  # never sharded (config refuses --sharding with --lora_rank)
            lora.add_adapters(fam.denoiser, lora.lora_config(cfg, cls, fam.denoiser), weight_dtype, cfg.seed)
            if cfg.policy_init:
                lora.load_adapters(cls, fam.denoiser, cfg.policy_init)
            fam.denoiser.to(device)
            fam.reference = lora.AdaptersOff(fam) if needs_reference else None
        else:
            fam.reference = fam.load_denoiser() if needs_reference else None
            if cfg.policy_init:  # after the reference copy: it keeps the base (or --unet_init) weights
                fam.load_weights_file(fam.denoiser, cfg.policy_init)
            if fam.reference is not None:
                freeze(fam.reference, "cpu" if shard_later else device, weight_dtype)
        fam.after_load()
        fam.denoiser.train()
        if cfg.gradient_checkpointing:
            fam.denoiser.enable_gradient_checkpointing()
        return fam

    @classmethod
    def load_reference(cls, cfg, device: torch.device, weight_dtype: torch.dtype) -> ModelFamily:
        """The frozen reference alone (weight dtype, as ``load`` makes it) and the scheduler: what computing
        reference losses from cached latents and text needs (``sdpo.cache.reference_precompute``).  No trained
        copy and no encoders; with LoRA the reference is the base with its adapters off, i.e. this module."""
        fam = cls(cfg, device, weight_dtype)
        fam.scheduler = fam.load_scheduler()
        fam.reference = freeze(fam.load_denoiser(), device, weight_dtype)
        fam.after_load()
        return fam

    @classmethod
    def load_for_encoding(cls, cfg, device: torch.device, weight_dtype: torch.dtype) -> ModelFamily:
        """Only the parts that turn pixels and prompts into the denoiser's inputs (``sdpo.cache.precompute``)."""
        fam = cls(cfg, device, weight_dtype)
        fam.scheduler = fam.load_scheduler()
        fam.load_encoders()
        fam.after_load()
        return fam

    def load_encoders(self) -> None:
        """The frozen text encoders and VAE, in the weight dtype."""
        self.load_text_encoders()
        self.vae = self.load_vae()
        for m in (self.vae, *self.text_encoders):
            freeze(m, self.device, self.weight_dtype)

    def after_load(self) -> None:
        """Family-specific fix-ups once everything is on the device (e.g. SDXL's fp16 VAE)."""

    def load_scheduler(self):
        raise NotImplementedError

    def load_text_encoders(self) -> None:
        raise NotImplementedError

    @classmethod
    def vae_class(cls):
        from diffusers import AutoencoderKL

        return AutoencoderKL

    def vae_source(self) -> tuple[str, dict]:
        """Where the VAE loads from: ``(path or hub id, from_pretrained keyword arguments)``."""
        cfg = self.cfg
        if cfg.pretrained_vae_model_name_or_path:
            # A VAE folder/repo itself (madebyollin/sdxl-vae-fp16-fix) or a pipeline folder holding vae/.
            # --revision names a commit of the main model, not of this repo, so it is not passed on.
            local = Path(cfg.pretrained_vae_model_name_or_path).expanduser()
            path = str(local) if local.is_dir() else cfg.pretrained_vae_model_name_or_path
            return path, {"subfolder": "vae" if (local / "vae").is_dir() else None}
        return cfg.pretrained_model_name_or_path, {"subfolder": "vae", "revision": cfg.revision}

    def load_vae(self):
        path, kw = self.vae_source()
        return from_pretrained(self.vae_class(), path, **kw)

    @property
    def vae_config(self):
        """The VAE's config: the loaded VAE's, or its config file alone when latents are precomputed
        (scaling and shift factors are all training needs then)."""
        if self.vae is not None:
            return self.vae.config
        if getattr(self, "_vae_config", None) is None:
            from types import SimpleNamespace

            path, kw = self.vae_source()
            try:
                self._vae_config = SimpleNamespace(**self.vae_class().load_config(path, **kw))
            except (OSError, ValueError) as e:
                raise UserError(f"could not read the VAE config of {path!r}: {str(e).strip()[:200]}") from None
        return self._vae_config

    def load_denoiser(self) -> torch.nn.Module:
        cfg = self.cfg
        model = from_pretrained(
            self.denoiser_class(), cfg.pretrained_model_name_or_path, subfolder=self.denoiser_folder,
            revision=cfg.revision,
        )  # fmt: skip
        self.check_denoiser(model)
        if cfg.unet_init:
            self.load_weights_file(model, cfg.unet_init)
        return model

    def check_denoiser(self, model: torch.nn.Module) -> None:
        """Catch a folder whose denoiser belongs to another family (hub ids are only checked here)."""

    # ------------------------------------------------------------------ one training step

    @torch.no_grad()
    def encode_prompt(self, captions: list[str]) -> Conditioning:
        """Batch-first conditioning tensors for ``captions`` (an empty caption is the dropout prompt)."""
        raise NotImplementedError

    def extra_conditioning(self, n: int, dtype: torch.dtype) -> Conditioning:
        """Conditioning that does not come from the text (SDXL's time ids); batch-first, ``n`` rows."""
        return {}

    def latent_shape(self, pixel_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of one sample's latent for one sample's pixels (no batch axis)."""
        vae = self.vae_config
        f = 2 ** (len(vae.block_out_channels) - 1)
        return (vae.latent_channels, pixel_shape[-2] // f, pixel_shape[-1] // f)

    @torch.no_grad()
    def encode_posterior(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The VAE posterior's mean and std (float32): what ``sdpo.cache.precompute`` stores per image."""
        dist = self.vae.encode(pixels.to(self.vae.dtype)).latent_dist
        return dist.mean.float(), dist.std.float()

    @torch.no_grad()
    def encode_latents(self, pixels: torch.Tensor, posterior_noise: torch.Tensor) -> torch.Tensor:
        """A VAE posterior sample ``mean + std * noise`` with the given noise, shifted and scaled as the
        family's VAE config says (``(z - shift_factor) * scaling_factor``)."""
        return self.latents_from_posterior(*self.encode_posterior(pixels), posterior_noise)

    def latents_from_posterior(self, mean: torch.Tensor, std: torch.Tensor, posterior_noise: torch.Tensor):
        """The same sample as ``encode_latents`` from a posterior computed earlier (``sdpo.cache.store``):
        identical arithmetic, so an fp32 cache gives identical latents."""
        return self.normalise_latents(mean.float() + std.float() * posterior_noise)

    def normalise_latents(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self.vae_config
        shift = getattr(vae, "shift_factor", None)
        if shift is not None:
            latents = latents - shift
        return latents * vae.scaling_factor

    def draw_time(self, generator: torch.Generator, device) -> torch.Tensor:
        """One pair's time draw from its own stream, shape ``(1,)``: the first draw of the stream."""
        raise NotImplementedError

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, time: torch.Tensor):
        """``(noisy input, regression target, the denoiser's timestep argument)`` for stacked rows."""
        raise NotImplementedError

    def predict(self, module: torch.nn.Module, noisy: torch.Tensor, t: torch.Tensor, cond: Conditioning):
        """The denoiser's output in the latent layout of ``noisy`` (packing, if any, undone)."""
        raise NotImplementedError

    def process_terms(self) -> dict:
        """What objectives that need the noise process itself get (DDPM: the schedule)."""
        return {}

    # ------------------------------------------------------------------ sampling (in-training validation)

    def sampling_scheduler(self):
        """A new instance of the evaluation sampler's scheduler from the model folder.  Sampling calls its
        ``set_timesteps``, so it must never be the training scheduler."""
        raise NotImplementedError

    def sampling_sequence_length(self) -> int | None:
        """Text tokens the sampler encodes prompts to (families with a T5-style encoder)."""
        return None

    def sampling_components(self, denoiser: torch.nn.Module, scheduler):
        """The evaluation sampler's parts (``sdpo.sampling.images.Components``) made of this family's loaded
        modules and ``denoiser``: nothing is loaded or copied."""
        from sdpo.sampling.images import Components

        return Components(type(self), denoiser, self.vae, scheduler, self.tokenizers, self.text_encoders,
                          self.sampling_sequence_length())  # fmt: skip

    @classmethod
    def load_sampling_components(cls, pretrain_path: str, weights_path: str | None, device, dtype: torch.dtype,
                                 vae_path: str | None = None, vae_dtype: torch.dtype = torch.float32,
                                 max_sequence_length: int | None = None):  # fmt: skip
        """Everything evaluation sampling needs, loaded from the base model with ``weights_path``'s denoiser."""
        raise NotImplementedError

    @classmethod
    def load_sampling_vae(cls, pretrain_path: str, vae_path: str | None, dtype: torch.dtype):
        """The VAE evaluation decodes with: ``vae_path`` (a VAE folder or hub id, or a pipeline folder holding
        ``vae/``), else the family's ``default_sampling_vae``, else the base model's own."""
        path = vae_path or cls.default_sampling_vae
        if path is None:
            return from_pretrained(cls.vae_class(), pretrain_path, "VAE", subfolder="vae", torch_dtype=dtype)
        p = Path(path)
        sub = (
            "vae"
            if p.is_dir() and not (p / "config.json").is_file() and (p / "vae" / "config.json").is_file()
            else None
        )
        return from_pretrained(cls.vae_class(), path, "VAE", subfolder=sub, torch_dtype=dtype)

    @classmethod
    def decode_latent(cls, vae, latent: torch.Tensor) -> torch.Tensor:
        """One sampled latent (batch axis of one, as ``sample_latents`` returns it) -> the VAE's pixels in [-1, 1],
        ``(1, 3, H, W)``: SD-style VAEs undo ``(z - shift_factor) * scaling_factor``; a family whose VAE normalises
        otherwise (per-channel statistics, a frame axis, patches) overrides this with its pipeline's own decode."""
        x = latent.to(vae.dtype) / vae.config.scaling_factor
        if getattr(vae.config, "shift_factor", None) is not None:
            x = x + vae.config.shift_factor
        return vae.decode(x, return_dict=False)[0]

    @classmethod
    def encode_sampling_prompt(cls, comp, prompt: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(embeddings, pooled or None)`` of one prompt, as the family's evaluation sampler encodes it."""
        raise NotImplementedError

    @classmethod
    def sample_latents(cls, comp, prompts: list[str], height: int, width: int, steps: int, guidance: float,
                       seed, sampler: str = "reference", rows_per_call: int | None = None) -> torch.Tensor:  # fmt: skip
        """Denoised latents of ``prompts`` from the protocol's initial latents (``sdpo.sampling.images``);
        ``rows_per_call`` prompts per denoiser call (``None``: ``prompts_per_call``, the protocol's)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ online RL rollouts (sdpo.rl)

    def rollout_schedule(self, steps: int, latent_shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
        """The schedule a stochastic rollout of ``steps`` steps on latents of ``latent_shape`` (one sample, no batch
        axis) follows, set as the family's own sampler sets it: ``timesteps`` (the denoiser's argument per step)
        and the noise process's coefficients (``sdpo.families.flow`` / ``sdpo.families.ddpm`` say which)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ SD-era names (kept as aliases)

    @property
    def unet(self) -> torch.nn.Module:
        return self.denoiser

    @unet.setter
    def unet(self, module: torch.nn.Module) -> None:
        self.denoiser = module

    @property
    def ref_unet(self) -> torch.nn.Module | None:
        return self.reference

    @ref_unet.setter
    def ref_unet(self, module: torch.nn.Module | None) -> None:
        self.reference = module

    @property
    def noise_scheduler(self):
        return self.scheduler
