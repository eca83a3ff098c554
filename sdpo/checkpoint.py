"""Checkpoints that are complete or absent: ``output_dir/checkpoint-<step>/``.

A checkpoint holds accelerate's state (model, optimizer, lr scheduler, RNG; loaded back with
``weights_only=True``), ``unet.pth`` (a plain UNet state dict, the reference format; ``transformer.pth``
for transformer families: the file is named after the denoiser's pipeline subfolder) and
``training_state.json`` (step and data position), written last.  It is assembled in
``checkpoint-<step>.partial`` and renamed, so ``latest`` never sees a half-written one.

Which weights go in is the run's ``weights`` object: :class:`FullWeights` here (the whole denoiser),
``sdpo.lora.AdapterWeights`` for a LoRA run (adapters only; accelerate's state then holds no model).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import shutil
import signal
from pathlib import Path

import torch

from sdpo.atomic import torch_save, write_json
from sdpo.errors import UserError

log = logging.getLogger(__name__)
STATE_FILE = "training_state.json"
_NAME = re.compile(r"^checkpoint-(\d+)$")


def complete_checkpoints(output_dir: str | Path) -> list[Path]:
    """Finished checkpoints, oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name)) and (p / STATE_FILE).is_file()]
    return [p for _, p in sorted(found)]


def find_resume_point(output_dir: str | Path, request: str | None) -> Path | None:
    """``latest`` -> newest complete checkpoint (or None: start fresh); a path -> that checkpoint."""
    if request is None:
        return None
    if request == "latest":
        found = complete_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(request)
    if not path.is_dir() and (Path(output_dir) / request).is_dir():
        path = Path(output_dir) / request
    if not (path / STATE_FILE).is_file():
        raise UserError(f"--resume_from_checkpoint {request}: not a complete checkpoint (no {STATE_FILE})")
    return path


def unet_state_dict(accelerator, unet) -> dict[str, torch.Tensor]:
    model = accelerator.unwrap_model(unet)
    return {k: v.detach().cpu().contiguous() for k, v in accelerator.get_state_dict(model).items()}


def crash_point(name: str) -> None:
    """Fault injection for the crash-recovery tests: ``SDPO_CRASH_AT=<name>`` kills this process here,
    as a pre-emption would (SIGKILL: no cleanup, no atexit)."""
    if os.environ.get("SDPO_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


class FullWeights:
    """A full fine-tune's files: ``<name>.pth`` in every checkpoint, ``<name>.pth`` and ``<name>/`` at the end."""

    def __init__(self, name: str = "unet"):
        self.name = name

    def install(self, accelerator) -> None:
        """Accelerate's own state holds the model; only refuse a LoRA run's checkpoint (it has no model file)."""

        def refuse_adapters(models, input_dir):
            if (Path(input_dir) / "pytorch_lora_weights.safetensors").is_file():
                raise UserError(f"{input_dir} was written by a LoRA run (adapters only); resume it with the run's "
                                "--lora_rank, or pass --resume_from_checkpoint none for a fresh full fine-tune")  # fmt: skip

        accelerator.register_load_state_pre_hook(refuse_adapters)

    def save_checkpoint(self, accelerator, unet, directory: Path) -> None:
        weights = unet_state_dict(accelerator, unet)
        if accelerator.is_main_process:
            torch.save(weights, directory / f"{self.name}.pth")

    def save_final(self, accelerator, unet, output_dir: str | Path) -> Path:
        return save_final(accelerator, unet, output_dir, self.name)


def save(
    accelerator, unet, output_dir: str | Path, step: int, state: dict, total_limit: int | None,
    name: str = "unet", weights=None,
) -> Path:  # fmt: skip
    """Write ``checkpoint-<step>`` atomically; every process must call this.  ``weights`` decides which
    model files go in (default: ``FullWeights(name)``)."""
    root = Path(output_dir)
    final, partial = root / f"checkpoint-{step}", root / f"checkpoint-{step}.partial"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    (weights or FullWeights(name)).save_checkpoint(accelerator, unet, partial)
    if accelerator.is_main_process:
        crash_point(f"checkpoint-{step}")
        write_json(partial / STATE_FILE, {**state, "step": step})
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
        if total_limit is not None:
            for old in complete_checkpoints(root)[:-total_limit]:
                shutil.rmtree(old, ignore_errors=True)
                log.info("removed old checkpoint %s (--checkpoints_total_limit %d)", old.name, total_limit)
    accelerator.wait_for_everyone()
    return final


def load(accelerator, path: Path) -> dict:
    """Restore accelerate's state from ``path`` (every file read with ``weights_only=True``, so a
    tampered pickle is refused, not run) and return its training_state.json."""
    try:
        accelerator.load_state(str(path))
    except pickle.UnpicklingError:
        raise UserError(
            f"{path}: refused to load a checkpoint file holding Python objects beyond tensors (it may have been "
            "tampered with); resume from another checkpoint"
        ) from None
    return json.loads((path / STATE_FILE).read_text())


def save_final(accelerator, unet, output_dir: str | Path, name: str = "unet") -> Path:
    """``output_dir/<name>.pth`` and ``output_dir/<name>/`` (diffusers, safetensors), both atomic;
    ``name`` is the denoiser's pipeline subfolder (``unet``, ``transformer``).  Returns the .pth path."""
    from sdpo.atomic import atomic_path

    weights = unet_state_dict(accelerator, unet)
    if accelerator.is_main_process:
        root = Path(output_dir)
        torch_save(weights, root / f"{name}.pth")
        with atomic_path(root / name) as tmp:
            accelerator.unwrap_model(unet).save_pretrained(tmp, safe_serialization=True)
    accelerator.wait_for_everyone()
    return Path(output_dir) / f"{name}.pth"
