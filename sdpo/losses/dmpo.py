"""DMPO (diffusion-model preference optimisation by divergence minimisation).

With ``p = sigmoid(u)`` and a target preference probability ``1 - alpha`` (``q`` below), the loss
is the Bernoulli KL divergence ``KL(p || q) = p (log p - log q) + (1 - p)(log(1 - p) - log(1 - q))``
averaged over pairs.  ``log p`` and ``log(1 - p)`` come from softplus for numerical stability.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from sdpo.losses.terms import LossOutput, PreferenceTerms, inside_term

NEEDS_REFERENCE = True
USES_LOSER = True
_Q_CLAMP = 1e-6


def loss(terms: PreferenceTerms, cfg) -> LossOutput:
    u = inside_term(terms, cfg.beta_dpo)
    q = min(max(1.0 - cfg.dmpo_alpha, _Q_CLAMP), 1.0 - _Q_CLAMP)
    log_p, log_1mp = -F.softplus(-u), -F.softplus(u)
    p = torch.sigmoid(u)
    kl = p * (log_p - math.log(q)) + (1.0 - p) * (log_1mp - math.log(1.0 - q))
    return LossOutput(loss=kl.mean(), inside=u)
