"""Sampling video families for evaluation, through their own diffusers pipelines (loaded by the family:
``VideoFamily.load_sampling_components``).

The image protocol carries over (``sdpo.sampling.images``): every prompt starts from the same initial
latent, one draw for a batch of one from a generator seeded with ``--seed`` on the device, in the
text encoder's dtype; latents are decoded one video at a time in the VAE's dtype (fp32 by default).
Each prompt is also *sampled* on its own (one pipeline call per prompt, whatever ``--batch_size``):
Wan's patch-embedding Conv3d and timestep Linear give float32 results that differ between a batch of
one and of two on a CPU even in MKL's strict mode (6e-7 after the patch embedding, measured), enough
to change 8-bit frames, and GPU kernels make no promise either.  A single video fills an accelerator
(17,550 tokens for CogVideoX at 49 x 480 x 720), so batching prompts would buy little.  The sampler is the model's
own, unchanged: the folder's scheduler (CogVideoX: its DDIM scheduler, Wan2.1: UniPC with the flow
shift in its config), ``num_inference_steps`` steps, and classifier-free guidance in diffusers'
convention ``uncond + g (cond - uncond)`` with an empty negative prompt unless ``--negative_prompt``
is given (default guidance 6.0 for CogVideoX and 5.0 for Wan, the pipelines' documented values;
Wan's own repository samples with a long default negative prompt, pass it to match).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class VideoComponents:
    family: type  # the ModelFamily class (sdpo.families.video.VideoFamily)
    pipe: object  # CogVideoXPipeline or WanPipeline, progress bar off
    max_sequence_length: int

    @property
    def device(self) -> torch.device:
        return self.pipe.transformer.device

    @property
    def dtype(self) -> torch.dtype:
        return self.pipe.text_encoder.dtype

    @property
    def unet(self) -> torch.nn.Module:  # the denoiser, under the name the SD code uses
        return self.pipe.transformer


def initial_latent(comp: VideoComponents, frames: int, height: int, width: int, seed: int) -> torch.Tensor:
    """The seeded initial noise of one video in the pipeline's layout (CogVideoX ``(1, F', C, h, w)``,
    Wan ``(1, C, F', h, w)``); both schedulers start at ``init_noise_sigma`` 1."""
    pipe = comp.pipe
    c, s = pipe.transformer.config.in_channels, pipe.vae_scale_factor_spatial
    f, h, w = (frames - 1) // pipe.vae_scale_factor_temporal + 1, height // s, width // s
    shape = comp.family.sampling_latent_shape(c, f, h, w)
    gen = torch.Generator(device=comp.device).manual_seed(seed)
    return torch.randn(shape, generator=gen, device=comp.device, dtype=comp.dtype)


@torch.no_grad()
def _encode(comp: VideoComponents, prompt: str) -> torch.Tensor:
    embeds, _ = comp.pipe.encode_prompt(prompt=[prompt], do_classifier_free_guidance=False, device=comp.device,
                                        max_sequence_length=comp.max_sequence_length)  # fmt: skip
    return embeds


@torch.no_grad()
def sample_video_latents(comp: VideoComponents, prompts: list[str], height: int, width: int, frames: int, steps: int,
                         guidance: float, seed: int, negative_prompt: str = "") -> torch.Tensor:  # fmt: skip
    """Denoised latents, one per prompt, every prompt starting from the same seeded latent."""
    n = len(prompts)
    embeds = torch.cat([_encode(comp, p) for p in prompts])
    neg = _encode(comp, negative_prompt).expand(n, -1, -1)
    lat = initial_latent(comp, frames, height, width, seed).expand(n, *([-1] * 4)).contiguous()
    return comp.pipe(prompt_embeds=embeds, negative_prompt_embeds=neg, latents=lat, num_frames=frames,
                     height=height, width=width, num_inference_steps=steps, guidance_scale=guidance,
                     max_sequence_length=comp.max_sequence_length, output_type="latent").frames  # fmt: skip


@torch.no_grad()
def sample_video_group(comp: VideoComponents, prompt: str, seeds: list[int], height: int, width: int, frames: int,
                       steps: int, guidance: float, negative_prompt: str = "") -> torch.Tensor:  # fmt: skip
    """Denoised latents of several videos of one prompt, one per seed, in one pipeline call: the prompt and the
    negative are encoded once.  A video depends on its prompt, its seed and the group's size (the call's rows),
    never on other prompts: the online driver (``sdpo.online``) keeps a prompt's group the same on any process
    count and across a resume."""
    n = len(seeds)
    embeds = _encode(comp, prompt).expand(n, -1, -1)
    neg = _encode(comp, negative_prompt).expand(n, -1, -1)
    lat = torch.cat([initial_latent(comp, frames, height, width, s) for s in seeds])
    return comp.pipe(prompt_embeds=embeds, negative_prompt_embeds=neg, latents=lat, num_frames=frames,
                     height=height, width=width, num_inference_steps=steps, guidance_scale=guidance,
                     max_sequence_length=comp.max_sequence_length, output_type="latent").frames  # fmt: skip


@torch.no_grad()
def decode_video(comp: VideoComponents, latent: torch.Tensor) -> np.ndarray:
    """One video's latents (with its batch axis of one) -> ``uint8 (F, H, W, 3)``."""
    pipe = comp.pipe
    video = comp.family.decode_sampled(pipe, latent.to(pipe.vae.dtype))
    frames = pipe.video_processor.postprocess_video(video.float(), output_type="np")[0]
    return (frames * 255).round().clip(0, 255).astype(np.uint8)


def generate_videos(comp: VideoComponents, prompts: list[str], height: int, width: int, frames: int, steps: int,
                    guidance: float, seed: int, negative_prompt: str = "") -> list[np.ndarray]:  # fmt: skip
    """One ``uint8 (F, H, W, 3)`` video per prompt; a video does not depend on the other prompts in the batch
    (each is sampled and decoded on its own: see the module docstring)."""
    out = []
    for p in prompts:
        latent = sample_video_latents(comp, [p], height, width, frames, steps, guidance, seed, negative_prompt)
        out.append(decode_video(comp, latent))
    return out
