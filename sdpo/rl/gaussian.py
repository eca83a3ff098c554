"""One stochastic denoising step is a Gaussian: what both samplers return, and its log-density.

Both Flow-GRPO (``flow_grpo/diffusers_patch/sd3_sde_with_logprob.py``, ``sde_step_with_logprob``) and DDPO
(``ddpo_pytorch/diffusers_patch/ddim_with_logprob.py``, ``ddim_step_with_logprob``) write the step as
``x_next = mean(prediction) + std * z`` and score ``x_next`` by the isotropic Gaussian log-density **averaged**
over latent elements (not summed), so a log-ratio of two policies is a per-element geometric mean; that is why
their clip range is as small as 1e-4.  Everything runs in float32 whatever the model's dtype (Flow-GRPO: bf16
overflows in the mean).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


@dataclass
class StepOut:
    """One step for a batch of rows: the next latent, its log-probability (one per row), the Gaussian's mean, the
    standard deviation of its noise, and ``kl_std``: what the KL term divides the squared mean difference by
    (twice its square; ``sdpo.rl.objective.kl_per_row``)."""

    next_latent: torch.Tensor
    log_prob: torch.Tensor
    mean: torch.Tensor
    noise_std: torch.Tensor
    kl_std: torch.Tensor


def per_row(x: torch.Tensor, ndim: int) -> torch.Tensor:
    """A per-row (or scalar) coefficient shaped to broadcast over a batch of ``ndim``-dimensional latents."""
    x = torch.as_tensor(x)
    return x.reshape(-1, *([1] * (ndim - 1))) if x.dim() else x


def log_prob(next_latent: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Mean over every non-batch axis of ``log N(next_latent; mean, std^2)``.  ``next_latent`` is a constant
    (detached): the gradient reaches the policy through ``mean`` only."""
    z = next_latent.detach() - mean
    lp = -(z * z) / (2.0 * std * std) - torch.log(std) - _LOG_SQRT_2PI
    return lp.mean(dim=tuple(range(1, lp.dim())))


def finish(mean: torch.Tensor, std: torch.Tensor, kl_std: torch.Tensor, next_latent: torch.Tensor | None,
           noise: torch.Tensor | None) -> StepOut:  # fmt: skip
    """Draw ``next_latent = mean + std * noise`` when it is not given (sampling), else score the given one
    (recomputing a recorded step); either way the same arithmetic scores it, so a recorded log-probability and
    its recomputation under the same weights agree bit for bit."""
    if next_latent is None:
        if noise is None:
            raise ValueError("sampling a step needs its noise")
        next_latent = mean + std * noise.to(mean)
    return StepOut(next_latent, log_prob(next_latent, mean, std), mean, std, kl_std)
