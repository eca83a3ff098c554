"""CLIP score: open_clip ViT-H/14 trained on LAION-2B (laion2b_s32b_b79k); score = cosine(image, text)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from sdpo.rewards import openclip
from sdpo.rewards.sources import RewardConfig, Source, describe, resolve_file

# The hub repo holds open_clip_config.json plus the weights; a mirror of it is a complete local model folder.
REPO = Source("clip", "SDPO_CLIP_MODEL", "laion/CLIP-ViT-H-14-laion2B-s32B-b79K")
ARCH = "ViT-H-14"


def sources(cfg: RewardConfig) -> str:
    return describe(REPO, cfg.root)


def _locate(cfg: RewardConfig) -> tuple[str | Path, Path]:
    """(architecture, weight file): a local folder gives both; otherwise the built-in ViT-H-14 and a hub download."""
    folder = Path(os.environ[REPO.env]).expanduser() if os.environ.get(REPO.env) else None
    if folder is None and cfg.root is not None and (cfg.root / REPO.repo).is_dir():
        folder = cfg.root / REPO.repo
    if folder is not None:
        weights = openclip.weights_in(folder)
        if weights is None:  # let resolve_file build the one-line error naming the expected file
            resolve_file(Source(REPO.metric, REPO.env, REPO.repo, openclip.WEIGHT_FILES[0], on_hub=False), cfg.root)
        arch = folder if (folder / openclip.CONFIG_FILE).is_file() else ARCH
        return arch, weights
    return ARCH, resolve_file(Source(REPO.metric, REPO.env, REPO.repo, openclip.WEIGHT_FILES[1]), cfg.root)


class ClipScore(openclip.OpenClipCosine):
    name = "clip"

    def __init__(self, device: torch.device, cfg: RewardConfig) -> None:
        super().__init__(device)
        self.source = sources(cfg)
        arch, weights = _locate(cfg)
        self.model, self.tokenizer, self.preprocess = openclip.load(arch, weights, self.name, device)
