"""The launcher and accelerate must agree on how many processes this run has, before anything loads.

Measured: ``torchrun --nproc_per_node 2 train.py ...`` on a machine without GPUs and without
``ACCELERATE_USE_CPU=true`` gives accelerate ``DistributedType.NO`` in both processes; each then
trains alone, on the same samples, and both write the same output folder at once.  The launcher's
``WORLD_SIZE`` / ``RANK`` (set by torchrun and ``accelerate launch``) say what was meant; when
accelerate sees something else, the run stops here with one line saying how to launch.
"""

from __future__ import annotations

import os

from sdpo.errors import UserError


def _how_to_launch(world: int) -> str:
    return (
        f"to run {world} CPU processes under torchrun set ACCELERATE_USE_CPU=true; on GPUs launch with "
        f"`accelerate launch --multi_gpu --num_processes {world} train.py ...` with the GPUs visible to every process"
    )


def check_launch(accelerator, environ: dict[str, str] | None = None) -> None:
    """Raise a one-line ``UserError`` when the launcher's process count, rank or local rank differs from
    accelerate's."""
    env = os.environ if environ is None else environ
    world = env.get("WORLD_SIZE")
    if world is None:
        return  # a plain `python train.py`: nothing to disagree with
    world, rank = int(world), int(env.get("RANK", "0"))
    n, r = accelerator.num_processes, accelerator.process_index
    if world != n:
        single = " (each process would train alone and write the same output folder)" if n == 1 else ""
        raise UserError(
            f"the launcher started {world} processes (WORLD_SIZE={world}) but accelerate runs {n} "
            f"(distributed type {accelerator.distributed_type.value}){single}; {_how_to_launch(world)}"
        )
    if rank != r:
        raise UserError(
            f"the launcher calls this process rank {rank} (RANK) but accelerate calls it {r}; {_how_to_launch(world)}"
        )
    local = env.get("LOCAL_RANK")
    if local is not None and int(local) != accelerator.local_process_index:
        raise UserError(
            f"the launcher calls this process local rank {local} (LOCAL_RANK) but accelerate calls it "
            f"{accelerator.local_process_index}; {_how_to_launch(world)}"
        )
