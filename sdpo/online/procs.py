"""The launched processes as the driver sees them: rank, count, device, a barrier.

The driver runs under the same launcher as train.py (``accelerate launch`` / ``torchrun``, or one plain
process).  Sampling and scoring split their work by index (``i % world == rank``: fixed by the index alone), the
main process writes every shared file, and the round's training runs in these same processes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


def cpu_only() -> bool:
    """accelerate treats CPU processes as one data-parallel group only when told they are CPU ones."""
    return os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true") or not torch.accelerator.is_available()


@dataclass(frozen=True)
class Procs:
    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def mine(self, n: int) -> list[int]:
        """The work items of ``n`` that belong to this process."""
        return [i for i in range(n) if i % self.world == self.rank]

    def barrier(self) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()


def current() -> Procs:
    """This process's place, from accelerate's state (made again after a round's training reset it)."""
    from accelerate import PartialState

    state = PartialState(cpu=cpu_only())
    return Procs(state.process_index, state.num_processes, state.device)
