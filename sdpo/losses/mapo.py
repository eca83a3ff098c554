"""MaPO (Hong et al., 2024, "Margin-aware Preference Optimization"), reference-free.

With per-sample denoising losses ``l_w``, ``l_l`` (mean over C, H, W) and ``s = --mapo_snr``:

    log_odds = s l_w / (exp(s l_w) - 1) - s l_l / (exp(s l_l) - 1)
    loss     = mean_i l_w,i - beta_mapo * mean_i logsigmoid(T * log_odds_i)

Choices the formula leaves open, as taken here:

* ``T`` is the scheduler's number of training timesteps (``len(alphas_cumprod)``, 1000 for SD1.5 and
  SDXL), as in the public MaPO training code; on rectified-flow families, whose losses are velocity
  MSEs, it is their scheduler's ``num_train_timesteps`` (also 1000).
* ``x / (exp(x) - 1)`` is evaluated as ``x / expm1(x)`` (same value, no cancellation for small
  ``x``), and as its limit 1 at ``x = 0`` (a perfect prediction) instead of 0/0.
* No reference UNet: ``NEEDS_REFERENCE = False``, so none is loaded.  ``inside`` (used for the
  logged implicit accuracy) is ``log_odds``: positive when the winner is denoised better.
* The SDPO safeguard reaches MaPO through ``l_l`` (already gradient-scaled by lambda): it damps the
  push on the loser inside the odds term; the SFT term on ``l_w`` is untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sdpo.losses.terms import LossOutput, PreferenceTerms, check_positive, hyper

NEEDS_REFERENCE = False
USES_LOSER = True


@dataclass(frozen=True)
class Params:
    beta_mapo: float = hyper(0.1, "mapo: weight of the odds-ratio term")
    mapo_snr: float = hyper(0.5, "mapo: the s in s*l / (exp(s*l) - 1)")

    def check(self) -> None:
        check_positive("beta_mapo", self.beta_mapo, strict=False)
        check_positive("mapo_snr", self.mapo_snr)


def odds_term(loss: torch.Tensor, snr: float) -> torch.Tensor:
    """``s l / (exp(s l) - 1)``, 1 at ``l = 0``."""
    x = snr * loss
    safe = torch.where(x == 0, torch.ones_like(x), x)
    return torch.where(x == 0, torch.ones_like(x), safe / torch.expm1(safe))


def loss(terms: PreferenceTerms, cfg) -> LossOutput:
    if terms.alphas_cumprod is not None:
        num_timesteps = terms.alphas_cumprod.numel()
    elif terms.num_train_timesteps:
        num_timesteps = terms.num_train_timesteps
    else:
        raise ValueError("mapo needs the scheduler's number of training timesteps in PreferenceTerms (for T)")
    log_odds = odds_term(terms.model_w, cfg.mapo_snr) - odds_term(terms.model_l, cfg.mapo_snr)
    ratio = F.logsigmoid(log_odds * num_timesteps)
    value = terms.model_w.mean() - cfg.beta_mapo * ratio.mean()
    return LossOutput(loss=value, inside=log_odds, logs={"mapo_ratio": ratio.detach().mean()})
