"""Qwen-Image: a 20B MM-DiT on rectified flow, conditioned on Qwen2.5-VL-7B's last hidden states.

Everything below is what diffusers 0.42's ``QwenImagePipeline`` and its LoRA trainer
(``examples/dreambooth/train_dreambooth_lora_qwen_image.py``) do; nothing is re-derived:

* Text (``QwenImagePipeline._get_qwen_prompt_embeds``): each prompt goes into the pipeline's chat template (a
  system turn asking to describe colour, shape, size, texture, quantity, text and spatial relations), Qwen2.5-VL's
  last hidden state is taken, and its first 34 tokens (``prompt_template_encode_start_idx``: the system turn) are
  dropped; the pipeline pads a batch to its longest prompt with an attention mask.  Here every prompt is padded to
  ``--max_sequence_length`` (default 512, the pipeline's ``__call__`` default; the pipeline refuses more than
  1024) with the same mask, so a caption's encoding never depends on its batch and the latent/text cache can
  stack it; masked tokens are never attended and text RoPE positions count from the first token, so the image
  stream sees exactly what the pipeline's own padding gives.
* Latents: ``AutoencoderKLQwenImage`` is a video VAE (input ``(N, 3, 1, H, W)``); a sample is its posterior with
  the frame axis dropped, ``(16, H/8, W/8)``, normalised per channel with the VAE config's ``latents_mean`` /
  ``latents_std``: ``(z - mean) / std``, as the trainer does (the pipeline's decode inverts it).
* The transformer takes latents packed into 2x2 patches (``QwenImagePipeline._pack_latents``, 64 channels),
  ``img_shapes = [(1, h/2, w/2)]`` for its RoPE, the text mask as ``encoder_hidden_states_mask`` and
  ``timestep = sigma`` (``t / 1000``); the prediction is unpacked (``_unpack_latents``), so losses see ``(16, h, w)``.
  Qwen-Image has no guidance embedding (``guidance_embeds`` is false).
* Time: ``sdpo.families.flow``'s draw from the model's own scheduler config.  Qwen-Image's
  (``base_shift`` 0.5, ``max_shift`` 0.9, ``max_image_seq_len`` 8192, ``shift_terminal`` 0.02, exponential
  time shift) shifts dynamically at sampling time only, so the training sigmas are unshifted, exactly as the
  diffusers trainer indexes them (``noise_scheduler.timesteps[(u * 1000).long()]``).
* Sampling: the pipeline's true classifier-free guidance, ``true_cfg_scale`` 4.0 (its default and the model card's,
  50 steps), which rescales the guided prediction to the conditional one's norm; the negative is the empty prompt.
"""

from __future__ import annotations

from dataclasses import replace
from typing import ClassVar

import torch
import torch.nn.functional as F

from sdpo.families.base import Conditioning
from sdpo.families.flow import FlowFamily
from sdpo.families.recipe import LaunchDefaults


