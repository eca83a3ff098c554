"""Checkpoints that are complete or absent: ``output_dir/checkpoint-<step>/``.

A checkpoint holds accelerate's state (model, optimizer, lr scheduler, RNG; loaded back with
``weights_only=True``), ``unet.pth`` (a plain UNet state dict, the reference format; ``transformer.pth``
for transformer families: the file is named after the denoiser's pipeline subfolder) and
``training_state.json`` (step, data position in samples, the batch arithmetic: ``sdpo.elastic``),
written last.  It is assembled in ``checkpoint-<step>.partial`` and renamed, so ``latest`` never sees a
half-written one.  A sharded run (``--sharding fsdp|hsdp``) writes DCP shards instead of accelerate's
state and ``unet.pth`` (``sdpo.sharded_checkpoint``), in the same folder, with the same atomicity.
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


def save(
    accelerator, unet, output_dir: str | Path, step: int, state: dict, total_limit: int | None, name: str = "unet",
    sharded=None,
) -> Path:
    """Write ``checkpoint-<step>`` atomically; every process must call this.  ``sharded``: a
    ``sdpo.sharded_checkpoint.ShardedState`` (every process writes its own shards, no ``<name>.pth``)."""
    root = Path(output_dir)
    final, partial = root / f"checkpoint-{step}", root / f"checkpoint-{step}.partial"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
        if sharded is not None:
            partial.mkdir(parents=True)
    accelerator.wait_for_everyone()
    weights = None
    if sharded is None:
        accelerator.save_state(str(partial))
        weights = unet_state_dict(accelerator, unet)
    else:
        sharded.save(partial, accelerator.is_main_process)
    if accelerator.is_main_process:
        if weights is not None:
            torch.save(weights, partial / f"{name}.pth")
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


def load(accelerator, path: Path, sharded=None) -> dict:
    """Restore accelerate's state from ``path`` (every file read with ``weights_only=True``, so a
    tampered pickle is refused, not run), or the sharded state into ``sharded``; return its
    training_state.json."""
    try:
        if sharded is None:
            accelerator.load_state(str(path))
            # accelerate restores its micro-step counter; checkpoints sit on accumulation boundaries, so 0 is
            # the same there, and stays right when an elastic resume changed the accumulation (or a new rank
            # found no saved counter to restore)
            accelerator.step = 0
        else:
            sharded.load(path)
    except pickle.UnpicklingError:
        raise UserError(
            f"{path}: refused to load a checkpoint file holding Python objects beyond tensors (it may have been "
            "tampered with); resume from another checkpoint"
        ) from None
    return read_state(path)


def save_final(accelerator, unet, output_dir: str | Path, name: str = "unet", sharded=None) -> Path:
    """``output_dir/<name>.pth`` and ``output_dir/<name>/`` (diffusers, safetensors), both atomic;
    ``name`` is the denoiser's pipeline subfolder (``unet``, ``transformer``).  Returns the .pth path.
    A sharded run gathers the weights here, once (``sdpo.sharded_checkpoint.export``)."""
    from sdpo.atomic import atomic_path

    if sharded is not None:
        from sdpo.sharded_checkpoint import export

        path = export(sharded.model, Path(output_dir), name, accelerator.is_main_process)
        accelerator.wait_for_everyone()
        return path
    weights = unet_state_dict(accelerator, unet)
    if accelerator.is_main_process:
        root = Path(output_dir)
        torch_save(weights, root / f"{name}.pth")
        with atomic_path(root / name) as tmp:
            accelerator.unwrap_model(unet).save_pretrained(tmp, safe_serialization=True)
    accelerator.wait_for_everyone()
    return Path(output_dir) / f"{name}.pth"
