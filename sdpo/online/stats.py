"""Image statistics per sample and per round: where the known reward hacks show first.

Reward models are gamed by over-saturated colour, blown-up contrast and flat, near-constant images long before
a held-out reward notices (the online DPO and GRPO trainers' recurring reports); so every sample gets:

* ``saturation``: mean HSV saturation in [0, 1] (PIL's conversion);
* ``contrast``: standard deviation of the luma (ITU-R 601, [0, 1]) over the pixels (RMS contrast);
* ``near_constant``: 1 when that standard deviation is below 0.02 (about 5 of 255 levels), else 0; its mean over
  a round is the fraction of near-constant images.

A video's statistics are those of its frames taken together.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

NEAR_CONSTANT_STD = 0.02
STAT_NAMES = ("saturation", "contrast", "near_constant")


def frame_stats(frames: np.ndarray) -> dict[str, float]:
    """Statistics of ``uint8 (F, H, W, 3)`` frames (an image is one frame)."""
    rgb = frames.astype(np.float32) / 255.0
    luma = rgb @ np.asarray([0.299, 0.587, 0.114], dtype=np.float32)
    sat = np.mean([np.asarray(Image.fromarray(f).convert("HSV"), dtype=np.float32)[..., 1].mean() / 255.0
                   for f in frames])  # fmt: skip
    std = float(luma.std())
    return {"saturation": float(sat), "contrast": std, "near_constant": float(std < NEAR_CONSTANT_STD)}


def mean_stats(rows: list[dict]) -> dict[str, float]:
    """Per-round means of the per-sample statistics (rows carry them under their names)."""
    return {k: float(np.mean([r[k] for r in rows])) for k in STAT_NAMES if rows and k in rows[0]}
