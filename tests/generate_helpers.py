"""Shared pieces of the tests/test_generate*.py files: tiny models, a six-prompt file, a CLI runner.

Not a conftest: the generation tests build what they need themselves, module by module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the project is used from a checkout, not installed
    sys.path.insert(0, str(REPO))
PROMPTS = [
    {"prompt": "a red circle", "raw_image_path": "raw/0.jpg", "metadata": {"source": "test", "id": 0}},
    {"prompt": "a blue square"},
    {"prompt": "", "metadata": {"note": "empty prompt"}},
    {"prompt": "a very long prompt " * 20},
    {"prompt": "une photo d'un chat, été"},
    {"prompt": "a red circle"},  # duplicates are real items (hpsv2 has 28)
]
SIZE = 64
STEPS = 2


def write_prompts(path: Path, entries: list[dict] = PROMPTS) -> Path:
    path.write_text(json.dumps(entries, indent=2), encoding="utf-8")
    return path


def build_models(root: Path, kinds: tuple[str, ...] = ("sd15", "sdxl")) -> dict[str, Path]:
    """Tiny SD1.5 / SDXL pipeline folders, and checkpoint folders holding a perturbed UNet as unet.pth."""
    from diffusers import UNet2DConditionModel

    from sdpo.tiny import build_tiny_model

    out = {}
    for kind in kinds:
        seed = {"sd15": 0, "sdxl": 1}[kind]
        base = build_tiny_model(kind, root / kind, seed=seed)
        unet = UNet2DConditionModel.from_pretrained(base / "unet")
        torch.manual_seed(seed + 10)  # "trained" weights: differ from the base model's
        with torch.no_grad():
            for p in unet.parameters():
                p.add_(0.01 * torch.randn_like(p))
        ckpt = root / f"{kind}_run" / "checkpoint-2"
        ckpt.mkdir(parents=True)
        torch.save(unet.state_dict(), ckpt / "unet.pth")
        out[kind], out[f"{kind}_unet"] = base, ckpt / "unet.pth"
    return out


def model_args(models: dict[str, Path], kind: str) -> list[str]:
    args = ["--unet_path", str(models[f"{kind}_unet"]), "--pretrain_path", str(models[kind])]
    if kind == "sdxl":
        args += ["--sdxl", "--vae_path", str(models[kind])]  # a pipeline folder: its vae/ is used
    return args + ["--height", str(SIZE), "--width", str(SIZE), "--steps", str(STEPS)]


def cli_env(**extra: str) -> dict[str, str]:
    # One thread: CPU reductions may round differently with another thread count, and 2 cores are shared.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.update(extra)
    return env


def run_generate(args: list[str], check: bool = True, **env: str) -> subprocess.CompletedProcess:
    """``python eval/generate.py ARGS`` from the repo root, as a user runs it."""
    proc = subprocess.run(
        [sys.executable, "eval/generate.py", *args], cwd=REPO, env=cli_env(**env), capture_output=True, text=True
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"generate.py failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def pngs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.suffix == ".png")
