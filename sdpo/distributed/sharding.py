"""Sharded training (``--sharding fsdp|hsdp``): PyTorch FSDP2 on a ``DeviceMesh``, one unit per block.

Why: a 12B denoiser (FLUX.1-dev) plus its frozen 12B reference is 48 GB of bf16 weights before any
gradient or optimizer state; DDP keeps all of it on every GPU and ZeRO-2 does not shard weights.
FSDP2 (``torch.distributed.fsdp.fully_shard``) keeps 1/N of every parameter, gradient and optimizer
moment per GPU and all-gathers one block's weights just before that block runs.

* ``fsdp``: a 1-D mesh over all processes (``shard``).
* ``hsdp``: a 2-D mesh ``(replicate, shard)``: FSDP inside each group of ``world / --dp_replicate``
  processes (one node by default), plain data parallelism across groups (the paper's FLUX run: 2 x 8).
  All-gathers stay inside a node; only the gradient all-reduce crosses nodes.
* Units are the family's blocks (``ModelFamily.shard_blocks``), then the root module (embeddings, final
  norm and everything not in a block).  The frozen reference is sharded the same way on the same mesh
  (no gradients; its weights are freed again after each block's forward).
* Mixed precision through ``MixedPrecisionPolicy``: the sharded master weights and the optimizer state
  stay fp32; each block is gathered in the ``--mixed_precision`` dtype (bf16) and gradients are reduced
  in ``--fsdp_reduce_dtype`` (fp32 by default, so the sum over hundreds of processes keeps its bits).
* Activation checkpointing stays per block: ``--gradient_checkpointing`` is diffusers' own, which wraps
  exactly these blocks, so a block's weights are gathered again for its recomputation in the backward.

accelerate still launches the processes, sets up the process group, accumulates gradients (the loss
is divided by the accumulation steps; every micro-batch's gradients are reduce-scattered into the
fp32 shards, so unsharded gradients never pile up), autocasts and logs.  The model is sharded here,
not by accelerate's FSDP plugin: that plugin does not run on CPU (it falls back to DDP or to no
distribution), so the one code path below is the one the CPU tests run and the one GPUs run.
"""

from __future__ import annotations

import logging
import os
import warnings

import torch

from sdpo.errors import UserError

log = logging.getLogger(__name__)
STRATEGIES = ("none", "fsdp", "hsdp")
# FLUX's single blocks and root return views; FSDP2 warns that an in-place op on them would skip its hook.
# Nothing downstream modifies them in place: tests/test_sharding.py compares sharded and unsharded steps.
warnings.filterwarnings(
    "ignore", message=r"FSDP2-wrapped module \(FSDPFlux(SingleTransformerBlock|Transformer2DModel)\) returned a view"
)
REDUCE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def is_sharded(cfg) -> bool:
    return cfg.sharding != "none"


def check_accelerator(cfg, accelerator) -> None:
    """Refuse combinations that would silently do something else, before any model is loaded."""
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    if kind == DistributedType.FSDP:
        raise UserError(
            "accelerate was launched with an FSDP config, but train.py shards the model itself: launch with a "
            "multi-GPU config (configs/accelerate/multi_gpu.yaml or --multi_gpu) and pass --sharding fsdp|hsdp"
        )
    if kind == DistributedType.DEEPSPEED and is_sharded(cfg):
        raise UserError(
            f"--sharding {cfg.sharding} and a DeepSpeed config would both shard the model; drop the DeepSpeed "
            "config (launch with configs/accelerate/multi_gpu.yaml) or drop --sharding"
        )
    if not is_sharded(cfg):
        return
    if accelerator.mixed_precision == "fp16":
        raise UserError(
            f"--sharding {cfg.sharding} runs in bf16 or fp32, not fp16 (fp16 needs a sharded loss scaler); "
            "pass --mixed_precision bf16"
        )
    world = accelerator.num_processes
    replicate = replicas(cfg, world)
    if world % replicate:
        raise UserError(
            f"--dp_replicate {replicate} does not divide the {world} processes; HSDP needs replicate x shard = "
            f"processes (divisors of {world}: {', '.join(str(d) for d in range(1, world + 1) if world % d == 0)})"
        )


