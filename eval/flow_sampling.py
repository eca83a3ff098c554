"""Sampling SD3 and FLUX.1 for evaluation, through their own diffusers pipelines.

The protocol is the SD one (``eval/sampling.py``) where it carries over: every prompt starts from the
same seeded latent (:func:`eval.sampling.reference_initial_latent`, 16 channels, FLUX packs it 2x2
as its pipeline does), prompts are encoded one at a time so an image never depends on its batch
neighbours, and latents are decoded singly in the VAE's dtype.  The sampler itself is the model's
official one, unchanged: ``FlowMatchEulerDiscreteScheduler`` with the model's shift (FLUX.1: dynamic,
from the image's token count; SD3: the static 3.0 in its config).

Guidance differs by family, and the number means what the model's pipeline means by it:

* FLUX.1-dev is guidance-*distilled*: ``--guidance`` (default 3.5, as in the paper's Appendix B and
  the model card) is fed to the transformer's guidance embedding; there is no unconditional pass and
  no negative prompt.  It is not classifier-free guidance.
* SD3/SD3.5 use classifier-free guidance in diffusers' convention,
  ``uncond + g * (cond - uncond)``, with the empty prompt's encoding as the negative (default 3.5,
  the SD3.5-large model card; that card samples in 28 steps, the paper's protocol in 50).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from sdpo.errors import UserError

DEFAULT_GUIDANCE = {"flux": 3.5, "sd3": 3.5}
GUIDANCE_KIND = {"flux": "distilled guidance embedding (no CFG)", "sd3": "classifier-free guidance, diffusers scale"}


@dataclass
class FlowComponents:
    family: str
    transformer: torch.nn.Module
    vae: torch.nn.Module
    scheduler: object
    tokenizers: list
    text_encoders: list
    max_sequence_length: int = 512
    extra: dict = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return self.transformer.device

    @property
    def dtype(self) -> torch.dtype:
        return self.text_encoders[0].dtype

    @property
    def unet(self) -> torch.nn.Module:  # the denoiser, under the name the SD code uses
        return self.transformer

    def pipeline(self):
        from diffusers import FluxPipeline, StableDiffusion3Pipeline

        te, tok = self.text_encoders, self.tokenizers
        common = dict(scheduler=self.scheduler, vae=self.vae, transformer=self.transformer, text_encoder=te[0],
                      tokenizer=tok[0], text_encoder_2=te[1], tokenizer_2=tok[1])  # fmt: skip
        if self.family == "flux":
            pipe = FluxPipeline(**common)
        else:
            pipe = StableDiffusion3Pipeline(**common, text_encoder_3=te[2], tokenizer_3=tok[2])
        pipe.set_progress_bar_config(disable=True)
        return pipe


def load_flow_components(family: str, pretrain_path: str, weights_path: str | None, device, dtype, vae_path=None,
                         vae_dtype=torch.float32, max_sequence_length: int | None = None) -> FlowComponents:  # fmt: skip
    """The base model's parts from ``pretrain_path``, the transformer's weights from ``weights_path``."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler
    from transformers import AutoTokenizer, CLIPTextModel, CLIPTextModelWithProjection, T5EncoderModel

    from sdpo.families import get_family
    from sdpo.families.base import from_pretrained
    from sdpo.families.flux import max_sequence_length as flux_msl
    from sdpo.families.sd3 import max_sequence_length as sd3_msl
    from sdpo.weights import load_denoiser_weights

    fam = get_family(family)
    transformer = from_pretrained(fam.denoiser_class(), pretrain_path, subfolder="transformer", torch_dtype=dtype)
    if weights_path is not None:
        load_denoiser_weights(transformer, weights_path)
    scheduler = from_pretrained(FlowMatchEulerDiscreteScheduler, pretrain_path, subfolder="scheduler")
    if family == "flux":
        specs = [("text_encoder", CLIPTextModel), ("text_encoder_2", T5EncoderModel)]
    else:
        specs = [("text_encoder", CLIPTextModelWithProjection), ("text_encoder_2", CLIPTextModelWithProjection),
                 ("text_encoder_3", T5EncoderModel)]  # fmt: skip
    encoders = [from_pretrained(c, pretrain_path, subfolder=n, torch_dtype=dtype) for n, c in specs]
    tokenizers = [from_pretrained(AutoTokenizer, pretrain_path, subfolder=n.replace("text_encoder", "tokenizer"))
                  for n, _ in specs]  # fmt: skip
    vae = from_pretrained(AutoencoderKL, vae_path or pretrain_path, subfolder=None if vae_path else "vae",
                          torch_dtype=vae_dtype)  # fmt: skip
    for m in (transformer, vae, *encoders):
        m.to(device).eval().requires_grad_(False)
    msl = (flux_msl if family == "flux" else sd3_msl)(max_sequence_length, tokenizers[-1])
    return FlowComponents(family, transformer, vae, scheduler, tokenizers, encoders, msl)


@torch.no_grad()
def _encode(comp: FlowComponents, pipe, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
    if comp.family == "flux":
        e, p, _ = pipe.encode_prompt(prompt=[prompt], prompt_2=[prompt], device=comp.device,
                                     max_sequence_length=comp.max_sequence_length)  # fmt: skip
    else:
        e, _, p, _ = pipe.encode_prompt(prompt=[prompt], prompt_2=[prompt], prompt_3=[prompt], device=comp.device,
                                        do_classifier_free_guidance=False,
                                        max_sequence_length=comp.max_sequence_length)  # fmt: skip
    return e, p


@torch.no_grad()
def sample_flow_latents(comp: FlowComponents, prompts: list[str], height: int, width: int, steps: int,
                        guidance: float, seeds: list[int]) -> torch.Tensor:  # fmt: skip
    """Denoised ``(N, 16, h, w)`` latents; prompt ``i`` starts from the reference latent of ``seeds[i]``."""
    from diffusers import FluxPipeline

    from eval.sampling import reference_initial_latent

    if height % 16 or width % 16:
        raise UserError(f"height and width must be multiples of 16, got {height}x{width}")
    pipe = comp.pipeline()
    enc = [_encode(comp, pipe, p) for p in prompts]
    embeds, pooled = torch.cat([e for e, _ in enc]), torch.cat([p for _, p in enc])
    ch = comp.transformer.config.in_channels // (4 if comp.family == "flux" else 1)
    lat = torch.cat([reference_initial_latent(height, width, s, comp.device, comp.dtype, ch) for s in seeds])
    n, _, h, w = lat.shape
    kw = dict(prompt_embeds=embeds, pooled_prompt_embeds=pooled, num_inference_steps=steps, guidance_scale=guidance,
              height=height, width=width, output_type="latent", max_sequence_length=comp.max_sequence_length)  # fmt: skip
    if comp.family == "flux":
        out = pipe(latents=FluxPipeline._pack_latents(lat, n, ch, h, w), **kw).images
        return FluxPipeline._unpack_latents(out, height, width, pipe.vae_scale_factor)
    neg_e, neg_p = _encode(comp, pipe, "")  # empty-string negative prompt, as the SD protocol
    kw.update(negative_prompt_embeds=neg_e.expand(n, -1, -1), negative_pooled_prompt_embeds=neg_p.expand(n, -1))
    return pipe(latents=lat, **kw).images
