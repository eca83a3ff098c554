"""CogVideoX 1.0 (2B, 5B): a 3-D DiT on DDPM v-prediction, T5-XXL text (the SIPO paper's video models).

* Noise process: the model's ``CogVideoXDDIMScheduler`` (scaled-linear betas with an SNR shift,
  ``snr_shift_scale`` 3.0 for 2B and 1.0 for 5B, rescaled to zero terminal SNR), ``t ~ U{0..999}``,
  target ``scheduler.get_velocity`` (``sdpo.families.ddpm``).  diffusers' CogVideoX LoRA example
  regresses the x0 estimate ``get_velocity(v_pred, x_t, t)`` on ``x_0`` weighted by
  ``1 / (1 - alpha_bar_t)``; that loss *is* the plain v-MSE (``x0_hat - x0 = -sqrt(1 - abar) (v_pred - v)``),
  which ``tests/test_video_families.py`` checks numerically, so the per-sample losses here are v-MSEs.
  Being DDPM, dpo-cm and sipo run on it (``sdpo.losses.transition`` handles v-prediction).
* Latents: the VAE posterior (``(B, C, F', h, w)``) times ``scaling_factor``, permuted to
  ``(B, F', C, h, w)``, the layout the transformer takes (as the LoRA example does).
* Text: T5 encodings of exactly ``transformer.config.max_text_seq_length`` (226) tokens, max-length
  padding, no attention mask (``CogVideoXPipeline.encode_prompt``).
* Models with ``use_rotary_positional_embeddings`` (5B) get the 3-D rotary embeddings of
  ``CogVideoXPipeline._prepare_rotary_positional_embeddings`` for the sample's size and frame count;
  2B uses its learned/sinusoidal position embeddings inside the transformer.
* CogVideoX 1.5 (``patch_size_t``: latent frames padded to a multiple) is refused: the SIPO paper
  used 1.0, and its frame padding would need its own test.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import ClassVar

import torch

from sdpo.errors import UserError
from sdpo.families.base import Conditioning, from_pretrained
from sdpo.families.ddpm import DDPMFamily
from sdpo.families.video import VideoFamily, keep_fp32_modules


class CogVideoX(VideoFamily, DDPMFamily):
    name: ClassVar[str] = "cogvideox"
    display_name: ClassVar[str] = "CogVideoX"
    pipeline_classes: ClassVar[tuple[str, ...]] = ("CogVideoXPipeline",)
    default_model: ClassVar[str] = "THUDM/CogVideoX-2b"
    weights_label: ClassVar[str] = "a CogVideoX transformer"
    weights_markers: ClassVar[tuple[str, ...]] = ("patch_embed.text_proj.",)
    channel_axis: ClassVar[int] = 1  # latents are (F', C, h, w)
    frame_step: ClassVar[int] = 8
    frame_rule: ClassVar[str] = (
        "its VAE keeps (F - 1) // 4 + 1 latent frames and decodes them back to F frames only for F = 8k + 1"
    )
    default_num_frames: ClassVar[int] = 49
    default_size: ClassVar[tuple[int, int]] = (480, 720)
    default_resolution: ClassVar[int] = 480
    default_fps: ClassVar[int] = 8
    sampling_guidance: ClassVar[float] = 6.0  # CogVideoXPipeline's documented value
    # diffusers' CogVideoX LoRA trainer adapts the attention projections; its file keeps peft's key names.
    lora_targets: ClassVar[dict[str, tuple[str, ...]]] = {
        "attn": ("to_q", "to_k", "to_v", "to_out.0"),
        "ff": ("ff.net.0.proj", "ff.net.2"),
    }
    lora_key_style: ClassVar[str] = "peft"

    @classmethod
    def configure(cls, cfg) -> None:
        super().configure(cfg)
        if cfg.max_sequence_length is not None:
            raise UserError(
                "--max_sequence_length does not apply to cogvideox: its text is always the transformer's "
                "max_text_seq_length (226) T5 tokens; drop the flag"
            )

    @classmethod
    def denoiser_class(cls):
        from diffusers import CogVideoXTransformer3DModel

        return CogVideoXTransformer3DModel

    @classmethod
    def vae_class(cls):
        from diffusers import AutoencoderKLCogVideoX

        return AutoencoderKLCogVideoX

    def check_denoiser(self, model) -> None:
        if getattr(model.config, "patch_size_t", None) is not None:
            raise UserError(
                f"{self.cfg.pretrained_model_name_or_path}: a CogVideoX 1.5 transformer (patch_size_t); only CogVideoX "
                "1.0 (2B, 5B: the SIPO paper's models) is supported"
            )
        self.transformer_config = model.config  # rotary sizes and text length, readable once the module is wrapped

    def load_scheduler(self):
        from diffusers import CogVideoXDDIMScheduler

        cfg = self.cfg
        return self.check_scheduler(from_pretrained(CogVideoXDDIMScheduler, cfg.pretrained_model_name_or_path,
                                                    subfolder="scheduler", revision=cfg.revision))  # fmt: skip

    def load_text_encoders(self) -> None:
        from transformers import AutoTokenizer, T5EncoderModel

        path, rev = self.cfg.pretrained_model_name_or_path, self.cfg.revision
        self.tokenizers = [from_pretrained(AutoTokenizer, path, subfolder="tokenizer", revision=rev)]
        self.text_encoders = [from_pretrained(T5EncoderModel, path, subfolder="text_encoder", revision=rev)]

    def after_load(self) -> None:
        if self.weight_dtype == torch.float16:
            keep_fp32_modules(self.text_encoders[0])
        self.vae.enable_slicing()  # one video at a time through the 3-D VAE: same numbers, less memory
        self._rope_cache: dict = {}

    # ------------------------------------------------------------------ shapes and latents

    @property
    def temporal_compression(self) -> int:
        return int(self.vae.config.temporal_compression_ratio)

    @property
    def spatial_compression(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def latent_shape(self, pixel_shape):
        frames, h, w = self.latent_grid(pixel_shape)
        return (frames, self.vae.config.latent_channels, h, w)

    @torch.no_grad()
    def encode_latents(self, pixels: torch.Tensor, posterior_noise: torch.Tensor) -> torch.Tensor:
        """Pixels ``(N, F, 3, H, W)`` -> ``(N, F', C, h, w)``: posterior mean + std * noise, times the scale."""
        dist = self.vae.encode(pixels.permute(0, 2, 1, 3, 4).to(self.vae.dtype)).latent_dist
        mean, std = (x.float().permute(0, 2, 1, 3, 4) for x in (dist.mean, dist.std))
        return self.normalise_latents(mean + std * posterior_noise)

    # ------------------------------------------------------------------ text and the denoiser

    def text_pipeline(self):
        from diffusers import CogVideoXPipeline

        return CogVideoXPipeline(tokenizer=self.tokenizers[0], text_encoder=self.text_encoders[0], vae=None,
                                 transformer=None, scheduler=self.scheduler)  # fmt: skip

    @torch.no_grad()
    def encode_prompt(self, captions: list[str]) -> Conditioning:
        embeds, _ = self.text_pipeline().encode_prompt(
            prompt=captions, do_classifier_free_guidance=False, device=self.device,
            max_sequence_length=self.transformer_config.max_text_seq_length,
        )  # fmt: skip
        return {"encoder_hidden_states": embeds}

    # ------------------------------------------------------------------ evaluation sampling

    @classmethod
    def video_sequence_length(cls, pipe, given: int | None) -> int:
        return pipe.transformer.config.max_text_seq_length  # the length the transformer was trained with

    @classmethod
    def sampling_latent_shape(cls, channels: int, frames: int, h: int, w: int) -> tuple[int, ...]:
        return (1, frames, channels, h, w)

    @classmethod
    def decode_sampled(cls, pipe, latent: torch.Tensor) -> torch.Tensor:
        return pipe.decode_latents(latent)

    def rotary_embeddings(self, frames: int, h: int, w: int, device) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The pipeline's 3-D rotary embeddings for ``frames`` latent frames of ``h x w`` latents (cached)."""
        if not self.transformer_config.use_rotary_positional_embeddings:
            return None
        key = (frames, h, w, str(device))
        if key not in self._rope_cache:
            from diffusers import CogVideoXPipeline

            s = self.spatial_compression
            holder = SimpleNamespace(
                transformer=SimpleNamespace(config=self.transformer_config), vae_scale_factor_spatial=s
            )
            self._rope_cache[key] = CogVideoXPipeline._prepare_rotary_positional_embeddings(
                holder, h * s, w * s, frames, torch.device(device)
            )
        return self._rope_cache[key]

    def predict(self, module, noisy, t, cond: Conditioning):
        _, frames, _, h, w = noisy.shape
        return module(hidden_states=noisy, encoder_hidden_states=cond["encoder_hidden_states"], timestep=t,
                      image_rotary_emb=self.rotary_embeddings(frames, h, w, noisy.device), return_dict=False)[0]  # fmt: skip
