"""Tiny FLUX.2 folders: ``Flux2Pipeline`` ([dev]: guidance embedding, Mistral 3 text encoder with a Pixtral
processor) and ``Flux2KleinPipeline`` ([klein] base: no guidance embedding, Qwen3 text encoder), with the released
classes at a few thousand parameters.  The text encoders have as many layers as the pipelines read hidden states
from ((10, 20, 30) and (9, 18, 27)), each 16 channels wide."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from sdpo.tiny.llm import MISTRAL_SPECIAL, mistral_processor, qwen3_config, qwen_tokenizer, vocab_size

TEXT = 16  # text encoder width: the transformer's joint_attention_dim is three stacked layers of it
# FLUX.1-dev's scheduler config, which diffusers' FLUX.2 conversion script gives FLUX.2 (also FLUX.2-klein's).
SCHEDULER = dict(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                 max_image_seq_len=4096)  # fmt: skip


def _vae(seed: int):
    """A 32-channel FLUX.2 VAE (downsamples by 8) whose batch-norm statistics are far from (0, 1)."""
    from diffusers import AutoencoderKLFlux2

    vae = AutoencoderKLFlux2(
        block_out_channels=(8, 16, 16, 16), layers_per_block=1, latent_channels=32, norm_num_groups=8, sample_size=64,
    )  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        vae.bn.running_mean.copy_(0.3 * torch.randn(vae.bn.running_mean.shape, generator=g))
        vae.bn.running_var.copy_(0.5 + torch.rand(vae.bn.running_var.shape, generator=g))
    return vae


def build(out: str | Path, seed: int = 0, klein: bool = False) -> Path:
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline, Flux2Pipeline, Flux2Transformer2DModel
    from diffusers.pipelines.flux2.system_messages import SYSTEM_MESSAGE
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration, Qwen3ForCausalLM

    out = Path(out)
    with tempfile.TemporaryDirectory() as tmp:
        if klein:
            tokenizer = qwen_tokenizer(Path(tmp) / "tok")
        else:  # the system message [dev]'s pipeline puts before every prompt: its words are single tokens
            tokenizer = mistral_processor(Path(tmp) / "tok", (SYSTEM_MESSAGE,))
    torch.manual_seed(seed)
    transformer = Flux2Transformer2DModel(
        patch_size=1, in_channels=128, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=3 * TEXT, timestep_guidance_channels=256, axes_dims_rope=(4, 4, 4, 4),
        guidance_embeds=not klein,
    )  # fmt: skip
    vae = _vae(seed)
    if klein:
        text_encoder = Qwen3ForCausalLM(qwen3_config(vocab_size(tokenizer), layers=28, hidden=TEXT)).eval()
        pipe = Flux2KleinPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER), vae=vae,
                                  text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer,
                                  is_distilled=False)  # fmt: skip
    else:
        tok = tokenizer.tokenizer
        special = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        config = Mistral3Config(
            text_config=dict(model_type="mistral", vocab_size=vocab_size(tokenizer), hidden_size=TEXT,
                             intermediate_size=2 * TEXT, num_hidden_layers=30, num_attention_heads=2,
                             num_key_value_heads=1, head_dim=8, max_position_embeddings=1024, sliding_window=None,
                             **special),
            vision_config=dict(model_type="pixtral", hidden_size=TEXT, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=TEXT, image_size=32, patch_size=8, head_dim=8),
            image_token_index=tok.convert_tokens_to_ids(MISTRAL_SPECIAL[8]), spatial_merge_size=1, **special,
        )  # fmt: skip
        text_encoder = Mistral3ForConditionalGeneration(config).eval()
        pipe = Flux2Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER), vae=vae, text_encoder=text_encoder,
                             tokenizer=tokenizer, transformer=transformer)  # fmt: skip
    pipe.save_pretrained(out)
    return out
