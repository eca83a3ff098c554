"""Sampling SD3 and FLUX.1 for evaluation, through their own diffusers pipelines.

The protocol is the SD one (``eval/sampling.py``) where it carries over: every prompt starts from the
same seeded latent (:func:`eval.sampling.reference_initial_latent`, 16 channels, FLUX packs it 2x2
as its pipeline does), prompts are encoded one at a time so an image never depends on its batch
neighbours, on a CPU each prompt is also denoised in a transformer call of its own (a CPU matmul
rounds a row by the call's row count, see ``eval/sampling.py``), and latents are decoded singly in
the VAE's dtype.  The sampler itself is the model's official one, unchanged:
``FlowMatchEulerDiscreteScheduler`` with the model's shift (FLUX.1: dynamic, from the image's token
count; SD3: the static 3.0 in its config).

Guidance differs by family, and the number means what the model's pipeline means by it:

* FLUX.1-dev is guidance-*distilled*: ``--guidance`` (default 3.5, as in the paper's Appendix B and
  the model card) is fed to the transformer's guidance embedding; there is no unconditional pass and
  no negative prompt.  It is not classifier-free guidance.
* SD3/SD3.5 use classifier-free guidance in diffusers' convention,
  ``uncond + g * (cond - uncond)``, with the empty prompt's encoding as the negative (default 3.5,
  the SD3.5-large model card; that card samples in 28 steps, the paper's protocol in 50).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch

from sdpo.errors import UserError


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
        from sdpo.families import get_family

        pipe = get_family(self.family).build_pipeline(self.scheduler, self.tokenizers, self.text_encoders,
                                                       self.transformer, self.vae)  # fmt: skip
        pipe.set_progress_bar_config(disable=True)
        return pipe


def load_flow_components(family: str, pretrain_path: str, weights_path: str | None, device, dtype, vae_path=None,
                         vae_dtype=torch.float32, max_sequence_length: int | None = None) -> FlowComponents:  # fmt: skip
    """The base model's parts from ``pretrain_path``, the transformer's weights from ``weights_path``."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler

    from sdpo.families import get_family
    from sdpo.families.base import from_pretrained
    from sdpo.weights import load_denoiser_weights

    fam = get_family(family)
    transformer = from_pretrained(fam.denoiser_class(), pretrain_path, subfolder="transformer", torch_dtype=dtype)
    if weights_path is not None:
        load_denoiser_weights(transformer, weights_path)
    scheduler = from_pretrained(FlowMatchEulerDiscreteScheduler, pretrain_path, subfolder="scheduler")
    tokenizers, encoders = fam.load_text_parts(pretrain_path, torch_dtype=dtype)
    vae = from_pretrained(AutoencoderKL, vae_path or pretrain_path, subfolder=None if vae_path else "vae",
                          torch_dtype=vae_dtype)  # fmt: skip
    for m in (transformer, vae, *encoders):
        m.to(device).eval().requires_grad_(False)
    msl = fam.max_sequence_length(max_sequence_length, tokenizers[-1])
    return FlowComponents(family, transformer, vae, scheduler, tokenizers, encoders, msl)


@torch.no_grad()
def sample_flow_latents(comp: FlowComponents, prompts: list[str], height: int, width: int, steps: int,
                        guidance: float, seeds: list[int]) -> torch.Tensor:  # fmt: skip
    """Denoised ``(N, 16, h, w)`` latents; prompt ``i`` starts from the reference latent of ``seeds[i]``."""
    from eval.sampling import prompts_per_call, reference_initial_latent
    from sdpo.families import get_family

    if height % 16 or width % 16:
        raise UserError(f"height and width must be multiples of 16, got {height}x{width}")
    fam, pipe = get_family(comp.family), comp.pipeline()

    def encode(prompt: str) -> tuple[torch.Tensor, torch.Tensor]:  # one prompt at a time: batch-independent
        return fam.prompt_embeds(pipe, [prompt], comp.device, comp.max_sequence_length)

    enc = [encode(p) for p in prompts]
    embeds, pooled = torch.cat([e for e, _ in enc]), torch.cat([p for _, p in enc])
    ch = comp.vae.config.latent_channels
    lat = torch.cat([reference_initial_latent(height, width, s, comp.device, comp.dtype, ch) for s in seeds])
    negative = functools.cache(lambda: encode(""))  # SD3's negative, encoded once if at all
    step = prompts_per_call(comp.device, len(prompts))  # CPU: one prompt per transformer call
    return torch.cat([
        fam.sample(pipe, lat[i : i + step], negative, prompt_embeds=embeds[i : i + step],
                   pooled_prompt_embeds=pooled[i : i + step], num_inference_steps=steps, guidance_scale=guidance,
                   height=height, width=width, output_type="latent", max_sequence_length=comp.max_sequence_length)
        for i in range(0, len(prompts), step)
    ])  # fmt: skip
