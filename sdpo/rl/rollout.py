"""Stochastic rollouts with per-step log-probabilities: G samples per prompt from the current policy.

What follows Flow-GRPO (``flow_grpo/diffusers_patch/sd3_pipeline_with_logprob.py``, ``pipeline_with_logprob``)
and DDPO (``ddpo_pytorch/diffusers_patch/pipeline_with_logprob.py``): the family's sampling schedule with fewer
steps than evaluation (denoising reduction, ``RolloutSettings.steps``), classifier-free guidance in the same
forward as the conditional rows, every intermediate latent and every step's log-probability kept.

What is this repository's: every random draw of a sample (its initial latent, then one noise per step) comes
from its own generator seeded with its seed, on the CPU, so a sample does not depend on the device, on the
other samples of its call, or on a resume; the G samples of a prompt share one text encoding (each prompt is
encoded alone, so an encoding does not depend on its neighbours either); a call takes ``rows_per_call`` rows
(default: one prompt's group), so the composition of every denoiser call is fixed by the plan, not by the
number of processes (``sdpo.sampling.images`` explains why that matters on a CPU).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sdpo.data.seeding import torch_generator
from sdpo.rl.logprob import denoise
from sdpo.rl.process import make_process
from sdpo.rl.settings import RolloutSettings
from sdpo.rl.trajectory import Trajectories


def encode(family, prompts: list[str], guidance: float) -> tuple[dict, dict]:
    """``(cond with one row per prompt, negative row or {})``: text encoded one prompt at a time, plus the family's
    extra conditioning; the empty prompt is the negative when the family guides by a negative pass and ``g > 1``."""

    def one(p: str) -> dict[str, torch.Tensor]:
        c = family.encode_prompt([p])
        dtype = next(iter(c.values())).dtype
        return {**c, **family.extra_conditioning(1, dtype)}

    rows = [one(p) for p in prompts]
    cond = {k: torch.cat([r[k] for r in rows]) for k in rows[0]}
    negative = one("") if family.classifier_free and guidance > 1.0 else {}
    return cond, negative


def sample_noise(seed: int, latent_shape: tuple[int, ...], steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(initial latent, (steps, *latent_shape) step noises)`` of one sample, from its own CPU stream."""
    g = torch_generator(int(seed), "cpu")
    first = torch.randn(latent_shape, generator=g)
    return first, torch.randn((steps, *latent_shape), generator=g)


@torch.no_grad()
def rollout(family, prompts: list[str], group_size: int, seeds: Sequence[int], settings: RolloutSettings,
            latent_shape: tuple[int, ...], module=None, rows_per_call: int | None = None) -> Trajectories:  # fmt: skip
    """``group_size`` trajectories of each of ``prompts`` (rows ``p * group_size .. (p + 1) * group_size - 1`` are
    prompt ``p``'s), sample ``i`` drawn from ``seeds[i]``; ``module``: the policy (default: the family's
    denoiser)."""
    settings.check()
    n = len(prompts) * group_size
    if len(seeds) != n:
        raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts x {group_size} samples")
    module = family.denoiser if module is None else module
    process = make_process(family, settings, latent_shape)
    cond, negative = encode(family, prompts, settings.guidance)
    group = torch.arange(len(prompts)).repeat_interleave(group_size)
    steps, device = process.steps, family.device
    latents = torch.empty((n, steps + 1, *latent_shape))
    log_probs = torch.zeros((n, steps))
    per_call = rows_per_call or group_size
    for start in range(0, n, per_call):
        rows = torch.arange(start, min(start + per_call, n))
        draws = [sample_noise(int(seeds[i]), latent_shape, steps) for i in rows.tolist()]
        x = torch.stack([d[0] for d in draws]).to(device)
        noise = torch.stack([d[1] for d in draws]).to(device)
        c = {k: v[group[rows]].to(device) for k, v in cond.items()}
        neg = {k: v.to(device) for k, v in negative.items()}
        latents[rows, 0] = x.float().cpu()
        for j in range(steps):
            jj = torch.full((len(rows),), j, dtype=torch.long)
            t = process.timesteps[jj].to(device)
            pred = denoise(family, module, x, t, c, neg, settings.guidance)
            out = process.step(jj, pred, x, noise=noise[:, j])
            x = out.next_latent
            latents[rows, j + 1] = x.cpu()
            log_probs[rows, j] = out.log_prob.float().cpu()
    meta = {"group_size": group_size, "steps": steps, "noise": settings.noise, "eval_steps": settings.eval_steps,
            "latent_shape": list(latent_shape), "rows_per_call": per_call}  # fmt: skip
    return Trajectories(list(prompts), group, torch.as_tensor(list(map(int, seeds)), dtype=torch.int64), latents,
                        log_probs, cond, negative, process, float(settings.guidance), meta)  # fmt: skip
