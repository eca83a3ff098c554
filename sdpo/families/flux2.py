"""FLUX.2: [dev] (32B, Mistral Small 3.x text encoder, guidance-distilled) and [klein] (4B/9B, Qwen3 text encoder;
the "base" checkpoints take classifier-free guidance, the step-distilled ones, ``is_distilled``, none).

Everything below is what diffusers 0.42's ``Flux2Pipeline`` / ``Flux2KleinPipeline`` and their LoRA trainers
(``examples/dreambooth/train_dreambooth_lora_flux2.py``, ``..._flux2_klein.py``) do; the folder's
``model_index.json`` says which of the two pipelines (and which text encoder and tokenizer classes) it is:

* Text: [dev] formats each prompt as a chat with the pipeline's system message (``format_input``, ``[IMG]``
  removed) through the Pixtral processor's chat template; [klein] applies Qwen3's chat template with a generation
  prompt and ``enable_thinking=False``.  Both pad to ``max_sequence_length`` (512, the pipelines' default) and
  stack the hidden states of layers (10, 20, 30) of Mistral or (9, 18, 27) of Qwen3 along the channels
  (``_get_*_prompt_embeds``); the transformer attends to every one of the 512 tokens (no mask), with text ids
  ``(0, 0, 0, l)`` (``_prepare_text_ids``).
* Latents: the 32-channel ``AutoencoderKLFlux2`` posterior, cut into 2x2 patches (``_patchify_latents``: 128
  channels) and normalised by the VAE's own batch-norm statistics, ``(z - running_mean) / sqrt(running_var +
  batch_norm_eps)``, as the trainers do.  The sample is kept un-patched, ``(32, H/8, W/8)``: patching is a
  permutation, so every mean over elements (losses, the safeguard) is the same, the noise is the same i.i.d.
  draw, and the protocol's initial latent (1/8 of the image size) fits it.  With a latent cache the VAE is not
  loaded; its statistics are then read from its weights file.
* The transformer takes the patches flattened (``_pack_latents``) with image ids ``(0, h, w, 0)``
  (``_prepare_latent_ids``), ``timestep = sigma`` and, for [dev], the guidance embedding: ``--flux_guidance``
  (default 1.0, what diffusers' FLUX.2 README trains [dev] with, ``--guidance_scale=1``; its script's default is
  3.5, carried over from FLUX.1); [klein] has no guidance embedding (``guidance_embeds`` false) and gets none.
* Time: ``sdpo.families.flow``'s draw from the model's scheduler config (FLUX.1-dev's, which diffusers' conversion
  script gives FLUX.2: dynamic shifting at sampling time only), so the training sigmas are unshifted, exactly as
  both trainers index them.  The pipelines shift at sampling time by ``compute_empirical_mu``.
* Sampling: the folder's own pipeline; ``guidance_scale`` 4.0 (both pipelines' default) is [dev]'s guidance
  embedding, [klein] base's classifier-free guidance (``cond + s (cond - uncond)`` with diffusers' ``s``, the empty
  prompt as the negative) and is ignored by a step-distilled [klein].
"""

from __future__ import annotations

from dataclasses import replace
from typing import ClassVar

import torch

from sdpo.errors import UserError
from sdpo.families.base import Conditioning, from_pretrained
from sdpo.families.flow import FlowFamily
from sdpo.families.recipe import LaunchDefaults

DEV, KLEIN = "Flux2Pipeline", "Flux2KleinPipeline"


def pipeline_entry(path: str, revision: str | None = None) -> dict:
    """The folder's ``model_index.json`` (a local folder or the hub's copy): which pipeline, text encoder and
    tokenizer classes, and [klein]'s ``is_distilled``."""
    from diffusers import DiffusionPipeline

    try:
        return dict(DiffusionPipeline.load_config(path, revision=revision))
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot read {path}/model_index.json ({first}); pass a local FLUX.2 folder") from None


