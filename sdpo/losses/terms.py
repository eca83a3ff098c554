"""What every objective receives and returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class PreferenceTerms:
    """One micro-batch of B pairs after the forward passes (rows: B winners, then B losers).

    ``model_w``/``model_l``/``ref_w``/``ref_l`` are per-sample denoising losses, mean over (C, H, W);
    ``model_l`` already carries the safeguard's gradient scale.  For objectives that do not use the
    loser (``sft``, ``kto``) the loser halves are absent and ``model_pred`` holds only winners (for
    ``kto``: one image per sample, with ``labels`` saying which are desirable).
    """

    model_pred: torch.Tensor
    target: torch.Tensor
    timesteps: torch.Tensor
    model_w: torch.Tensor
    model_l: torch.Tensor | None = None
    ref_pred: torch.Tensor | None = None
    ref_w: torch.Tensor | None = None
    ref_l: torch.Tensor | None = None
    lam: torch.Tensor | None = None
    noisy_latents: torch.Tensor | None = None
    latents: torch.Tensor | None = None
    dspo_form: str | None = "residual"  # the family's form of the DSPO loss (sdpo.losses.dspo)
    # For objectives that need the diffusion process itself (mapo: T; dpo-cm / sipo: transition
    # densities and a per-pair draw of x_{t-1}): the scheduler's schedule and each pair's seed.
    # DDPM families fill alphas_cumprod/prediction_type; every family fills num_train_timesteps.
    alphas_cumprod: torch.Tensor | None = None
    prediction_type: str = "epsilon"
    num_train_timesteps: int | None = None
    sample_seeds: torch.Tensor | None = None
    labels: torch.Tensor | None = None  # kto: per image, True (1) desirable, False (0) undesirable
    logs: dict[str, torch.Tensor] = field(default_factory=dict)  # extra scalars from the forward pass

    def halves(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        winners, losers = x.chunk(2)
        return winners, losers


@dataclass
class LossOutput:
    """The scalar to minimise, the inside term ``u`` (per pair) when the objective has one, extra logs."""

    loss: torch.Tensor
    inside: torch.Tensor | None = None
    logs: dict[str, torch.Tensor] = field(default_factory=dict)


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """Loss arithmetic in fp32 (bf16/fp16 predictions are upcast; fp64 stays fp64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def inside_term(terms: PreferenceTerms, beta: float) -> torch.Tensor:
    """``u = -0.5 * beta * ((L_w - L_l) - (L_ref_w - L_ref_l))`` per pair (REFERENCE section 1)."""
    model_diff = terms.model_w - terms.model_l
    ref_diff = terms.ref_w - terms.ref_l
    return -0.5 * beta * (model_diff - ref_diff)
