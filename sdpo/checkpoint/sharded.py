"""Checkpoints of a sharded run: every process writes its own shards, nobody gathers the model.

``checkpoint-<step>/`` of a ``--sharding fsdp|hsdp`` run holds ``model/`` and ``optimizer/`` (both
``torch.distributed.checkpoint`` (DCP) folders: one ``__<rank>_0.distcp`` file per process plus a
``.metadata`` index), ``scheduler.json`` and, written last by ``sdpo.checkpoint.store``,
``training_state.json``.  DCP records each tensor's global shape and which slice every file holds,
so a checkpoint written by 16 processes loads on 8 or on 1 (resharding on load); FSDP and HSDP
checkpoints are interchangeable.  There is no ``unet.pth`` per checkpoint (for FLUX that would mean
gathering 12B parameters on one process every few hundred steps); the end of training exports once
(``export``), and ``python -m sdpo.sharded_checkpoint CHECKPOINT`` turns any checkpoint into a plain
state dict offline.

Safe loading: DCP reads tensors with ``weights_only=True`` but unpickles its ``.metadata`` and the
non-tensor values (optimizer hyper-parameters) without restriction.  ``SafeReader`` unpickles the
metadata with an allow-list of DCP's own metadata classes, and ``SafeLoadPlanner`` checks every
non-tensor value with ``torch.load(weights_only=True)`` before DCP loads it, so a tampered checkpoint
is refused before any of its code could run.
"""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import torch

from sdpo.errors import UserError

MODEL_DIR, OPTIMIZER_DIR, SCHEDULER_FILE = "model", "optimizer", "scheduler.json"
DEFAULT_MAX_SHARD_SIZE = "10GB"  # diffusers' own default: FLUX's 48 GB fp32 export becomes five safetensors files


def is_sharded_checkpoint(path: Path) -> bool:
    return (Path(path) / MODEL_DIR / ".metadata").is_file()


# ----------------------------------------------------------------------------- safe reading


_METADATA_MODULES = ("torch.distributed.checkpoint.metadata",)
_METADATA_GLOBALS = {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch.serialization", "_get_layout"),
    ("torch", "Size"),
    ("pathlib", "PosixPath"),
    ("pathlib", "WindowsPath"),
    ("pathlib", "PurePosixPath"),
    ("collections", "OrderedDict"),
}


class _MetadataUnpickler(pickle.Unpickler):
    """Only DCP's metadata classes, torch.Size, dtypes and paths: anything else is refused."""

    def find_class(self, module: str, name: str):
        if module in _METADATA_MODULES or (module, name) in _METADATA_GLOBALS:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in checkpoint metadata")


def _reader(path: Path):
    from torch.distributed.checkpoint import FileSystemReader

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args, **kwargs):
            rank = kwargs.get("rank")
            with open(self._get_metadata_path(rank), "rb") as f:
                metadata = _MetadataUnpickler(f).load()
            if getattr(metadata, "storage_meta", None) is not None:
                metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader(str(path))


def _planner(**kw):
    from torch.distributed.checkpoint import DefaultLoadPlanner

    class SafeLoadPlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item, value: io.BytesIO) -> None:
            torch.load(value, weights_only=True)  # raises on anything beyond plain data, before DCP's own load
            value.seek(0)
            super().load_bytes(read_item, value)

    return SafeLoadPlanner(**kw)


def _refuse(path: Path) -> UserError:
    return UserError(
        f"{path}: refused to load a checkpoint file holding Python objects beyond tensors (it may have been "
        "tampered with); resume from another checkpoint"
    )


def _guarded_load(folder: Path, load) -> None:
    """Run ``load(reader)`` with the safe reader; any refused unpickle becomes one ``UserError`` line."""
    from torch.distributed.checkpoint.api import CheckpointException

    reader = _reader(folder)
    try:
        reader.read_metadata()  # the allow-listed unpickle, before DCP starts (and wraps errors in) collectives
        load(reader)
    except pickle.UnpicklingError:
        raise _refuse(folder) from None
    except CheckpointException as e:  # raised on some rank inside DCP: (exception, traceback) per failed rank
        if any(isinstance(failure[0], pickle.UnpicklingError) for failure in e.failures.values()):
            raise _refuse(folder) from None
        raise


def _dcp_load(state: dict, folder: Path) -> None:
    import torch.distributed.checkpoint as dcp

    _guarded_load(folder, lambda reader: dcp.load(state, storage_reader=reader, planner=_planner()))


# ----------------------------------------------------------------------------- training state


