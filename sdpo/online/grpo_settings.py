"""``--algorithm grpo``: its flags checked and resolved once, the rollout and update settings of a round, and the
family a GRPO stage loads.

The driver's flags give the rollout (``--sample_steps``, ``--rollout_noise``, ``--sample_guidance``) and the
objective (``--clip_range``, ``--adv_clip_max``, ``--kl_beta``, ``--timestep_fraction``, ``--advantage_std``);
train.py's give the optimizer (``--learning_rate``, ``--adam_*``, ``--max_grad_norm``), the micro-batch
(``--train_batch_size``: rollouts per forward, or groups with the winner-preserving option), the accumulation
(``--gradient_accumulation_steps``), the update's seed (``--seed`` + round - 1) and the winner-preserving option
(``--use_winner_preserving``, ``--winner_preserving_mu``, ``--winner_preserving_mode output|param``).  Every
default not given is ``sdpo.rl.settings``'s, with its Flow-GRPO or DDPO source.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch

from sdpo.config import RunConfig
from sdpo.errors import UserError
from sdpo.families import get_family
from sdpo.rl.settings import GRPOSettings, RolloutSettings, default_grpo, default_rollout


def check_grpo(opts, cfg: RunConfig, media: str):
    """``opts`` with the process's defaults filled in; one line for what GRPO rounds cannot do."""
    if media == "video":
        raise UserError("--algorithm grpo runs image families for now (its rollouts decode single images); use "
                        "--algorithm dpo for video families")  # fmt: skip
    if opts.steps_per_round is not None:
        raise UserError("--steps_per_round is for --algorithm dpo; a GRPO round's length is its inner epochs over the "
                        "round's rollouts: pass --epochs_per_round E (Flow-GRPO's num_inner_epochs, 1)")  # fmt: skip
    if opts.stop_after == "pairs":
        raise UserError("--stop_after pairs: a GRPO round has no pairs stage (its stages: samples, scores, train, eval)")
    if cfg.model.lora_rank:
        raise UserError("--lora_rank with --algorithm grpo is not supported yet; train the whole denoiser")
    if cfg.dist.sharded:
        raise UserError("--sharding with --algorithm grpo is not supported yet (a GRPO round trains in one process)")
    if opts.sample_resolution is not None and opts.sample_resolution != cfg.model.resolution:
        raise UserError("--sample_resolution must equal --resolution with --algorithm grpo (the rollouts are trained "
                        "at the size they were sampled)")  # fmt: skip
    if cfg.safeguard.use_winner_preserving and cfg.safeguard.winner_preserving_mode not in ("output", "param"):
        raise UserError(f"--winner_preserving_mode {cfg.safeguard.winner_preserving_mode} is not a GRPO option; "
                        "use output (Eq. 17's proxy, the default) or param (Eq. 14)")  # fmt: skip
    process = get_family(cfg.model.model_family).process
    roll, upd = default_rollout(process), default_grpo(process)
    opts = replace(opts, sample_steps=opts.sample_steps or roll.steps,
                   rollout_noise=roll.noise if opts.rollout_noise is None else opts.rollout_noise,
                   timestep_fraction=upd.timestep_fraction if opts.timestep_fraction is None else opts.timestep_fraction)  # fmt: skip
    rollout_settings(opts, 1.0, process).check()
    grpo_settings(opts, cfg).check()
    return opts


def rollout_settings(opts, guidance: float, process: str) -> RolloutSettings:
    return RolloutSettings(process, opts.sample_steps, opts.rollout_noise, guidance, eval_steps=opts.sample_steps)


def grpo_settings(opts, cfg: RunConfig) -> GRPOSettings:
    process = get_family(cfg.model.model_family).process
    sg = cfg.safeguard
    return replace(default_grpo(process), clip_range=opts.clip_range, adv_clip_max=opts.adv_clip_max,
                   kl_beta=opts.kl_beta, timestep_fraction=opts.timestep_fraction,
                   inner_epochs=opts.epochs_per_round, std_scope=opts.advantage_std,
                   micro_batch=cfg.optim.train_batch_size, accumulation=cfg.optim.gradient_accumulation_steps,
                   max_grad_norm=cfg.optim.max_grad_norm, winner_preserving=sg.use_winner_preserving,
                   winner_preserving_mu=sg.winner_preserving_mu,
                   winner_preserving_mode=sg.winner_preserving_mode if sg.use_winner_preserving else "output")  # fmt: skip


def load_family(ctx, weights: Path | None, needs_reference: bool):
    """The family with the policy at ``weights`` (None: the base, or train.py's --unet_init): with ``--reference
    base`` the reference stays the base (``--policy_init``), with ``previous`` it is the same weights."""
    from sdpo.sampling.images import resolve_dtype

    cfg = ctx.cfg
    if weights is not None:
        key = "unet_init" if ctx.opts.reference == "previous" else "policy_init"
        cfg = cfg.with_flags(**{key: str(weights)})
    device = ctx.procs.device
    fam = get_family(cfg.model.model_family).load(cfg.model, device, resolve_dtype(ctx.opts.sample_dtype, device),
                                                  needs_reference)  # fmt: skip
    return fam, tuple(fam.latent_shape((3, ctx.media.size, ctx.media.size)))


def seed_of(ctx) -> int:
    return int(ctx.cfg.optim.seed) + ctx.round - 1


def trajectory_name(call: int) -> str:
    return f"call-{call:05d}.safetensors"


@contextmanager
def exact_threads(device: torch.device):
    """On a CPU, one intra-op thread while rolling out and training: a rollout's float latents and a gradient
    depend on the thread count there (the tiny SD1.5's latents moved by 5.4e-6 between 1 and 2 threads), and a
    GRPO round keeps them, so a resumed or multi-process run (torchrun gives each process one thread) must
    compute as an uninterrupted single-process one.  The DPO rounds keep only 8-bit images, which that rounding
    does not reach.  On an accelerator nothing changes."""
    if torch.device(device).type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
