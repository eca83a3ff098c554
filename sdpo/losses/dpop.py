"""DPOP (DPO-Positive, Pal et al., 2024), adapted to diffusion as the SDPO paper reimplements it.

DPO-Positive adds a penalty whenever the policy's likelihood of the preferred sample falls below
the reference's.  In diffusion-loss terms (lower loss = higher likelihood) that is
``relu(L_w - L_ref_w)``, added inside the margin:

    u    = -0.5 * beta_dpo * ((model_diff - ref_diff) + lambda_dpop * relu(L_w - L_ref_w))
    loss = mean_i -logsigmoid(u_i)

Choices: the penalty is per pair (inside the per-pair log-sigmoid, like the inside term), and
``--dpop_lambda`` defaults to 50, the DPOP paper's value (the SDPO paper does not state the one it
used).  ``model_diff`` uses the safeguard-scaled loser loss, so the safeguard applies unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sdpo.losses.terms import BETA_HELP, LossOutput, PreferenceTerms, check_positive, hyper

NEEDS_REFERENCE = True
USES_LOSER = True


@dataclass(frozen=True)
class Params:
    beta_dpo: float = hyper(5000.0, BETA_HELP)
    dpop_lambda: float = hyper(50.0, "dpop: weight of relu(L_w - L_ref_w) inside the margin")

    def check(self) -> None:
        check_positive("beta_dpo", self.beta_dpo)
        check_positive("dpop_lambda", self.dpop_lambda, strict=False)


def loss(terms: PreferenceTerms, cfg) -> LossOutput:
    model_diff = terms.model_w - terms.model_l
    ref_diff = terms.ref_w - terms.ref_l
    penalty = torch.relu(terms.model_w - terms.ref_w)
    u = -0.5 * cfg.beta_dpo * ((model_diff - ref_diff) + cfg.dpop_lambda * penalty)
    return LossOutput(loss=-F.logsigmoid(u).mean(), inside=u, logs={"dpop_penalty": penalty.detach().mean()})
