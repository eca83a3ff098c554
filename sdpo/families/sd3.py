"""Stable Diffusion 3 / 3.5: an MM-DiT on rectified flow (static shift 3.0 in its scheduler config).

Text as diffusers' ``StableDiffusion3Pipeline.encode_prompt`` builds it: CLIP-L and CLIP-G
penultimate states concatenated (and padded to T5's width), joined on the sequence axis with the
T5-XXL states; pooled = both CLIP pooled embeddings concatenated.  The transformer takes
``timestep = sigma * 1000``.  ``--max_sequence_length`` defaults to the pipeline's 256 T5 tokens, so
training sees the text the way sampling does.
"""

from __future__ import annotations

from typing import ClassVar

from sdpo.families.base import Conditioning
from sdpo.families.flow import FlowFamily


class SD3(FlowFamily):
    name: ClassVar[str] = "sd3"
    display_name: ClassVar[str] = "SD3"
    pipeline_classes: ClassVar[tuple[str, ...]] = ("StableDiffusion3Pipeline",)
    default_model: ClassVar[str] = "stabilityai/stable-diffusion-3.5-medium"  # the SD3 recipe's and test_sd3.sh's
    weights_label: ClassVar[str] = "an SD3 transformer"
    weights_markers: ClassVar[tuple[str, ...]] = ("transformer_blocks.", "pos_embed.")
    shard_blocks: ClassVar[tuple[str, ...]] = ("JointTransformerBlock",)
    text_encoder_classes: ClassVar[tuple[str, ...]] = (
        "CLIPTextModelWithProjection", "CLIPTextModelWithProjection", "T5EncoderModel")  # fmt: skip
    default_max_sequence_length: ClassVar[int] = 256
    sampling_guidance: ClassVar[float] = 3.5  # the SD3.5-large model card
    guidance_kind: ClassVar[str | None] = "classifier-free guidance, diffusers scale"

    @classmethod
    def denoiser_class(cls):
        from diffusers import SD3Transformer2DModel

        return SD3Transformer2DModel

    @classmethod
    def build_pipeline(cls, scheduler, tokenizers, text_encoders, transformer=None, vae=None):
        from diffusers import StableDiffusion3Pipeline

        te, tok = text_encoders, tokenizers
        return StableDiffusion3Pipeline(
            transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=te[0], tokenizer=tok[0],
            text_encoder_2=te[1], tokenizer_2=tok[1], text_encoder_3=te[2], tokenizer_3=tok[2],
        )  # fmt: skip

    @classmethod
    def prompt_embeds(cls, pipe, prompts, device, max_sequence_length):
        embeds, _, pooled, _ = pipe.encode_prompt(
            prompt=prompts, prompt_2=prompts, prompt_3=prompts, device=device,
            do_classifier_free_guidance=False, max_sequence_length=max_sequence_length,
        )  # fmt: skip
        return embeds, pooled

    @classmethod
    def sample(cls, pipe, latents, negative, **kw):
        """Classifier-free guidance with the empty prompt's encoding as the negative."""
        neg, n = negative(), latents.shape[0]
        kw.update(negative_prompt_embeds=neg["prompt_embeds"].expand(n, -1, -1),
                  negative_pooled_prompt_embeds=neg["pooled_prompt_embeds"].expand(n, -1))  # fmt: skip
        return pipe(latents=latents, **kw).images

    def predict(self, module, noisy, t, cond: Conditioning):
        return module(hidden_states=noisy, timestep=t, encoder_hidden_states=cond["encoder_hidden_states"],
                      pooled_projections=cond["pooled_projections"], return_dict=False)[0]  # fmt: skip
