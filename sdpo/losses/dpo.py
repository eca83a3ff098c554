"""Diffusion-DPO (Wallace et al., 2024, Eq. 14): ``-log sigmoid(u)`` averaged over pairs.

The mean is taken over the per-pair log-sigmoids, not inside the log-sigmoid: averaging ``u``
first is a known bug in some ports and gives a different objective.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from sdpo.losses.terms import BETA_HELP, LossOutput, PreferenceTerms, check_positive, hyper, inside_term

NEEDS_REFERENCE = True
USES_LOSER = True


@dataclass(frozen=True)
class Params:
    beta_dpo: float = hyper(5000.0, BETA_HELP)

    def check(self) -> None:
        check_positive("beta_dpo", self.beta_dpo)


def loss(terms: PreferenceTerms, cfg) -> LossOutput:
    u = inside_term(terms, cfg.beta_dpo)
    return LossOutput(loss=-F.logsigmoid(u).mean(), inside=u)
