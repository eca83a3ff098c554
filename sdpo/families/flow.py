"""Rectified flow (SD3, FLUX, Wan), shared by every flow family.

    x_t = (1 - sigma) x_0 + sigma * eps,    target = eps - x_0 (the velocity)

``sigma`` is drawn per pair as diffusers' flow trainers draw it: ``u`` from
``diffusers.training_utils.compute_density_for_timestep_sampling`` (``--weighting_scheme`` none |
logit_normal | mode, ``--logit_mean``, ``--logit_std``, ``--mode_scale``), here with the pair's own
generator so a resumed run draws the same ``u``; then ``index = floor(u * num_train_timesteps)``,
``sigma = scheduler.sigmas[index]`` and ``timestep = scheduler.timesteps[index]`` (``sigma * 1000``).
The scheduler is the model's own config, never ``set_timesteps``-ed: SD3's static ``shift`` 3.0 is
in those sigmas; FLUX.1 uses dynamic shifting at sampling time only, so its training sigmas are
unshifted, as in diffusers' FLUX trainers.  For none/logit_normal/mode diffusers'
``compute_loss_weighting_for_sd3`` is 1, so the per-sample losses carry no weight.
"""

from __future__ import annotations

import functools
from typing import ClassVar

import torch

from sdpo.families.base import Conditioning, ModelFamily, from_pretrained
from sdpo.families.recipe import LaunchDefaults
from sdpo.sampling.images import Components, initial_latents, prompts_per_call

WEIGHTING_SCHEMES = ("none", "logit_normal", "mode")


def draw_u(cfg, generator: torch.Generator, device) -> torch.Tensor:
    """One pair's ``u`` in [0, 1), shape ``(1,)``, from diffusers' density helper and the pair's stream."""
    from diffusers.training_utils import compute_density_for_timestep_sampling

    return compute_density_for_timestep_sampling(
        weighting_scheme=cfg.weighting_scheme, batch_size=1, logit_mean=cfg.logit_mean, logit_std=cfg.logit_std,
        mode_scale=cfg.mode_scale, device=device, generator=generator,
    )  # fmt: skip


def sigmas_for(scheduler, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sigma, timestep)`` per row for ``u`` in [0, 1), as diffusers' flow trainers index them."""
    n = scheduler.config.num_train_timesteps
    index = (u * n).long().clamp(0, n - 1).cpu()
    return scheduler.sigmas[index].to(u.device), scheduler.timesteps[index].to(u.device)


def flow_noise(latents: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor):
    """``(x_t, target)`` with ``sigma`` broadcast over every non-batch axis."""
    s = sigma.to(latents.dtype).view(-1, *([1] * (latents.dim() - 1)))
    return (1.0 - s) * latents + s * noise, noise - latents


