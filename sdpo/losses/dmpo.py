"""DMPO (diffusion-model preference optimisation by divergence minimisation).

With ``p = sigmoid(u)`` and a target preference probability ``1 - alpha`` (``q`` below), the loss
is the Bernoulli KL divergence ``KL(p || q) = p (log p - log q) + (1 - p)(log(1 - p) - log(1 - q))``
averaged over pairs.  ``log p`` and ``log(1 - p)`` come from softplus for numerical stability.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sdpo.losses.terms import BETA_HELP, LossOutput, PreferenceTerms, check_positive, check_range, hyper, inside_term

NEEDS_REFERENCE = True
USES_LOSER = True
_Q_CLAMP = 1e-6


@dataclass(frozen=True)
class Params:
    beta_dpo: float = hyper(5000.0, BETA_HELP)
    dmpo_alpha: float = hyper(0.0, "dmpo: the target preference probability is 1 - alpha (the paper's 0.01)")

    def check(self) -> None:
        check_positive("beta_dpo", self.beta_dpo)
        check_range("dmpo_alpha", self.dmpo_alpha, 0.0, 1.0, "[)")


def loss(terms: PreferenceTerms, cfg) -> LossOutput:
    u = inside_term(terms, cfg.beta_dpo)
    q = min(max(1.0 - cfg.dmpo_alpha, _Q_CLAMP), 1.0 - _Q_CLAMP)
    log_p, log_1mp = -F.softplus(-u), -F.softplus(u)
    p = torch.sigmoid(u)
    kl = p * (log_p - math.log(q)) + (1.0 - p) * (log_1mp - math.log(1.0 - q))
    return LossOutput(loss=kl.mean(), inside=u)
