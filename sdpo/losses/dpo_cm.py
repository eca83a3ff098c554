"""DPO-C&M ("clip and mask", the SIPO paper, arXiv:2505.21893): Diffusion-DPO reweighted per pair by
a clipped importance weight of the sampled timestep, with low-weight pairs masked out.

    w_pair = w_w(t) * w_l(t)                      (sdpo.losses.transition)
    c      = clip(w_pair, 1 - e, 1 + e) * [w_pair >= threshold]
    loss   = (1 / B) sum_i c_i * -logsigmoid(u_i)

Choices the source leaves open, as taken here (plus those in ``transition``):

* A pair's weight is the product of its winner's and loser's weights: the two transitions are
  independent given the pair, so the product is the importance weight of the pair sample.
* The mask tests the unclipped weight against ``--sipo_mask_threshold`` (0.9: the paper reports
  such pairs fall at small t), and masked pairs still count in the mean's denominator B, so the
  step size does not grow when many pairs are masked.
* The weights are constants (no gradient); ``u`` uses the safeguard-scaled loser loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sdpo.losses.terms import BETA_HELP, LossOutput, PreferenceTerms, check_positive, check_range, hyper, inside_term
from sdpo.losses.transition import log_importance_weights

NEEDS_REFERENCE = True
USES_LOSER = True
PROCESSES = ("ddpm",)  # its importance weights are DDPM transition densities
CLIP_HELP = "dpo-cm / sipo: importance weights clipped to [1-e, 1+e] (the SIPO paper: 0.1 best, 0.2 close)"


@dataclass(frozen=True)
class Params:
    beta_dpo: float = hyper(5000.0, BETA_HELP)
    sipo_clip_eps: float = hyper(0.1, CLIP_HELP)
    sipo_mask_threshold: float = hyper(0.9, "dpo-cm: pairs whose importance weight is below this are masked")

    def check(self) -> None:
        check_positive("beta_dpo", self.beta_dpo)
        check_range("sipo_clip_eps", self.sipo_clip_eps, 0.0, 1.0, "()")
        check_range("sipo_mask_threshold", self.sipo_mask_threshold, 0.0, 1.0)


def pair_weights(terms: PreferenceTerms, clip_eps: float, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(clipped and masked weight, kept mask)`` per pair."""
    log_w_w, log_w_l = log_importance_weights(terms).chunk(2)
    w = torch.exp(log_w_w + log_w_l)
    kept = w >= threshold
    return w.clamp(1.0 - clip_eps, 1.0 + clip_eps) * kept, kept


def loss(terms: PreferenceTerms, cfg) -> LossOutput:
    u = inside_term(terms, cfg.beta_dpo)
    c, kept = pair_weights(terms, cfg.sipo_clip_eps, cfg.sipo_mask_threshold)
    value = (c.to(u.dtype) * -F.logsigmoid(u)).mean()
    return LossOutput(
        loss=value, inside=u, logs={"importance_weight": c.float().mean(), "cm_kept_fraction": kept.float().mean()}
    )
