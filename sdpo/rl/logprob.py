"""The policy's prediction at a rollout step and the step's log-probability under given weights.

The sampler (``sdpo.rl.rollout``) and the update (``sdpo.rl.update``) both go through :func:`denoise` and the
process's ``step``, so a step recomputed under the weights that sampled it, on the same rows, repeats the
sampler's arithmetic exactly (the parity the tests pin at 1e-6 in float32; on the same rows it is bit for bit).
On a CPU a matmul's rounding depends on the call's row count (``sdpo.sampling.images``), so a recomputation on
other rows than the sampling call's may differ in the last bits; Flow-GRPO has the same property (and bf16).

Guidance follows Flow-GRPO (``scripts/train_sd3.py``, ``compute_log_prob``): one forward on the stacked
``[uncond, cond]`` rows, ``uncond + g (cond - uncond)`` (diffusers' scale), and while training the uncond half
is detached, so the gradient reaches the policy through the conditional branch only.
"""

from __future__ import annotations

import torch

from sdpo.rl.gaussian import StepOut
from sdpo.rl.process import Process


def denoise(family, module, x: torch.Tensor, t: torch.Tensor, cond: dict[str, torch.Tensor],
            negative: dict[str, torch.Tensor], guidance: float,
            detach_uncond: bool = False) -> torch.Tensor:  # fmt: skip
    """The (guided) prediction for rows ``x`` at denoiser timesteps ``t`` (one per row) through the family's own
    call; ``negative`` empty: no guidance pass (guidance-distilled families, or ``guidance <= 1``)."""
    if not negative:
        return family.predict(module, x, t, cond)
    n = x.shape[0]
    both = {k: torch.cat([negative[k].to(v.device).expand(n, *v.shape[1:]), v]) for k, v in cond.items()}
    out = family.predict(module, torch.cat([x, x]), torch.cat([t, t]), both)
    uncond, text = out.chunk(2)
    if detach_uncond:
        uncond = uncond.detach()
    return uncond + guidance * (text - uncond)


def step_inputs(traj, rows: torch.Tensor, j: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x, x_next, t)`` of ``rows`` at their steps ``j`` (one step index per row)."""
    r, jj = rows.cpu(), j.cpu()
    x = traj.latents[r, jj].to(device)
    nxt = traj.latents[r, jj + 1].to(device)
    t = traj.process.timesteps[jj].to(device)
    return x, nxt, t


def recompute(family, module, traj, rows: torch.Tensor, j: torch.Tensor,
              detach_uncond: bool = False) -> tuple[StepOut, torch.Tensor]:  # fmt: skip
    """``(step, prediction)``: the log-probability of the recorded ``x_{j+1}`` of ``rows`` given their ``x_j`` under
    ``module`` (with a graph when grad mode is on), and the prediction it came from (the winner-preserving lambda
    differentiates the objective with respect to it)."""
    device = family.device
    x, nxt, t = step_inputs(traj, rows, j, device)
    cond = {k: v.to(device) for k, v in traj.cond_rows(rows).items()}
    neg = {k: v.to(device) for k, v in traj.negative.items()}
    pred = denoise(family, module, x, t, cond, neg, traj.guidance, detach_uncond)
    process: Process = traj.process
    return process.step(j, pred, x, next_latent=nxt), pred
