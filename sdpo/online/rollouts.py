"""Stage ``samples`` of a GRPO round: G stochastic rollouts of every prompt from the current weights, each kept
whole (every latent, every step's log-probability: ``sdpo.rl.rollout``) and decoded into the PNG the scoring
stage reads.

The same plan as the DPO rounds' sampling stage (``sdpo.online.plan``): one call per ``--prompts_per_call``
prompts with all their samples, call ``c`` drawn by process ``c % world``, every sample from its own seed.  A
call writes ``trajectories/call-<c>.safetensors``, then its PNGs (each under a temporary name, then renamed);
a call whose files all exist is skipped, so a killed stage resumes where it stopped, and a sample is the same
whichever process draws it.  The main process then writes ``samples/manifest.json`` as the DPO stage does.
"""

from __future__ import annotations

import torch

from sdpo.atomic import write_json
from sdpo.checkpoint.store import crash_point
from sdpo.online.grpo_settings import exact_threads, load_family, rollout_settings, trajectory_name
from sdpo.online.memory import release
from sdpo.online.plan import calls
from sdpo.online.sample import remove_stale_temps


def trajectories_dir(ctx):
    return ctx.folder.root / "trajectories"


def run(ctx) -> dict:
    procs, media, opts = ctx.procs, ctx.media, ctx.opts
    samples, folder, tdir = ctx.samples(), ctx.folder.samples, trajectories_dir(ctx)
    weights = ctx.weights_after(ctx.round - 1)
    if procs.is_main:
        for d in (folder, tdir):
            d.mkdir(parents=True, exist_ok=True)
            remove_stale_temps(d)
    procs.barrier()
    groups = calls(samples, opts.prompts_per_call)
    mine = [c for c in range(len(groups)) if c % procs.world == procs.rank]

    def done(c: int) -> bool:
        return (tdir / trajectory_name(c)).is_file() and all((folder / f"{s.stem}.png").is_file() for s in groups[c])

    todo = [c for c in mine if not done(c)]
    with exact_threads(procs.device):
        drawn = _draw(ctx, groups, todo, weights, tdir) if todo else 0
    procs.barrier()
    if procs.is_main:
        write_json(folder / "manifest.json", {
            "round": ctx.round, "settings": {**media.settings(), "rollout_noise": opts.rollout_noise},
            "weights": ctx.policy(weights).describe(),
            "samples": [s.record(f"samples/{s.stem}.png") for s in samples],
            "trajectories": [f"trajectories/{trajectory_name(c)}" for c in range(len(groups))],
        })  # fmt: skip
    return {"prompts": len({s.pos for s in samples}), "samples": len(samples), "drawn_by_main": drawn}


def _draw(ctx, groups, todo: list[int], weights, tdir) -> int:
    """Roll out the calls ``todo``: trajectories, then their PNGs; returns how many samples were drawn."""
    from sdpo.rl.rollout import rollout
    from sdpo.sampling.images import decode_latents

    media, opts, folder, drawn = ctx.media, ctx.opts, ctx.folder.samples, 0
    fam, shape = load_family(ctx, weights, needs_reference=False)
    settings = rollout_settings(opts, media.guidance, fam.process)
    comp = fam.sampling_components(fam.denoiser, None)
    for c in todo:
        group = groups[c]
        prompts = [s.prompt for s in group if s.k == 0]
        traj = rollout(fam, prompts, opts.samples_per_prompt, [s.seed for s in group], settings, shape,
                       rows_per_call=len(group))  # fmt: skip
        traj.save(tdir / trajectory_name(c))
        with torch.no_grad():
            images = decode_latents(comp, traj.final.to(fam.device))
        for s, image in zip(group, images):
            media.save(image, folder / f"{s.stem}.png", s.prompt)
        drawn += len(group)
        crash_point(ctx.crash_name("samples"))
    del fam, comp
    release(ctx.procs.device)
    return drawn
