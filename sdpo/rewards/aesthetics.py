"""LAION aesthetic predictor v2: CLIP ViT-L/14 image embedding, L2-normalised, through a linear MLP head.

The head (``sac+logos+ava1-l14-linearMSE.pth``) was trained on unit-norm OpenAI CLIP ViT-L/14 image
embeddings, so the normalisation is part of the model, not a choice. The prompt is not used.
"""

from __future__ import annotations

import torch
from PIL import Image

from sdpo.rewards.base import Scorer, clip_image_processor, features, load_state_dict, load_strict, rgb, unit
from sdpo.rewards.mlp import RewardMLP
from sdpo.rewards.sources import RewardConfig, Source, describe, load_pretrained, resolve_file

CLIP = Source("aesthetics", "SDPO_AESTHETICS_CLIP", "openai/clip-vit-large-patch14")
HEAD = Source(
    "aesthetics",
    "SDPO_AESTHETICS_HEAD",
    "improved-aesthetic-predictor",
    "sac+logos+ava1-l14-linearMSE.pth",
    on_hub=False,
    origin="https://github.com/christophschuhmann/improved-aesthetic-predictor",
)


def sources(cfg: RewardConfig) -> str:
    return f"clip={describe(CLIP, cfg.root)} head={describe(HEAD, cfg.root)}"


class Aesthetics(Scorer):
    name = "aesthetics"

    def __init__(self, device: torch.device, cfg: RewardConfig) -> None:
        super().__init__(device)
        from transformers import CLIPModel

        self.source = sources(cfg)
        head_path = resolve_file(HEAD, cfg.root)  # the small file first: fail fast before loading CLIP
        self.clip = load_pretrained(CLIPModel.from_pretrained, CLIP, cfg.root, "CLIP model").eval().to(device)
        self.image_processor = load_pretrained(clip_image_processor, CLIP, cfg.root, "image processor")
        self.head = RewardMLP(self.clip.config.projection_dim)
        load_strict(self.head, load_state_dict(head_path, self.name), head_path, self.name)
        self.head.eval().to(device)

    @torch.inference_mode()
    def score(self, images: list[Image.Image], prompts: list[str]) -> list[float]:
        self._check(images, prompts)
        pixels = self.image_processor(images=rgb(images), return_tensors="pt")["pixel_values"].to(self.device)
        emb = unit(features(self.clip.get_image_features(pixel_values=pixels)).float())
        return self.head(emb).squeeze(-1).tolist()
