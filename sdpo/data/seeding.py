"""Per-sample random streams, derived from (seed, epoch, sample index) and nothing else.

Every random draw a training sample needs (crop, flip, empty-prompt dropout, VAE posterior
sample, diffusion noise, timestep) comes from a generator seeded by this triple.  Consequences:
a resumed run draws exactly what an uninterrupted one would (no RNG state to save), and a pair
gets the same noise whichever process or batch slot it lands in, so N processes x batch b and
one process x batch N*b see identical inputs.  (The reference code draws from the global RNG;
the distributions are the same.)
"""

from __future__ import annotations

import random

import numpy as np
import torch


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for one sample of one epoch."""
    state = np.random.SeedSequence([seed, epoch, index]).generate_state(2, dtype=np.uint64)
    return int(state[0] >> np.uint64(1))


def python_rng(sample: int, stream: int) -> random.Random:
    """Python RNG for data-side draws (crop, flip, caption dropout); ``stream`` separates uses."""
    return random.Random(sample * 7919 + stream)


def torch_generator(sample: int, device: torch.device | str) -> torch.Generator:
    """Torch generator on ``device`` for the model-side draws of one sample."""
    return torch.Generator(device=device).manual_seed(sample)