def replicas(cfg, world: int) -> int:
    """HSDP's replicate degree: ``--dp_replicate``, else the number of nodes (WORLD_SIZE / LOCAL_WORLD_SIZE)."""
    if cfg.sharding != "hsdp":
        return 1
    if cfg.dp_replicate is not None:
        return cfg.dp_replicate
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world) or world)
    return max(1, world // max(1, local))


def _ensure_process_group(device: torch.device) -> bool:
    """FSDP needs a process group even for one process (accelerate makes none then); returns whether we made it."""
    import torch.distributed as dist

    if dist.is_initialized():
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    return True


def build_mesh(cfg, accelerator):
    """``shard`` (fsdp) or ``(replicate, shard)`` (hsdp) over every process."""
    from torch.distributed.device_mesh import init_device_mesh

    device, world = accelerator.device, accelerator.num_processes
    own_group = _ensure_process_group(device)
    if cfg.sharding == "hsdp":
        r = replicas(cfg, world)
        mesh = init_device_mesh(device.type, (r, world // r), mesh_dim_names=("replicate", "shard"))
    else:
        mesh = init_device_mesh(device.type, (world,), mesh_dim_names=("shard",))
    return mesh, own_group


def shard_module(module: torch.nn.Module, block_names: tuple[str, ...], mesh, mp_policy=None) -> int:
    """``fully_shard`` every block (innermost first), then the root; returns the number of units."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = mp_policy or MixedPrecisionPolicy()
    blocks = [m for m in module.modules() if type(m).__name__ in block_names and m is not module]
    if not blocks:
        raise UserError(
            f"{type(module).__name__} has none of the block classes {list(block_names)} to shard; "
            "the family's shard_blocks does not match this model"
        )
    for block in reversed(blocks):  # children before parents: a unit never contains an unsharded unit
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(module, mesh=mesh, mp_policy=policy)
    return len(blocks) + 1


class Sharding:
    """What the loop needs to know about a sharded run: the mesh, and whether we own the process group."""

    def __init__(self, cfg, accelerator):
        self.cfg = cfg
        self.mesh, self._own_group = build_mesh(cfg, accelerator)

    def shard_family(self, family, weight_dtype: torch.dtype) -> None:
        """Shard the trained denoiser (fp32 shards, compute in the weight dtype) and the frozen reference."""
        from torch.distributed.fsdp import MixedPrecisionPolicy

        names = family.shard_blocks
        compute = weight_dtype if weight_dtype != torch.float32 else None
        policy = MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=REDUCE_DTYPES[self.cfg.fsdp_reduce_dtype])
        units = shard_module(family.denoiser, names, self.mesh, policy)
        if family.reference is not None:
            shard_module(family.reference, names, self.mesh)  # already in the weight dtype, no gradients
        shape = " x ".join(f"{n} {s}" for n, s in zip(self.mesh.mesh_dim_names, self.mesh.shape))
        log.info("%s: %d units per model (%s) on a mesh of %s; compute %s, gradients reduced in %s",
                 self.cfg.sharding, units, ", ".join(names), shape, str(weight_dtype).replace("torch.", ""),
                 self.cfg.fsdp_reduce_dtype)  # fmt: skip

    def close(self) -> None:
        import torch.distributed as dist

        if self._own_group and dist.is_initialized():
            dist.destroy_process_group()


def clip_grad_norm_(parameters, max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` for sharded gradients: the norm of DTensor shards is a partial
    sum until ``full_tensor()`` reduces it over the mesh, so every process clips by the global norm."""
    params = [p for p in parameters if p.grad is not None]
    norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return norm
