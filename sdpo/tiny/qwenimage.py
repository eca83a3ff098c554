"""A tiny Qwen-Image folder: ``QwenImagePipeline`` with the released classes (transformer, Qwen-Image VAE,
Qwen2.5-VL text encoder, Qwen2 tokenizer, the model's scheduler config) at a few thousand parameters."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from sdpo.tiny.llm import QWEN_SPECIAL, qwen_tokenizer, vocab_size

TEXT = 16  # text encoder width (the transformer's joint_attention_dim)
# Qwen/Qwen-Image's scheduler/scheduler_config.json: dynamic exponential shifting at sampling time only.
SCHEDULER = dict(base_image_seq_len=256, base_shift=0.5, max_image_seq_len=8192, max_shift=0.9, shift=1.0,
                 shift_terminal=0.02, time_shift_type="exponential", use_dynamic_shifting=True)  # fmt: skip


def build(out: str | Path, seed: int = 0) -> Path:
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImagePipeline,
        QwenImageTransformer2DModel,
    )
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    out = Path(out)
    # The pipeline's own prompt template, so that its system turn is 34 tokens as with Qwen2.5-VL's vocabulary.
    template = QwenImagePipeline(None, None, None, None, None).prompt_template_encode
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = qwen_tokenizer(Path(tmp) / "tok", (template,))
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL}  # the vision tokens of the VL config
    torch.manual_seed(seed)
    transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=64, out_channels=16, num_layers=1, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=TEXT, guidance_embeds=False, axes_dims_rope=(2, 2, 4),
    )  # fmt: skip
    g = torch.Generator().manual_seed(seed)  # per-channel statistics far from (0, 1), so normalising is visible
    vae = AutoencoderKLQwenImage(
        base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1, temperal_downsample=[False, True, True],
        latents_mean=(0.5 * torch.randn(16, generator=g)).tolist(),
        latents_std=(0.5 + torch.rand(16, generator=g)).tolist(),
    )  # fmt: skip
    config = Qwen2_5_VLConfig(
        text_config=dict(hidden_size=TEXT, intermediate_size=2 * TEXT, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, vocab_size=vocab_size(tokenizer), max_position_embeddings=2048,
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                         rope_scaling={"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"}),
        vision_config=dict(depth=1, hidden_size=TEXT, intermediate_size=TEXT, num_heads=2, out_hidden_size=TEXT),
        vocab_size=vocab_size(tokenizer), image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
    )  # fmt: skip
    text_encoder = Qwen2_5_VLForConditionalGeneration(config).eval()
    pipe = QwenImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER), vae=vae, text_encoder=text_encoder,
                             tokenizer=tokenizer, transformer=transformer)  # fmt: skip
    pipe.save_pretrained(out)
    return out
