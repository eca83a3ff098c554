"""Loading a model for training: the family's parts (``sdpo.families``), under the SD-era names.

Frozen parts (text encoders, VAE, reference denoiser) live in the weight dtype; the trained
denoiser stays fp32 and runs under autocast.  Attention uses PyTorch's scaled-dot-product kernel
(the diffusers default): no xformers needed.  The functions here keep the names the SD1.5/SDXL code
used (``load_components``, ``encode_prompt``, ``check_family``); new code calls the family directly.
"""

from __future__ import annotations

from pathlib import Path

import torch

from sdpo.errors import UserError
from sdpo.families import get_family
from sdpo.families.base import ModelFamily
from sdpo.families.sdxl import sdxl_time_ids

Components = ModelFamily  # the loaded parts of one model and its maths

__all__ = ["Components", "check_family", "encode_prompt", "load_components", "sdxl_time_ids"]


def check_family(path: str, sdxl: bool) -> None:
    """``--sdxl`` on an SD1.5-style folder: stop before any weights are read."""
    root = Path(path).expanduser()
    if root.is_dir() and sdxl and (root / "unet").is_dir() and not (root / "text_encoder_2").is_dir():
        raise UserError(f"{root} is an SD1.5-style folder (no text_encoder_2/) but --sdxl was given; drop --sdxl")


def load_components(cfg, device: torch.device, weight_dtype: torch.dtype, needs_reference: bool) -> ModelFamily:
    """The family named by ``cfg.model_family`` (resolved by ``sdpo.config``), loaded for training."""
    return get_family(cfg.model_family).load(cfg, device, weight_dtype, needs_reference)


@torch.no_grad()
def encode_prompt(comps: ModelFamily, captions: list[str], device: torch.device | None = None):
    """``(hidden states, pooled or None)``: SD1.5 and SDXL conditioning as the reference computes it."""
    cond = comps.encode_prompt(captions)
    return cond["encoder_hidden_states"], cond.get("text_embeds", cond.get("pooled_projections"))
