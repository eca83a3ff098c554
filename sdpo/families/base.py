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
    """Frozen parts run in the weight dtype (fp32 already: skip diffusers' cast warning)."""
    module.requires_grad_(False).eval().to(device)
    if dtype != torch.float32:
        module.to(dtype=dtype)
    return module


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
    # LoRA (``sdpo.lora``): peft ``target_modules`` names per preset of ``--lora_target_modules``;
    # ``attn`` (the attention projections) is the default, ``ff`` adds the feed-forward layers.
    lora_targets: ClassVar[dict[str, tuple[str, ...]]] = {}
    lora_default: ClassVar[tuple[str, ...]] = ("attn",)
    # Key names in the saved LoRA file: diffusers' UNet naming (``lora.down``/``lora.up``, what
    # ``convert_state_dict_to_diffusers`` writes) or peft's (``lora_A``/``lora_B``, what diffusers' SD3 and
    # FLUX LoRA trainers write; their loaders expect it).
    lora_key_style: ClassVar[str] = "diffusers"

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
    def pipeline_class(cls):
        """The family's diffusers pipeline (its ``save_lora_weights`` / ``load_lora_weights`` define the LoRA format)."""
        import diffusers

        return getattr(diffusers, cls.pipeline_classes[0])

    @classmethod
    def check_folder(cls, root: Path) -> None:
        """Raise a one-line UserError if a local pipeline folder lacks what this family needs."""
        if not (root / cls.denoiser_folder).is_dir():
            raise UserError(f"{root}: not a {cls.name} pipeline folder (no {cls.denoiser_folder}/ subfolder)")

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(cls, cfg, device: torch.device, weight_dtype: torch.dtype, needs_reference: bool) -> ModelFamily:
        """Every part training needs: the trained denoiser (fp32, train mode), the frozen reference
        (weight dtype) if the objective needs one, the text encoders, the VAE and the scheduler.

        With ``--lora_rank`` the denoiser itself stays frozen in the weight dtype with trainable fp32
        adapters, and the reference is that same module with its adapters off (``sdpo.lora``)."""
        from sdpo import lora

        fam = cls(cfg, device, weight_dtype)
        fam.scheduler = fam.load_scheduler()
        fam.load_text_encoders()
        fam.vae = fam.load_vae()
        fam.denoiser = fam.load_denoiser()
        if lora.enabled(cfg):
            lora.add_adapters(fam.denoiser, lora.lora_config(cfg, cls, fam.denoiser), weight_dtype, cfg.seed)
            fam.denoiser.to(device)
            fam.reference = lora.AdaptersOff(fam) if needs_reference else None
        else:
            fam.reference = fam.load_denoiser() if needs_reference else None
        frozen = [m for m in (fam.reference,) if isinstance(m, torch.nn.Module)]
        for m in (fam.vae, *fam.text_encoders, *frozen):
            freeze(m, device, weight_dtype)
        fam.after_load()
        fam.denoiser.train()
        if cfg.gradient_checkpointing:
            fam.denoiser.enable_gradient_checkpointing()
        return fam

    def after_load(self) -> None:
        """Family-specific fix-ups once everything is on the device (e.g. SDXL's fp16 VAE)."""

    def load_scheduler(self):
        raise NotImplementedError

    def load_text_encoders(self) -> None:
        raise NotImplementedError

    def load_vae(self):
        from diffusers import AutoencoderKL

        cfg = self.cfg
        if cfg.pretrained_vae_model_name_or_path:
            # A VAE folder/repo itself (madebyollin/sdxl-vae-fp16-fix) or a pipeline folder holding vae/.
            # --revision names a commit of the main model, not of this repo, so it is not passed on.
            local = Path(cfg.pretrained_vae_model_name_or_path).expanduser()
            path = str(local) if local.is_dir() else cfg.pretrained_vae_model_name_or_path
            return from_pretrained(AutoencoderKL, path, subfolder="vae" if (local / "vae").is_dir() else None)
        return from_pretrained(AutoencoderKL, cfg.pretrained_model_name_or_path, subfolder="vae", revision=cfg.revision)

    def load_denoiser(self) -> torch.nn.Module:
        from sdpo.weights import load_denoiser_weights

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
        f = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return (self.vae.config.latent_channels, pixel_shape[-2] // f, pixel_shape[-1] // f)

    @torch.no_grad()
    def encode_latents(self, pixels: torch.Tensor, posterior_noise: torch.Tensor) -> torch.Tensor:
        """A VAE posterior sample ``mean + std * noise`` with the given noise, shifted and scaled as the
        family's VAE config says (``(z - shift_factor) * scaling_factor``)."""
        dist = self.vae.encode(pixels.to(self.vae.dtype)).latent_dist
        latents = dist.mean.float() + dist.std.float() * posterior_noise
        return self.normalise_latents(latents)

    def normalise_latents(self, latents: torch.Tensor) -> torch.Tensor:
        shift = getattr(self.vae.config, "shift_factor", None)
        if shift is not None:
            latents = latents - shift
        return latents * self.vae.config.scaling_factor

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
