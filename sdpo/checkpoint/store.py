"""Checkpoints that are complete or absent: ``output_dir/checkpoint-<step>/``.

A checkpoint holds accelerate's state (model, optimizer, lr scheduler, RNG; loaded back with
``weights_only=True``), ``unet.pth`` (a plain UNet state dict, the reference format; ``transformer.pth``
for transformer families: the file is named after the denoiser's pipeline subfolder) and
``training_state.json`` (step, data position in samples, the batch arithmetic: ``sdpo.checkpoint.elastic``),
written last.  It is assembled in ``checkpoint-<step>.partial`` and renamed, so ``latest`` never sees a
half-written one.

Which files hold the model is the run's ``weights`` object (one interface: ``install``,
``save_checkpoint``, ``load_checkpoint``, ``save_final``): :class:`FullWeights` here (the whole
denoiser), ``sdpo.lora.adapters.AdapterWeights`` for a LoRA run (adapters only; accelerate's state then holds
no model), ``sdpo.checkpoint.sharded.ShardedState`` for ``--sharding fsdp|hsdp`` (DCP shards instead of
accelerate's state and ``unet.pth``), each in the same folder with the same atomicity.
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


def read_state(path: Path) -> dict:
    """A complete checkpoint's ``training_state.json``."""
    return json.loads((Path(path) / STATE_FILE).read_text())


def unet_state_dict(accelerator, unet) -> dict[str, torch.Tensor]:
    model = accelerator.unwrap_model(unet)
    return {k: v.detach().cpu().contiguous() for k, v in accelerator.get_state_dict(model).items()}


def crash_point(name: str) -> None:
    """Fault injection for the crash-recovery tests: ``SDPO_CRASH_AT=<name>`` kills this process here,
    as a pre-emption would (SIGKILL: no cleanup, no atexit)."""
    if os.environ.get("SDPO_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


class FullWeights:
    """A full fine-tune: accelerate's state (model, optimizer, lr scheduler, RNG) and ``<name>.pth`` in every
    checkpoint; ``<name>.pth`` and ``<name>/`` at the end.  ``name`` is the denoiser's pipeline subfolder."""

    def __init__(self, name: str = "unet"):
        self.name = name

    def install(self, accelerator) -> None:
        """Accelerate's own state holds the model; only refuse a LoRA run's checkpoint (it has no model file)."""

        def refuse_adapters(models, input_dir):
            if (Path(input_dir) / "pytorch_lora_weights.safetensors").is_file():
                raise UserError(f"{input_dir} was written by a LoRA run (adapters only); resume it with the run's "
                                "--lora_rank, or pass --resume_from_checkpoint none for a fresh full fine-tune")  # fmt: skip

        accelerator.register_load_state_pre_hook(refuse_adapters)

    def save_checkpoint(self, accelerator, module, folder: Path) -> None:
        accelerator.save_state(str(folder))
        self.save_model(accelerator, module, folder)

    def save_model(self, accelerator, module, folder: Path) -> None:
        weights = unet_state_dict(accelerator, module)
        if accelerator.is_main_process:
            torch.save(weights, folder / f"{self.name}.pth")

    def load_checkpoint(self, accelerator, folder: Path) -> None:
        accelerator.load_state(str(folder))
        # accelerate restores its micro-step counter; checkpoints sit on accumulation boundaries, so 0 is
        # the same there, and stays right when an elastic resume changed the accumulation (or a new rank
        # found no saved counter to restore)
        accelerator.step = 0

    def save_final(self, accelerator, module, output_dir: str | Path) -> Path:
        """``output_dir/<name>.pth`` and ``output_dir/<name>/`` (diffusers, safetensors), both atomic."""
        from sdpo.atomic import atomic_path

        weights = unet_state_dict(accelerator, module)
        if accelerator.is_main_process:
            root = Path(output_dir)
            torch_save(weights, root / f"{self.name}.pth")
            with atomic_path(root / self.name) as tmp:
                accelerator.unwrap_model(module).save_pretrained(tmp, safe_serialization=True)
        accelerator.wait_for_everyone()
        return Path(output_dir) / f"{self.name}.pth"


def save(accelerator, unet, output_dir: str | Path, step: int, state: dict, total_limit: int | None, weights) -> Path:
    """Write ``checkpoint-<step>`` atomically; every process must call this.  ``weights`` (see the module
    docstring) writes the model and optimizer files; ``training_state.json`` goes in last."""
    root = Path(output_dir)
    final, partial = root / f"checkpoint-{step}", root / f"checkpoint-{step}.partial"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    accelerator.wait_for_everyone()
    weights.save_checkpoint(accelerator, unet, partial)
    if accelerator.is_main_process:
        crash_point(f"checkpoint-{step}")
        write_json(partial / STATE_FILE, {**state, "step": step})
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
        log.info("saved %s", final)
        if total_limit is not None:
            for old in complete_checkpoints(root)[:-total_limit]:
                shutil.rmtree(old, ignore_errors=True)
                log.info("removed old checkpoint %s (--checkpoints_total_limit %d)", old.name, total_limit)
    accelerator.wait_for_everyone()
    return final


def load(accelerator, path: Path, weights) -> dict:
    """Restore a checkpoint into this run through ``weights`` (every file read with ``weights_only=True``,
    so a tampered pickle is refused, not run); return its training_state.json."""
    try:
        weights.load_checkpoint(accelerator, Path(path))
    except pickle.UnpicklingError:
        raise UserError(
            f"{path}: refused to load a checkpoint file holding Python objects beyond tensors (it may have been "
            "tampered with); resume from another checkpoint"
        ) from None
    return read_state(path)
