"""Loading SD1.5 / SDXL components (hub id or local folder) and encoding prompts.

Frozen parts (text encoders, VAE, reference UNet) live in the weight dtype; the trained UNet
stays fp32 and runs under autocast.  Attention uses PyTorch's scaled-dot-product kernel (the
diffusers default): no xformers needed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sdpo.errors import UserError
from sdpo.weights import load_unet_weights

log = logging.getLogger(__name__)


@dataclass
class Components:
    unet: torch.nn.Module
    vae: torch.nn.Module
    noise_scheduler: object
    tokenizers: list = field(default_factory=list)
    text_encoders: list = field(default_factory=list)
    ref_unet: torch.nn.Module | None = None
    sdxl: bool = False


def check_family(path: str, sdxl: bool) -> None:
    """Catch SDXL flags on an SD1.5 folder (and the reverse) before any weights are read."""
    root = Path(path).expanduser()
    if not root.is_dir():
        return  # hub id: checked after the UNet config is read
    if not (root / "unet").is_dir():
        raise UserError(f"{root}: not a diffusers pipeline folder (no unet/ subfolder)")
    has_two = (root / "text_encoder_2").is_dir()
    if sdxl and not has_two:
        raise UserError(f"{root} is an SD1.5-style folder (no text_encoder_2/) but --sdxl was given; drop --sdxl")
    if has_two and not sdxl:
        raise UserError(f"{root} is an SDXL folder (has text_encoder_2/); add --sdxl")


_check_family = check_family  # the earlier private name


def _from_pretrained(cls, path: str, **kw):
    try:
        return cls.from_pretrained(path, **kw)
    except OSError as e:
        where = kw.get("subfolder", "")
        raise UserError(
            f"could not load {cls.__name__} from {path!r}{'/' + where if where else ''}: "
            f"{str(e).strip().splitlines()[0][:200]} (offline? pass a local folder)"
        ) from None


def load_unet(cfg) -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    unet = _from_pretrained(
        UNet2DConditionModel, cfg.pretrained_model_name_or_path, subfolder="unet", revision=cfg.revision
    )
    is_sdxl = getattr(unet.config, "addition_embed_type", None) == "text_time"
    if is_sdxl != bool(cfg.sdxl):
        hint = "add --sdxl" if is_sdxl else "drop --sdxl"
        raise UserError(f"{cfg.pretrained_model_name_or_path}: UNet is {'SDXL' if is_sdxl else 'SD1.5-style'}; {hint}")
    if cfg.unet_init:
        load_unet_weights(unet, cfg.unet_init)
    return unet


def load_components(cfg, device: torch.device, weight_dtype: torch.dtype, needs_reference: bool) -> Components:
    from diffusers import AutoencoderKL, DDPMScheduler
    from transformers import AutoTokenizer, CLIPTextModel, CLIPTextModelWithProjection

    path, rev = cfg.pretrained_model_name_or_path, cfg.revision
    check_family(path, cfg.sdxl)
    sched = _from_pretrained(DDPMScheduler, path, subfolder="scheduler", revision=rev)
    if sched.config.prediction_type not in ("epsilon", "v_prediction"):
        raise UserError(f"{path}: prediction_type {sched.config.prediction_type!r} is not supported")
    tokenizers = [_from_pretrained(AutoTokenizer, path, subfolder="tokenizer", revision=rev)]
    encoders = [_from_pretrained(CLIPTextModel, path, subfolder="text_encoder", revision=rev)]
    if cfg.sdxl:
        tokenizers.append(_from_pretrained(AutoTokenizer, path, subfolder="tokenizer_2", revision=rev))
        encoders.append(_from_pretrained(CLIPTextModelWithProjection, path, subfolder="text_encoder_2", revision=rev))
    if cfg.pretrained_vae_model_name_or_path:
        vae_path = cfg.pretrained_vae_model_name_or_path
        # A VAE folder/repo itself (madebyollin/sdxl-vae-fp16-fix) or a pipeline folder holding vae/.
        # --revision names a commit of the main model, not of this repo, so it is not passed on.
        local = Path(vae_path).expanduser()
        vae_path = str(local) if local.is_dir() else vae_path
        sub = "vae" if (local / "vae").is_dir() else None
        vae = _from_pretrained(AutoencoderKL, vae_path, subfolder=sub)
    else:
        vae = _from_pretrained(AutoencoderKL, path, subfolder="vae", revision=rev)
    unet = load_unet(cfg)
    ref_unet = load_unet(cfg) if needs_reference else None
    for m in (vae, *encoders, *([ref_unet] if ref_unet is not None else [])):
        m.requires_grad_(False).eval().to(device)
        if weight_dtype != torch.float32:  # (fp32 already: skip diffusers' cast warning)
            m.to(dtype=weight_dtype)
    if cfg.sdxl and weight_dtype == torch.float16 and not cfg.pretrained_vae_model_name_or_path:
        # SDXL's original VAE overflows to NaN in fp16; the reference runs use the fp16-fix VAE.
        log.warning("SDXL in fp16 without --pretrained_vae_model_name_or_path: keeping the VAE in fp32")
        vae.to(dtype=torch.float32)
    unet.train()
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    return Components(unet, vae, sched, tokenizers, encoders, ref_unet, bool(cfg.sdxl))


# ----------------------------------------------------------------------------- conditioning


@torch.no_grad()
def encode_prompt(comps: Components, captions: list[str], device: torch.device):
    """SD1.5: last hidden state of the CLIP text encoder.  SDXL: penultimate hidden states of both
    encoders concatenated on the feature axis, pooled (projected) embedding from the second."""
    states, pooled = [], None
    for tok, enc in zip(comps.tokenizers, comps.text_encoders):
        ids = tok(captions, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
        out = enc(ids.input_ids.to(device), output_hidden_states=comps.sdxl)
        if comps.sdxl:
            states.append(out.hidden_states[-2])
            pooled = out[0]  # text_embeds of the projection model (the last encoder wins)
        else:
            states.append(out[0])
    return torch.cat(states, dim=-1), pooled


def sdxl_time_ids(resolution: int, n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``[orig_h, orig_w, crop_top, crop_left, target_h, target_w] = [res, res, 0, 0, res, res]``."""
    ids = torch.tensor([resolution, resolution, 0, 0, resolution, resolution], dtype=dtype, device=device)
    return ids.repeat(n, 1)
