"""Preference objectives, one module each, behind one registry keyed by ``--train_method``.

Every objective is a function ``loss(terms, cfg) -> LossOutput`` and a module that declares
whether it needs the frozen reference UNet and whether it uses the loser image at all.  The
SDPO safeguard has already been applied when an objective runs: ``terms.model_l`` is the
loser loss with its gradient scaled by lambda (see ``sdpo.safeguard.hook.scale_loser``).
"""

from __future__ import annotations

from types import ModuleType

from sdpo.losses import dmpo, dpo, dpo_cm, dpop, dspo, kto, mapo, sft, sipo
from sdpo.losses.terms import LossOutput, PreferenceTerms, inside_term

LOSSES: dict[str, ModuleType] = {
    "diffusion-dpo": dpo,
    "dspo": dspo,
    "dmpo": dmpo,
    "sft": sft,
    # Baselines and ablations (issue 8): MaPO and DPOP as the SDPO paper reimplements them,
    # DPO-C&M and SIPO from the SIPO paper.
    "mapo": mapo,
    "dpop": dpop,
    "dpo-cm": dpo_cm,
    "sipo": sipo,
    # Diffusion-KTO (issue 16): single images with binary labels, not pairs (sdpo.data.kto).
    "kto": kto,
}


def processes(objective: ModuleType) -> tuple[str, ...]:
    """The noise processes an objective is defined for (``PROCESSES``; default: DDPM and flow)."""
    return getattr(objective, "PROCESSES", ("ddpm", "flow"))


def reference_use(objective: ModuleType) -> str:
    """What an objective reads from the frozen reference: ``none`` (mapo, sft), ``losses`` (the per-sample
    ``L_ref_w`` / ``L_ref_l`` only: dpo, dmpo, dpop, dpo-cm, sipo, kto) or ``prediction`` (the reference's
    output itself: dspo, ``REFERENCE_PREDICTION``).  Only ``losses`` objectives can train from precomputed
    reference losses (``sdpo.cache.reference``)."""
    if not objective.NEEDS_REFERENCE:
        return "none"
    return "prediction" if getattr(objective, "REFERENCE_PREDICTION", False) else "losses"


def get_objective(name: str) -> ModuleType:
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown --train_method {name!r}; choose one of: {', '.join(LOSSES)}") from None


__all__ = ["LOSSES", "LossOutput", "PreferenceTerms", "get_objective", "inside_term", "processes", "reference_use"]
