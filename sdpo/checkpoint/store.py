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

Every checkpoint is verified (``sdpo.checkpoint.manifest``): ``manifest.json``, written just before the rename,
records each file's size and content hash; ``latest`` takes the newest checkpoint that verifies, and says in
one line what is wrong with each newer one; a checkpoint named by ``--resume_from_checkpoint`` that does not
verify is refused.  Before writing, the free space is compared with the previous checkpoint's size (or an
estimate), and a disk that fills up during the write is reported as such (``sdpo.diskspace``).  A starting run
removes what an interrupted one left behind (``remove_leftovers``).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import torch

from sdpo import diskspace
from sdpo.atomic import remove, stale_temps, torch_save, write_json
from sdpo.checkpoint import manifest
from sdpo.distributed.objects import from_main, gathered
from sdpo.errors import UserError

log = logging.getLogger(__name__)
STATE_FILE = "training_state.json"
_NAME = re.compile(r"^checkpoint-(\d+)$")
Checker = Callable[[Path], "str | None"]  # what is wrong with a checkpoint folder, or None


def complete_checkpoints(output_dir: str | Path) -> list[Path]:
    """Finished checkpoints, oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name)) and (p / STATE_FILE).is_file()]
    return [p for _, p in sorted(found)]


def find_resume_point(output_dir: str | Path, request: str | None, check: Checker | None = None) -> Path | None:
    """``latest`` -> the newest complete checkpoint that verifies (or None: start fresh); a path -> that
    checkpoint, refused when it does not verify.  What was skipped is logged (``resume_point``)."""
    path, notes = resume_point(output_dir, request, check)
    for note in notes:
        log.warning(note)
    return path


def verify(folder: Path, part: tuple[int, int] = (0, 1)) -> str | None:
    """What is wrong with a complete checkpoint, in words (``"<file>: <what>"``), or None.  ``part``: this process's
    share of the contents to hash (``manifest.problem``).  A checkpoint written before manifests existed is
    only checked for a readable ``training_state.json``."""
    try:
        files = manifest.read(folder)
    except ValueError as e:
        return str(e)
    if files is not None:
        found = manifest.problem(folder, files, part)
        if found:
            return found
    try:
        read_state(folder)
    except (OSError, ValueError) as e:
        return f"{STATE_FILE}: unreadable ({str(e).splitlines()[0][:120]})"
    return None


def resume_point(output_dir: str | Path, request: str | None, check: Checker | None = None) -> tuple[Path | None, list]:
    """``find_resume_point``'s answer and the lines to log: one per damaged checkpoint skipped, and which one the
    run resumes from instead.  ``check(folder)`` says what is wrong with a checkpoint (default ``verify``)."""
    check = check or verify
    if request is None:
        return None, []
    if request == "latest":
        notes: list[str] = []
        bad = []
        for path in reversed(complete_checkpoints(output_dir)):
            why = check(path)
            if why is None:
                if bad:
                    notes.append(f"resuming from {path.name}, the newest checkpoint that verifies")
                return path, notes
            bad.append(f"{path.name}: {why}")
            notes.append(f"{path} is damaged, skipped: {why}")
        if bad:
            raise UserError(
                f"{output_dir}: no checkpoint verifies ({'; '.join(bad[:3])}); move the damaged ones away, or pass "
                "--resume_from_checkpoint none to start over"
            )
        return None, []
    path = Path(request)
    if not path.is_dir() and (Path(output_dir) / request).is_dir():
        path = Path(output_dir) / request
    if not (path / STATE_FILE).is_file():
        raise UserError(f"--resume_from_checkpoint {request}: not a complete checkpoint (no {STATE_FILE})")
    why = check(path)
    if why is not None:
        raise UserError(
            f"--resume_from_checkpoint {request}: damaged, {why}; name an older checkpoint, or pass "
            "--resume_from_checkpoint latest to take the newest one that verifies"
        )
    return path, []


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

    model_copies = 2  # accelerate's model file and <name>.pth (what a checkpoint's size is estimated from)

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


def estimate_bytes(module, optimizer, weights) -> int:
    """What a checkpoint of this run will take before one exists: the trained parameters times the copies the
    run's ``weights`` writes (``model_copies``: a full fine-tune writes accelerate's model file and ``unet.pth``)
    plus the optimizer's state.  Sharded tensors count their global size: the whole checkpoint, all processes."""
    trained = sum(p.numel() * p.element_size() for p in module.parameters() if p.requires_grad)
    state = getattr(optimizer, "state", {}) if optimizer is not None else {}
    moments = sum(t.numel() * t.element_size() for s in state.values() for t in s.values() if torch.is_tensor(t))
    return getattr(weights, "model_copies", 1) * trained + moments


def shared_verify(accelerator) -> Checker:
    """``verify`` with the hashing split over the launch's processes; every process gets the same answer."""

    def check(folder: Path) -> str | None:
        found = gathered(accelerator, verify(folder, (accelerator.process_index, accelerator.num_processes)))
        return next((f for f in found if f is not None), None)

    return check