class ShardedState:
    """The trained (sharded) denoiser, its optimizer and lr scheduler, saved and loaded with DCP."""

    model_copies = 1  # the model's DCP shards (a checkpoint's size estimate: sdpo.checkpoint.store)

    def __init__(self, model: torch.nn.Module, optimizer, scheduler, name: str = "unet"):
        self.model, self.name = model, name
        self.optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper -> the torch optimizer
        self.scheduler = getattr(scheduler, "scheduler", scheduler)

    def save(self, folder: Path, is_main: bool) -> None:
        """Every process calls this; each writes only its own shards."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

        dcp.save(get_model_state_dict(self.model), checkpoint_id=str(folder / MODEL_DIR))
        dcp.save(get_optimizer_state_dict(self.model, self.optimizer), checkpoint_id=str(folder / OPTIMIZER_DIR))
        if is_main:
            (folder / SCHEDULER_FILE).write_text(json.dumps(self.scheduler.state_dict()))

    def load(self, folder: Path) -> None:
        """Load into this run's shards, whatever mesh wrote them (DCP reshards)."""
        from torch.distributed.checkpoint.state_dict import (
            get_model_state_dict,
            get_optimizer_state_dict,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        folder = Path(folder)
        if not is_sharded_checkpoint(folder):
            raise UserError(f"{folder}: not a sharded checkpoint (no {MODEL_DIR}/.metadata)")
        model_sd = get_model_state_dict(self.model)
        _dcp_load(model_sd, folder / MODEL_DIR)
        set_model_state_dict(self.model, model_sd)
        optim_sd = get_optimizer_state_dict(self.model, self.optimizer)  # initialises empty moments to load into
        _dcp_load(optim_sd, folder / OPTIMIZER_DIR)
        set_optimizer_state_dict(self.model, self.optimizer, optim_sd)
        self.scheduler.load_state_dict(json.loads((folder / SCHEDULER_FILE).read_text()))

    # The run's ``weights`` interface (``sdpo.checkpoint.store``): every process calls each of these.
    def install(self, accelerator) -> None:
        """Nothing to hook: accelerate never saves or loads a sharded run's state."""

    def save_checkpoint(self, accelerator, module, folder: Path) -> None:
        self.save(folder, accelerator.is_main_process)

    def load_checkpoint(self, accelerator, folder: Path) -> None:
        self.load(folder)

    def save_final(self, accelerator, module, output_dir: str | Path) -> Path:
        """The full weights, gathered here once (:func:`export`)."""
        path = export(self.model, Path(output_dir), self.name, accelerator.is_main_process)
        accelerator.wait_for_everyone()
        return path


# ----------------------------------------------------------------------------- export


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's weights on the main process's CPU (an empty dict elsewhere); every process calls
    this.  Gathered one tensor at a time, so no GPU ever holds more than one full tensor extra."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def original_class(model: torch.nn.Module) -> type:
    """The model's own class (FSDP2 wraps it in a generated ``FSDP<Name>`` subclass)."""
    from torch.distributed.fsdp import FSDPModule

    return next(c for c in type(model).__mro__ if not issubclass(c, FSDPModule))


def write_export(weights: dict[str, torch.Tensor], cls: type, config, root: Path, name: str,
                 max_shard_size: str = DEFAULT_MAX_SHARD_SIZE) -> Path:  # fmt: skip
    """``root/<name>.pth`` (plain state dict, what eval/generate.py reads) and ``root/<name>/`` (diffusers,
    safetensors, sharded with an index above ``max_shard_size``), both atomic.  The weights go through
    a ``strict`` load into ``cls`` built from ``config`` (on the meta device: no second copy in memory),
    so an export that would not load into the family's model class is never written."""
    from accelerate import init_empty_weights

    from sdpo.atomic import atomic_path, torch_save

    with init_empty_weights():
        model = cls.from_config(config)
    model.load_state_dict(weights, strict=True, assign=True)
    torch_save(weights, root / f"{name}.pth")
    with atomic_path(root / name) as tmp:
        model.save_pretrained(tmp, safe_serialization=True, max_shard_size=max_shard_size)
    return root / f"{name}.pth"


def export(model: torch.nn.Module, root: Path, name: str, is_main: bool) -> Path:
    """Gather the trained shards once and write the final weights (every process calls this)."""
    weights = full_state_dict(model)
    if is_main:
        write_export(weights, original_class(model), model.config, Path(root), name)
    return Path(root) / f"{name}.pth"


def checkpoint_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    """A sharded checkpoint's model as one plain state dict, in this process, no process group needed."""
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    folder = Path(checkpoint) / MODEL_DIR
    if not (folder / ".metadata").is_file():
        raise UserError(f"{checkpoint}: not a sharded checkpoint (no {MODEL_DIR}/.metadata)")

    class Planner(_EmptyStateDictLoadPlanner):  # reads every key it finds; same byte check as above
        def load_bytes(self, read_item, value):
            torch.load(value, weights_only=True)
            value.seek(0)
            super().load_bytes(read_item, value)

    weights: dict[str, torch.Tensor] = {}
    _guarded_load(
        folder, lambda reader: _load_state_dict(weights, storage_reader=reader, planner=Planner(), no_dist=True)
    )
    return weights
