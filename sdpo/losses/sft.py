"""Supervised fine-tuning on the preferred image only: plain denoising MSE against the target."""

from __future__ import annotations

from sdpo.losses.terms import LossOutput, NoParams, PreferenceTerms

Params = NoParams

NEEDS_REFERENCE = False
USES_LOSER = False


def loss(terms: PreferenceTerms, cfg) -> LossOutput:
    return LossOutput(loss=terms.model_w.mean())
