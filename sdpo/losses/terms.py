"""What every objective receives and returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from sdpo.errors import UserError


def hyper(default, help: str, **meta):
    """A hyper-parameter of an objective's ``Params``: its default, and the flag's help (``--<field name>``)."""
    return field(default=default, metadata={"help": help, **meta})


BETA_HELP = "beta: scale of the implicit reward inside the sigmoid (the paper's SD1.5 Diffusion-DPO: 5000)"


def check_range(name: str, value: float, low: float, high: float, closed: str = "[]") -> None:
    """One line when ``--name`` lies outside ``low..high`` (``closed``: which ends are included, as in [0, 1))."""
    ok_low = value >= low if closed[0] == "[" else value > low
    ok_high = value <= high if closed[1] == "]" else value < high
    if not (ok_low and ok_high):
        raise UserError(f"--{name} must be in {closed[0]}{low:g}, {high:g}{closed[1]}, got {value}")


def check_positive(name: str, value: float, strict: bool = True) -> None:
    if value < 0 or (strict and value == 0):
        raise UserError(f"--{name} must be {'positive' if strict else '>= 0'}, got {value}")


@dataclass(frozen=True)
class NoParams:
    """An objective without hyper-parameters of its own."""

    def check(self) -> None:
        pass


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
