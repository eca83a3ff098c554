"""Small Python objects between processes (a refusal, a list of records): every process takes the same branch."""

from __future__ import annotations


def from_main(accelerator, value):
    """The main process's ``value`` on every process (so that all of them take the same branch)."""
    if accelerator.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]


def gathered(accelerator, value) -> list:
    """Every process's ``value``, in process order, on every process."""
    if accelerator.num_processes == 1:
        return [value]
    from accelerate.utils import gather_object

    return gather_object([value])
