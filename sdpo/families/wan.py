"""Wan2.1 text-to-video (1.3B, 14B): a 3-D DiT on rectified flow, UMT5-XXL text.

* Noise process: rectified flow exactly as SD3/FLUX train (``sdpo.families.flow``): ``sigma`` from
  diffusers' density helper, ``x_t = (1 - sigma) x_0 + sigma eps``, target ``eps - x_0``, and the
  transformer takes ``timestep = sigma * 1000``.  The training sigmas carry the model's own shift, as
  SD3's carry its static 3.0: Wan's folder ships a ``UniPCMultistepScheduler`` with
  ``flow_shift`` (3.0 for the 480p 1.3B model), which becomes the ``shift`` of a
  ``FlowMatchEulerDiscreteScheduler``; a folder that already has a flow-match Euler scheduler is
  used as it is.  The SIPO paper does not say how its Wan run drew timesteps.
* Latents: the VAE posterior normalised per channel with the VAE config's ``latents_mean`` /
  ``latents_std``, ``(z - mean) / std`` (the inverse of ``WanPipeline``'s decode), layout
  ``(C, F', h, w)``.  The VAE stays in fp32 under fp16 training (Wan's pipeline runs it in fp32).
* Text: ``WanPipeline.encode_prompt``: cleaned prompts, UMT5 states with the attention mask, rows
  past each prompt's length zeroed, padded to ``--max_sequence_length`` (default 512, the
  pipeline's, capped at the tokenizer's own maximum).
* dpo-cm and sipo need DDPM transition densities and are refused on this family (no flow form is
  derived here).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from sdpo.errors import UserError
from sdpo.families.base import Conditioning
from sdpo.families.flow import FlowFamily
from sdpo.families.video import VideoFamily, keep_fp32_modules


class Wan(VideoFamily, FlowFamily):
    name: ClassVar[str] = "wan"
    display_name: ClassVar[str] = "Wan2.1"
    pipeline_classes: ClassVar[tuple[str, ...]] = ("WanPipeline",)
    default_model: ClassVar[str] = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
    weights_label: ClassVar[str] = "a Wan transformer"
    weights_markers: ClassVar[tuple[str, ...]] = ("condition_embedder.",)
    channel_axis: ClassVar[int] = 0  # latents are (C, F', h, w)
    frame_step: ClassVar[int] = 4
    frame_rule: ClassVar[str] = "its VAE keeps (F - 1) // 4 + 1 latent frames, so F must be 4k + 1"
    default_num_frames: ClassVar[int] = 81
    default_size: ClassVar[tuple[int, int]] = (480, 832)
    default_resolution: ClassVar[int] = 480
    default_fps: ClassVar[int] = 16
    text_encoder_classes: ClassVar[tuple[str, ...]] = ("UMT5EncoderModel",)
    sampling_guidance: ClassVar[float] = 5.0  # WanPipeline's documented value
    # Self- and cross-attention projections (add_k/v_proj: the image branch of the I2V models); Wan's
    # feed-forward is ``ffn``, not the MM-DiT ``ff``/``ff_context``.
    lora_targets: ClassVar[dict[str, tuple[str, ...]]] = {
        "attn": ("to_q", "to_k", "to_v", "to_out.0", "add_k_proj", "add_v_proj"),
        "ff": ("ffn.net.0.proj", "ffn.net.2"),
    }

    @classmethod
    def denoiser_class(cls):
        from diffusers import WanTransformer3DModel

        return WanTransformer3DModel

    @classmethod
    def vae_class(cls):
        from diffusers import AutoencoderKLWan

        return AutoencoderKLWan

    def check_denoiser(self, model) -> None:
        if getattr(model.config, "image_dim", None) is not None:
            raise UserError(
                f"{self.cfg.pretrained_model_name_or_path}: an image-to-video Wan transformer; use a T2V one"
            )

    def load_scheduler(self):
        from diffusers import FlowMatchEulerDiscreteScheduler

        cfg = self.cfg
        try:
            config = FlowMatchEulerDiscreteScheduler.load_config(
                cfg.pretrained_model_name_or_path, subfolder="scheduler", revision=cfg.revision
            )
        except (OSError, ValueError) as e:
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise UserError(f"could not read {cfg.pretrained_model_name_or_path}/scheduler: {first} "
                            "(offline? pass a local folder)") from None  # fmt: skip
        return flow_scheduler(config)

    def after_load(self) -> None:
        if self.weight_dtype == torch.float16:
            keep_fp32_modules(self.text_encoders[0])
        if self.vae.dtype != torch.float32:
            self.vae.to(dtype=torch.float32)

    # ------------------------------------------------------------------ shapes and latents

    @property
    def temporal_compression(self) -> int:
        return int(self.vae.config.scale_factor_temporal)

    @property
    def spatial_compression(self) -> int:
        return int(self.vae.config.scale_factor_spatial)

    def latent_shape(self, pixel_shape):
        frames, h, w = self.latent_grid(pixel_shape)
        return (self.vae.config.z_dim, frames, h, w)

    def normalise_latents(self, latents: torch.Tensor) -> torch.Tensor:
        c = self.vae.config
        view = (1, c.z_dim, 1, 1, 1)
        mean = torch.tensor(c.latents_mean, dtype=latents.dtype, device=latents.device).view(view)
        std = torch.tensor(c.latents_std, dtype=latents.dtype, device=latents.device).view(view)
        return (latents - mean) / std

    @torch.no_grad()
    def encode_latents(self, pixels: torch.Tensor, posterior_noise: torch.Tensor) -> torch.Tensor:
        """Pixels ``(N, F, 3, H, W)`` -> normalised ``(N, C, F', h, w)`` (posterior mean + std * noise)."""
        return super().encode_latents(pixels.permute(0, 2, 1, 3, 4), posterior_noise)

    # ------------------------------------------------------------------ text and the denoiser

    @classmethod
    def build_pipeline(cls, scheduler, tokenizers, text_encoders, transformer=None, vae=None):
        from diffusers import WanPipeline

        return WanPipeline(tokenizer=tokenizers[0], text_encoder=text_encoders[0], vae=vae, scheduler=scheduler,
                           transformer=transformer)  # fmt: skip

    @torch.no_grad()
    def encode_prompt(self, captions: list[str]) -> Conditioning:
        embeds, _ = self.text_pipeline().encode_prompt(prompt=captions, do_classifier_free_guidance=False,
                                                       device=self.device, max_sequence_length=self.sequence_length())  # fmt: skip
        return {"encoder_hidden_states": embeds}

    # ------------------------------------------------------------------ evaluation sampling

    @classmethod
    def video_sequence_length(cls, pipe, given: int | None) -> int:
        return cls.max_sequence_length(given, pipe.tokenizer)

    @classmethod
    def sampling_latent_shape(cls, channels: int, frames: int, h: int, w: int) -> tuple[int, ...]:
        return (1, channels, frames, h, w)

    @classmethod
    def decode_sampled(cls, pipe, latent: torch.Tensor) -> torch.Tensor:
        """``WanPipeline``'s decode: undo the per-channel normalisation, then the VAE."""
        c = pipe.vae.config
        mean = torch.tensor(c.latents_mean, device=latent.device, dtype=latent.dtype).view(1, c.z_dim, 1, 1, 1)
        std = torch.tensor(c.latents_std, device=latent.device, dtype=latent.dtype).view(1, c.z_dim, 1, 1, 1)
        return pipe.vae.decode(latent * std + mean, return_dict=False)[0]

    def predict(self, module, noisy, t, cond: Conditioning):
        return module(hidden_states=noisy, timestep=t, encoder_hidden_states=cond["encoder_hidden_states"],
                      return_dict=False)[0]  # fmt: skip


def flow_scheduler(config: dict):
    """A flow-match Euler scheduler for the training sigmas from a Wan folder's scheduler config."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    if config.get("_class_name") == "FlowMatchEulerDiscreteScheduler":
        return FlowMatchEulerDiscreteScheduler.from_config(config)
    if config.get("prediction_type") not in (None, "flow_prediction"):
        raise UserError(f"Wan scheduler config has prediction_type {config.get('prediction_type')!r}, not flow")
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=config.get("num_train_timesteps", 1000),
                                           shift=float(config.get("flow_shift") or 1.0))  # fmt: skip
