"""The clipped policy-ratio objective and the KL term of one micro-batch at one step, per row.

Flow-GRPO (``scripts/train_sd3.py``, the GRPO block of ``main``), for rows ``i`` at their trained step:

    A_i      = clamp(advantage_i, -adv_clip_max, adv_clip_max)
    ratio_i  = exp(log p_theta(x_next | x) - log p_old(x_next | x))        (log-probs recorded at sampling)
    loss_i   = max(-A_i ratio_i, -A_i clamp(ratio_i, 1 - clip_range, 1 + clip_range))
    kl_i     = mean over elements of (mean_theta - mean_ref)^2 / (2 kl_std_i^2)
    loss     = mean_i loss_i + beta * mean_i kl_i

with ``mean_theta`` / ``mean_ref`` the Gaussian means of the step under the policy and the reference (same
inputs), ``kl_std`` the process's (``sdpo.rl.flow_sde``, ``sdpo.rl.ddim_eta``).  The logged diagnostics are the
code's: ``approx_kl = 0.5 mean (log p - log p_old)^2`` and ``clipfrac`` (the share of rows whose ratio left the
clip window).
"""

from __future__ import annotations

import torch


def clipped_policy_loss(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor,
                        clip_range: float, adv_clip_max: float) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """``(per-row loss, ratio)``; the per-row loss carries the gradient of the rows whose ratio is not clipped
    away from the side the advantage pushes."""
    adv = advantages.to(log_prob).clamp(-adv_clip_max, adv_clip_max)
    ratio = torch.exp(log_prob - old_log_prob.to(log_prob))
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    return torch.maximum(unclipped, clipped), ratio


def kl_per_row(mean: torch.Tensor, ref_mean: torch.Tensor, kl_std: torch.Tensor) -> torch.Tensor:
    """``mean over elements (mean - ref_mean)^2 / (2 kl_std^2)`` per row (``kl_std`` per row or broadcastable)."""
    d = (mean - ref_mean.to(mean)) ** 2
    sq = d.mean(dim=tuple(range(1, d.dim())))
    s = kl_std.to(sq).reshape(-1) if kl_std.dim() else kl_std.to(sq)
    return sq / (2 * s * s)


def diagnostics(log_prob: torch.Tensor, old_log_prob: torch.Tensor, ratio: torch.Tensor,
                clip_range: float) -> dict[str, torch.Tensor]:  # fmt: skip
    """Flow-GRPO's logged ``approx_kl`` and ``clipfrac`` (detached)."""
    with torch.no_grad():
        d = log_prob - old_log_prob.to(log_prob)
        return {"approx_kl": 0.5 * (d * d).mean(), "clipfrac": ((ratio - 1.0).abs() > clip_range).float().mean()}
