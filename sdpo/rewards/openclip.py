"""Building open_clip models from a built-in architecture name or a local ``open_clip_config.json`` folder.

HPSv2 and the CLIP score are both ViT-H/14 open_clip models; only the weights and the image
preprocessing differ. Weights are always loaded here with ``weights_only=True`` and a strict key
check, so a wrong file fails loudly instead of leaving random weights in place.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from PIL import Image

from sdpo.errors import UserError
from sdpo.rewards.base import Scorer, cosine, load_state_dict, load_strict, rgb

CONFIG_FILE = "open_clip_config.json"
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def model_name(arch: str | Path) -> str:
    """open_clip's identifier for ``arch``: a folder holding open_clip_config.json, the file itself, or a built-in name."""
    p = Path(arch)
    if p.name == CONFIG_FILE and p.is_file():
        p = p.parent
    if p.is_dir():
        if not (p / CONFIG_FILE).is_file():
            raise UserError(f"{p}: no {CONFIG_FILE} (an open_clip model folder needs one)")
        return f"local-dir:{p}"
    import open_clip

    if open_clip.get_model_config(str(arch)) is None:
        raise UserError(
            f"unknown open_clip architecture {arch!r} (neither a built-in name nor a folder with {CONFIG_FILE})"
        )
    return str(arch)


def preprocess_cfg(arch: str | Path) -> dict:
    """Image size, mean and std for ``arch`` (open_clip defaults, overridden by the folder's preprocess_cfg)."""
    import open_clip

    name = model_name(arch)
    if name.startswith("local-dir:"):
        cfg = json.loads((Path(name.removeprefix("local-dir:")) / CONFIG_FILE).read_text())
        model_cfg, extra = cfg["model_cfg"], cfg.get("preprocess_cfg", {})
    else:
        model_cfg, extra = open_clip.get_model_config(name), {}
    size = model_cfg["vision_cfg"].get("image_size", 224)
    return {
        "size": size if isinstance(size, int) else size[0],
        "mean": tuple(extra.get("mean", open_clip.OPENAI_DATASET_MEAN)),
        "std": tuple(extra.get("std", open_clip.OPENAI_DATASET_STD)),
    }


@contextmanager
def quiet() -> Iterator[None]:
    """Silence open_clip's root-logger warnings while a model is built without its weights."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def weights_in(folder: Path) -> Path | None:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    return None


def load(arch: str | Path, weights: Path, metric: str, device: torch.device):
    """(model, tokenizer, val_preprocess) with ``weights`` loaded strictly into the ``arch`` architecture."""
    import open_clip

    name = model_name(arch)
    with quiet():  # open_clip warns "initialized randomly": true only until the weights load below
        model, _, preprocess = open_clip.create_model_and_transforms(name, load_weights=False)
    if weights.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(weights))
    else:
        sd = load_state_dict(weights, metric)
    load_strict(model, sd, weights, metric)
    return model.eval().to(device), open_clip.get_tokenizer(name), preprocess


class OpenClipCosine(Scorer):
    """An open_clip model scored as cosine(image, text), no logit scale; subclasses set model and preprocess."""

    model: torch.nn.Module
    tokenizer: object
    preprocess: object

    @torch.inference_mode()
    def score(self, images: list[Image.Image], prompts: list[str]) -> list[float]:
        self._check(images, prompts)
        pixels = torch.stack([self.preprocess(im) for im in rgb(images)]).to(self.device)
        img = self.model.encode_image(pixels)
        txt = self.model.encode_text(self.tokenizer(prompts).to(self.device))
        return cosine(img, txt)
