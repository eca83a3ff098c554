"""Stage ``train``: train.py on the round's pairs, in this process (and the other launched ones), starting from
the previous round's weights.

The round's flags are the user's train.py flags plus the round's data, output folder (``weights/``: a normal
run's folder, resumable from its checkpoints), length and seed (``--seed`` + round - 1), and the initial
weights: with ``--reference base`` (the default) the policy starts from the previous round (``--policy_init``)
while the objective's reference stays the base model (the SDPO and SIPO objectives regularise towards it); with
``--reference previous`` both start from the previous round (``--unet_init``), so each round's reference is the
model that drew its samples.  accelerate's process-wide state is reset around the run, and the run's models are
released before the next stage loads anything.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from sdpo.online.memory import release
from sdpo.online.options import round_train_args


@contextmanager
def crash_in_training(name: str):
    """Fault injection inside train.py's own checkpointing: ``SDPO_CRASH_AT=online:round-001/train:checkpoint-1``
    becomes ``checkpoint-1`` for this round's run only."""
    wanted = os.environ.get("SDPO_CRASH_AT", "")
    if not wanted.startswith(name + ":"):
        yield
        return
    os.environ["SDPO_CRASH_AT"] = wanted[len(name) + 1 :]
    try:
        yield
    finally:
        os.environ["SDPO_CRASH_AT"] = wanted


def round_flags(ctx) -> list[str]:
    previous = ctx.weights_after(ctx.round - 1)
    init = {}
    if previous is not None:
        init = {"--unet_init" if ctx.opts.reference == "previous" else "--policy_init": str(previous)}
    seed = ctx.cfg.optim.seed + ctx.round - 1
    return round_train_args(ctx.opts, ctx.folder.pairs_file, ctx.folder.weights, seed, init)


def train_in_process(flags: list[str]) -> Path:
    from accelerate.state import AcceleratorState, GradientState

    from sdpo.config import parse_args
    from sdpo.training.loop import train

    cfg = parse_args(flags)
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    try:
        return train(cfg, keep_process_group=True)
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()


def run(ctx) -> dict | None:
    from sdpo.training.metrics import read_jsonl

    with crash_in_training(ctx.crash_name("train")):
        path = train_in_process(round_flags(ctx))
    release(ctx.procs.device)
    if not ctx.procs.is_main:
        return None
    log = read_jsonl(ctx.folder.weights)
    mean = lambda k: (sum(r[k] for r in log if k in r) / max(1, sum(k in r for r in log))) if log else None  # noqa: E731
    out = {"weights": str(Path(path).relative_to(ctx.folder.root)), "steps": len(log),
           "train_loss": mean("train_loss"), "implicit_acc": mean("implicit_acc_accumulated")}  # fmt: skip
    if ctx.cfg.safeguard.use_winner_preserving:
        out["mean_lambda"] = mean("avg_lose_l_scale")
    return out