class Flux2(FlowFamily):
    name: ClassVar[str] = "flux2"
    display_name: ClassVar[str] = "FLUX.2"
    pipeline_classes: ClassVar[tuple[str, ...]] = (DEV, KLEIN)
    default_model: ClassVar[str] = "black-forest-labs/FLUX.2-dev"
    weights_label: ClassVar[str] = "a FLUX.2 transformer"
    weights_markers: ClassVar[tuple[str, ...]] = ("single_transformer_blocks.", "double_stream_modulation_img.")
    shard_blocks: ClassVar[tuple[str, ...]] = ("Flux2TransformerBlock", "Flux2SingleTransformerBlock")
    default_max_sequence_length: ClassVar[int] = 512  # both pipelines' default
    sampling_guidance: ClassVar[float] = 4.0  # both pipelines' default
    guidance_kind: ClassVar[str | None] = (
        "the pipeline's guidance_scale: [dev] distilled guidance embedding, [klein] base classifier-free guidance, "
        "ignored by a step-distilled [klein]"
    )
    # diffusers' FLUX.2 LoRA trainers' default targets: both streams' attention projections of the double blocks and
    # the fused QKV+MLP input and the output of the single blocks (addressed per block: their ``to_out`` is a Linear,
    # the double blocks' a ModuleList); ``ff`` adds the double blocks' SwiGLU feed-forwards.
    lora_targets: ClassVar[dict[str, tuple[str, ...]]] = {
        "attn": (*FlowFamily.lora_targets["attn"], "to_qkv_mlp_proj",
                 *(f"single_transformer_blocks.{i}.attn.to_out" for i in range(48))),
        "ff": ("ff.linear_in", "ff.linear_out", "ff_context.linear_in", "ff_context.linear_out"),
    }  # fmt: skip
    # The paper's FLUX.1 recipe (Appendix B) carried over (our choice), with FSDP over every GPU: [klein] 4B/9B fit 8
    # GPUs that way (26 / 51 GB); [dev]'s 32B transformer fits 16 only with the latent/text cache (64 GB; its
    # 24B text encoder alone takes 48 GB per GPU), as bench/memory_plan.py computes.
    launch: ClassVar[LaunchDefaults | None] = replace(FlowFamily.launch, sharding="fsdp")

    @classmethod
    def denoiser_class(cls):
        from diffusers import Flux2Transformer2DModel

        return Flux2Transformer2DModel

    @classmethod
    def vae_class(cls):
        from diffusers import AutoencoderKLFlux2

        return AutoencoderKLFlux2

    @classmethod
    def load_text_parts(cls, path: str, revision: str | None = None, **kw) -> tuple[list, list]:
        """The tokenizer (or [dev]'s processor) and text encoder classes the folder's ``model_index.json`` names."""
        import transformers

        index = pipeline_entry(path, revision)
        tok_cls, enc_cls = (getattr(transformers, index[k][1]) for k in ("tokenizer", "text_encoder"))
        tokenizer = from_pretrained(tok_cls, path, subfolder="tokenizer", revision=revision)
        return [tokenizer], [from_pretrained(enc_cls, path, subfolder="text_encoder", revision=revision, **kw)]

    @classmethod
    def max_sequence_length(cls, given: int | None, tokenizer=None) -> int:
        return super().max_sequence_length(given, getattr(tokenizer, "tokenizer", tokenizer))  # a processor's own

    def load_denoiser(self):
        model = super().load_denoiser()
        self.guidance_embeds = bool(model.config.guidance_embeds)
        return model

    # ------------------------------------------------------------------ latents

    def bn_stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The VAE's batch-norm mean and std over the 128 patch channels (from its weights when it is not loaded)."""
        if getattr(self, "_bn", None) is None:
            vae = self.vae if self.vae is not None else self.load_vae()
            self._bn = (vae.bn.running_mean.detach().float().cpu(),
                        torch.sqrt(vae.bn.running_var.detach().float().cpu() + vae.config.batch_norm_eps))  # fmt: skip
        return tuple(s.to(like.device, like.dtype).view(1, -1, 1, 1) for s in self._bn)

    def normalise_latents(self, latents):
        from diffusers import Flux2Pipeline

        mean, std = self.bn_stats(latents)
        return Flux2Pipeline._unpatchify_latents((Flux2Pipeline._patchify_latents(latents) - mean) / std)

    @classmethod
    def decode_latent(cls, vae, latent):
        """Sampled latents are the VAE's own (``sample`` undoes the normalisation, as the pipelines' decode does)."""
        return vae.decode(latent.to(vae.dtype), return_dict=False)[0]

    # ------------------------------------------------------------------ text and the denoiser

    @classmethod
    def build_pipeline(cls, scheduler, tokenizers, text_encoders, transformer=None, vae=None, is_distilled=False):
        """[dev]'s pipeline for a Mistral 3 text encoder, [klein]'s for a Qwen3 one (their ``__init__`` types)."""
        from diffusers import Flux2KleinPipeline, Flux2Pipeline

        parts = dict(scheduler=scheduler, vae=vae, text_encoder=text_encoders[0], tokenizer=tokenizers[0],
                     transformer=transformer)  # fmt: skip
        if type(text_encoders[0]).__name__.startswith("Mistral3"):
            return Flux2Pipeline(**parts)
        return Flux2KleinPipeline(**parts, is_distilled=is_distilled)

    @classmethod
    def prompt_embeds(cls, pipe, prompts, device, max_sequence_length):
        embeds, _ = pipe.encode_prompt(prompt=prompts, device=device, max_sequence_length=max_sequence_length)
        return embeds, None

    @torch.no_grad()
    def encode_prompt(self, captions: list[str]) -> Conditioning:
        embeds, _ = self.prompt_embeds(self.text_pipeline(), captions, self.device, self.sequence_length())
        return {"encoder_hidden_states": embeds}

    def predict(self, module, noisy, t, cond: Conditioning):
        from diffusers import Flux2Pipeline

        patches = Flux2Pipeline._patchify_latents(noisy)
        ids = Flux2Pipeline._prepare_latent_ids(patches).to(noisy.device)
        hidden = cond["encoder_hidden_states"]
        guidance = None
        if self.guidance_embeds:
            guidance = torch.full((noisy.shape[0],), float(self.cfg.flux_guidance), device=noisy.device)
        packed = Flux2Pipeline._pack_latents(patches)
        out = module(hidden_states=packed, timestep=t.to(noisy.dtype) / 1000.0, guidance=guidance,
                     encoder_hidden_states=hidden, txt_ids=Flux2Pipeline._prepare_text_ids(hidden).to(noisy.device),
                     img_ids=ids, return_dict=False)[0]  # fmt: skip
        return Flux2Pipeline._unpatchify_latents(Flux2Pipeline._unpack_latents_with_ids(out[:, : packed.shape[1]], ids))

    # ------------------------------------------------------------------ evaluation sampling

    @classmethod
    def load_sampling_components(cls, pretrain_path, weights_path, device, dtype, vae_path=None,
                                 vae_dtype=torch.float32, max_sequence_length=None):  # fmt: skip
        comp = super().load_sampling_components(pretrain_path, weights_path, device, dtype, vae_path, vae_dtype,
                                                max_sequence_length)  # fmt: skip
        comp.options = {"is_distilled": bool(pipeline_entry(pretrain_path).get("is_distilled", False))}
        return comp

    def sampling_components(self, denoiser, scheduler):
        comp = super().sampling_components(denoiser, scheduler)
        entry = pipeline_entry(self.cfg.pretrained_model_name_or_path, self.cfg.revision)
        comp.options = {"is_distilled": bool(entry.get("is_distilled", False))}
        return comp

    @classmethod
    def sampling_pipeline(cls, comp):
        pipe = cls.build_pipeline(comp.scheduler, comp.tokenizers, comp.text_encoders, comp.denoiser, comp.vae,
                                  is_distilled=comp.options.get("is_distilled", False))  # fmt: skip
        pipe.set_progress_bar_config(disable=True)
        return pipe

    @classmethod
    def sampling_prompt(cls, comp, prompt, pipe):
        return {"prompt_embeds": cls.prompt_embeds(pipe, [prompt], comp.device, comp.max_sequence_length)[0]}

    @classmethod
    def sample(cls, pipe, latents, negative, **kw):
        """The protocol's ``(N, 32, h, w)`` initial latents go in as the pipelines draw theirs (2x2 patches); [klein]
        base with guidance gets the empty prompt as its negative.  Returns the VAE's own latents, as both pipelines
        decode them (unpacked, the batch-norm normalisation undone, un-patched)."""
        from diffusers import Flux2KleinPipeline, Flux2Pipeline

        n = latents.shape[0]
        if isinstance(pipe, Flux2KleinPipeline):
            if kw["guidance_scale"] > 1 and not pipe.config.is_distilled:
                kw["negative_prompt_embeds"] = negative()["prompt_embeds"].expand(n, -1, -1)
            return pipe(latents=Flux2Pipeline._patchify_latents(latents), **kw).images  # [klein] returns them decoded
        packed = pipe(latents=Flux2Pipeline._patchify_latents(latents), **kw).images
        h, w = latents.shape[-2] // 2, latents.shape[-1] // 2
        ids = Flux2Pipeline._prepare_latent_ids(torch.empty(n, 1, h, w)).to(packed.device)
        patches = Flux2Pipeline._unpack_latents_with_ids(packed, ids)
        bn = pipe.vae.bn
        std = torch.sqrt(bn.running_var + pipe.vae.config.batch_norm_eps).view(1, -1, 1, 1).to(patches)
        return Flux2Pipeline._unpatchify_latents(patches * std + bn.running_mean.view(1, -1, 1, 1).to(patches))
