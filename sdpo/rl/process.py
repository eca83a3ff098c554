"""The stochastic step of a family's noise process, made from the family's own schedule or from a saved one.

A family says which process it runs (``ModelFamily.process``: ``flow`` or ``ddpm``) and how its sampler sets
the schedule (``ModelFamily.rollout_schedule``); this module turns that into the step object that samples and
scores (``sdpo.rl.flow_sde.FlowSDE`` or ``sdpo.rl.ddim_eta.DDIMEta``).  Nothing here knows which family it runs.
"""

from __future__ import annotations

import torch

from sdpo.errors import UserError
from sdpo.rl.ddim_eta import DDIMEta
from sdpo.rl.flow_sde import FlowSDE
from sdpo.rl.settings import RolloutSettings

Process = FlowSDE | DDIMEta
KINDS = {"flow": FlowSDE, "ddpm": DDIMEta}


def make_process(family, settings: RolloutSettings, latent_shape: tuple[int, ...]) -> Process:
    """The rollout step for ``family`` (a loaded ``ModelFamily``) with ``settings.steps`` steps."""
    if family.process != settings.process:
        raise UserError(f"rollout settings are for a {settings.process} model but the model is {family.process}")
    sched = family.rollout_schedule(settings.steps, tuple(latent_shape))
    if family.process == "flow":
        return FlowSDE(sched["timesteps"], sched["sigmas"], settings.noise)
    return DDIMEta(sched["timesteps"], sched["alphas_cumprod"], sched["alphas_cumprod_prev"], settings.noise,
                   family.scheduler.config.prediction_type, float(sched["clip_sample_range"]))  # fmt: skip


def process_from_state(state: dict) -> Process:
    """The step object a trajectory file recorded (``Process.state()``)."""
    kind = state["kind"]
    if kind not in KINDS:
        raise UserError(f"unknown noise process {kind!r} in a trajectory file")
    return KINDS[kind].from_state(state)


def trainable_steps(process: Process) -> torch.Tensor:
    """Indices of the steps that have a log-probability (noise std > 0), in sampling order."""
    return torch.nonzero(process.noise_std() > 0).flatten()
