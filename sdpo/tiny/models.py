"""Tiny image-model pipeline folders: real diffusers folders (same classes and layout as the released
models) with networks of a few thousand parameters; and two helpers that make a tiny VAE behave like a trained one."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from sdpo.tiny.text import TEXT_DIM, clip_tokenizer, t5_encoder, t5_tokenizer, text_config

# A tiny VAE still downsamples by 8 (four blocks), so latent shapes follow the real formula.
VAE_BLOCKS = (8, 16, 16, 16)
_TIME_EMBED_DIM = 8  # SDXL addition_time_embed_dim; six time ids -> 6 * 8 inputs


def _flow_vae(latent_channels: int = 16, shift_factor: float = 0.1159, scaling_factor: float = 0.3611):
    """A 16-channel VAE with FLUX's shift and scale (four blocks: downsamples by 8, like the real one)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=VAE_BLOCKS, layers_per_block=1,
        norm_num_groups=8, latent_channels=latent_channels, sample_size=64, shift_factor=shift_factor,
        scaling_factor=scaling_factor, use_quant_conv=False, use_post_quant_conv=False,
    )  # fmt: skip


def build_tiny_flow_model(kind: str, out: str | Path, seed: int = 0, heads: int = 2, layers: int = 1) -> Path:
    """A tiny FLUX.1 (``kind="flux"``, with a guidance embedding like FLUX.1-dev) or SD3 pipeline folder.

    ``heads`` (of width 8) and ``layers`` widen and deepen the transformer (the CPU demo uses more)."""
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    out = Path(out)
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        clip_tok = clip_tokenizer(Path(tmp) / "clip")
        t5_tok = t5_tokenizer(Path(tmp) / "t5")
    if kind == "flux":
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=64, num_layers=layers, num_single_layers=layers, attention_head_dim=8,
            num_attention_heads=heads, joint_attention_dim=TEXT_DIM, pooled_projection_dim=TEXT_DIM,
            guidance_embeds=True, axes_dims_rope=(2, 2, 4),
        )  # fmt: skip
        # FLUX.1-dev's scheduler config: dynamic shifting at sampling time, unshifted training sigmas.
        scheduler = FlowMatchEulerDiscreteScheduler(
            shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
            max_image_seq_len=4096,
        )  # fmt: skip
        pipe = FluxPipeline(scheduler=scheduler, vae=_flow_vae(), text_encoder=CLIPTextModel(text_config()),
                            tokenizer=clip_tok, text_encoder_2=t5_encoder(), tokenizer_2=t5_tok,
                            transformer=transformer)  # fmt: skip
    elif kind == "sd3":
        transformer = SD3Transformer2DModel(
            sample_size=8, patch_size=2, in_channels=16, num_layers=2 * layers, attention_head_dim=8,
            num_attention_heads=heads,
            joint_attention_dim=TEXT_DIM, caption_projection_dim=16, pooled_projection_dim=2 * TEXT_DIM,
            out_channels=16, pos_embed_max_size=16,
        )  # fmt: skip
        scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)  # SD3's static shift
        pipe = StableDiffusion3Pipeline(
            scheduler=scheduler, vae=_flow_vae(shift_factor=0.0609, scaling_factor=1.5305),
            text_encoder=CLIPTextModelWithProjection(text_config()), tokenizer=clip_tok,
            text_encoder_2=CLIPTextModelWithProjection(text_config()), tokenizer_2=clip_tok,
            text_encoder_3=t5_encoder(), tokenizer_3=t5_tok, transformer=transformer,
        )  # fmt: skip
    else:
        raise ValueError(f"unknown flow model kind {kind!r}: use 'flux' or 'sd3'")
    pipe.save_pretrained(out)
    return out


def tiny_unet_config(kind: str, block_out_channels: tuple[int, int] = (16, 32)) -> dict:
    """UNet2DConditionModel kwargs of the tiny model of ``kind`` ("sd15" or "sdxl").

    ``block_out_channels`` widens the UNet (the CPU demo uses a wider one so SFT makes a usable
    reference denoiser); channels must be multiples of 8 (the group norm's group count)."""
    cfg = dict(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=tuple(block_out_channels),
        layers_per_block=1,
        norm_num_groups=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=8,
        cross_attention_dim=TEXT_DIM,
    )
    if kind == "sdxl":
        cfg.update(
            cross_attention_dim=2 * TEXT_DIM,  # penultimate states of both encoders, concatenated
            addition_embed_type="text_time",
            addition_time_embed_dim=_TIME_EMBED_DIM,
            projection_class_embeddings_input_dim=6 * _TIME_EMBED_DIM + TEXT_DIM,
            use_linear_projection=True,
        )
    elif kind != "sd15":
        raise ValueError(f"unknown model kind {kind!r}: use 'sd15' or 'sdxl'")
    return cfg


KINDS = ("sd15", "sdxl", "sd3", "flux", "cogvideox", "wan", "qwenimage", "flux2", "flux2-klein", "zimage")


