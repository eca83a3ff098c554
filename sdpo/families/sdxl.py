"""SDXL: the SD1.5 noise process with two CLIP text encoders and size micro-conditioning.

Prompt embeddings concatenate the penultimate hidden states of both encoders; the pooled embedding
comes from the second (projection) encoder; ``add_time_ids = [res, res, 0, 0, res, res]``.  As in
the reference SDXL script: gradient checkpointing and Adafactor on by default, one crop and flip for
winner and loser, and the fp16-fix VAE (without it, fp16 keeps the VAE in fp32: it overflows).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import ClassVar

import torch

from sdpo.errors import UserError
from sdpo.families.base import Conditioning, from_pretrained
from sdpo.families.sd15 import SD15

log = logging.getLogger(__name__)


class SDXL(SD15):
    name: ClassVar[str] = "sdxl"
    pipeline_classes: ClassVar[tuple[str, ...]] = ("StableDiffusionXLPipeline",)
    default_resolution: ClassVar[int] = 1024
    heavy: ClassVar[bool] = True
    joint_augment: ClassVar[bool] = True
    dspo_form: ClassVar[str | None] = "sdxl"

    @classmethod
    def check_folder(cls, root: Path, flag: str) -> None:
        if (root / "unet").is_dir() and not (root / "text_encoder_2").is_dir():
            raise UserError(f"{root} is an SD1.5-style folder (no text_encoder_2/) but {flag} was given; drop {flag}")

    def load_text_encoders(self) -> None:
        from transformers import AutoTokenizer, CLIPTextModel, CLIPTextModelWithProjection

        path, rev = self.cfg.pretrained_model_name_or_path, self.cfg.revision
        self.tokenizers = [from_pretrained(AutoTokenizer, path, subfolder=s, revision=rev)
                           for s in ("tokenizer", "tokenizer_2")]  # fmt: skip
        self.text_encoders = [
            from_pretrained(CLIPTextModel, path, subfolder="text_encoder", revision=rev),
            from_pretrained(CLIPTextModelWithProjection, path, subfolder="text_encoder_2", revision=rev),
        ]

    def after_load(self) -> None:
        fp16_original_vae = self.weight_dtype == torch.float16 and not self.cfg.pretrained_vae_model_name_or_path
        if self.vae is not None and fp16_original_vae:  # no VAE loaded with precomputed latents
            # SDXL's original VAE overflows to NaN in fp16; the reference runs use the fp16-fix VAE.
            log.warning("SDXL in fp16 without --pretrained_vae_model_name_or_path: keeping the VAE in fp32")
            self.vae.to(dtype=torch.float32)

    @torch.no_grad()
    def encode_prompt(self, captions: list[str]) -> Conditioning:
        states, pooled = [], None
        for tok, enc in zip(self.tokenizers, self.text_encoders):
            ids = tok(captions, padding="max_length", max_length=tok.model_max_length, truncation=True,
                      return_tensors="pt")  # fmt: skip
            out = enc(ids.input_ids.to(self.device), output_hidden_states=True)
            states.append(out.hidden_states[-2])
            pooled = out[0]  # text_embeds of the projection model (the last encoder wins)
        return {"encoder_hidden_states": torch.cat(states, dim=-1), "text_embeds": pooled}

    def extra_conditioning(self, n: int, dtype: torch.dtype) -> Conditioning:
        return {"time_ids": sdxl_time_ids(self.cfg.resolution, n, self.device, dtype)}


def sdxl_time_ids(resolution: int, n: int, device, dtype: torch.dtype) -> torch.Tensor:
    """``[orig_h, orig_w, crop_top, crop_left, target_h, target_w] = [res, res, 0, 0, res, res]``."""
    ids = torch.tensor([resolution, resolution, 0, 0, resolution, resolution], dtype=dtype, device=device)
    return ids.repeat(n, 1)
