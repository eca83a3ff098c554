"""HPSv2: open_clip ViT-H/14 fine-tuned on human preferences (HPD v2); score = cosine(image, text).

The architecture is the built-in ``ViT-H-14`` (the ``hpsv2`` package's vendored open_clip has the
same state-dict keys and shapes, checked by the parity test); the released checkpoint is a dict
``{"state_dict": ...}``. Preprocessing follows the ``hpsv2`` package, not current open_clip: it
converts to a tensor *before* the bicubic resize and centre crop, which changes pixels slightly.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torchvision import transforms as T

from sdpo.rewards import openclip
from sdpo.rewards.sources import RewardConfig, Source, describe, resolve_file

REPO = "xswu/HPSv2"
CHECKPOINTS = {"v2.0": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}
ARCH_ENV = "SDPO_HPSV2_ARCH"  # a built-in open_clip name or a folder/file with open_clip_config.json


def checkpoint_source(version: str) -> Source:
    return Source("hpsv2", "SDPO_HPSV2_CHECKPOINT", REPO, CHECKPOINTS[version])


def architecture(cfg: RewardConfig) -> str | Path:
    """$SDPO_HPSV2_ARCH, else an open_clip_config.json in the mirrored repo folder, else ViT-H-14."""
    if os.environ.get(ARCH_ENV):
        return os.environ[ARCH_ENV]
    if cfg.root is not None and (cfg.root / REPO / openclip.CONFIG_FILE).is_file():
        return cfg.root / REPO
    return "ViT-H-14"


def sources(cfg: RewardConfig) -> str:
    return f"{cfg.hps_version} checkpoint={describe(checkpoint_source(cfg.hps_version), cfg.root)} arch={architecture(cfg)}"


def hps_transform(size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> T.Compose:
    """The hpsv2 package's validation transform: tensor first, then bicubic resize, centre crop, normalise."""
    return T.Compose(
        [
            T.ToTensor(),
            T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(size),
            T.Normalize(mean, std),
        ]
    )


class HPSv2(openclip.OpenClipCosine):
    name = "hpsv2"

    def __init__(self, device: torch.device, cfg: RewardConfig) -> None:
        super().__init__(device)
        self.source = sources(cfg)
        arch = architecture(cfg)
        weights = resolve_file(checkpoint_source(cfg.hps_version), cfg.root)
        self.model, self.tokenizer, _ = openclip.load(arch, weights, self.name, device)
        self.preprocess = hps_transform(**openclip.preprocess_cfg(arch))
