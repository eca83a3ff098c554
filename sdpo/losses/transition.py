"""Per-timestep importance weights for DPO-C&M and SIPO (the SIPO paper, arXiv:2505.21893).

    w(t) = p_theta(x_{t-1} | x_t) / q(x_{t-1} | x_t, x_0)

Both densities are Gaussians with the DDPM posterior variance, as in DDPO (Black et al., 2024):
``q = N(mu_q, var_t I)`` with the closed-form posterior mean
``mu_q = sqrt(abar_{t-1}) beta_t / (1 - abar_t) x_0 + sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t) x_t``
and ``var_t = (1 - abar_{t-1}) / (1 - abar_t) beta_t``; ``p_theta = N(mu_theta, var_t I)`` with the same
formula evaluated at the model's clean-latent estimate ``x0_hat`` (from epsilon or v prediction).

Choices the source leaves open, as taken here:

* ``x_{t-1}`` is a sample from ``q`` (the data-side process the training pairs come from), so that
  ``E_q[w] = 1`` as an importance weight should; with the posterior mean instead, ``w <= 1`` always.
  The standard-normal draw comes from the pair's own seeded stream (a separate substream of its
  sample seed: resume-exact and independent of batch layout) and is shared by winner and loser,
  like the timestep and the diffusion noise.
* The log-density ratio is averaged over latent elements (a per-element geometric mean), not
  summed: summed over the 16,384 elements of a 64x64x4 SD1.5 latent it saturates to 0 or infinity
  for any imperfect model, and no clip window could then separate timesteps.
* At ``t = 0`` the posterior variance is 0; it is replaced by that of ``t = 1`` (the clipped
  posterior variance of improved DDPM), so ``w(0)`` is finite.
* Weights are constants for the optimizer (computed without gradient): they reweight the DPO
  objective, the gradient comes from the DPO terms.
"""

from __future__ import annotations

import numpy as np
import torch

from sdpo.data.seeding import torch_generator
from sdpo.losses.terms import PreferenceTerms

_SUBSTREAM = 0x51_90  # separates this draw from the sample's other model-side draws


def transition_noise(seeds: torch.Tensor, shape: tuple[int, ...], device) -> torch.Tensor:
    """One standard-normal ``shape`` draw per pair from its own substream; returns ``(B, *shape)``."""
    out = []
    for s in seeds.tolist():
        sub = int(np.random.SeedSequence([int(s), _SUBSTREAM]).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))
        out.append(torch.randn(shape, generator=torch_generator(sub, "cpu"), dtype=torch.float64))
    return torch.stack(out).to(device)


def posterior_coefficients(alphas_cumprod: torch.Tensor, t: torch.Tensor):
    """Per-sample ``(abar_t, c_x0, c_xt, var_t)`` of the DDPM posterior ``q(x_{t-1} | x_t, x_0)``, float64."""
    ac = alphas_cumprod.to(device=t.device, dtype=torch.float64)
    abar = ac[t]
    abar_prev = torch.where(t > 0, ac[(t - 1).clamp(min=0)], torch.ones_like(abar))
    beta = 1.0 - abar / abar_prev
    c_x0 = abar_prev.sqrt() * beta / (1.0 - abar)
    c_xt = (abar / abar_prev).sqrt() * (1.0 - abar_prev) / (1.0 - abar)
    var = (1.0 - abar_prev) / (1.0 - abar) * beta
    var_1 = (1.0 - ac[0]) / (1.0 - ac[1]) * (1.0 - ac[1] / ac[0])
    var = torch.where(t > 0, var, var_1)
    return abar, c_x0, c_xt, var


@torch.no_grad()
def log_importance_weights(terms: PreferenceTerms) -> torch.Tensor:
    """``log w(t)`` per stacked sample, shape ``(2B,)`` (winners first), float64, no gradient."""
    if terms.alphas_cumprod is None or terms.latents is None or terms.noisy_latents is None:
        raise ValueError("importance weights need alphas_cumprod, latents and noisy_latents in PreferenceTerms")
    if terms.sample_seeds is None:
        raise ValueError("importance weights need the pairs' sample_seeds in PreferenceTerms")
    x0, xt = terms.latents.double(), terms.noisy_latents.double()
    pred, t = terms.model_pred.detach().double(), terms.timesteps.long()
    view = (-1,) + (1,) * (x0.dim() - 1)
    abar, c_x0, c_xt, var = (v.view(view) for v in posterior_coefficients(terms.alphas_cumprod, t))
    if terms.prediction_type == "epsilon":
        x0_hat = (xt - (1.0 - abar).sqrt() * pred) / abar.sqrt()
    elif terms.prediction_type == "v_prediction":
        x0_hat = abar.sqrt() * xt - (1.0 - abar).sqrt() * pred
    else:
        raise ValueError(f"prediction_type {terms.prediction_type!r} has no transition density here")
    mu_q = c_x0 * x0 + c_xt * xt
    mu_p = c_x0 * x0_hat + c_xt * xt
    z = transition_noise(terms.sample_seeds, tuple(x0.shape[1:]), x0.device).repeat(2, *([1] * (x0.dim() - 1)))
    x_prev = mu_q + var.sqrt() * z
    log_ratio = ((x_prev - mu_q) ** 2 - (x_prev - mu_p) ** 2) / (2.0 * var)
    return log_ratio.mean(dim=list(range(1, x0.dim())))
