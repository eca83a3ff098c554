"""Stable Diffusion 1.x / 2.x: a UNet on DDPM epsilon (or v) prediction, one CLIP text encoder.

The noise process is the scheduler's own ``add_noise`` with ``t ~ U{0..T-1}``; the target is the
noise (``epsilon``) or ``scheduler.get_velocity`` (``v_prediction``, an extension: the reference
code asserts epsilon).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from sdpo.errors import UserError
from sdpo.families.base import Conditioning, from_pretrained
from sdpo.families.ddpm import DDPMFamily


class SD15(DDPMFamily):
    name: ClassVar[str] = "sd15"
    pipeline_classes: ClassVar[tuple[str, ...]] = ("StableDiffusionPipeline",)
    default_resolution: ClassVar[int] = 512
    shard_blocks: ClassVar[tuple[str, ...]] = ("ResnetBlock2D", "Transformer2DModel")
    # diffusers' LoRA examples (text-to-image, DreamBooth, Diffusion-DPO) adapt these four projections.
    lora_targets: ClassVar[dict[str, tuple[str, ...]]] = {
        "attn": ("to_q", "to_k", "to_v", "to_out.0"),
        "ff": ("ff.net.0.proj", "ff.net.2"),
    }

    @classmethod
    def denoiser_class(cls):
        from diffusers import UNet2DConditionModel

        return UNet2DConditionModel

    def check_denoiser(self, model) -> None:
        is_sdxl = getattr(model.config, "addition_embed_type", None) == "text_time"
        if is_sdxl != (self.name == "sdxl"):
            hint = "add --sdxl (or --model_family sdxl)" if is_sdxl else "drop --sdxl"
            kind = "SDXL" if is_sdxl else "SD1.5-style"
            raise UserError(f"{self.cfg.pretrained_model_name_or_path}: UNet is {kind}; {hint}")

    def load_scheduler(self):
        from diffusers import DDPMScheduler

        cfg = self.cfg
        return self.check_scheduler(from_pretrained(DDPMScheduler, cfg.pretrained_model_name_or_path,
                                                    subfolder="scheduler", revision=cfg.revision))  # fmt: skip

    def sampling_scheduler(self):
        from diffusers import EulerDiscreteScheduler

        # As eval/sampling.py: Euler from the model's scheduler config (the reference scripts' sampler).
        cfg = self.cfg
        return from_pretrained(EulerDiscreteScheduler, cfg.pretrained_model_name_or_path, subfolder="scheduler",
                               revision=cfg.revision)  # fmt: skip

    def sampling_components(self, denoiser, scheduler):
        from sdpo.sampling.images import Components

        return Components(denoiser, self.vae, scheduler, self.tokenizers, self.text_encoders, self.sdxl)

    def load_text_encoders(self) -> None:
        from transformers import AutoTokenizer, CLIPTextModel

        path, rev = self.cfg.pretrained_model_name_or_path, self.cfg.revision
        self.tokenizers = [from_pretrained(AutoTokenizer, path, subfolder="tokenizer", revision=rev)]
        self.text_encoders = [from_pretrained(CLIPTextModel, path, subfolder="text_encoder", revision=rev)]

    @torch.no_grad()
    def encode_prompt(self, captions: list[str]) -> Conditioning:
        """Last hidden state of the CLIP text encoder, max-length padding, no attention mask."""
        tok, enc = self.tokenizers[0], self.text_encoders[0]
        ids = tok(captions, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
        return {"encoder_hidden_states": enc(ids.input_ids.to(self.device))[0]}

    def predict(self, module, noisy, t, cond: Conditioning):
        added = {k: v for k, v in cond.items() if k != "encoder_hidden_states"} or None
        return module(noisy, t, cond["encoder_hidden_states"], added_cond_kwargs=added).sample
