"""A family's launch recipe: the paper run's numbers its ``scripts/train`` script starts from
(``sdpo.config.launch`` hands them to ``common.sh``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LaunchDefaults:
    """A family's paper recipe: what its launch script runs with unless the user overrides it."""

    lr: float  # base learning rate (times the global batch when scale_lr)
    scale_lr: bool = True
    global_batch: int = 2048
    per_gpu_batch: int = 8
    precision: str = "bf16"
    vae: str | None = None  # a separate VAE the recipe trains with
    sharding: str = "none"  # for a full fine-tune (LoRA always runs unsharded)
    flags: tuple[str, ...] = ()  # further train.py flags of the recipe
    schedule: tuple[str, ...] | None = None  # replaces the paper's image schedule (warmup 500, 2000 steps)
    video: bool = False  # the recipe picks its method with --method and needs a local dataset
