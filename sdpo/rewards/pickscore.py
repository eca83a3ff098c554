"""PickScore: a CLIP ViT-H/14 fine-tuned on Pick-a-Pic preferences; score = cosine(image, text), no logit scale."""

from __future__ import annotations

import torch
from PIL import Image

from sdpo.rewards.base import Scorer, clip_image_processor, cosine, features, rgb
from sdpo.rewards.sources import RewardConfig, Source, describe, load_pretrained

MODEL = Source("pickscore", "SDPO_PICKSCORE_MODEL", "yuvalkirstain/PickScore_v1")
# PickScore ships no processor of its own; its authors pair it with the LAION ViT-H/14 one.
PROCESSOR = Source("pickscore", "SDPO_PICKSCORE_PROCESSOR", "laion/CLIP-ViT-H-14-laion2B-s32B-b79K")


def sources(cfg: RewardConfig) -> str:
    return f"model={describe(MODEL, cfg.root)} processor={describe(PROCESSOR, cfg.root)}"


class PickScore(Scorer):
    name = "pickscore"

    def __init__(self, device: torch.device, cfg: RewardConfig) -> None:
        super().__init__(device)
        from transformers import AutoTokenizer, CLIPModel

        self.source, root = sources(cfg), cfg.root
        self.model = load_pretrained(CLIPModel.from_pretrained, MODEL, root, "CLIP model").eval().to(device)
        self.tokenizer = load_pretrained(AutoTokenizer.from_pretrained, PROCESSOR, root, "tokenizer")
        self.image_processor = load_pretrained(clip_image_processor, PROCESSOR, root, "image processor")

    @torch.inference_mode()
    def score(self, images: list[Image.Image], prompts: list[str]) -> list[float]:
        self._check(images, prompts)
        pixels = self.image_processor(images=rgb(images), return_tensors="pt")["pixel_values"].to(self.device)
        text = self.tokenizer(prompts, padding=True, truncation=True, max_length=77, return_tensors="pt")
        img = features(self.model.get_image_features(pixel_values=pixels))
        txt = features(self.model.get_text_features(**text.to(self.device)))
        return cosine(img, txt)
