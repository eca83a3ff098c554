"""The rewards a round can rank its samples by, for images and for videos, behind one small interface.

    reward = load_reward(name, media, device, model_root)
    reward.score(samples, prompts)   # -> list[float], higher is better; samples: PIL images or uint8 (F, H, W, 3)

Images: the five reward models of the paper's tables (``sdpo.rewards``) and the tiny world's two weight-free
rewards (``tiny_colour``, ``tiny_picture``: ``sdpo.rewards.colour``).  Videos: any of those image rewards
averaged over a video's frames, and VBench's temporal flickering (``sdpo.rewards.temporal``).

Your own reward (a video reward model such as VideoAlign, say) plugs in by name as ``package.module:factory``:
``factory(device, model_root, media)`` returns an object with ``name`` and ``score(samples, prompts)`` as above.
"""

from __future__ import annotations

import importlib

import numpy as np
import torch
from PIL import Image

from sdpo.errors import UserError
from sdpo.rewards import METRICS, RewardConfig, load_scorer

# weight-free image rewards (module, class)
EXTRA_IMAGE = {"tiny_colour": ("sdpo.rewards.colour", "TinyColour"), "tiny_picture": ("sdpo.rewards.colour", "TinyPicture")}
VIDEO_ONLY = ("temporal_flickering",)
IMAGE_REWARDS: tuple[str, ...] = (*METRICS, *EXTRA_IMAGE)


def valid_names(media: str) -> tuple[str, ...]:
    return IMAGE_REWARDS + (VIDEO_ONLY if media == "video" else ())


def check_reward(name: str, media: str, flag: str) -> None:
    """One line naming the valid rewards when ``name`` is neither one of them nor a ``module:factory`` plug-in."""
    if ":" in name:
        _factory(name, flag)
        return
    if name not in valid_names(media):
        extra = " (temporal_flickering is for video families)" if name in VIDEO_ONLY else ""
        raise UserError(f"{flag} {name}: unknown reward{extra}; valid for {media}s: {', '.join(valid_names(media))}, "
                        "or package.module:factory for your own")  # fmt: skip


def _factory(spec: str, flag: str):
    module, _, attr = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise UserError(f"{flag} {spec}: cannot import {attr!r} from {module!r} ({e})") from None


class ImageReward:
    """A ``sdpo.rewards`` scorer on images (a video's frames are scored as images, then averaged)."""

    def __init__(self, scorer, video: bool):
        self.scorer, self.video, self.name = scorer, video, scorer.name

    def score(self, samples: list, prompts: list[str]) -> list[float]:
        if not self.video:
            return self.scorer.score(samples, prompts)
        out = []
        for frames, prompt in zip(samples, prompts):
            images = [Image.fromarray(f) for f in frames]
            out.append(float(np.mean(self.scorer.score(images, [prompt] * len(images)))))
        return out


class TemporalFlickering:
    name = "temporal_flickering"

    def score(self, samples: list, prompts: list[str]) -> list[float]:
        from sdpo.rewards.temporal import temporal_flickering

        return [temporal_flickering(v) for v in samples]


def load_reward(name: str, media: str, device: torch.device, model_root: str | None):
    """The reward ``name`` loaded for ``media`` ("image" or "video") on ``device``."""
    if ":" in name:
        return _factory(name, "--reward")(device, model_root, media)
    if name == "temporal_flickering":
        return TemporalFlickering()
    if name in EXTRA_IMAGE:
        module, cls = EXTRA_IMAGE[name]
        scorer = getattr(importlib.import_module(module), cls)(device)
    else:
        scorer = load_scorer(name, device, RewardConfig.make(model_root))
    return ImageReward(scorer, media == "video")
