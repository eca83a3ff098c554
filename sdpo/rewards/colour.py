"""Two weight-free rewards for the tiny coloured-shape world (``sdpo.tiny.images``): the CPU demo's and the
tests' stand-ins for a learned reward model, with the same ``Scorer`` interface as the five real ones.

* ``tiny_colour``: how much of the image is the caption's colour.  Each pixel counts ``max(0, 1 - d / 120)``
  with ``d`` its RGB distance to the colour's value, and the score is the mean over pixels (a soft fraction in
  [0, 1]).  It is the reward the online demo trains on, and it can be gamed the way learned rewards are: an
  image filled with the colour scores 1 whether or not it shows the caption's shape.
* ``tiny_picture``: how close the image is to the caption's picture as ``sdpo.tiny`` draws it (the shape in
  its colour, centred, on the light background): ``1 - mean |x - target| / 255`` over pixels and channels.
  It rewards the shape and the background as well as the colour, so it falls when ``tiny_colour`` is gamed by
  flooding the frame: the demo's held-out reward.

A caption without a colour word (or shape word, for the picture) scores 0.
"""

from __future__ import annotations

import re

import numpy as np
from PIL import Image

from sdpo.rewards.base import Scorer, rgb
from sdpo.tiny.images import COLOURS, SHAPES, draw_shape

SOFT_DISTANCE = 120.0  # RGB distance at which a pixel stops counting (the tiny colours are >= 150 apart)


def caption_colour(caption: str) -> str | None:
    """The first colour word of ``caption`` that the tiny world knows."""
    words = re.findall(r"[a-z]+", caption.lower())
    return next((w for w in words if w in COLOURS), None)


def caption_shape(caption: str) -> str | None:
    words = re.findall(r"[a-z]+", caption.lower())
    return next((w for w in words if w in SHAPES), None)


def colour_fraction(image: Image.Image, colour: tuple[int, int, int]) -> float:
    x = np.asarray(image, dtype=np.float32)
    d = np.linalg.norm(x - np.asarray(colour, dtype=np.float32), axis=-1)
    return float(np.clip(1.0 - d / SOFT_DISTANCE, 0.0, 1.0).mean())


def picture_similarity(image: Image.Image, shape: str, colour: tuple[int, int, int]) -> float:
    target = draw_shape(shape, colour, image.width)
    if target.size != image.size:
        target = target.resize(image.size)
    x, t = np.asarray(image, dtype=np.float32), np.asarray(target, dtype=np.float32)
    return float(1.0 - np.abs(x - t).mean() / 255.0)


class TinyColour(Scorer):
    name = "tiny_colour"
    source = "weight-free: soft fraction of pixels of the caption's colour (sdpo.rewards.colour)"

    def score(self, images: list[Image.Image], prompts: list[str]) -> list[float]:
        self._check(images, prompts)
        out = []
        for im, p in zip(rgb(images), prompts):
            colour = caption_colour(p)
            out.append(colour_fraction(im, COLOURS[colour]) if colour else 0.0)
        return out


class TinyPicture(Scorer):
    name = "tiny_picture"
    source = "weight-free: similarity to the caption's tiny picture (sdpo.rewards.colour)"

    def score(self, images: list[Image.Image], prompts: list[str]) -> list[float]:
        self._check(images, prompts)
        out = []
        for im, p in zip(rgb(images), prompts):
            colour, shape = caption_colour(p), caption_shape(p)
            out.append(picture_similarity(im, shape, COLOURS[colour]) if colour and shape else 0.0)
        return out
