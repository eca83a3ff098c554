"""Resuming on another number of processes: same global batch, same next sample.

Pre-empted jobs often come back on fewer or more nodes.  A checkpoint therefore records its data
position in *samples of the epoch* (not in per-process micro-batches) and the global batch it was
trained with.  On resume:

* same processes and per-process batch: nothing changes (bit-identical continuation);
* otherwise the gradient accumulation is recomputed so that batch x processes x accumulation is the
  saved global batch, and the epoch continues at the saved sample: every sample of the epoch's
  permutation is trained on exactly once (``sdpo.data.pairs.ShardedPairSampler`` lays global batches out
  over sample positions, whatever the process count).  The log says what changed.  When no
  accumulation works, one line says which batch sizes or process counts would.

Every random draw of a sample is a function of ``(seed, epoch, index)`` (``sdpo.data.seeding``), so the
resumed run feeds the model the same inputs; the sums over the global batch are regrouped, so the
weights agree with an uninterrupted run to float rounding, not bit for bit.
"""

from __future__ import annotations

import logging

from sdpo.errors import UserError

log = logging.getLogger(__name__)


def position_state(epoch: int, epoch_samples: int, optim, sharding: str, num_processes: int) -> dict:
    """What a checkpoint records about the data position and the batch arithmetic (``optim``: the run's
    ``optim`` section, its batch and accumulation)."""
    b, a = optim.train_batch_size, optim.gradient_accumulation_steps
    return {
        "epoch": epoch,
        "epoch_samples": epoch_samples,
        "epoch_batches": epoch_samples // (b * num_processes),  # the per-process count older readers expect
        "num_processes": num_processes,
        "train_batch_size": b,
        "gradient_accumulation_steps": a,
        "global_batch": b * num_processes * a,
        "sharding": sharding,
    }


def saved_epoch_samples(saved: dict, batch: int, num_processes: int) -> int:
    """The saved position in samples (checkpoints from before this field counted micro-batches of this
    run's own shape: ``batch`` per process)."""
    if "epoch_samples" in saved:
        return int(saved["epoch_samples"])
    b = saved.get("train_batch_size", batch)
    return int(saved.get("epoch_batches", 0)) * b * saved.get("num_processes", num_processes)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def adopt(optim, sharding: str, streaming: bool, saved: dict, num_processes: int, where: str) -> tuple[int, str | None]:
    """How this launch (``optim``: its batch and accumulation; ``sharding``, ``streaming``) continues the run saved
    in ``saved`` (a ``training_state.json``) on ``num_processes``.

    Returns the gradient accumulation that makes the saved global batch, and the line to log when the shape of
    the run changed (None when it did not); raises a one-line ``UserError`` when the saved global batch cannot
    be made, or when the checkpoint's format does not fit ``--sharding``.
    """
    _check_format(sharding, streaming, saved, num_processes, where)
    a_given = optim.gradient_accumulation_steps
    if "global_batch" not in saved:  # written before elastic resume existed: same shape assumed
        return a_given, None
    n, b = num_processes, optim.train_batch_size
    n0, b0, a0 = saved["num_processes"], saved["train_batch_size"], saved["gradient_accumulation_steps"]
    g = saved["global_batch"]
    if g % (b * n):
        fix = []
        if g % n == 0:
            fix.append(f"with {_procs(n)} use --train_batch_size {_either(_divisors(g // n))}")
        if g % b == 0:
            fix.append(f"with --train_batch_size {b} resume on {_either(_divisors(g // b))} processes")
        if not fix:
            fix.append(f"resume on {_either(_divisors(g))} processes with --train_batch_size 1")
        raise UserError(
            f"{where} was trained with global batch {g} ({_procs(n0)} x batch {b0} x accumulation {a0}); "
            f"{_procs(n)} x batch {b} cannot make {g}: " + "; or ".join(fix)
        )
    a = g // (b * n)
    if (n, b, a) == (n0, b0, a0) and a == a_given:
        return a, None
    position = saved_epoch_samples(saved, b, n0)
    note = f" (--gradient_accumulation_steps {a_given} overridden)" if a != a_given else ""
    return a, (
        f"elastic resume from {where}: it was {_procs(n0)} x batch {b0} x accumulation {a0}, now {_procs(n)} x {b} x {a}"
        f"{note}: same global batch {g}, continuing epoch {saved.get('epoch', 0)} at sample {position}"
    )


def _procs(n: int) -> str:
    return f"{n} process{'es' if n != 1 else ''}"


def _either(values: list[int]) -> str:
    return ", ".join(map(str, values[:-1])) + (" or " if len(values) > 1 else "") + str(values[-1])


def _check_format(now: str, streaming: bool, saved: dict, num_processes: int, where: str) -> None:
    """DDP checkpoints hold whole weights (accelerate's format), sharded ones DCP shards: no silent mix."""
    was = saved.get("sharding", "none")
    if (was == "none") != (now == "none"):
        raise UserError(
            f"{where} was written with --sharding {was}; resume it with --sharding "
            f"{'fsdp or hsdp' if was != 'none' else 'none'} (or start a new run with --resume_from_checkpoint none)"
        )
    if streaming and "num_processes" in saved and saved["num_processes"] != num_processes:
        raise UserError(
            f"{where} streamed its data over {saved['num_processes']} processes; a stream split over another "
            f"count has other rows per process: resume --streaming runs on {saved['num_processes']} processes"
        )
