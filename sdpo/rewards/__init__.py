"""The five reward models of the paper's tables, by metric name, in the tables' column order.

    scorer = load_scorer("hpsv2", device, RewardConfig.make(model_root))
    scorer.score(images, prompts)  # -> list[float], higher is better

Modules are imported lazily so that asking for one metric never imports the others' libraries.
"""

from __future__ import annotations

import importlib

import torch

from sdpo.errors import UserError
from sdpo.rewards.base import Scorer, default_device
from sdpo.rewards.sources import RewardConfig

# metric name -> (module, class, column label in the paper's tables)
_REGISTRY = {
    "pickscore": ("sdpo.rewards.pickscore", "PickScore", "PickScore"),
    "hpsv2": ("sdpo.rewards.hpsv2", "HPSv2", "HPS"),
    "aesthetics": ("sdpo.rewards.aesthetics", "Aesthetics", "Aes."),
    "clip": ("sdpo.rewards.clipscore", "ClipScore", "CLIP"),
    "imagereward": ("sdpo.rewards.imagereward", "ImageReward", "IR"),
}
METRICS: tuple[str, ...] = tuple(_REGISTRY)
LABELS: dict[str, str] = {name: label for name, (_, _, label) in _REGISTRY.items()}


def parse_metrics(spec: str | list[str] | None) -> list[str]:
    """``"all"`` or a comma list -> metric names in the paper's column order; unknown names list the valid ones."""
    if spec is None or spec == "all" or spec == ["all"]:
        return list(METRICS)
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [n.strip().lower() for n in names if n.strip()]
    unknown = [n for n in names if n not in _REGISTRY]
    if unknown or not names:
        raise UserError(f"unknown metric {', '.join(unknown) or '(empty)'}; valid: all, {', '.join(METRICS)}")
    return [m for m in METRICS if m in names]


def _module(name: str):
    return importlib.import_module(_REGISTRY[name][0])


def source_of(name: str, cfg: RewardConfig) -> str:
    """Where ``name``'s weights resolve to, without loading them (cached scores are reused only if it matches)."""
    return f"{name}: {_module(name).sources(cfg)}"


def load_scorer(name: str, device: str | torch.device | None = None, cfg: RewardConfig | None = None) -> Scorer:
    """Load one reward model onto ``device`` (default: CUDA if available, else CPU)."""
    if name not in _REGISTRY:
        parse_metrics(name)  # raises the error listing valid names
    device = device if isinstance(device, torch.device) else default_device(device)
    return getattr(_module(name), _REGISTRY[name][1])(device, cfg or RewardConfig.make())


__all__ = ["LABELS", "METRICS", "RewardConfig", "Scorer", "load_scorer", "parse_metrics", "source_of"]
