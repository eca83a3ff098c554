"""The GRPO update on one batch of rollouts: inner epochs x micro-batches x trained steps, then optimizer steps.

As Flow-GRPO's training loop (``scripts/train_sd3.py``, ``main``): every inner epoch shuffles the samples,
cuts them into micro-batches, and for each micro-batch runs one forward and backward per trained step (the
objective of ``sdpo.rl.objective``), accumulating gradients over ``accumulation`` micro-batches and all their
trained steps (the code's ``gradient_accumulation_steps * num_train_timesteps``: each backward is divided by
that count), then clips the gradient norm and steps the optimizer.  Which steps are trained:
``int(timestep_fraction * trainable steps)`` of them, the first ones in sampling order (Flow-GRPO) or a random
subset in random order per sample (DDPO's ``scripts/train.py``).

What is this repository's: the shuffles come from a generator seeded by ``(seed, inner epoch)``
(``sdpo.data.seeding``), so an interrupted update repeats exactly; with ``winner_preserving`` the micro-batches
hold whole groups and a group's rows share their steps (``sdpo.rl.winner_preserving`` says why).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from sdpo.data.seeding import sample_seed
from sdpo.rl.logprob import recompute, step_inputs
from sdpo.rl.objective import clipped_policy_loss, diagnostics, kl_per_row
from sdpo.rl.process import trainable_steps
from sdpo.rl.settings import GRPOSettings
from sdpo.rl.trajectory import Trajectories
from sdpo.rl.winner_preserving import branch_lambda, split_objective
from sdpo.safeguard.modes import param_space_lambda

_SHUFFLE = 0x6770  # separates the update's draws from the samples' own streams


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(sample_seed(seed, _SHUFFLE, epoch))


def trained_steps(traj: Trajectories, settings: GRPOSettings, gen: torch.Generator) -> torch.Tensor:
    """``(N, k)`` step indices each row trains on, in training order."""
    pool = trainable_steps(traj.process)
    k = max(1, int(len(pool) * settings.timestep_fraction))
    n = len(traj)
    if settings.step_order == "first":
        return pool[:k].expand(n, k).clone()
    if settings.winner_preserving:  # one order per group, shared by its rows
        per_group = torch.stack([torch.randperm(len(pool), generator=gen)[:k] for _ in range(len(traj.prompts))])
        return pool[per_group[traj.group]]
    return pool[torch.stack([torch.randperm(len(pool), generator=gen)[:k] for _ in range(n)])]


def micro_batches(traj: Trajectories, settings: GRPOSettings, gen: torch.Generator) -> list[torch.Tensor]:
    """Row indices of each micro-batch: shuffled rows in chunks of ``micro_batch``; with ``winner_preserving``,
    shuffled groups, ``micro_batch`` groups per chunk."""
    if not settings.winner_preserving:
        perm = torch.randperm(len(traj), generator=gen)
        return list(perm.split(settings.micro_batch))
    ids = torch.unique(traj.group)
    order = ids[torch.randperm(len(ids), generator=gen)]
    chunks = order.split(settings.micro_batch)
    return [torch.cat([torch.nonzero(traj.group == g).flatten() for g in c]) for c in chunks]


def micro_step(family, traj: Trajectories, rows: torch.Tensor, j: torch.Tensor, advantages: torch.Tensor,
               settings: GRPOSettings) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # fmt: skip
    """The loss of ``rows`` at their steps ``j`` (with a graph) and its logged scalars."""
    policy = family.denoiser
    out, pred = recompute(family, policy, traj, rows, j, detach_uncond=True)
    old = traj.log_probs[rows.cpu(), j.cpu()].to(out.log_prob.device)
    adv = advantages[rows.cpu()].to(out.log_prob.device).float()
    per_row, ratio = clipped_policy_loss(out.log_prob, old, adv, settings.clip_range, settings.adv_clip_max)
    stats = diagnostics(out.log_prob, old, ratio, settings.clip_range)
    if settings.winner_preserving:
        lam = _lambda(family, traj, rows, j, pred, per_row, old, adv, settings)
        policy_loss = split_objective(per_row, adv, lam)
        stats["avg_lose_l_scale"] = lam.detach().float()
    else:
        policy_loss = per_row.mean()
    loss = policy_loss
    stats["policy_loss"] = policy_loss.detach()
    if settings.kl_beta > 0:
        with torch.no_grad():
            ref, _ = recompute(family, family.reference, traj, rows, j)
        kl = kl_per_row(out.mean, ref.mean, out.kl_std).mean()
        loss = loss + settings.kl_beta * kl
        stats["kl_loss"] = kl.detach()
    stats["loss"] = loss.detach()
    return loss, stats


def _lambda(family, traj, rows, j, pred, per_row, old, adv, settings: GRPOSettings) -> torch.Tensor:
    """The winner-preserving lambda of one micro-step: output space (Eq. 17's proxy, ``sdpo.rl.winner_preserving``)
    or parameter space (Eq. 14: ``sdpo.safeguard.modes.param_space_lambda`` with ``L_w = P`` and ``L_l = -Q``, so its
    ``<g_w, g_l>`` is ``-<grad P, grad Q>``)."""
    mu = settings.winner_preserving_mu
    if settings.winner_preserving_mode == "param":
        n = per_row.numel()
        pos, neg = per_row[adv > 0].sum() / n, per_row[adv < 0].sum() / n
        params = [p for p in family.denoiser.parameters() if p.requires_grad]
        return param_space_lambda(pos, -neg, params, mu).float()
    x, nxt, _ = step_inputs(traj, rows, j, pred.device)

    def loss_of(p: torch.Tensor) -> torch.Tensor:
        lp = traj.process.step(j, p, x, next_latent=nxt).log_prob
        return clipped_policy_loss(lp, old, adv, settings.clip_range, settings.adv_clip_max)[0]

    return branch_lambda(loss_of, pred, adv, traj.group[rows.cpu()], mu)[0]


def grpo_update(family, optimizer: torch.optim.Optimizer, traj: Trajectories, advantages: torch.Tensor,
                settings: GRPOSettings, seed: int, backward: Callable[[torch.Tensor], None] | None = None,
                clip_grad: Callable[[float], None] | None = None) -> list[dict[str, float]]:  # fmt: skip
    """Train ``family.denoiser`` on ``traj`` with per-row ``advantages``; returns each optimizer step's mean
    scalars.  ``backward`` / ``clip_grad``: the caller's (accelerate's), by default ``loss.backward()`` and
    ``torch.nn.utils.clip_grad_norm_`` over the optimizer's parameters."""
    settings.check()
    if settings.kl_beta > 0 and family.reference is None:
        raise ValueError("the KL term needs the family loaded with its reference (needs_reference=True)")
    backward = backward or (lambda loss: loss.backward())
    params = [p for g in optimizer.param_groups for p in g["params"]]
    clip_grad = clip_grad or (lambda norm: torch.nn.utils.clip_grad_norm_(params, norm))
    family.denoiser.train()
    log: list[dict[str, float]] = []
    for epoch in range(settings.inner_epochs):
        gen = epoch_generator(seed, epoch)
        steps = trained_steps(traj, settings, gen)
        batches = micro_batches(traj, settings, gen)
        k = steps.shape[1]
        pending: list[dict[str, torch.Tensor]] = []
        for b, rows in enumerate(batches):
            group_end = min((b // settings.accumulation + 1) * settings.accumulation, len(batches))
            in_group = group_end - (b // settings.accumulation) * settings.accumulation
            for p in range(k):
                loss, stats = micro_step(family, traj, rows, steps[rows, p], advantages, settings)
                backward(loss / (k * in_group))
                pending.append(stats)
            if b + 1 == group_end:
                clip_grad(settings.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                log.append({name: float(torch.stack([s[name].float() for s in pending]).mean()) for name in pending[0]})
                log[-1]["inner_epoch"] = epoch
                pending = []
    return log
