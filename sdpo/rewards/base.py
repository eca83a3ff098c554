"""The one interface every reward model implements, and the small helpers they share.

A scorer is loaded once and then called on batches: ``score(images, prompts) -> list[float]``,
one float per (image, prompt) pair, higher is better. Batching is the caller's choice and must
not change the numbers (tests check this), so scorers never pool statistics across a batch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import torch
from PIL import Image

from sdpo.checkpoint.weights import load_tensor_dict
from sdpo.errors import UserError


def default_device(device: str | None = None) -> torch.device:
    """The caller's device, else CUDA when present, else CPU (no device name is hard-coded)."""
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Scorer(ABC):
    """A loaded reward model. ``source`` describes the weights used, so cached scores can be invalidated."""

    name: str = ""
    source: str = ""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    @abstractmethod
    def score(self, images: list[Image.Image], prompts: list[str]) -> list[float]:
        """Score each image against its prompt (same length lists)."""

    def to(self, device: str | torch.device) -> Scorer:
        """Move every module of this scorer to ``device`` (in-training validation keeps reward models on the
        CPU between uses and moves each to the accelerator only to score)."""
        self.device = torch.device(device)
        for value in vars(self).values():
            if isinstance(value, torch.nn.Module):
                value.to(self.device)
        return self

    def _check(self, images: list[Image.Image], prompts: list[str]) -> None:
        if len(images) != len(prompts):
            raise ValueError(f"{self.name}: {len(images)} images but {len(prompts)} prompts")


def rgb(images: list[Image.Image]) -> list[Image.Image]:
    """Generated PNGs may carry alpha or a palette; every reward model was trained on RGB."""
    return [im if im.mode == "RGB" else im.convert("RGB") for im in images]


def unit(x: torch.Tensor) -> torch.Tensor:
    """L2-normalise the last dimension (cosine similarity is the dot product of unit vectors)."""
    return x / x.norm(dim=-1, keepdim=True)


def cosine(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    """Row-wise cosine similarity, without any logit scale (the papers' reported scores)."""
    return (unit(a.float()) * unit(b.float())).sum(-1).tolist()


def features(out) -> torch.Tensor:
    """transformers 5 returns a model output whose ``pooler_output`` is the projected feature; 4.x a tensor."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def load_state_dict(path: str | Path, metric: str) -> dict[str, torch.Tensor]:
    """Load a released checkpoint with ``weights_only=True``: a file that would run code when unpickled is refused."""
    return {k.removeprefix("module."): v for k, v in load_tensor_dict(path, metric).items()}


def load_strict(module: torch.nn.Module, sd: dict[str, torch.Tensor], path: str | Path, metric: str) -> None:
    """``load_state_dict`` whose failure names the file and the first mismatching keys, in one line."""
    try:
        module.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        msg = " ".join(str(e).split())
        raise UserError(f"{metric}: {path} does not fit the model: {msg[:300]}") from None


def clip_image_processor(where: str, **kwargs):
    """The PIL-based CLIP image processor: transformers 5 defaults to a torchvision one whose resize differs
    slightly from the PIL bicubic resize that the reward models' authors (on transformers 4) used."""
    try:
        from transformers import CLIPImageProcessorPil as Processor
    except ImportError:  # transformers 4: the default processor is the PIL one
        from transformers import CLIPImageProcessor as Processor
    return Processor.from_pretrained(where, **kwargs)
