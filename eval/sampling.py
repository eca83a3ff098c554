"""Text-to-image sampling exactly as the paper's evaluation did it, built on diffusers parts.

Three details decide whether our images (and so the reward numbers) match the paper's
(REFERENCE.md section 5), and each has one function here so tests can pin it down:

- the initial latent (:func:`reference_initial_latent`): one seeded draw for a batch of one, shared
  by every prompt (or, given one seed per prompt, drawn per prompt the same way), so batching never
  changes an image;
- the guidance formula (:func:`reference_guidance`): ``cond + cfg * (cond - uncond)``, which is
  diffusers' classifier-free guidance with ``guidance_scale = cfg + 1``;
- the prompt encodings (:func:`encode_prompts`): max-length padding without an attention mask, the
  empty string as negative prompt, SDXL's penultimate hidden states and pooled embedding.

Two samplers share them. ``"reference"`` is a short loop over the diffusers scheduler
(``set_timesteps`` / ``scale_model_input`` / ``step``) that applies the formula in the reference
scripts' order of operations, so bf16 runs round the same way the paper's did. ``"pipeline"``
hands the same embeddings and latents to diffusers' ``StableDiffusion(XL)Pipeline`` with
``guidance_scale = cfg + 1``; it computes ``uncond + (cfg + 1) * (cond - uncond)``, equal in exact
arithmetic and within float rounding in practice (the tests measure it).

Batch invariance.  An image must not depend on the batch size or on the number of processes, so
everything that could mix rows is done per prompt: prompts are encoded one at a time, latents decoded
one at a time, and on a CPU the denoiser itself runs one prompt per call (its cond and uncond rows,
:func:`prompts_per_call`), whatever the batch.  A CPU matmul's row does depend on how many rows the
call has: the MKL that PyTorch ships picks its SGEMM kernel by the row count, and on an AMD EPYC
(Zen 4, AVX-512) a row rounds one way in a call of 1 row, another in 2-3 rows and a third in 4 or
more, in every ``MKL_CBWR`` mode (``AUTO,STRICT`` as set by ``eval/generate.py``, ``AVX2,STRICT``,
``AVX512,STRICT``; ``COMPATIBLE`` splits at 1 / 2-7 / 8+), measured with torch 2.14 and oneMKL 2024.2.
MKL's strict mode promises results independent of the thread count, on its Intel code branches, not
of the row count.  In the UNet that hits the layers whose row count *is* the batch (the timestep
embedding MLP, each ResNet block's ``time_emb_proj``, SDXL's added embeddings): one prompt (2 rows)
against four (8 rows) differ by 1.2e-7 there and by 8.6e-7 at the tiny test UNet's output, enough to
change 8-bit pixels.  The layers working on ``batch x tokens`` rows and oneDNN's convolutions (2 or
more images) rounded the same for every batch size measured, but nothing documents that, so the CPU
path does not rely on it.  One prompt per call costs little on a CPU (SD1.5's UNet in fp32 at 256 px:
two prompts as one call of 4 rows were 1.17x faster than as two calls of 2 rows, on 2 shared cores).
On an accelerator the denoiser takes the whole batch, where batching pays; GPU libraries pick kernels
by shape too, so byte-equal images across batch sizes are a CPU promise (the tests check it there).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from sdpo.errors import UserError

SAMPLERS = ("reference", "pipeline")
SDXL_DEFAULT_VAE = "madebyollin/sdxl-vae-fp16-fix"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Components:
    """Everything generation needs, loaded once: text encoders in ``dtype``, the VAE in its own dtype."""

    unet: torch.nn.Module
    vae: torch.nn.Module
    scheduler: object
    tokenizers: list
    text_encoders: list
    sdxl: bool

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        """The text encoder's dtype: the reference scheme draws the initial latent in it."""
        return self.text_encoders[0].dtype


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` is the paper's bf16 on an accelerator and fp32 on a CPU (bf16 on CPU is slow and inexact)."""
    if name == "auto":
        return torch.float32 if torch.device(device).type == "cpu" else torch.bfloat16
    if name not in DTYPES:
        raise UserError(f"unknown dtype {name!r}: use auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def latent_shape(height: int, width: int, channels: int = 4) -> tuple[int, int, int, int]:
    """The reference scripts' latent shape for one image: ``(1, C, 2*ceil(H/16), 2*ceil(W/16))``."""
    return (1, channels, 2 * math.ceil(height / 16), 2 * math.ceil(width / 16))


def reference_initial_latent(
    height: int, width: int, seed: int, device: torch.device | str, dtype: torch.dtype, channels: int = 4
) -> torch.Tensor:
    """The unscaled initial noise every prompt starts from: a generator on ``device`` seeded with
    ``seed`` draws one latent of :func:`latent_shape` in ``dtype`` (the caller multiplies by the
    scheduler's ``init_noise_sigma``). Drawing once for a batch of one is what makes the images
    independent of the batch size."""
    gen = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(latent_shape(height, width, channels), generator=gen, device=device, dtype=dtype)


def reference_guidance(cond: torch.Tensor, uncond: torch.Tensor, cfg: float) -> torch.Tensor:
    """The reference scripts' guidance: ``cond + cfg * (cond - uncond)`` (diffusers' scale is ``cfg + 1``)."""
    return cond + cfg * (cond - uncond)


# ----------------------------------------------------------------------------- loading


def _from_pretrained(cls, path: str, subfolder: str | None, what: str, **kwargs):
    try:
        return cls.from_pretrained(path, subfolder=subfolder, **kwargs)
    except (OSError, ValueError) as e:
        where = f"{path}/{subfolder}" if subfolder else path
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UserError(
            f"cannot load the {what} from {where} ({first}); pass a local folder or a reachable hub id"
        ) from None


def _vae_source(vae_path: str) -> tuple[str, str | None]:
    """A VAE folder itself, or a pipeline folder holding ``vae/`` (handy for local mirrors)."""
    p = Path(vae_path)
    if p.is_dir() and not (p / "config.json").is_file() and (p / "vae" / "config.json").is_file():
        return vae_path, "vae"
    return vae_path, None


def load_components(
    pretrain_path: str,
    unet_path: str | None,
    sdxl: bool,
    device: torch.device | str,
    dtype: torch.dtype,
    vae_path: str | None = None,
    vae_dtype: torch.dtype = torch.float32,
    family: str | None = None,
    max_sequence_length: int | None = None,
):
    """Load the base model's parts from ``pretrain_path`` (hub id or folder) and put ``unet_path``'s
    weights into its UNet (``None`` keeps the base UNet). The VAE comes from ``vae_path`` when given
    (SDXL: the fp16-fix VAE by default, as in the paper), else from the base model.  ``family`` sd3 or
    flux loads a rectified-flow model instead (``eval/flow_sampling.py``)."""
    from sdpo.families import get_family

    if family is not None and get_family(family).process == "flow":  # sd3, flux (video has its own loader)
        from eval.flow_sampling import load_flow_components

        return load_flow_components(family, pretrain_path, unet_path, device, dtype, vae_path, vae_dtype,
                                    max_sequence_length)  # fmt: skip
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from sdpo.weights import load_unet_weights

    unet = _from_pretrained(UNet2DConditionModel, pretrain_path, "unet", "base UNet", torch_dtype=dtype)
    has_add = getattr(unet.config, "addition_embed_type", None) == "text_time"
    if has_add != sdxl:
        kind = "an SDXL" if has_add else "an SD1.5-style"
        fix = "add --sdxl" if has_add else "drop --sdxl"
        raise UserError(f"{pretrain_path} is {kind} base model but --sdxl is {'off' if has_add else 'on'}: {fix}")
    if unet_path is not None:
        load_unet_weights(unet, unet_path)  # copies into the ``dtype`` parameters, as the reference does
    # The reference scripts load Euler from the base model's scheduler config (not from the pipeline's
    # PNDM config), which decides e.g. the timestep spacing; do the same.
    scheduler = _from_pretrained(EulerDiscreteScheduler, pretrain_path, "scheduler", "scheduler")
    names = ["text_encoder", "text_encoder_2"] if sdxl else ["text_encoder"]
    classes = [CLIPTextModel, CLIPTextModelWithProjection] if sdxl else [CLIPTextModel]
    tok_names = ["tokenizer", "tokenizer_2"] if sdxl else ["tokenizer"]
    encoders = [_from_pretrained(c, pretrain_path, n, n, torch_dtype=dtype) for c, n in zip(classes, names)]
    tokenizers = [_from_pretrained(CLIPTokenizer, pretrain_path, n, n) for n in tok_names]
    if vae_path is None and sdxl:
        vae_path = SDXL_DEFAULT_VAE
    src, sub = _vae_source(vae_path) if vae_path is not None else (pretrain_path, "vae")
    vae = _from_pretrained(AutoencoderKL, src, sub, "VAE", torch_dtype=vae_dtype)
    for m in (unet, vae, *encoders):
        m.to(device).eval().requires_grad_(False)
    return Components(unet, vae, scheduler, tokenizers, encoders, sdxl)


# ----------------------------------------------------------------------------- encoding


@torch.no_grad()
def encode_prompts(comp: Components, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Prompt embeddings (and SDXL's pooled embedding) as the reference scripts compute them:
    padding to the tokenizer's max length, no attention mask; SDXL concatenates both encoders'
    penultimate hidden states and pools from the second encoder.

    Prompts are encoded one at a time: it costs little next to the UNet, and a batched matmul
    may round differently from a single one, which would make images depend on the batch size."""
    outs = [_encode_one(comp, p) for p in prompts]
    embeds = torch.cat([e for e, _ in outs])
    return embeds, (torch.cat([p for _, p in outs]) if comp.sdxl else None)


def _encode_one(comp: Components, prompt: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    device = comp.device
    if not comp.sdxl:
        tok = comp.tokenizers[0]
        ids = tok([prompt], padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
        return comp.text_encoders[0](ids.input_ids.to(device))[0].to(comp.dtype), None
    states, pooled = [], None
    for tok, enc in zip(comp.tokenizers, comp.text_encoders):
        ids = tok([prompt], padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
        out = enc(ids.input_ids.to(device), output_hidden_states=True)
        pooled = out[0]
        states.append(out.hidden_states[-2])
    return torch.cat(states, dim=-1).to(comp.text_encoders[-1].dtype), pooled


# ----------------------------------------------------------------------------- sampling


def prompts_per_call(device: torch.device | str, n: int) -> int:
    """How many of ``n`` prompts one denoiser call takes: one on a CPU, so that an image does not depend
    on the batch size (a CPU matmul rounds a row by the call's row count; see the module docstring),
    all of them on an accelerator."""
    return 1 if torch.device(device).type == "cpu" else max(n, 1)


def _initial_latents(comp: Components, n: int, height: int, width: int, seed: int | Sequence[int]) -> torch.Tensor:
    """The unscaled initial latents of ``n`` prompts (the caller or pipeline scales by init_noise_sigma): ``n``
    copies of the reference latent for one int seed, else prompt ``i``'s own reference latent for ``seed[i]``."""
    channels = comp.unet.config.in_channels
    if isinstance(seed, int):
        lat = reference_initial_latent(height, width, seed, comp.device, comp.dtype, channels)
        return lat.expand(n, -1, -1, -1).contiguous()
    if len(seed) != n:
        raise ValueError(f"{len(seed)} seeds for {n} prompts")
    return torch.cat([reference_initial_latent(height, width, s, comp.device, comp.dtype, channels) for s in seed])


def _time_ids(comp: Components, n: int, height: int, width: int, dtype: torch.dtype) -> torch.Tensor:
    """SDXL micro-conditioning of the reference: original size, no crop, target size."""
    return torch.tensor([[height, width, 0, 0, height, width]], dtype=dtype, device=comp.device).repeat(n, 1)


@torch.no_grad()
def _sample_reference(comp, cond, pooled, neg, neg_pooled, lat, height, width, steps, cfg) -> torch.Tensor:
    sched = comp.scheduler
    sched.set_timesteps(steps, device=comp.device)
    latents = lat * sched.init_noise_sigma
    n = latents.shape[0]
    hidden = torch.cat([cond, neg.expand(n, -1, -1)])  # cond half first, as in the reference scripts
    added = None
    if comp.sdxl:
        time_ids = _time_ids(comp, n, height, width, latents.dtype).repeat(2, 1)
        added = {"text_embeds": torch.cat([pooled, neg_pooled.expand(n, -1)]), "time_ids": time_ids}
    for t in sched.timesteps:
        model_in = sched.scale_model_input(latents, t).repeat(2, 1, 1, 1)
        pred = comp.unet(model_in, t, encoder_hidden_states=hidden, added_cond_kwargs=added, return_dict=False)[0]
        pred_cond, pred_uncond = pred.chunk(2)
        latents = sched.step(reference_guidance(pred_cond, pred_uncond, cfg), t, latents, return_dict=False)[0]
    return latents


def _pipeline(comp: Components):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if comp.sdxl:
        pipe = StableDiffusionXLPipeline(
            vae=comp.vae,
            text_encoder=comp.text_encoders[0],
            text_encoder_2=comp.text_encoders[1],
            tokenizer=comp.tokenizers[0],
            tokenizer_2=comp.tokenizers[1],
            unet=comp.unet,
            scheduler=comp.scheduler,
            add_watermarker=False,
        )
    else:
        pipe = StableDiffusionPipeline(
            vae=comp.vae,
            text_encoder=comp.text_encoders[0],
            tokenizer=comp.tokenizers[0],
            unet=comp.unet,
            scheduler=comp.scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def _sample_pipeline(comp, cond, pooled, neg, neg_pooled, lat, height, width, steps, cfg) -> torch.Tensor:
    n = lat.shape[0]
    kwargs = dict(
        prompt_embeds=cond,
        negative_prompt_embeds=neg.expand(n, -1, -1),
        latents=lat,  # the pipeline multiplies by init_noise_sigma itself
        num_inference_steps=steps,
        guidance_scale=cfg + 1.0,  # diffusers: uncond + g (cond - uncond) == cond + cfg (cond - uncond)
        height=height,
        width=width,
        output_type="latent",  # decoded by decode_latents in fp32, like the reference
    )
    if comp.sdxl:
        kwargs.update(pooled_prompt_embeds=pooled, negative_pooled_prompt_embeds=neg_pooled.expand(n, -1))
    return _pipeline(comp)(**kwargs).images


def sample_latents(
    comp: Components,
    prompts: list[str],
    height: int,
    width: int,
    steps: int,
    cfg: float,
    seed: int | Sequence[int],
    sampler: str = "reference",
) -> torch.Tensor:
    """Denoised latents for ``prompts``, every prompt starting from the same reference latent (one int seed)
    or each from its own (a list of seeds, one per prompt).  On a CPU each prompt is denoised in a call of
    its own (:func:`prompts_per_call`), so its latent does not depend on the other prompts."""
    if sampler not in SAMPLERS:
        raise UserError(f"unknown sampler {sampler!r}: use one of {', '.join(SAMPLERS)}")
    if height % 16 or width % 16:
        raise UserError(f"height and width must be multiples of 16, got {height}x{width}")
    cond, pooled = encode_prompts(comp, prompts)
    neg, neg_pooled = encode_prompts(comp, [""])  # empty-string negative prompt (SDXL: not zeros)
    lat = _initial_latents(comp, len(prompts), height, width, seed)
    fn = _sample_reference if sampler == "reference" else _sample_pipeline
    step = prompts_per_call(comp.device, len(prompts))  # CPU: one prompt per denoiser call
    return torch.cat([
        fn(comp, cond[i : i + step], None if pooled is None else pooled[i : i + step], neg, neg_pooled,
           lat[i : i + step], height, width, steps, cfg)
        for i in range(0, len(prompts), step)
    ])  # fmt: skip


@torch.no_grad()
def decode_latents(comp: Components, latents: torch.Tensor) -> list[Image.Image]:
    """Latents to 8-bit RGB images, decoded in the VAE's dtype (fp32 in the paper's setting).

    One image at a time: the decoder dominates memory at 1024 px, and decoding singly keeps each
    image independent of its batch neighbours (see :func:`encode_prompts`)."""
    return [_decode_one(comp, latents[i : i + 1]) for i in range(latents.shape[0])]


def _decode_one(comp: Components, latent: torch.Tensor) -> Image.Image:
    vae = comp.vae
    x = latent.to(vae.dtype) / vae.config.scaling_factor
    if getattr(vae.config, "shift_factor", None) is not None:
        x = x + vae.config.shift_factor
    x = vae.decode(x, return_dict=False)[0]
    x = (x.float() / 2 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).numpy()
    return Image.fromarray((x[0] * 255).round().astype("uint8"))


def generate_images(
    comp: Components,
    prompts: list[str],
    height: int,
    width: int,
    steps: int = 50,
    cfg: float = 7.5,
    seed: int | Sequence[int] = 0,
    sampler: str = "reference",
) -> list[Image.Image]:
    """One image per prompt; the result for a prompt does not depend on the other prompts in the batch.
    ``seed``: one int (every prompt starts from that seed's latent) or one seed per prompt.
    For SD3/FLUX components ``cfg`` is the model's own guidance (see ``eval/flow_sampling.py``)."""
    from eval.flow_sampling import FlowComponents, sample_flow_latents

    if isinstance(comp, FlowComponents):
        seeds = [seed] * len(prompts) if isinstance(seed, int) else list(seed)
        return decode_latents(comp, sample_flow_latents(comp, prompts, height, width, steps, cfg, seeds))
    return decode_latents(comp, sample_latents(comp, prompts, height, width, steps, cfg, seed, sampler))
