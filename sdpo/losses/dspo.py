"""DSPO (Zhu et al., 2025), in the score-preference form of the SDPO reference code.

Two forms, as the family says (``ModelFamily.dspo_form``).  ``residual`` (the reference code's SD1.5
branch): match the winner's residual to a preference-weighted pull towards the reference,
``mean_pairs mean_CHW (res_w - beta * (1 - sigmoid(u)) * (pred_w - ref_pred_w))^2`` with
``res_w = pred_w - eps_w``.

``thresholded`` (the reference code's SDXL branch, kept verbatim): if ``mean((pred_w - ref_pred_w)^2) >= 0.1``
the loss is ``mean(((1 - sigmoid(u)) * d_w)^2)``, otherwise ``mean((1 - sigmoid(u))^2)``.  The
threshold is evaluated per micro-batch.  ``u`` keeps its gradient, so the loser term (and with
it the SDPO safeguard) acts through the weight ``1 - sigmoid(u)``.
"""

from __future__ import annotations

import torch

from sdpo.losses.dpo import Params  # noqa: F401  (beta_dpo only, as Diffusion-DPO)
from sdpo.losses.terms import LossOutput, PreferenceTerms, at_least_fp32, inside_term

NEEDS_REFERENCE = True
# The reference's prediction itself (pred_w - ref_pred_w), not only its per-sample losses: precomputed
# reference losses (sdpo.cache.reference) cannot stand in for the reference model.
REFERENCE_PREDICTION = True
USES_LOSER = True
PROCESSES = (
    "ddpm",
)  # its score-preference form pulls the winner's epsilon residual towards the reference (DDPM quantities)
SDXL_DIFF_THRESHOLD = 0.1


def loss(terms: PreferenceTerms, cfg) -> LossOutput:
    u = inside_term(terms, cfg.beta_dpo)
    weight = (1.0 - torch.sigmoid(u)).view(-1, *([1] * (terms.model_pred.dim() - 1)))
    pred_w, _ = terms.halves(at_least_fp32(terms.model_pred))
    eps_w, _ = terms.halves(at_least_fp32(terms.target))
    ref_w, _ = terms.halves(at_least_fp32(terms.ref_pred))
    d_w = pred_w - ref_w
    if terms.dspo_form == "thresholded":
        if (d_w.detach() ** 2).mean() >= SDXL_DIFF_THRESHOLD:
            value = ((weight * d_w) ** 2).mean()
        else:
            value = ((1.0 - torch.sigmoid(u)) ** 2).mean()
    else:
        res_w = pred_w - eps_w
        value = ((res_w - cfg.beta_dpo * weight * d_w) ** 2).mean(dim=list(range(1, d_w.dim()))).mean()
    return LossOutput(loss=value, inside=u)
