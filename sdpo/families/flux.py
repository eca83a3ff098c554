"""FLUX.1: a 12B rectified-flow transformer on 2x2-packed 16-channel latents (paper, Appendix B).

* Latents are packed into 2x2 patches (``FluxPipeline._pack_latents``) with image position ids
  (``_prepare_latent_image_ids``) and zero text ids, exactly as the pipeline does; the prediction is
  unpacked again, so losses, the safeguard and objectives see ``(N, 16, h, w)`` like any family
  (packing is a permutation: every mean over elements is unchanged).
* Text: CLIP-L pooled embedding + T5-XXL sequence via ``FluxPipeline.encode_prompt``
  (``--max_sequence_length``, default 512 as FLUX.1-dev's pipeline).
* The transformer takes ``timestep = sigma`` (diffusers scales by 1000 inside).
* FLUX.1-dev is guidance-distilled: its transformer has a guidance embedding
  (``config.guidance_embeds``).  The paper does not say what value training feeds it;
  ``--flux_guidance`` (default 1.0, as several public FLUX trainers use; diffusers' DreamBooth FLUX
  script uses 3.5) is passed for every row.  Models without the embedding (schnell) get none.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from sdpo.errors import UserError
from sdpo.families.base import Conditioning
from sdpo.families.flow import FlowFamily
from sdpo.families.recipe import LaunchDefaults


class Flux(FlowFamily):
    name: ClassVar[str] = "flux"
    display_name: ClassVar[str] = "FLUX.1"
    # Appendix B, sharded as the paper's run: HSDP, FSDP inside each node, data parallel across nodes.
    launch: ClassVar[LaunchDefaults | None] = LaunchDefaults(
        lr=1e-5, scale_lr=False, global_batch=512, per_gpu_batch=1, sharding="hsdp", flags=("--resolution", "1024"))  # fmt: skip
    pipeline_classes: ClassVar[tuple[str, ...]] = ("FluxPipeline",)
    default_model: ClassVar[str] = "black-forest-labs/FLUX.1-dev"
    weights_label: ClassVar[str] = "a FLUX transformer"
    weights_markers: ClassVar[tuple[str, ...]] = ("single_transformer_blocks.",)
    shard_blocks: ClassVar[tuple[str, ...]] = ("FluxTransformerBlock", "FluxSingleTransformerBlock")
    text_encoder_classes: ClassVar[tuple[str, ...]] = ("CLIPTextModel", "T5EncoderModel")
    default_max_sequence_length: ClassVar[int] = 512
    # FLUX.1-dev is guidance-distilled: the number feeds its guidance embedding (paper, Appendix B: 3.5).
    sampling_guidance: ClassVar[float] = 3.5
    forward_flags: ClassVar[tuple[str, ...]] = (*FlowFamily.forward_flags, "flux_guidance")  # the guidance input
    guidance_kind: ClassVar[str | None] = "distilled guidance embedding (no CFG)"
    classifier_free: ClassVar[bool] = False
    # FLUX's single-stream blocks add their MLP input projection to the feed-forward preset.
    lora_targets: ClassVar[dict[str, tuple[str, ...]]] = {
        **FlowFamily.lora_targets,
        "ff": (*FlowFamily.lora_targets["ff"], "proj_mlp"),
    }

    @classmethod
    def denoiser_class(cls):
        from diffusers import FluxTransformer2DModel

        return FluxTransformer2DModel

    def load_denoiser(self):
        model = super().load_denoiser()
        self.guidance_embeds = bool(getattr(model.config, "guidance_embeds", False))
        return model

    def latent_shape(self, pixel_shape):
        shape = super().latent_shape(pixel_shape)
        if shape[-1] % 2 or shape[-2] % 2:
            raise UserError(
                f"FLUX packs 2x2 latent patches: the resolution must be a multiple of 16, got {pixel_shape}"
            )
        return shape

    def rollout_shift(self, steps: int, latent_shape: tuple[int, ...], config) -> dict:
        """As ``FluxPipeline`` does: sigmas ``linspace(1, 1/steps, steps)`` shifted by ``mu`` from the packed
        sequence length (2x2 patches)."""
        import numpy as np
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        tokens = (latent_shape[-2] // 2) * (latent_shape[-1] // 2)
        mu = calculate_shift(tokens, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
                             config.get("base_shift", 0.5), config.get("max_shift", 1.15))  # fmt: skip
        return {"sigmas": np.linspace(1.0, 1 / steps, steps), "mu": mu}

    @classmethod
    def build_pipeline(cls, scheduler, tokenizers, text_encoders, transformer=None, vae=None):
        from diffusers import FluxPipeline

        te, tok = text_encoders, tokenizers
        return FluxPipeline(transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=te[0],
                            tokenizer=tok[0], text_encoder_2=te[1], tokenizer_2=tok[1])  # fmt: skip

    @classmethod
    def prompt_embeds(cls, pipe, prompts, device, max_sequence_length):
        embeds, pooled, _ = pipe.encode_prompt(prompt=prompts, prompt_2=prompts, device=device,
                                               max_sequence_length=max_sequence_length)  # fmt: skip
        return embeds, pooled

    @classmethod
    def sample(cls, pipe, latents, negative, **kw):
        """Guidance-distilled: ``guidance_scale`` feeds the guidance embedding, no negative pass; the
        latents go in packed 2x2, as the pipeline's own ``prepare_latents`` packs them."""
        from diffusers import FluxPipeline

        n, c, h, w = latents.shape
        out = pipe(latents=FluxPipeline._pack_latents(latents, n, c, h, w), **kw).images
        return unpack(out, h, w)

    def predict(self, module, noisy, t, cond: Conditioning):
        from diffusers import FluxPipeline

        n, c, h, w = noisy.shape
        hidden = cond["encoder_hidden_states"]
        guidance = None
        if self.guidance_embeds:
            guidance = torch.full((n,), float(self.cfg.flux_guidance), device=noisy.device, dtype=noisy.dtype)
        out = module(
            hidden_states=FluxPipeline._pack_latents(noisy, n, c, h, w),
            timestep=t.to(noisy.dtype) / 1000.0,
            guidance=guidance,
            pooled_projections=cond["pooled_projections"],
            encoder_hidden_states=hidden,
            txt_ids=torch.zeros(hidden.shape[1], 3, device=noisy.device, dtype=noisy.dtype),
            img_ids=FluxPipeline._prepare_latent_image_ids(n, h // 2, w // 2, noisy.device, noisy.dtype),
            return_dict=False,
        )[0]
        return unpack(out, h, w)


def unpack(packed: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``FluxPipeline._unpack_latents`` for latent (not pixel) height and width."""
    from diffusers import FluxPipeline

    return FluxPipeline._unpack_latents(packed, h, w, 1)
