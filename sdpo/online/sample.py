"""Stage ``samples``: K samples of every prompt of the round from the current weights (the previous round's).

The sampler's models are loaded once for the stage and dropped before the next one; each process draws its
calls (``sdpo.online.plan.calls``), writes every sample under a temporary name and renames it, and skips the
calls whose samples all exist, so a killed stage resumes where it stopped.  The main process then writes
``samples/manifest.json``: every sample's prompt, k and seed, in order.
"""

from __future__ import annotations

import os
from pathlib import Path

from sdpo.atomic import write_json
from sdpo.checkpoint.store import crash_point
from sdpo.online.memory import release
from sdpo.online.plan import Sample, calls


def remove_stale_temps(folder: Path) -> None:
    """Files a killed writer left (``.<name>.tmp-<pid>``, ``sdpo.atomic``)."""
    if folder.is_dir():
        for name in os.listdir(folder):
            if name.startswith(".") and ".tmp-" in name:
                (folder / name).unlink(missing_ok=True)


def generate(ctx, samples: list[Sample], folder: Path, weights: Path | None, crash: str) -> int:
    """Draw the missing ``samples`` of this process into ``folder``; returns how many it drew now."""
    procs, media = ctx.procs, ctx.media
    if procs.is_main:
        folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(folder)
    procs.barrier()
    groups = calls(samples, ctx.opts.prompts_per_call)
    mine = [g for c, g in enumerate(groups) if c % procs.world == procs.rank]
    todo = [g for g in mine if not all((folder / f"{s.stem}{media.suffix}").is_file() for s in g)]
    drawn = 0
    if todo:
        comp = media.load(ctx.policy(weights), procs.device)
        for group in todo:
            outs = media.generate(comp, [s.prompt for s in group], [s.seed for s in group])
            for s, out in zip(group, outs):
                media.save(out, folder / f"{s.stem}{media.suffix}", s.prompt)
            drawn += len(group)
            crash_point(crash)
        del comp
        release(procs.device)
    procs.barrier()
    return drawn


def run(ctx) -> dict:
    samples = ctx.samples()
    folder = ctx.folder.samples
    drawn = generate(ctx, samples, folder, ctx.weights_after(ctx.round - 1), ctx.crash_name("samples"))
    if ctx.procs.is_main:
        write_json(folder / "manifest.json", {
            "round": ctx.round, "settings": ctx.media.settings(),
            "weights": ctx.policy(ctx.weights_after(ctx.round - 1)).describe(),
            "samples": [s.record(f"samples/{s.stem}{ctx.media.suffix}") for s in samples],
        })  # fmt: skip
    return {"prompts": len({s.pos for s in samples}), "samples": len(samples), "drawn_by_main": drawn}
