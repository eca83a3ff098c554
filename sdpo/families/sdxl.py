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
from sdpo.families.recipe import LaunchDefaults
from sdpo.families.sd15 import SD15
from sdpo.sampling.images import Components

log = logging.getLogger(__name__)


class SDXL(SD15):
    name: ClassVar[str] = "sdxl"
    display_name: ClassVar[str] = "SDXL"
    # REFERENCE.md section 4: as SD1.5 with lr 1e-9 and the fp16-fix VAE.
    launch: ClassVar[LaunchDefaults | None] = LaunchDefaults(lr=1e-9, vae="madebyollin/sdxl-vae-fp16-fix")
    paper_methods: ClassVar[dict[str, tuple[float, float, tuple[str, ...]]]] = {
        "diffusion-dpo": (5000.0, 0.6, ()),
        "dspo": (5000.0, 0.6, ()),
        "dmpo": (6000.0, 0.6, ("--dmpo_alpha", "0.01")),
    }
    pipeline_classes: ClassVar[tuple[str, ...]] = ("StableDiffusionXLPipeline",)
    alias_flag: ClassVar[str | None] = "--sdxl"
    default_model: ClassVar[str] = "stabilityai/stable-diffusion-xl-base-1.0"
    default_sampling_vae: ClassVar[str | None] = "madebyollin/sdxl-vae-fp16-fix"  # the paper's evaluation VAE
    default_resolution: ClassVar[int] = 1024
    heavy: ClassVar[bool] = True
    prefers_adafactor: ClassVar[bool] = True
    joint_augment: ClassVar[bool] = True
    dspo_form: ClassVar[str | None] = "thresholded"
    weights_label: ClassVar[str] = "an SDXL UNet"
    weights_markers: ClassVar[tuple[str, ...]] = ("down_blocks.", "add_embedding.")
    weights_excludes: ClassVar[tuple[str, ...]] = ()

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

    # ------------------------------------------------------------------ evaluation sampling

    @classmethod
    def text_encoder_folders(cls) -> list[str]:
        return ["text_encoder", "text_encoder_2"]

    @classmethod
    def text_encoder_types(cls) -> list:
        from transformers import CLIPTextModel, CLIPTextModelWithProjection

        return [CLIPTextModel, CLIPTextModelWithProjection]

    @classmethod
    def encode_sampling_prompt(cls, comp: Components, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Both encoders' penultimate hidden states concatenated; the pooled embedding from the second."""
        states, pooled = [], None
        for tok, enc in zip(comp.tokenizers, comp.text_encoders):
            ids = tok([prompt], padding="max_length", max_length=tok.model_max_length, truncation=True,
                      return_tensors="pt")  # fmt: skip
            out = enc(ids.input_ids.to(comp.device), output_hidden_states=True)
            pooled = out[0]
            states.append(out.hidden_states[-2])
        return torch.cat(states, dim=-1).to(comp.text_encoders[-1].dtype), pooled

    @classmethod
    def sampling_added_cond(cls, comp: Components, n: int, height: int, width: int, pooled, neg_pooled, dtype):
        """The reference's micro-conditioning for both halves: original size, no crop, target size; the negative
        pooled embedding is the empty prompt's (not zeros)."""
        ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=dtype, device=comp.device).repeat(2 * n, 1)
        return {"text_embeds": torch.cat([pooled, neg_pooled.expand(n, -1)]), "time_ids": ids}

    @classmethod
    def sampling_pipeline(cls, comp: Components):
        from diffusers import StableDiffusionXLPipeline

        te, tok = comp.text_encoders, comp.tokenizers
        return StableDiffusionXLPipeline(vae=comp.vae, text_encoder=te[0], text_encoder_2=te[1], tokenizer=tok[0],
                                         tokenizer_2=tok[1], unet=comp.unet, scheduler=comp.scheduler,
                                         add_watermarker=False)  # fmt: skip


def sdxl_time_ids(resolution: int, n: int, device, dtype: torch.dtype) -> torch.Tensor:
    """``[orig_h, orig_w, crop_top, crop_left, target_h, target_w] = [res, res, 0, 0, res, res]``."""
    ids = torch.tensor([resolution, resolution, 0, 0, resolution, resolution], dtype=dtype, device=device)
    return ids.repeat(n, 1)
