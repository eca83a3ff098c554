"""Stable Diffusion 1.x / 2.x: a UNet on DDPM epsilon (or v) prediction, one CLIP text encoder.

The noise process is the scheduler's own ``add_noise`` with ``t ~ U{0..T-1}``; the target is the
noise (``epsilon``) or ``scheduler.get_velocity`` (``v_prediction``, an extension: the reference
code asserts epsilon).

Evaluation sampling (REFERENCE.md section 5) is the reference scripts': Euler from the base model's
scheduler config, the guidance formula ``cond + cfg (cond - uncond)`` with the empty prompt's
encoding as the negative, prompts padded to the tokenizer's length without an attention mask.  Two
samplers share the encodings and the initial latent.  ``"reference"`` is a short loop over the
scheduler (``set_timesteps`` / ``scale_model_input`` / ``step``) that applies the formula in the
reference scripts' order of operations, so bf16 runs round the same way the paper's did.
``"pipeline"`` hands the same embeddings and latents to diffusers' pipeline with ``guidance_scale =
cfg + 1``; it computes ``uncond + (cfg + 1) (cond - uncond)``, equal in exact arithmetic and within
float rounding in practice (the tests measure it).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from sdpo.errors import UserError
from sdpo.families.base import Conditioning, from_pretrained
from sdpo.families.ddpm import DDPMFamily
from sdpo.families.recipe import LaunchDefaults
from sdpo.sampling.images import Components, initial_latents, prompts_per_call, reference_guidance


class SD15(DDPMFamily):
    name: ClassVar[str] = "sd15"
    display_name: ClassVar[str] = "SD1.5"
    # REFERENCE.md section 4: 8 GPUs x 8 pairs x 32 accumulation = 2048, lr 1e-8 x 2048 (--scale_lr), bf16.
    launch: ClassVar[LaunchDefaults | None] = LaunchDefaults(lr=1e-8)
    # The paper's SD1.5 scripts (REFERENCE.md section 4): beta_dpo, mu, extra flags per method.
    paper_methods: ClassVar[dict[str, tuple[float, float, tuple[str, ...]]]] = {
        "diffusion-dpo": (5000.0, 0.9, ()),
        "dmpo": (2000.0, 0.9, ("--dmpo_alpha", "0.01")),
        "dspo": (0.001, 0.2, ()),
    }
    pipeline_classes: ClassVar[tuple[str, ...]] = ("StableDiffusionPipeline",)
    default_model: ClassVar[str] = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    default_resolution: ClassVar[int] = 512
    weights_label: ClassVar[str] = "an SD1.5/SD2-style UNet"
    weights_markers: ClassVar[tuple[str, ...]] = ("down_blocks.",)
    weights_excludes: ClassVar[tuple[str, ...]] = ("add_embedding.",)
    lora_label: ClassVar[str | None] = "a UNet (SD1.5/SDXL)"  # a LoRA on the attention layers cannot tell them apart
    shard_blocks: ClassVar[tuple[str, ...]] = ("ResnetBlock2D", "Transformer2DModel")
    # diffusers' LoRA examples (text-to-image, DreamBooth, Diffusion-DPO) adapt these four projections.
    lora_targets: ClassVar[dict[str, tuple[str, ...]]] = {
        "attn": ("to_q", "to_k", "to_v", "to_out.0"),
        "ff": ("ff.net.0.proj", "ff.net.2"),
    }

    @classmethod
    def denoiser_class(cls):
        from diffusers import UNet2DConditionModel

        return UNet2DConditionModel

    @classmethod
    def has_size_conditioning(cls, model) -> bool:
        return getattr(model.config, "addition_embed_type", None) == "text_time"

    def check_denoiser(self, model) -> None:
        is_sdxl = self.has_size_conditioning(model)
        if is_sdxl != (self.name == "sdxl"):
            hint = "add --sdxl (or --model_family sdxl)" if is_sdxl else "drop --sdxl"
            kind = "SDXL" if is_sdxl else "SD1.5-style"
            raise UserError(f"{self.cfg.pretrained_model_name_or_path}: UNet is {kind}; {hint}")

    def load_scheduler(self):
        from diffusers import DDPMScheduler

        cfg = self.cfg
        return self.check_scheduler(from_pretrained(DDPMScheduler, cfg.pretrained_model_name_or_path,
                                                    subfolder="scheduler", revision=cfg.revision))  # fmt: skip

    def load_text_encoders(self) -> None:
        from transformers import AutoTokenizer, CLIPTextModel

        path, rev = self.cfg.pretrained_model_name_or_path, self.cfg.revision
        self.tokenizers = [from_pretrained(AutoTokenizer, path, subfolder="tokenizer", revision=rev)]
        self.text_encoders = [from_pretrained(CLIPTextModel, path, subfolder="text_encoder", revision=rev)]

    @torch.no_grad()
    def encode_prompt(self, captions: list[str]) -> Conditioning:
        """Last hidden state of the CLIP text encoder, max-length padding, no attention mask."""
        tok, enc = self.tokenizers[0], self.text_encoders[0]
        ids = tok(captions, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
        return {"encoder_hidden_states": enc(ids.input_ids.to(self.device))[0]}

    def predict(self, module, noisy, t, cond: Conditioning):
        added = {k: v for k, v in cond.items() if k != "encoder_hidden_states"} or None
        return module(noisy, t, cond["encoder_hidden_states"], added_cond_kwargs=added).sample

    # ------------------------------------------------------------------ evaluation sampling

    def sampling_scheduler(self):
        from diffusers import EulerDiscreteScheduler

        cfg = self.cfg
        return from_pretrained(EulerDiscreteScheduler, cfg.pretrained_model_name_or_path, subfolder="scheduler",
                               revision=cfg.revision)  # fmt: skip

    @classmethod
    def load_sampling_components(cls, pretrain_path: str, weights_path: str | None, device, dtype: torch.dtype,
                                 vae_path: str | None = None, vae_dtype: torch.dtype = torch.float32,
                                 max_sequence_length: int | None = None) -> Components:  # fmt: skip
        """The base model's parts from ``pretrain_path`` (hub id or folder), the UNet's weights from
        ``weights_path`` (``None``: the base UNet's own); the VAE from ``vae_path`` when given, else the family's
        evaluation default (SDXL: the fp16-fix VAE, as in the paper), else the base model's.  The reference
        scripts load Euler from the base model's scheduler config (not the pipeline's PNDM one), which decides
        e.g. the timestep spacing; so does this."""
        from diffusers import EulerDiscreteScheduler, UNet2DConditionModel
        from transformers import CLIPTokenizer

        unet = from_pretrained(UNet2DConditionModel, pretrain_path, "base UNet", subfolder="unet", torch_dtype=dtype)
        if cls.has_size_conditioning(unet) != (cls.name == "sdxl"):
            raise UserError(
                f"{pretrain_path} is an SDXL base model but --sdxl is off: add --sdxl"
                if cls.has_size_conditioning(unet)
                else f"{pretrain_path} is an SD1.5-style base model but --sdxl is on: drop --sdxl"
            )
        if weights_path is not None:
            cls.load_weights_file(unet, weights_path)  # copies into the ``dtype`` parameters, as the reference does
        scheduler = from_pretrained(EulerDiscreteScheduler, pretrain_path, "scheduler", subfolder="scheduler")
        names = cls.text_encoder_folders()
        encoders = [from_pretrained(c, pretrain_path, n, subfolder=n, torch_dtype=dtype)
                    for c, n in zip(cls.text_encoder_types(), names)]  # fmt: skip
        tokenizers = [from_pretrained(CLIPTokenizer, pretrain_path, t, subfolder=t)
                      for t in (n.replace("text_encoder", "tokenizer") for n in names)]  # fmt: skip
        vae = cls.load_sampling_vae(pretrain_path, vae_path, vae_dtype)
        for m in (unet, vae, *encoders):
            m.to(device).eval().requires_grad_(False)
        return Components(cls, unet, vae, scheduler, tokenizers, encoders)

    @classmethod
    def text_encoder_folders(cls) -> list[str]:
        return ["text_encoder"]

    @classmethod
    def text_encoder_types(cls) -> list:
        from transformers import CLIPTextModel

        return [CLIPTextModel]

    @classmethod
    def encode_sampling_prompt(cls, comp: Components, prompt: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One prompt as the reference scripts encode it: max-length padding, no attention mask, last hidden state."""
        tok = comp.tokenizers[0]
        ids = tok([prompt], padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
        return comp.text_encoders[0](ids.input_ids.to(comp.device))[0].to(comp.dtype), None

    @classmethod
    def sampling_added_cond(cls, comp: Components, n: int, height: int, width: int, pooled, neg_pooled, dtype):
        """UNet ``added_cond_kwargs`` for the stacked cond/uncond halves (SDXL's size micro-conditioning)."""
        return None

    @classmethod
    @torch.no_grad()
    def sample_latents(cls, comp: Components, prompts: list[str], height: int, width: int, steps: int, cfg: float,
                       seed, sampler: str = "reference", rows_per_call: int | None = None) -> torch.Tensor:  # fmt: skip
        from sdpo.sampling.images import encode_prompts

        cond, pooled = encode_prompts(comp, prompts)
        neg, neg_pooled = encode_prompts(comp, [""])  # empty-string negative prompt (SDXL: not zeros)
        lat = initial_latents(comp, len(prompts), height, width, seed, comp.unet.config.in_channels)
        fn = cls._sample_reference if sampler == "reference" else cls._sample_pipeline
        step = rows_per_call or prompts_per_call(comp.device, len(prompts))  # CPU: one prompt per call (invariance)
        return torch.cat([
            fn(comp, cond[i : i + step], None if pooled is None else pooled[i : i + step], neg, neg_pooled,
               lat[i : i + step], height, width, steps, cfg)
            for i in range(0, len(prompts), step)
        ])  # fmt: skip

    @classmethod
    def _sample_reference(cls, comp, cond, pooled, neg, neg_pooled, lat, height, width, steps, cfg) -> torch.Tensor:
        sched = comp.scheduler
        sched.set_timesteps(steps, device=comp.device)
        latents = lat * sched.init_noise_sigma
        n = latents.shape[0]
        hidden = torch.cat([cond, neg.expand(n, -1, -1)])  # cond half first, as in the reference scripts
        added = cls.sampling_added_cond(comp, n, height, width, pooled, neg_pooled, latents.dtype)
        for t in sched.timesteps:
            model_in = sched.scale_model_input(latents, t).repeat(2, 1, 1, 1)
            pred = comp.unet(model_in, t, encoder_hidden_states=hidden, added_cond_kwargs=added, return_dict=False)[0]
            pred_cond, pred_uncond = pred.chunk(2)
            latents = sched.step(reference_guidance(pred_cond, pred_uncond, cfg), t, latents, return_dict=False)[0]
        return latents

    @classmethod
    def sampling_pipeline(cls, comp: Components):
        from diffusers import StableDiffusionPipeline

        return StableDiffusionPipeline(vae=comp.vae, text_encoder=comp.text_encoders[0], tokenizer=comp.tokenizers[0],
                                       unet=comp.unet, scheduler=comp.scheduler, safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)  # fmt: skip

    @classmethod
    def _sample_pipeline(cls, comp, cond, pooled, neg, neg_pooled, lat, height, width, steps, cfg) -> torch.Tensor:
        n = lat.shape[0]
        kwargs = dict(
            prompt_embeds=cond, negative_prompt_embeds=neg.expand(n, -1, -1),
            latents=lat,  # the pipeline multiplies by init_noise_sigma itself
            num_inference_steps=steps,
            guidance_scale=cfg + 1.0,  # diffusers: uncond + g (cond - uncond) == cond + cfg (cond - uncond)
            height=height, width=width,
            output_type="latent",  # decoded by decode_latents in fp32, like the reference
        )  # fmt: skip
        if pooled is not None:
            kwargs.update(pooled_prompt_embeds=pooled, negative_pooled_prompt_embeds=neg_pooled.expand(n, -1))
        pipe = cls.sampling_pipeline(comp)
        pipe.set_progress_bar_config(disable=True)
        return pipe(**kwargs).images
