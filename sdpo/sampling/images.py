"""Text-to-image sampling exactly as the paper's evaluation did it: the protocol, whatever the family.

Three details decide whether our images (and so the reward numbers) match the paper's
(REFERENCE.md section 5), and each has one function here so tests can pin it down:

- the initial latent (:func:`reference_initial_latent`): one seeded draw for a batch of one, shared
  by every prompt (or, given one seed per prompt, drawn per prompt the same way), so batching never
  changes an image;
- the guidance formula (:func:`reference_guidance`): ``cond + cfg * (cond - uncond)``, which is
  diffusers' classifier-free guidance with ``guidance_scale = cfg + 1`` (the SD1.5/SDXL protocol);
- one prompt encoded at a time and one image decoded at a time, so an image never depends on its
  batch neighbours (a batched matmul may round differently from a single one).

Batch invariance.  An image must not depend on the batch size or on the number of processes, so
everything that could mix rows is done per prompt: prompts are encoded one at a time, latents decoded
one at a time, and on a CPU the denoiser itself runs one prompt per call (its cond and uncond rows,
:func:`prompts_per_call`), whatever the batch.  A CPU matmul's row does depend on how many rows the
call has: the MKL that PyTorch ships picks its SGEMM kernel by the row count, and on an AMD EPYC
(Zen 4, AVX-512) a row rounds one way in a call of 1 row, another in 2-3 rows and a third in 4 or
more, in every ``MKL_CBWR`` mode (``AUTO,STRICT`` as set by ``eval/generate.py``, ``AVX2,STRICT``,
``AVX512,STRICT``; ``COMPATIBLE`` splits at 1 / 2-7 / 8+), measured with torch 2.14 and oneMKL 2024.2.
MKL's strict mode promises results independent of the thread count, on its Intel code paths, not
of the row count.  In the UNet that hits the layers whose row count *is* the batch (the timestep
embedding MLP, each ResNet block's ``time_emb_proj``, SDXL's added embeddings): one prompt (2 rows)
against four (8 rows) differ by 1.2e-7 there and by 8.6e-7 at the tiny test UNet's output, enough to
change 8-bit pixels.  The layers working on ``batch x tokens`` rows and oneDNN's convolutions (2 or
more images) rounded the same for every batch size measured, but nothing documents that, so the CPU
path does not rely on it.  One prompt per call costs little on a CPU (SD1.5's UNet in fp32 at 256 px:
two prompts as one call of 4 rows were 1.17x faster than as two calls of 2 rows, on 2 shared cores).
On an accelerator the denoiser takes the whole batch, where batching pays; GPU libraries pick kernels
by shape too, so byte-equal images across batch sizes are a CPU promise (the tests check it there).

What is model-specific (how prompts are encoded, the sampler loop or pipeline, what the guidance
number means) is the family's (``sdpo.families``): :class:`Components` carries its family class,
and :func:`sample_latents` hands over to ``family.sample_latents``.  Nothing here knows which
family it runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from sdpo.errors import UserError

SAMPLERS = ("reference", "pipeline")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Components:
    """Everything generation needs, loaded once: the denoiser and text encoders in the sampling dtype, the VAE in
    its own dtype, and the family class whose methods drive them (``ModelFamily.sample_latents``)."""

    family: type
    denoiser: torch.nn.Module
    vae: torch.nn.Module
    scheduler: object
    tokenizers: list
    text_encoders: list
    max_sequence_length: int | None = None  # text tokens, for families with a T5-style encoder

    @property
    def unet(self) -> torch.nn.Module:  # the SD-era name of the denoiser
        return self.denoiser

    @property
    def device(self) -> torch.device:
        return self.denoiser.device

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


def initial_latents(comp: Components, n: int, height: int, width: int, seed: int | Sequence[int],
                    channels: int) -> torch.Tensor:  # fmt: skip
    """The unscaled initial latents of ``n`` prompts: ``n`` copies of the reference latent for one int seed,
    else prompt ``i``'s own reference latent for ``seed[i]``."""
    if isinstance(seed, int):
        lat = reference_initial_latent(height, width, seed, comp.device, comp.dtype, channels)
        return lat.expand(n, -1, -1, -1).contiguous()
    if len(seed) != n:
        raise ValueError(f"{len(seed)} seeds for {n} prompts")
    return torch.cat([reference_initial_latent(height, width, s, comp.device, comp.dtype, channels) for s in seed])