def build_tiny_model(kind: str, out: str | Path, seed: int = 0, block_out_channels: tuple[int, int] = (16, 32)) -> Path:
    """Write a tiny diffusers pipeline folder of ``kind`` (one of ``KINDS``) and return its path.

    For sd3/flux, ``block_out_channels`` other than the default widens the transformer the same way
    (``block_out_channels[0] // 8`` heads, two blocks of each kind)."""
    if kind in ("cogvideox", "wan"):
        from sdpo.tiny.video import build_tiny_video_model

        return build_tiny_video_model(kind, out, seed)
    if kind in ("qwenimage", "flux2", "flux2-klein", "zimage"):  # LLM text encoders: a builder module each
        from sdpo.tiny.flux2 import build as flux2
        from sdpo.tiny.qwenimage import build as qwenimage
        from sdpo.tiny.zimage import build as zimage

        builders = {"qwenimage": qwenimage, "flux2": flux2, "zimage": zimage,
                    "flux2-klein": lambda out, seed: flux2(out, seed, klein=True)}  # fmt: skip
        return builders[kind](out, seed)
    if kind in ("sd3", "flux"):
        wide = tuple(block_out_channels) != (16, 32)
        return build_tiny_flow_model(kind, out, seed, *((block_out_channels[0] // 8, 2) if wide else ()))
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        PNDMScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    out = Path(out)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**tiny_unet_config(kind, block_out_channels))
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=VAE_BLOCKS,
        layers_per_block=1,
        norm_num_groups=8,
        latent_channels=4,
        sample_size=64,
    )
    # The same scheduler classes and betas as the real SD1.5 / SDXL folders.
    betas = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
    if kind == "sd15":
        scheduler = PNDMScheduler(**betas, set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1)
    else:
        scheduler = EulerDiscreteScheduler(**betas, steps_offset=1, timestep_spacing="leading")
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = clip_tokenizer(Path(tmp) / "tok")
    if kind == "sd15":
        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=CLIPTextModel(text_config()),
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    else:
        pipe = StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=CLIPTextModel(text_config()),
            text_encoder_2=CLIPTextModelWithProjection(text_config()),
            tokenizer=tokenizer,
            tokenizer_2=tokenizer,
            unet=unet,
            scheduler=scheduler,
        )
    pipe.save_pretrained(out)
    return out


def calibrate_tiny_vae(folder: str | Path, pixels: torch.Tensor, log_std: float = -7.0) -> float:
    """Make a tiny random VAE encode images the way a trained one does; returns the new scaling factor.

    A randomly initialised encoder predicts a log-variance near 0, so a posterior sample is mostly
    noise (std ~1) and the picture barely shows in the latents.  A trained SD VAE has a posterior
    std near 1e-3 and a ``scaling_factor`` (0.18215) that brings its latents to unit variance.  This
    pins the log-variance output to ``2 * log_std`` and sets ``scaling_factor`` to 1 / std of the
    posterior means of ``pixels`` (N, 3, H, W in [-1, 1]).  The demo needs it; tests need not.
    """
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
    c = vae.config.latent_channels
    moments = vae.quant_conv if vae.quant_conv is not None else vae.encoder.conv_out  # FLUX/SD3 VAEs: no quant_conv
    with torch.no_grad():
        moments.weight[c:].zero_()
        moments.bias[c:].fill_(2.0 * log_std)
        means = vae.encode(pixels).latent_dist.mean
        scale = float(1.0 / means.std())
    if vae.config.shift_factor is not None:  # flow VAEs centre their latents too: (z - shift) * scale
        vae.register_to_config(shift_factor=float(means.mean()))
    vae.register_to_config(scaling_factor=scale)
    vae.save_pretrained(Path(folder) / "vae")
    return scale


def fit_tiny_decoder(
    folder: str | Path, pixels: torch.Tensor, steps: int = 600, batch: int = 16, seed: int = 0, progress: bool = False
) -> float:
    """Train only the decoder of a (calibrated) tiny VAE to invert its fixed encoder on ``pixels``, so that
    sampled latents decode into pictures (validation images then show shapes, not a random decoder's
    texture).  The encoder is untouched, so training, which only encodes, is unchanged; so is the global
    random state (draws come from a seeded generator).  Returns the final reconstruction MSE."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        latents = vae.encode(pixels).latent_dist.mean
    vae.requires_grad_(False)
    params = [*vae.decoder.parameters(), *(vae.post_quant_conv.parameters() if vae.post_quant_conv else [])]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=2e-3)
    noise = 0.05 * latents.std()  # a sampler's latents are never exactly the encoder's
    loss = torch.tensor(float("nan"))
    from tqdm.auto import tqdm

    for _ in tqdm(range(steps), desc="fitting the tiny VAE decoder", disable=not progress, leave=False):
        idx = torch.randint(0, len(pixels), (batch,), generator=gen)
        z = latents[idx] + noise * torch.randn(latents[idx].shape, generator=gen)
        loss = ((vae.decode(z).sample - pixels[idx]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    vae.save_pretrained(Path(folder) / "vae")
    return float(loss.detach())