class FlowFamily(ModelFamily):
    """A transformer on rectified flow; subclasses add text encoding and the denoiser call."""

    process: ClassVar[str] = "flow"
    denoiser_folder: ClassVar[str] = "transformer"
    dspo_form: ClassVar[str | None] = None
    default_resolution: ClassVar[int] = 1024
    resolution_multiple: ClassVar[int] = 16  # VAE factor 8 x the transformer's 2x2 latent patches
    # The paper's Appendix B (FLUX.1-dev): lr 1e-5 as is (not scaled by the batch), global batch 512, 1024 px, bf16.
    launch: ClassVar[LaunchDefaults | None] = LaunchDefaults(lr=1e-5, scale_lr=False, global_batch=512,
                                                             per_gpu_batch=1, flags=("--resolution", "1024"))  # fmt: skip
    paper_methods: ClassVar[dict[str, tuple[float, float, tuple[str, ...]]]] = {
        "diffusion-dpo": (1000.0, 0.99, ()),  # Appendix B
        "dmpo": (1000.0, 0.99, ("--dmpo_alpha", "0.01")),  # our choice: Appendix B's beta and mu
    }
    heavy: ClassVar[bool] = True  # gradient checkpointing on by default
    forward_flags: ClassVar[tuple[str, ...]] = ("weighting_scheme", "logit_mean", "logit_std", "mode_scale")  # draw_u
    joint_augment: ClassVar[bool] = True  # one crop/flip per pair, as the SDXL reference script
    # MM-DiT joint attention: image-stream and text-stream (add_*) projections, as diffusers' SD3/FLUX
    # DreamBooth LoRA scripts; feed-forward of both streams.
    lora_targets: ClassVar[dict[str, tuple[str, ...]]] = {
        "attn": ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"),
        "ff": ("ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2"),
    }
    lora_key_style: ClassVar[str] = "peft"
    # transformers classes of text_encoder, text_encoder_2, ... (the last one is T5, which sets the length)
    text_encoder_classes: ClassVar[tuple[str, ...]] = ()
    default_max_sequence_length: ClassVar[int] = 512  # T5 tokens: the pipeline's default

    @classmethod
    def load_text_parts(cls, path: str, revision: str | None = None, **kw) -> tuple[list, list]:
        """``(tokenizers, text encoders)`` of a pipeline folder or hub id; ``kw`` goes to the encoders'
        ``from_pretrained`` (evaluation loads them in its dtype)."""
        import transformers

        folders = ["text_encoder", *(f"text_encoder_{i}" for i in range(2, len(cls.text_encoder_classes) + 1))]
        tokenizers = [from_pretrained(transformers.AutoTokenizer, path, revision=revision,
                                      subfolder=f.replace("text_encoder", "tokenizer")) for f in folders]  # fmt: skip
        encoders = [from_pretrained(getattr(transformers, c), path, subfolder=f, revision=revision, **kw)
                    for f, c in zip(folders, cls.text_encoder_classes)]  # fmt: skip
        return tokenizers, encoders

    def load_text_encoders(self) -> None:
        self.tokenizers, self.text_encoders = self.load_text_parts(self.cfg.pretrained_model_name_or_path,
                                                                   self.cfg.revision)  # fmt: skip

    @classmethod
    def max_sequence_length(cls, given: int | None, t5_tokenizer=None) -> int:
        """``--max_sequence_length``, else the pipeline's default capped at the T5 tokenizer's own maximum."""
        if given:
            return given
        cap = getattr(t5_tokenizer, "model_max_length", None) or cls.default_max_sequence_length
        return min(cls.default_max_sequence_length, cap)

    def sequence_length(self) -> int:
        """T5 tokens: ``--max_sequence_length``, else the pipeline's default (capped by the tokenizer)."""
        return self.max_sequence_length(self.cfg.max_sequence_length, self.tokenizers[-1])

    def load_scheduler(self):
        from diffusers import FlowMatchEulerDiscreteScheduler

        cfg = self.cfg
        return from_pretrained(FlowMatchEulerDiscreteScheduler, cfg.pretrained_model_name_or_path,
                               subfolder="scheduler", revision=cfg.revision)  # fmt: skip

    def draw_time(self, generator, device) -> torch.Tensor:
        return draw_u(self.cfg, generator, device)

    def add_noise(self, latents, noise, time):
        sigma, timestep = sigmas_for(self.scheduler, time)
        noisy, target = flow_noise(latents, noise, sigma)
        return noisy, target, timestep

    def process_terms(self) -> dict:
        return {"num_train_timesteps": self.scheduler.config.num_train_timesteps}

    # ------------------------------------------------------------------ online RL rollouts (sdpo.rl.flow_sde)

    def rollout_schedule(self, steps: int, latent_shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
        """``timesteps`` (``sigma * 1000``) and ``sigmas`` (``steps + 1``, ending at 0) of the sampling scheduler,
        set as the family's pipeline sets them (``rollout_shift``)."""
        sched = self.sampling_scheduler()
        sched.set_timesteps(steps, **self.rollout_shift(steps, latent_shape, sched.config))
        return {"timesteps": sched.timesteps.float().cpu(), "sigmas": sched.sigmas.float().cpu()}

    def rollout_shift(self, steps: int, latent_shape: tuple[int, ...], config) -> dict:
        """``set_timesteps`` keywords beyond the step count: none for a static shift (SD3's 3.0); with dynamic
        shifting, ``mu`` from the image's token count (patches of the transformer's ``patch_size``) as diffusers'
        ``StableDiffusion3Pipeline`` computes it (``calculate_shift``)."""
        if not config.get("use_dynamic_shifting"):
            return {}
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        p = getattr(self.denoiser.config, "patch_size", 1) or 1
        tokens = (latent_shape[-2] // p) * (latent_shape[-1] // p)
        mu = calculate_shift(tokens, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
                             config.get("base_shift", 0.5), config.get("max_shift", 1.16))  # fmt: skip
        return {"mu": mu}

    # ------------------------------------------------------------------ evaluation sampling

    def sampling_scheduler(self):
        return self.load_scheduler()  # a new instance, unshifted: the pipeline sets its own timesteps

    def sampling_sequence_length(self) -> int:
        return self.sequence_length()

    @classmethod
    def load_sampling_components(cls, pretrain_path: str, weights_path: str | None, device, dtype: torch.dtype,
                                 vae_path: str | None = None, vae_dtype: torch.dtype = torch.float32,
                                 max_sequence_length: int | None = None) -> Components:  # fmt: skip
        """The base model's parts from ``pretrain_path``, the transformer's weights from ``weights_path``; the
        sampler is the model's own ``FlowMatchEulerDiscreteScheduler`` with its shift, unchanged."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        transformer = from_pretrained(cls.denoiser_class(), pretrain_path, subfolder=cls.denoiser_folder,
                                      torch_dtype=dtype)  # fmt: skip
        if weights_path is not None:
            cls.load_weights_file(transformer, weights_path)
        scheduler = from_pretrained(FlowMatchEulerDiscreteScheduler, pretrain_path, subfolder="scheduler")
        tokenizers, encoders = cls.load_text_parts(pretrain_path, torch_dtype=dtype)
        vae = cls.load_sampling_vae(pretrain_path, vae_path, vae_dtype)
        for m in (transformer, vae, *encoders):
            m.to(device).eval().requires_grad_(False)
        msl = cls.max_sequence_length(max_sequence_length, tokenizers[-1])
        return Components(cls, transformer, vae, scheduler, tokenizers, encoders, msl)

    @classmethod
    def sampling_pipeline(cls, comp: Components):
        pipe = cls.build_pipeline(comp.scheduler, comp.tokenizers, comp.text_encoders, comp.denoiser, comp.vae)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    @classmethod
    def encode_sampling_prompt(cls, comp: Components, prompt: str, pipe=None) -> tuple[torch.Tensor, torch.Tensor]:
        """The pipeline's own ``encode_prompt`` for one prompt (one at a time: batch-independent)."""
        return cls.prompt_embeds(pipe or cls.sampling_pipeline(comp), [prompt], comp.device, comp.max_sequence_length)

    @classmethod
    def sampling_prompt(cls, comp: Components, prompt: str, pipe) -> dict[str, torch.Tensor]:
        """One prompt's conditioning as keyword arguments of the family's pipeline (``prompt_embeds=...``); the
        default is the embeddings and pooled embeddings of ``encode_sampling_prompt``."""
        embeds, pooled = cls.encode_sampling_prompt(comp, prompt, pipe)
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}

    @classmethod
    def join_prompts(cls, parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """The conditioning of several prompts for one pipeline call: rows stacked (a family whose embeddings differ
        in length per prompt pads them as its pipeline pads a batch)."""
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    @classmethod
    def sampling_latent_channels(cls, vae) -> int:
        """Channels of the initial latent (the protocol draws it at 1/8 of the image size)."""
        return vae.config.latent_channels

    @classmethod
    @torch.no_grad()
    def sample_latents(cls, comp: Components, prompts: list[str], height: int, width: int, steps: int,
                       guidance: float, seed, sampler: str = "reference",
                       rows_per_call: int | None = None) -> torch.Tensor:  # fmt: skip
        """Denoised latents through the family's pipeline (what its ``decode_latent`` takes); ``guidance`` is the
        pipeline's own scale (``sample`` says what it means for the family); ``sampler`` has no other choice here;
        ``rows_per_call``: latents per transformer call (default: ``prompts_per_call``)."""
        from sdpo.sampling.images import encode_each

        pipe = cls.sampling_pipeline(comp)
        enc = encode_each(prompts, lambda p: cls.sampling_prompt(comp, p, pipe))  # each distinct prompt once
        lat = initial_latents(comp, len(prompts), height, width, seed, cls.sampling_latent_channels(comp.vae))
        negative = functools.cache(lambda: cls.sampling_prompt(comp, "", pipe))  # encoded once, if used
        step = rows_per_call or prompts_per_call(comp.device, len(prompts))  # CPU: one prompt per transformer call
        return torch.cat([
            cls.sample(pipe, lat[i : i + step], negative, **cls.join_prompts(enc[i : i + step]),
                       num_inference_steps=steps, guidance_scale=guidance, height=height, width=width,
                       output_type="latent", max_sequence_length=comp.max_sequence_length)
            for i in range(0, len(prompts), step)
        ])  # fmt: skip

    @classmethod
    def build_pipeline(cls, scheduler, tokenizers: list, text_encoders: list, transformer=None, vae=None):
        """The family's diffusers pipeline from loaded parts (text only when ``transformer``/``vae`` are None)."""
        raise NotImplementedError

    def text_pipeline(self):
        """A diffusers pipeline holding only the text parts, for its own ``encode_prompt``."""
        return self.build_pipeline(self.scheduler, self.tokenizers, self.text_encoders)

    @classmethod
    def prompt_embeds(cls, pipe, prompts: list[str], device, max_sequence_length: int):
        """``(sequence embeddings, pooled embeddings)`` as the pipeline's ``encode_prompt`` makes them."""
        raise NotImplementedError

    @torch.no_grad()
    def encode_prompt(self, captions: list[str]) -> Conditioning:
        embeds, pooled = self.prompt_embeds(self.text_pipeline(), captions, self.device, self.sequence_length())
        return {"encoder_hidden_states": embeds, "pooled_projections": pooled}

    @classmethod
    def sample(cls, pipe, latents: torch.Tensor, negative, **kw) -> torch.Tensor:
        """Run the pipeline from ``(N, C, h, w)`` initial ``latents`` and return ``(N, ...)`` denoised ones (what
        ``decode_latent`` takes); ``negative()`` gives the empty prompt's ``sampling_prompt`` when the family uses
        classifier-free guidance; ``kw`` are the pipeline's own arguments (prompt embeddings, steps, guidance, size)."""
        raise NotImplementedError