def prompts_per_call(device: torch.device | str, n: int) -> int:
    """How many of ``n`` prompts one denoiser call takes: one on a CPU, so that an image does not depend
    on the batch size (a CPU matmul rounds a row by the call's row count; see the module docstring),
    all of them on an accelerator."""
    return 1 if torch.device(device).type == "cpu" else max(n, 1)


def check_size(height: int, width: int) -> None:
    if height % 16 or width % 16:
        raise UserError(f"height and width must be multiples of 16, got {height}x{width}")


@torch.no_grad()
def encode_prompts(comp: Components, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(embeddings, pooled or None)`` of ``prompts``, encoded one at a time as the family's sampler does; a
    prompt listed several times (K samples of one prompt) is encoded once."""
    outs = encode_each(prompts, lambda p: comp.family.encode_sampling_prompt(comp, p))
    pooled = [p for _, p in outs]
    return torch.cat([e for e, _ in outs]), (torch.cat(pooled) if pooled[0] is not None else None)


def encode_each(prompts: list[str], encode) -> list:
    """``encode(p)`` for every entry of ``prompts``, called once per distinct prompt (each alone, so the result
    does not depend on the other prompts)."""
    done: dict[str, object] = {}
    return [done[p] if p in done else done.setdefault(p, encode(p)) for p in prompts]


def sample_latents(comp: Components, prompts: list[str], height: int, width: int, steps: int, cfg: float,
                   seed: int | Sequence[int], sampler: str = "reference",
                   rows_per_call: int | None = None) -> torch.Tensor:  # fmt: skip
    """Denoised latents for ``prompts``, every prompt starting from the same reference latent (one int seed)
    or each from its own (a list of seeds, one per prompt); ``cfg`` means what the family's guidance means.

    ``rows_per_call``: entries of ``prompts`` per denoiser call (each with its cond and uncond rows); ``None`` is
    the protocol's :func:`prompts_per_call`.  A caller that fixes the composition of every call itself (the
    online driver: one prompt's K samples per call, whatever the process count or a resume) may batch on a
    CPU too: an image then depends on its call's rows, which that caller keeps the same."""
    if sampler not in SAMPLERS:
        raise UserError(f"unknown sampler {sampler!r}: use one of {', '.join(SAMPLERS)}")
    check_size(height, width)
    return comp.family.sample_latents(comp, prompts, height, width, steps, cfg, seed, sampler,
                                      rows_per_call=rows_per_call)  # fmt: skip


@torch.no_grad()
def decode_latents(comp: Components, latents: torch.Tensor) -> list[Image.Image]:
    """Latents to 8-bit RGB images, decoded in the VAE's dtype (fp32 in the paper's setting).

    One image at a time: the decoder dominates memory at 1024 px, and decoding singly keeps each
    image independent of its batch neighbours."""
    return [_decode_one(comp, latents[i : i + 1]) for i in range(latents.shape[0])]


def _decode_one(comp: Components, latent: torch.Tensor) -> Image.Image:
    vae = comp.vae
    x = latent.to(vae.dtype) / vae.config.scaling_factor
    if getattr(vae.config, "shift_factor", None) is not None:
        x = x + vae.config.shift_factor
    x = vae.decode(x, return_dict=False)[0]
    x = (x.float() / 2 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).numpy()
    return Image.fromarray((x[0] * 255).round().astype("uint8"))


def generate_images(comp: Components, prompts: list[str], height: int, width: int, steps: int = 50,
                    cfg: float = 7.5, seed: int | Sequence[int] = 0, sampler: str = "reference",
                    rows_per_call: int | None = None) -> list[Image.Image]:  # fmt: skip
    """One image per prompt; the result for a prompt does not depend on the other prompts in the batch.
    ``seed``: one int (every prompt starts from that seed's latent) or one seed per prompt; ``rows_per_call``:
    see :func:`sample_latents`."""
    return decode_latents(comp, sample_latents(comp, prompts, height, width, steps, cfg, seed, sampler, rows_per_call))
