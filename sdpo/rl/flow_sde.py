"""Flow-GRPO's ODE-to-SDE step for rectified flow, with its log-probability.

Source: Flow-GRPO (arXiv 2505.05470, Eq. 9-10 of its method; code ``flow_grpo/diffusers_patch/
sd3_sde_with_logprob.py``, ``sde_step_with_logprob``, at commit ac4c86e).  The deterministic sampler
``dx = v dt`` is replaced by the SDE with the same marginals, discretised by Euler-Maruyama from ``sigma`` to
``sigma_next`` (``dt = sigma_next - sigma < 0``) with the velocity prediction ``v``:

    sigma_t = a * sqrt(sigma / (1 - sigma))          (a: the noise level, 0.7 in every config)
    mean    = x (1 + sigma_t^2 dt / (2 sigma)) + v (1 + sigma_t^2 (1 - sigma) / (2 sigma)) dt
    x_next  = mean + sigma_t sqrt(-dt) z,            z ~ N(0, I)

At ``sigma = 1`` (the first step of every shifted schedule) ``1 - sigma`` is replaced by ``1 - sigmas[1]``, the
second sigma of the schedule, as the code does (``sigma_max = self.sigmas[1]``).  The KL term divides by
``sigma_t`` (the code's ``std_dev_t``), not by the step's noise standard deviation ``sigma_t sqrt(-dt)``
(``sdpo.rl.settings`` says why that choice).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sdpo.rl.gaussian import StepOut, finish, per_row


@dataclass
class FlowSDE:
    """The schedule of one rollout: ``timesteps`` (the denoiser's argument per step, ``sigma * 1000``) and
    ``sigmas`` (one more than the steps: the schedule ends at 0), with the noise level ``a``."""

    timesteps: torch.Tensor
    sigmas: torch.Tensor
    noise_level: float

    kind = "flow"

    @property
    def steps(self) -> int:
        return int(self.timesteps.numel())

    def coefficients(self, j: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(sigma, dt, sigma_t)`` per row for the rows' step indices ``j``, float32."""
        sig = self.sigmas.float()
        sigma, sigma_next = sig[j], sig[j + 1]
        sigma_max = sig[1]
        sigma_t = torch.sqrt(sigma / (1 - torch.where(sigma == 1, sigma_max, sigma))) * self.noise_level
        return sigma, sigma_next - sigma, sigma_t

    def noise_std(self) -> torch.Tensor:
        """The noise standard deviation of every step, ``(steps,)``: all positive for ``a > 0``."""
        _, dt, sigma_t = self.coefficients(torch.arange(self.steps))
        return sigma_t * torch.sqrt(-dt)

    def step(self, j: torch.Tensor, pred: torch.Tensor, x: torch.Tensor, next_latent: torch.Tensor | None = None,
             noise: torch.Tensor | None = None) -> StepOut:  # fmt: skip
        """Rows ``x`` at steps ``j`` with velocity ``pred``: draw ``x_next`` with ``noise``, or score the given
        ``next_latent``."""
        pred, x = pred.float(), x.float()
        sigma, dt, sigma_t = (per_row(c.to(x.device), x.dim()) for c in self.coefficients(j.cpu()))
        mean = x * (1 + sigma_t**2 / (2 * sigma) * dt) + pred * (1 + sigma_t**2 * (1 - sigma) / (2 * sigma)) * dt
        std = sigma_t * torch.sqrt(-dt)
        nxt = None if next_latent is None else next_latent.float()
        return finish(mean, std, sigma_t, nxt, noise)

    def state(self) -> dict:
        return {"kind": self.kind, "timesteps": self.timesteps, "sigmas": self.sigmas, "noise": self.noise_level}

    @classmethod
    def from_state(cls, state: dict) -> FlowSDE:
        return cls(state["timesteps"], state["sigmas"], float(state["noise"]))
