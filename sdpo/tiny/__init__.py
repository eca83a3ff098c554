"""Tiny, offline stand-ins for the real models and data.

Every test and the CPU demo use these: a *real* diffusers folder (same layout, same classes,
loadable with ``from_pretrained``) whose networks are a few thousand parameters, and a real
Pick-a-Pic-format parquet dataset with JPEG bytes.  Nothing here touches the network.

    python -m sdpo.tiny model --kind sd15|sdxl|sd3|flux|cogvideox|wan|qwenimage|flux2|flux2-klein|zimage --out DIR
    python -m sdpo.tiny pairs --out DIR --n 32 [--size 64] [--seed 0]
    python -m sdpo.tiny pairs --video --out DIR [--n 16 --size 32 --frames 9 --format parquet|videodpo|videoalign]

Modules: ``models`` (image pipelines), ``video`` (video pipelines and clips), ``images`` (pair data),
``text`` (tokenizers and text encoders), ``llm`` (the LLM tokenizers and encoders of ``qwenimage``, ``flux2``,
``zimage``: one builder module each), ``rewards`` (reward-model roots).
"""

from sdpo.tiny.images import COLOURS, SHAPES, build_tiny_pairs, draw_shape, jpeg_bytes, tiny_pair_rows, write_pairs
from sdpo.tiny.models import (
    build_tiny_flow_model,
    build_tiny_model,
    calibrate_tiny_vae,
    fit_tiny_decoder,
    tiny_unet_config,
)
from sdpo.tiny.text import clip_tokenizer, t5_encoder, t5_tokenizer, text_config

__all__ = [
    "COLOURS",
    "SHAPES",
    "build_tiny_flow_model",
    "build_tiny_model",
    "build_tiny_pairs",
    "calibrate_tiny_vae",
    "clip_tokenizer",
    "draw_shape",
    "fit_tiny_decoder",
    "jpeg_bytes",
    "t5_encoder",
    "t5_tokenizer",
    "text_config",
    "tiny_pair_rows",
    "tiny_unet_config",
    "write_pairs",
]