def _space_needed(root: Path, module, optimizer, weights) -> tuple[int, str]:
    previous = complete_checkpoints(root)
    size = manifest.total_bytes(previous[-1]) if previous else None
    if size is not None:
        return size, f"the size of {previous[-1].name}"
    return estimate_bytes(module, optimizer, weights), "estimated from the trained parameters and optimizer state"


def save(accelerator, unet, output_dir: str | Path, step: int, state: dict, total_limit: int | None, weights,
         optimizer=None) -> Path:  # fmt: skip
    """Write ``checkpoint-<step>`` atomically; every process must call this.  ``weights`` (see the module
    docstring) writes the model and optimizer files; ``training_state.json`` goes in next, then the manifest.
    The free space is checked first (``optimizer``: for the estimate when no checkpoint exists yet)."""
    root = Path(output_dir)
    final, partial = root / f"checkpoint-{step}", root / f"checkpoint-{step}.partial"
    refusal = None
    if accelerator.is_main_process:
        need, why = _space_needed(root, unet, optimizer, weights)
        refusal = diskspace.shortfall(root, need, f"checkpoint-{step}", why)
        if refusal:
            refusal += _intact(root)
    refusal = from_main(accelerator, refusal)
    if refusal:
        raise UserError(refusal)
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    accelerator.wait_for_everyone()
    with diskspace.reporting_disk_full(partial, f"checkpoint-{step}", after=_intact(root), cleanup=True):
        weights.save_checkpoint(accelerator, unet, partial)
        if accelerator.is_main_process:
            crash_point(f"checkpoint-{step}")
            write_json(partial / STATE_FILE, {**state, "step": step})
        accelerator.wait_for_everyone()
        names = manifest.listing(partial)  # the processes hash a share each (DCP: every process wrote its own)
        mine = manifest.records(partial, names[accelerator.process_index :: accelerator.num_processes])
        records = {k: v for part in gathered(accelerator, mine) for k, v in part.items()}
        if accelerator.is_main_process:
            manifest.write(partial, records)
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
        log.info("saved %s", final)
        if total_limit is not None:
            for old in complete_checkpoints(root)[:-total_limit]:
                shutil.rmtree(old, ignore_errors=True)
                log.info("removed old checkpoint %s (--checkpoints_total_limit %d)", old.name, total_limit)
    accelerator.wait_for_everyone()
    return final


def _intact(root: Path) -> str:
    found = complete_checkpoints(root)
    return f"; {found[-1]} is intact" if found else ""


# What a damaged checkpoint written before manifests existed raises inside accelerate, torch, safetensors or DCP.
_DAMAGE = ("SafetensorError", "EOFError", "JSONDecodeError", "UnpicklingError", "CheckpointException")
_ZIP_DAMAGE = ("PytorchStreamReader", "central directory", "unexpected EOF", "invalid header")


def _damage(e: BaseException) -> bool:
    if type(e).__name__ in _DAMAGE or isinstance(e, (FileNotFoundError, EOFError)):
        return True
    return isinstance(e, RuntimeError) and any(t in str(e) for t in _ZIP_DAMAGE)


def load(accelerator, path: Path, weights) -> dict:
    """Restore a checkpoint into this run through ``weights`` (every file read with ``weights_only=True``,
    so a tampered pickle is refused, not run); return its training_state.json.  A file that cannot be read
    (a checkpoint without a manifest can still be damaged) is one line naming the checkpoint."""
    try:
        weights.load_checkpoint(accelerator, Path(path))
    except pickle.UnpicklingError:
        raise UserError(
            f"{path}: refused to load a checkpoint file holding Python objects beyond tensors (it may have been "
            "tampered with); resume from another checkpoint"
        ) from None
    except UserError:
        raise
    except Exception as e:
        if not _damage(e):
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(
            f"{path}: a file in it cannot be read ({type(e).__name__}: {first}); resume from an older checkpoint with "
            "--resume_from_checkpoint checkpoint-<step>"
        ) from None
    return read_state(path)


def remove_leftovers(output_dir: str | Path) -> list[tuple[str, int]]:
    """Remove what interrupted runs left in ``output_dir``: ``checkpoint-<step>.partial`` folders and the
    temporary files of writers that are gone (``sdpo.atomic.stale_temps``: final weights cut short, 24-48 GB
    each for FLUX).  Returns ``(name, bytes)`` for each; the main process calls this before anything is written."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.glob("checkpoint-*.partial") if p.is_dir()] + stale_temps(root)
    removed = []
    for p in sorted(found):
        size = diskspace.bytes_under(p)
        remove(p)
        removed.append((str(p.relative_to(root)) + ("/" if p.suffix == ".partial" else ""), size))
    if removed:
        listed = ", ".join(f"{name} ({diskspace.human(size)})" for name, size in removed)
        log.warning("removed what an interrupted run left in %s: %s; %s freed", root, listed,
                    diskspace.human(sum(s for _, s in removed)))  # fmt: skip
    return removed
