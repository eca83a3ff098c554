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

log = logging.getLogger(__name__)
Conditioning = dict[str, torch.Tensor]


def from_pretrained(cls, path: str, **kw):
    """``cls.from_pretrained`` with a one-line error that says what is missing and what to do."""
    try:
        return cls.from_pretrained(path, **kw)
    except (OSError, ValueError) as e:
        where = kw.get("subfolder") or ""
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
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
    pipeline_classes: ClassVar[tuple[str, ...]]  # model_index.json ``_class_name`` values
    denoiser_folder: ClassVar[str] = "unet"  # subfolder of the pipeline, and the export folder name
    process: ClassVar[str] = "ddpm"  # "ddpm" or "flow": objectives that need DDPM quantities check it
    default_resolution: ClassVar[int] = 512
    heavy: ClassVar[bool] = False  # reference SDXL-style defaults: gradient checkpointing + Adafactor on
    joint_augment: ClassVar[bool] = False  # one crop/flip for winner and loser (the SDXL reference script)
    dspo_form: ClassVar[str | None] = "sd15"  # which branch of the reference DSPO loss applies
    shard_blocks: ClassVar[tuple[str, ...]] = ()  # denoiser classes that are FSDP units (sdpo.distributed)
    video: ClassVar[bool] = False  # samples are frame stacks (F, 3, H, W) rather than images (3, H, W)
    channel_axis: ClassVar[int] = 0  # the axis of one sample's latent that holds the channels (noise offset)
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
    def configure(cls, cfg) -> None:
        """Fill this family's config defaults and reject flags it cannot use (one line each); image
        families refuse the video flags (``sdpo.families.video`` overrides this)."""
        given = [
            f"--{k}" for k in ("num_frames", "frame_stride", "height", "width") if getattr(cfg, k, None) is not None
        ]
        if getattr(cfg, "video_pairs_format", "auto") != "auto":
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
        adapters, and the reference is that same module with its adapters off (``sdpo.lora.adapters``)."""
        from sdpo.lora import adapters as lora

        fam = cls(cfg, device, weight_dtype)
        fam.scheduler = fam.load_scheduler()
        if not getattr(cfg, "precomputed", None):  # with a latent/text cache (sdpo.cache.store) neither is loaded
            fam.load_encoders()
        fam.denoiser = fam.load_denoiser()
        if lora.enabled(cfg):  # never sharded (config refuses --sharding with --lora_rank)
            lora.add_adapters(fam.denoiser, lora.lora_config(cfg, cls, fam.denoiser), weight_dtype, cfg.seed)
            fam.denoiser.to(device)
            fam.reference = lora.AdaptersOff(fam) if needs_reference else None
        else:
            fam.reference = fam.load_denoiser() if needs_reference else None
            if fam.reference is not None:
                freeze(fam.reference, "cpu" if shard_later else device, weight_dtype)
        fam.after_load()
        fam.denoiser.train()
        if cfg.gradient_checkpointing:
            fam.denoiser.enable_gradient_checkpointing()
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
        from sdpo.checkpoint.weights import load_denoiser_weights

        cfg = self.cfg
        model = from_pretrained(
            self.denoiser_class(), cfg.pretrained_model_name_or_path, subfolder=self.denoiser_folder,
            revision=cfg.revision,
        )  # fmt: skip
        self.check_denoiser(model)
        if cfg.unet_init:
            load_denoiser_weights(model, cfg.unet_init)
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

    def sampling_components(self, denoiser: torch.nn.Module, scheduler):
        """The evaluation sampler's parts (``sdpo.sampling.images.Components`` / ``sdpo.sampling.flow.FlowComponents``)
        made of this family's loaded modules and ``denoiser``: nothing is loaded or copied."""
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

    @property
    def sdxl(self) -> bool:
        return self.name == "sdxl"
