"""Z-Image: a 6B single-stream DiT on rectified flow, conditioned on Qwen3-4B's second-to-last hidden states.

Everything below is what diffusers 0.42's ``ZImagePipeline`` and its LoRA trainer
(``examples/dreambooth/train_dreambooth_lora_z_image.py``) do:

* Text (``ZImagePipeline._encode_prompt``): Qwen3's chat template with a generation prompt and
  ``enable_thinking=True``, padded to ``max_sequence_length`` (512, the pipeline's default), the second-to-last
  hidden state, and of it only the prompt's own tokens (the attention mask selects them): the transformer takes a
  list of variable-length caption features and pads each to a multiple of 32 itself.  Here the features stay
  padded to ``--max_sequence_length`` with the mask beside them (batch-first tensors the loop can repeat and the
  cache can stack); ``predict`` hands the transformer the same list the pipeline would.
* Latents: the FLUX.1 16-channel ``AutoencoderKL``, ``(z - shift_factor) * scaling_factor`` (the base class).
* The transformer takes a list of ``(16, 1, h, w)`` latents (a frame axis), the time reversed,
  ``t = (1000 - timestep) / 1000 = 1 - sigma`` (1 is clean), and predicts the negative velocity: the pipeline and
  the trainer negate its output, so ``predict`` returns ``-output``, whose target is ``eps - x_0`` as for every
  flow family.
* Time: ``sdpo.families.flow``'s draw from the model's scheduler config, which for Z-Image is a static shift
  (no dynamic shifting), so the training sigmas carry it, as they do in the diffusers trainer (the
  ``FlowMatchEulerDiscreteScheduler`` applies a static shift at construction).
* Sampling: ``guidance_scale`` 5.0 (the pipeline's default and diffusers' Z-Image README's, 50 steps), Z-Image's
  own form ``cond + s (cond - uncond)`` (diffusers' usual scale would be ``s + 1``), no CFG normalisation or
  truncation (the pipeline's defaults); the negative is the empty prompt.  The step-distilled Z-Image-Turbo is
  run with ``--cfg 0`` (no guidance) and few steps.
"""

from __future__ import annotations

from dataclasses import replace
from typing import ClassVar

import torch
import torch.nn.functional as F

from sdpo.families.base import Conditioning
from sdpo.families.flow import FlowFamily
from sdpo.families.recipe import LaunchDefaults


class ZImage(FlowFamily):
    name: ClassVar[str] = "zimage"
    display_name: ClassVar[str] = "Z-Image"
    pipeline_classes: ClassVar[tuple[str, ...]] = ("ZImagePipeline",)
    default_model: ClassVar[str] = "Tongyi-MAI/Z-Image"  # the base model diffusers' Z-Image LoRA README trains
    weights_label: ClassVar[str] = "a Z-Image transformer"
    weights_markers: ClassVar[tuple[str, ...]] = ("noise_refiner.", "context_refiner.")
    shard_blocks: ClassVar[tuple[str, ...]] = ("ZImageTransformerBlock",)
    text_encoder_classes: ClassVar[tuple[str, ...]] = ("Qwen3Model",)  # as diffusers' Z-Image trainer loads it
    default_max_sequence_length: ClassVar[int] = 512  # ZImagePipeline's default
    sampling_guidance: ClassVar[float] = 5.0  # the pipeline's default; diffusers' Z-Image README
    guidance_kind: ClassVar[str | None] = "classifier-free guidance, Z-Image's form cond + s (cond - uncond)"
    # Attention projections of every block (diffusers' Z-Image LoRA trainer's default); ``ff`` adds the SwiGLU MLP.
    lora_targets: ClassVar[dict[str, tuple[str, ...]]] = {
        "attn": ("to_q", "to_k", "to_v", "to_out.0"),
        "ff": ("feed_forward.w1", "feed_forward.w2", "feed_forward.w3"),
    }
    # The paper's FLUX.1 recipe (Appendix B) carried over (our choice), with FSDP over every GPU: 6.2B parameters with
    # AdamW do not fit one 80 GB GPU whole (153 GB under DDP), sharded over 8 they take 33 GB (bench/memory_plan.py).
    launch: ClassVar[LaunchDefaults | None] = replace(FlowFamily.launch, sharding="fsdp")

    @classmethod
    def denoiser_class(cls):
        from diffusers import ZImageTransformer2DModel

        return ZImageTransformer2DModel

    @classmethod
    def build_pipeline(cls, scheduler, tokenizers, text_encoders, transformer=None, vae=None):
        from diffusers import ZImagePipeline

        return ZImagePipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoders[0], tokenizer=tokenizers[0],
                              transformer=transformer)  # fmt: skip

    @classmethod
    def prompt_embeds(cls, pipe, prompts, device, max_sequence_length):
        """``(features padded to max_sequence_length, mask)`` of the pipeline's per-prompt caption features."""
        feats, _ = pipe.encode_prompt(prompt=list(prompts), device=device, do_classifier_free_guidance=False,
                                      max_sequence_length=max_sequence_length)  # fmt: skip
        embeds = torch.stack([F.pad(f, (0, 0, 0, max_sequence_length - f.shape[0])) for f in feats])
        mask = torch.stack([torch.arange(max_sequence_length, device=embeds.device) < f.shape[0] for f in feats])
        return embeds, mask.long()

    @torch.no_grad()
    def encode_prompt(self, captions: list[str]) -> Conditioning:
        embeds, mask = self.prompt_embeds(self.text_pipeline(), captions, self.device, self.sequence_length())
        return {"encoder_hidden_states": embeds, "encoder_hidden_states_mask": mask}

    def predict(self, module, noisy, t, cond: Conditioning):
        mask = cond["encoder_hidden_states_mask"].bool()
        captions = [e[m] for e, m in zip(cond["encoder_hidden_states"], mask)]
        out = module(list(noisy.unsqueeze(2).unbind(0)), (1000.0 - t.to(noisy.dtype)) / 1000.0, captions,
                     return_dict=False)[0]  # fmt: skip
        return -torch.stack(out).squeeze(2).to(noisy.dtype)

    # ------------------------------------------------------------------ evaluation sampling

    @classmethod
    def sampling_prompt(cls, comp, prompt, pipe):
        feats, _ = pipe.encode_prompt(prompt=[prompt], device=comp.device, do_classifier_free_guidance=False,
                                      max_sequence_length=comp.max_sequence_length)  # fmt: skip
        return {"prompt_embeds": feats[0]}

    @classmethod
    def join_prompts(cls, parts):
        return {"prompt_embeds": [p["prompt_embeds"] for p in parts]}  # the pipeline takes a list of features

    @classmethod
    def sample(cls, pipe, latents, negative, **kw):
        """Guidance above 0 runs the empty prompt as the negative, as the pipeline's own default does."""
        if kw["guidance_scale"] > 0:
            kw["negative_prompt_embeds"] = [negative()["prompt_embeds"]] * latents.shape[0]
        return pipe(latents=latents.float(), **kw).images
