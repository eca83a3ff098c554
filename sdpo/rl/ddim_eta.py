"""DDPO's stochastic DDIM step (``eta > 0``) for DDPM families, with its log-probability.

Source: DDPO (Black et al., 2024; code ``ddpo_pytorch/diffusers_patch/ddim_with_logprob.py``,
``ddim_step_with_logprob``), which is DDIM's Eq. 12 and 16 (Song et al., 2021) with the Gaussian density of the
step.  With ``abar`` the cumulative alpha at ``t`` and ``abar_prev`` at the next (smaller) timestep:

    x0_hat  = (x - sqrt(1 - abar) eps) / sqrt(abar)          (epsilon; v: x0 = sqrt(abar) x - sqrt(1 - abar) v,
                                                               eps = sqrt(abar) v + sqrt(1 - abar) x)
    std     = eta * sqrt((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev))
    mean    = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - std^2) eps
    x_next  = mean + std z

``x0_hat`` is clamped to the scheduler's ``clip_sample_range`` when its config says ``clip_sample`` (as DDPO
does).  ``abar_prev`` of the last step: diffusers' DDIM rule (``final_alpha_cumprod``: 1 with
``set_alpha_to_one``, else ``abar`` of timestep 0); DDPO clamps the previous timestep to 0 instead, which is the
same number for SD1.5/SDXL (``set_alpha_to_one`` false).  A step whose ``std`` is 0 (the last one when the
final alpha is 1) is deterministic: it has no log-probability and is never trained (``trainable``).  The KL
term divides by the step's own ``std`` (its exact Gaussian KL, up to the mean over elements).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sdpo.rl.gaussian import StepOut, finish, per_row


@dataclass
class DDIMEta:
    """The schedule of one rollout: ``timesteps`` (integers, the denoiser's argument) and the cumulative alphas
    at each step and at the step it goes to, with ``eta``, the prediction type and the clip range (0: none)."""

    timesteps: torch.Tensor
    alphas: torch.Tensor
    alphas_prev: torch.Tensor
    eta: float
    prediction_type: str = "epsilon"
    clip_range: float = 0.0

    kind = "ddpm"

    @property
    def steps(self) -> int:
        return int(self.timesteps.numel())

    def noise_std(self) -> torch.Tensor:
        """The noise standard deviation of every step, ``(steps,)``."""
        a, ap = self.alphas.double(), self.alphas_prev.double()
        return (self.eta * ((1 - ap) / (1 - a) * (1 - a / ap)).clamp(min=0).sqrt()).float()

    def step(self, j: torch.Tensor, pred: torch.Tensor, x: torch.Tensor, next_latent: torch.Tensor | None = None,
             noise: torch.Tensor | None = None) -> StepOut:  # fmt: skip
        pred, x = pred.float(), x.float()
        j = j.cpu()
        a = per_row(self.alphas.float()[j].to(x.device), x.dim())
        ap = per_row(self.alphas_prev.float()[j].to(x.device), x.dim())
        std = per_row(self.noise_std()[j].to(x.device), x.dim())
        if self.prediction_type == "epsilon":
            x0, eps = (x - (1 - a) ** 0.5 * pred) / a**0.5, pred
        elif self.prediction_type == "v_prediction":
            x0, eps = a**0.5 * x - (1 - a) ** 0.5 * pred, a**0.5 * pred + (1 - a) ** 0.5 * x
        else:
            raise ValueError(f"prediction_type {self.prediction_type!r} is not supported (epsilon, v_prediction)")
        if self.clip_range:
            x0 = x0.clamp(-self.clip_range, self.clip_range)
        mean = ap**0.5 * x0 + (1 - ap - std**2) ** 0.5 * eps
        nxt = None if next_latent is None else next_latent.float()
        if next_latent is None and not bool((std > 0).all()):  # a deterministic step: no noise, no density
            return StepOut(mean, torch.zeros(x.shape[0], device=x.device), mean, std, std)
        return finish(mean, std, std, nxt, noise)

    def state(self) -> dict:
        return {"kind": self.kind, "timesteps": self.timesteps, "alphas": self.alphas, "alphas_prev": self.alphas_prev,
                "noise": self.eta, "prediction_type": self.prediction_type, "clip_range": self.clip_range}  # fmt: skip

    @classmethod
    def from_state(cls, state: dict) -> DDIMEta:
        return cls(state["timesteps"], state["alphas"], state["alphas_prev"], float(state["noise"]),
                   state["prediction_type"], float(state["clip_range"]))  # fmt: skip
