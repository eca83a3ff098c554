"""SIPO (the SIPO paper, arXiv:2505.21893): Diffusion-DPO with timestep-aware importance reweighting.

    s_i  = max(clip(1 / w_w(t), 1 - e, 1 + e), clip(1 / w_l(t), 1 - e, 1 + e))   (sdpo.losses.transition)
    u_i' = s_i * u_i
    loss = mean_i -logsigmoid(u_i')

Scaling ``u`` by ``s`` scales both log-ratio terms inside the sigmoid (the winner's
``-(L_w - L_ref_w)`` and the loser's ``L_l - L_ref_l``) by the same factor, as the paper states.

Choices the source leaves open, as taken here (plus those in ``transition``):

* ``s`` is a constant for the optimizer (no gradient); ``u`` carries the safeguard-scaled loser loss.
* No masking: ``--sipo_mask_threshold`` belongs to DPO-C&M.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sdpo.losses.dpo_cm import CLIP_HELP
from sdpo.losses.terms import BETA_HELP, LossOutput, PreferenceTerms, check_positive, check_range, hyper, inside_term
from sdpo.losses.transition import log_importance_weights

NEEDS_REFERENCE = True
USES_LOSER = True
PROCESSES = ("ddpm",)  # its importance weights are DDPM transition densities


@dataclass(frozen=True)
class Params:
    beta_dpo: float = hyper(5000.0, BETA_HELP)
    sipo_clip_eps: float = hyper(0.1, CLIP_HELP)

    def check(self) -> None:
        check_positive("beta_dpo", self.beta_dpo)
        check_range("sipo_clip_eps", self.sipo_clip_eps, 0.0, 1.0, "()")


def pair_scales(terms: PreferenceTerms, clip_eps: float) -> torch.Tensor:
    inv_w_w, inv_w_l = torch.exp(-log_importance_weights(terms)).chunk(2)
    lo, hi = 1.0 - clip_eps, 1.0 + clip_eps
    return torch.maximum(inv_w_w.clamp(lo, hi), inv_w_l.clamp(lo, hi))


def loss(terms: PreferenceTerms, cfg) -> LossOutput:
    u = inside_term(terms, cfg.beta_dpo)
    s = pair_scales(terms, cfg.sipo_clip_eps).to(u.dtype)
    scaled = s * u
    return LossOutput(loss=-F.logsigmoid(scaled).mean(), inside=scaled, logs={"importance_weight": s.float().mean()})
