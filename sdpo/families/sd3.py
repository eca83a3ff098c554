"""Stable Diffusion 3 / 3.5: an MM-DiT on rectified flow (static shift 3.0 in its scheduler config).

Text as diffusers' ``StableDiffusion3Pipeline.encode_prompt`` builds it: CLIP-L and CLIP-G
penultimate states concatenated (and padded to T5's width), joined on the sequence axis with the
T5-XXL states; pooled = both CLIP pooled embeddings concatenated.  The transformer takes
``timestep = sigma * 1000``.  ``--max_sequence_length`` defaults to the pipeline's 256 T5 tokens, so
training sees the text the way sampling does.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from sdpo.families.base import Conditioning, from_pretrained
from sdpo.families.flow import FlowFamily

DEFAULT_MAX_SEQUENCE_LENGTH = 256


class SD3(FlowFamily):
    name: ClassVar[str] = "sd3"
    pipeline_classes: ClassVar[tuple[str, ...]] = ("StableDiffusion3Pipeline",)
    shard_blocks: ClassVar[tuple[str, ...]] = ("JointTransformerBlock",)

    @classmethod
    def denoiser_class(cls):
        from diffusers import SD3Transformer2DModel

        return SD3Transformer2DModel

    def load_text_encoders(self) -> None:
        from transformers import AutoTokenizer, CLIPTextModelWithProjection, T5EncoderModel

        path, rev = self.cfg.pretrained_model_name_or_path, self.cfg.revision
        self.tokenizers = [from_pretrained(AutoTokenizer, path, subfolder=s, revision=rev)
                           for s in ("tokenizer", "tokenizer_2", "tokenizer_3")]  # fmt: skip
        self.text_encoders = [
            from_pretrained(CLIPTextModelWithProjection, path, subfolder="text_encoder", revision=rev),
            from_pretrained(CLIPTextModelWithProjection, path, subfolder="text_encoder_2", revision=rev),
            from_pretrained(T5EncoderModel, path, subfolder="text_encoder_3", revision=rev),
        ]

    def text_pipeline(self):
        from diffusers import StableDiffusion3Pipeline

        te, tok = self.text_encoders, self.tokenizers
        return StableDiffusion3Pipeline(
            transformer=None, scheduler=self.scheduler, vae=None, text_encoder=te[0], tokenizer=tok[0],
            text_encoder_2=te[1], tokenizer_2=tok[1], text_encoder_3=te[2], tokenizer_3=tok[2],
        )  # fmt: skip

    def sequence_length(self) -> int:
        return max_sequence_length(getattr(self.cfg, "max_sequence_length", None), self.tokenizers[2])

    @torch.no_grad()
    def encode_prompt(self, captions: list[str]) -> Conditioning:
        embeds, _, pooled, _ = self.text_pipeline().encode_prompt(
            prompt=captions, prompt_2=captions, prompt_3=captions, device=self.device,
            do_classifier_free_guidance=False, max_sequence_length=self.sequence_length(),
        )  # fmt: skip
        return {"encoder_hidden_states": embeds, "pooled_projections": pooled}

    def predict(self, module, noisy, t, cond: Conditioning):
        return module(hidden_states=noisy, timestep=t, encoder_hidden_states=cond["encoder_hidden_states"],
                      pooled_projections=cond["pooled_projections"], return_dict=False)[0]  # fmt: skip


def max_sequence_length(given: int | None, t5_tokenizer=None) -> int:
    """``--max_sequence_length``, else the pipeline's default capped at the T5 tokenizer's own maximum."""
    if given:
        return given
    cap = getattr(t5_tokenizer, "model_max_length", None) or DEFAULT_MAX_SEQUENCE_LENGTH
    return min(DEFAULT_MAX_SEQUENCE_LENGTH, cap)