class QwenImage(FlowFamily):
    name: ClassVar[str] = "qwenimage"
    display_name: ClassVar[str] = "Qwen-Image"
    pipeline_classes: ClassVar[tuple[str, ...]] = ("QwenImagePipeline",)
    default_model: ClassVar[str] = "Qwen/Qwen-Image"
    weights_label: ClassVar[str] = "a Qwen-Image transformer"
    weights_markers: ClassVar[tuple[str, ...]] = ("img_in.", "txt_norm.")
    shard_blocks: ClassVar[tuple[str, ...]] = ("QwenImageTransformerBlock",)
    text_encoder_classes: ClassVar[tuple[str, ...]] = ("Qwen2_5_VLForConditionalGeneration",)
    default_max_sequence_length: ClassVar[int] = 512  # QwenImagePipeline.__call__'s default
    sampling_guidance: ClassVar[float] = 4.0  # the pipeline's true_cfg_scale default and the model card's
    guidance_kind: ClassVar[str | None] = (
        "true classifier-free guidance rescaled to the conditional norm (true_cfg_scale)"
    )
    # Both streams' attention projections (the MM-DiT preset: diffusers' Qwen-Image LoRA trainer takes the image
    # stream's to_q/k/v/out.0 by default); the feed-forward preset adds both streams' MLPs.
    lora_targets: ClassVar[dict[str, tuple[str, ...]]] = {
        "attn": FlowFamily.lora_targets["attn"],
        "ff": ("img_mlp.net.0.proj", "img_mlp.net.2", "txt_mlp.net.0.proj", "txt_mlp.net.2"),
    }
    # The paper's FLUX.1 recipe (Appendix B) carried over (our choice: no published preference-tuning recipe), with
    # FSDP over every GPU: 20.4B parameters with AdamW fit 80 GB GPUs sharded 16 ways (51 GB), not 8 (74 GB, over the
    # 90% the plan allows) nor HSDP 2x8 (bench/memory_plan.py; with a latent/text cache HSDP 2x8 fits too).
    launch: ClassVar[LaunchDefaults | None] = replace(FlowFamily.launch, sharding="fsdp")

    @classmethod
    def denoiser_class(cls):
        from diffusers import QwenImageTransformer2DModel

        return QwenImageTransformer2DModel

    @classmethod
    def vae_class(cls):
        from diffusers import AutoencoderKLQwenImage

        return AutoencoderKLQwenImage

    # ------------------------------------------------------------------ latents

    def latent_shape(self, pixel_shape):
        vae = self.vae_config
        f = 2 ** len(vae.temperal_downsample)
        return (vae.z_dim, pixel_shape[-2] // f, pixel_shape[-1] // f)

    @torch.no_grad()
    def encode_posterior(self, pixels):
        """The video VAE on one-frame clips; the frame axis dropped from its posterior."""
        dist = self.vae.encode(pixels.to(self.vae.dtype).unsqueeze(2)).latent_dist
        return dist.mean.squeeze(2).float(), dist.std.squeeze(2).float()

    @staticmethod
    def _stats(config, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        view = (1, config.z_dim, *([1] * (like.dim() - 2)))
        mean = torch.tensor(config.latents_mean, dtype=like.dtype, device=like.device).view(view)
        return mean, torch.tensor(config.latents_std, dtype=like.dtype, device=like.device).view(view)

    def normalise_latents(self, latents):
        mean, std = self._stats(self.vae_config, latents)
        return (latents - mean) / std

    @classmethod
    def decode_latent(cls, vae, latent):
        """``QwenImagePipeline``'s decode: undo the per-channel normalisation, decode one frame, drop the axis."""
        mean, std = cls._stats(vae.config, latent)
        return vae.decode((latent * std + mean).to(vae.dtype).unsqueeze(2), return_dict=False)[0][:, :, 0]

    @classmethod
    def sampling_latent_channels(cls, vae) -> int:
        return vae.config.z_dim

    # ------------------------------------------------------------------ text and the denoiser

    @classmethod
    def build_pipeline(cls, scheduler, tokenizers, text_encoders, transformer=None, vae=None):
        from diffusers import QwenImagePipeline

        return QwenImagePipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoders[0], tokenizer=tokenizers[0],
                                 transformer=transformer)  # fmt: skip

    @classmethod
    def prompt_embeds(cls, pipe, prompts, device, max_sequence_length):
        """``(embeddings, mask)`` as ``QwenImagePipeline.encode_prompt`` makes them (padded to the batch's longest
        prompt; the mask is all ones when nothing is padded)."""
        embeds, mask = pipe.encode_prompt(prompt=prompts, device=device, max_sequence_length=max_sequence_length)
        if mask is None:
            mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
        return embeds, mask

    @torch.no_grad()
    def encode_prompt(self, captions: list[str]) -> Conditioning:
        """The pipeline's embeddings and mask, padded to ``--max_sequence_length`` (see the module docstring)."""
        length = self.sequence_length()
        embeds, mask = self.prompt_embeds(self.text_pipeline(), captions, self.device, length)
        pad = length - embeds.shape[1]
        return {
            "encoder_hidden_states": F.pad(embeds, (0, 0, 0, pad)),
            "encoder_hidden_states_mask": F.pad(mask, (0, pad)),
        }

    def predict(self, module, noisy, t, cond: Conditioning):
        from diffusers import QwenImagePipeline

        n, c, h, w = noisy.shape
        out = module(
            hidden_states=QwenImagePipeline._pack_latents(noisy, n, c, h, w),
            timestep=t.to(noisy.dtype) / 1000.0,
            encoder_hidden_states=cond["encoder_hidden_states"],
            encoder_hidden_states_mask=cond["encoder_hidden_states_mask"],
            img_shapes=[[(1, h // 2, w // 2)]] * n,
            return_dict=False,
        )[0]
        return unpack(out, h, w)

    # ------------------------------------------------------------------ evaluation sampling

    @classmethod
    def sampling_prompt(cls, comp, prompt, pipe):
        embeds, mask = cls.prompt_embeds(pipe, [prompt], comp.device, comp.max_sequence_length)
        return {"prompt_embeds": embeds, "prompt_embeds_mask": mask}

    @classmethod
    def join_prompts(cls, parts):
        """Prompts of one call padded to the longest with the mask, as the pipeline pads a batch."""
        longest = max(p["prompt_embeds"].shape[1] for p in parts)
        pad = [longest - p["prompt_embeds"].shape[1] for p in parts]
        return {"prompt_embeds": torch.cat([F.pad(p["prompt_embeds"], (0, 0, 0, k)) for p, k in zip(parts, pad)]),
                "prompt_embeds_mask": torch.cat([F.pad(p["prompt_embeds_mask"], (0, k)) for p, k in zip(parts, pad)])}  # fmt: skip

    @classmethod
    def sample(cls, pipe, latents, negative, guidance_scale, **kw):
        """True CFG at ``true_cfg_scale = guidance_scale`` with the empty prompt as the negative (none at <= 1); the
        protocol's ``(N, 16, h, w)`` initial latents go in packed, as ``prepare_latents`` packs its own."""
        from diffusers import QwenImagePipeline

        n, c, h, w = latents.shape
        if guidance_scale > 1:
            neg = negative()
            kw.update(negative_prompt_embeds=neg["prompt_embeds"].expand(n, -1, -1),
                      negative_prompt_embeds_mask=neg["prompt_embeds_mask"].expand(n, -1))  # fmt: skip
        packed = QwenImagePipeline._pack_latents(latents, n, c, h, w)
        return unpack(pipe(latents=packed, true_cfg_scale=guidance_scale, **kw).images, h, w)


def unpack(packed: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``QwenImagePipeline._unpack_latents`` for latent height and width, the frame axis dropped: ``(N, 16, h, w)``."""
    from diffusers import QwenImagePipeline

    return QwenImagePipeline._unpack_latents(packed, 8 * h, 8 * w, 8)[:, :, 0]
