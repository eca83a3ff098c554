"""Tiny, offline stand-ins for the real models and data.

Every test and the CPU demo use these: a *real* diffusers folder (same layout, same classes,
loadable with ``from_pretrained``) whose networks are a few thousand parameters, and a real
Pick-a-Pic-format parquet dataset with JPEG bytes.  Nothing here touches the network.

    python -m sdpo.tiny model --kind sd15|sdxl|sd3|flux|cogvideox|wan --out DIR [--seed 0]
    python -m sdpo.tiny pairs --out DIR --n 32 [--size 64] [--seed 0]
    python -m sdpo.tiny pairs --video --out DIR [--n 16 --size 32 --frames 9 --format parquet|videodpo|videoalign]

The video models and data live in ``sdpo.tiny_video``.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

# A tiny VAE still downsamples by 8 (four blocks), so latent shapes follow the real formula.
_VAE_BLOCKS = (8, 16, 16, 16)
_TEXT_DIM = 32
_TIME_EMBED_DIM = 8  # SDXL addition_time_embed_dim; six time ids -> 6 * 8 inputs


def clip_tokenizer(out: Path):
    """A byte-level CLIP tokenizer with no merges: every byte is a token, so any prompt encodes."""
    from open_clip.tokenizer import bytes_to_unicode
    from transformers import CLIPTokenizer

    chars = list(bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n")
        tok = CLIPTokenizer(str(Path(tmp) / "vocab.json"), str(Path(tmp) / "merges.txt"), model_max_length=77)
    tok.save_pretrained(out)
    return tok


def t5_tokenizer(out: Path, max_length: int = 32):
    """A T5 tokenizer built offline: a ``tokenizers`` Unigram model over printable ASCII (plus a few
    accented letters and the word-boundary mark), ``</s>`` appended, as T5's post-processor does."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    chars = [chr(c) for c in range(32, 127)] + ["\u2581"] + list("\u00e9\u00e0\u00e8\u00fc\u00f6\u00e4\u00e7\u00f1")
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(c, -2.0) for c in chars]
    backend = Tokenizer(models.Unigram(vocab, unk_id=2))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    backend.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    tok = T5TokenizerFast(tokenizer_object=backend, eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                          extra_ids=0, model_max_length=max_length)  # fmt: skip
    tok.save_pretrained(out)
    return tok


def _t5_encoder(seed_offset: int = 0):
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(vocab_size=128, d_model=_TEXT_DIM, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                   relative_attention_num_buckets=8, dropout_rate=0.0, feed_forward_proj="gated-gelu")  # fmt: skip
    return T5EncoderModel(cfg).eval()


