"""A tiny Z-Image folder: ``ZImagePipeline`` with the released classes (Z-Image transformer, the FLUX.1-style
16-channel VAE, a Qwen3 text encoder, a Qwen2 tokenizer with Qwen3's chat template) at a few thousand parameters."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from sdpo.tiny.llm import qwen3_config, qwen_tokenizer, vocab_size

TEXT = 16  # text encoder width (the transformer's cap_feat_dim)
# Z-Image's scheduler: a static shift, no dynamic shifting (6.0 as Tongyi-MAI/Z-Image publishes it; Turbo: 3.0).
SCHEDULER = dict(shift=6.0, use_dynamic_shifting=False)


def build(out: str | Path, seed: int = 0) -> Path:
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
    from transformers import Qwen3Model

    out = Path(out)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = qwen_tokenizer(Path(tmp) / "tok")
    torch.manual_seed(seed)
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=32, n_layers=1, n_refiner_layers=1, n_heads=2,
        n_kv_heads=2, cap_feat_dim=TEXT, axes_dims=[8, 4, 4], axes_lens=[256, 32, 32],
    )  # fmt: skip
    with torch.no_grad():  # allocated with torch.empty by the class: give them values
        transformer.x_pad_token.normal_()
        transformer.cap_pad_token.normal_()
    vae = AutoencoderKL(  # FLUX.1's VAE layout and its shift and scale, which Z-Image uses; downsamples by 8
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=8, latent_channels=16, sample_size=64,
        shift_factor=0.1159, scaling_factor=0.3611, use_quant_conv=False, use_post_quant_conv=False,
    )  # fmt: skip
    text_encoder = Qwen3Model(qwen3_config(vocab_size(tokenizer), layers=3, hidden=TEXT)).eval()
    pipe = ZImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER), vae=vae, text_encoder=text_encoder,
                          tokenizer=tokenizer, transformer=transformer)  # fmt: skip
    pipe.save_pretrained(out)
    return out