def _flow_vae(latent_channels: int = 16, shift_factor: float = 0.1159, scaling_factor: float = 0.3611):
    """A 16-channel VAE with FLUX's shift and scale (four blocks: downsamples by 8, like the real one)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=_VAE_BLOCKS, layers_per_block=1,
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
            num_attention_heads=heads, joint_attention_dim=_TEXT_DIM, pooled_projection_dim=_TEXT_DIM,
            guidance_embeds=True, axes_dims_rope=(2, 2, 4),
        )  # fmt: skip
        # FLUX.1-dev's scheduler config: dynamic shifting at sampling time, unshifted training sigmas.
        scheduler = FlowMatchEulerDiscreteScheduler(
            shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
            max_image_seq_len=4096,
        )  # fmt: skip
        pipe = FluxPipeline(scheduler=scheduler, vae=_flow_vae(), text_encoder=CLIPTextModel(_text_config()),
                            tokenizer=clip_tok, text_encoder_2=_t5_encoder(), tokenizer_2=t5_tok,
                            transformer=transformer)  # fmt: skip
    elif kind == "sd3":
        transformer = SD3Transformer2DModel(
            sample_size=8, patch_size=2, in_channels=16, num_layers=2 * layers, attention_head_dim=8,
            num_attention_heads=heads,
            joint_attention_dim=_TEXT_DIM, caption_projection_dim=16, pooled_projection_dim=2 * _TEXT_DIM,
            out_channels=16, pos_embed_max_size=16,
        )  # fmt: skip
        scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)  # SD3's static shift
        pipe = StableDiffusion3Pipeline(
            scheduler=scheduler, vae=_flow_vae(shift_factor=0.0609, scaling_factor=1.5305),
            text_encoder=CLIPTextModelWithProjection(_text_config()), tokenizer=clip_tok,
            text_encoder_2=CLIPTextModelWithProjection(_text_config()), tokenizer_2=clip_tok,
            text_encoder_3=_t5_encoder(), tokenizer_3=t5_tok, transformer=transformer,
        )  # fmt: skip
    else:
        raise ValueError(f"unknown flow model kind {kind!r}: use 'flux' or 'sd3'")
    pipe.save_pretrained(out)
    return out


def _text_config(**extra):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=1000,
        hidden_size=_TEXT_DIM,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=_TEXT_DIM,
        bos_token_id=512,
        eos_token_id=513,
        pad_token_id=513,
        **extra,
    )


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
        cross_attention_dim=_TEXT_DIM,
    )
    if kind == "sdxl":
        cfg.update(
            cross_attention_dim=2 * _TEXT_DIM,  # penultimate states of both encoders, concatenated
            addition_embed_type="text_time",
            addition_time_embed_dim=_TIME_EMBED_DIM,
            projection_class_embeddings_input_dim=6 * _TIME_EMBED_DIM + _TEXT_DIM,
            use_linear_projection=True,
        )
    elif kind != "sd15":
        raise ValueError(f"unknown model kind {kind!r}: use 'sd15' or 'sdxl'")
    return cfg


def build_tiny_model(kind: str, out: str | Path, seed: int = 0, block_out_channels: tuple[int, int] = (16, 32)) -> Path:
    """Write a tiny diffusers pipeline folder of ``kind`` (sd15, sdxl, sd3, flux) and return its path.

    For sd3/flux, ``block_out_channels`` other than the default widens the transformer the same way
    (``block_out_channels[0] // 8`` heads, two blocks of each kind)."""
    if kind in ("cogvideox", "wan"):
        from sdpo.tiny_video import build_tiny_video_model

        return build_tiny_video_model(kind, out, seed)
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
        block_out_channels=_VAE_BLOCKS,
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
            text_encoder=CLIPTextModel(_text_config()),
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
            text_encoder=CLIPTextModel(_text_config()),
            text_encoder_2=CLIPTextModelWithProjection(_text_config()),
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
    folder: str | Path, pixels: torch.Tensor, steps: int = 600, batch: int = 16, seed: int = 0
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
    for _ in range(steps):
        idx = torch.randint(0, len(pixels), (batch,), generator=gen)
        z = latents[idx] + noise * torch.randn(latents[idx].shape, generator=gen)
        loss = ((vae.decode(z).sample - pixels[idx]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    vae.save_pretrained(Path(folder) / "vae")
    return float(loss.detach())


# ----------------------------------------------------------------------------- pair data

_COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40)}
_SHAPES = ("circle", "square")


def draw_shape(shape: str, colour: tuple[int, int, int], size: int, jitter: tuple[int, int] = (0, 0)) -> Image.Image:
    """A plain picture: one coloured shape on a light background."""
    img = Image.new("RGB", (size, size), (235, 235, 235))
    d = ImageDraw.Draw(img)
    q = size // 4
    box = (q + jitter[0], q + jitter[1], 3 * q + jitter[0], 3 * q + jitter[1])
    (d.ellipse if shape == "circle" else d.rectangle)(box, fill=colour)
    return img


def jpeg_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def tiny_pair_rows(n: int, size: int = 64, seed: int = 0, tie_every: int = 8) -> list[dict]:
    """``n`` Pick-a-Pic-format rows: the caption names a colour and shape; the image that matches it
    wins.  Labels alternate which column holds the winner, and every ``tie_every``-th row is a tie."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        shape = rng.choice(_SHAPES)
        good, bad = rng.sample(sorted(_COLOURS), 2)
        jit = (rng.randint(-3, 3), rng.randint(-3, 3))
        win = jpeg_bytes(draw_shape(shape, _COLOURS[good], size, jit))
        lose = jpeg_bytes(draw_shape(shape, _COLOURS[bad], size, jit))
        label = 0.5 if tie_every and i % tie_every == tie_every - 1 else float(rng.random() < 0.5)
        jpg_0, jpg_1 = (win, lose) if label != 0.0 else (lose, win)
        rows.append(
            {
                "caption": f"a {good} {shape}",
                "jpg_0": jpg_0,
                "jpg_1": jpg_1,
                "label_0": label,
                "label_1": 1.0 - label,
                "model_0": "tiny",
                "model_1": "tiny",
                "best_image_uid": f"{i}-{0 if label == 1.0 else 1}",
            }
        )
    return rows


def write_pairs(rows: list[dict], out: str | Path, split: str = "train") -> Path:
    """Write rows as ``out/data/<split>-00000-of-00001.parquet`` (the layout ``load_dataset(out)`` reads)."""
    import pandas as pd

    out = Path(out)
    (out / "data").mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(out / "data" / f"{split}-00000-of-00001.parquet", index=False)
    return out


def build_tiny_pairs(out: str | Path, n: int = 32, size: int = 64, seed: int = 0) -> Path:
    return write_pairs(tiny_pair_rows(n, size=size, seed=seed), out)


def _main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m sdpo.tiny", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    m = sub.add_parser("model", help="write a tiny diffusers pipeline folder")
    m.add_argument("--kind", choices=["sd15", "sdxl", "sd3", "flux", "cogvideox", "wan"], default="sd15")
    m.add_argument("--out", required=True)
    m.add_argument("--seed", type=int, default=0)
    d = sub.add_parser("pairs", help="write a tiny Pick-a-Pic-format parquet dataset")
    d.add_argument("--out", required=True)
    d.add_argument("--n", type=int, default=None, help="pairs (default 32, --video 16)")
    d.add_argument("--size", type=int, default=None, help="pixels (default 64, --video 32)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--video", action="store_true", help="moving-shape clips: the winner moves as the caption says")
    d.add_argument("--frames", type=int, default=9, help="--video: frames per clip")
    d.add_argument("--format", default="parquet", choices=["parquet", "videodpo", "videoalign"], help="--video index")
    a = p.parse_args(argv)
    np.random.seed(a.seed)
    if a.what == "model":
        print(build_tiny_model(a.kind, a.out, a.seed))
    elif a.video:
        from sdpo.tiny_video import build_tiny_video_pairs

        print(build_tiny_video_pairs(a.out, a.n or 16, a.frames, a.size or 32, a.seed, a.format))
    else:
        print(build_tiny_pairs(a.out, a.n or 32, a.size or 64, a.seed))


if __name__ == "__main__":
    _main()
