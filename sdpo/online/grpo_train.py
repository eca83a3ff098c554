"""Stage ``train`` of a GRPO round: the round's rewards -> group-normalised advantages -> the clipped
policy-ratio update with its KL term (``sdpo.rl``) on the round's saved rollouts, from the previous round's
weights.

Advantages use every reward of the round (Flow-GRPO gathers the whole batch before normalising) and are written
to ``advantages.jsonl``.  The optimizer is AdamW with train.py's ``--learning_rate`` and ``--adam_*``, constant
(Flow-GRPO's one optimizer for the whole run: its state is saved with the round's weights, ``optimizer.pt``, and
the next round continues it).  The update runs in the main process (the other launched processes wait), so its
result does not depend on the number of processes (on a CPU with one thread: ``exact_threads``); every draw it makes comes from ``--seed`` + round - 1.  A
killed update reruns whole from the same files: the same weights, bit for bit.

Outputs in ``weights/`` as a train.py run writes them: ``unet.pth`` / ``transformer.pth`` (what the next
round, the held-out evaluation and ``eval/generate.py`` load), ``metrics.jsonl`` (one line per optimizer
step), and ``optimizer.pt``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from sdpo.atomic import atomic_path
from sdpo.checkpoint.store import crash_point
from sdpo.online.grpo_settings import exact_threads, grpo_settings, load_family, seed_of
from sdpo.online.layout import read_json, read_jsonl, write_jsonl
from sdpo.online.memory import release

OPTIMIZER = "optimizer.pt"


def round_trajectories(ctx):
    """Every rollout of the round, in sample order (the calls' files concatenated)."""
    from sdpo.rl.trajectory import Trajectories, concat

    names = read_json(ctx.folder.samples / "manifest.json", {})["trajectories"]
    return concat([Trajectories.load(ctx.folder.root / n) for n in names])


def advantages(ctx, traj) -> torch.Tensor:
    """The round's advantages (float64), written beside its scores; rows checked against the scores by seed."""
    from sdpo.rl.advantages import group_advantages

    rows = read_jsonl(ctx.folder.scores)
    if [int(r["seed"]) for r in rows] != traj.seeds.tolist():
        raise RuntimeError(f"{ctx.folder.scores}: rows do not match the round's trajectories (seeds differ)")
    settings = grpo_settings(ctx.opts, ctx.cfg)
    adv = group_advantages(torch.tensor([r["reward"] for r in rows], dtype=torch.float64), traj.group,
                           settings.std_scope, settings.std_eps)  # fmt: skip
    write_jsonl(ctx.folder.root / "advantages.jsonl",
                [{"index": r["index"], "pos": r["pos"], "k": r["k"], "reward": r["reward"], "advantage": float(a)}
                 for r, a in zip(rows, adv)])  # fmt: skip
    return adv


def make_optimizer(ctx, module: torch.nn.Module) -> torch.optim.Optimizer:
    o = ctx.cfg.optim
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=o.learning_rate, betas=(o.adam_beta1, o.adam_beta2),
                            weight_decay=o.adam_weight_decay, eps=o.adam_epsilon)  # fmt: skip
    previous = ctx.weights_after(ctx.round - 1)
    if previous is not None and (previous.parent / OPTIMIZER).is_file():
        opt.load_state_dict(torch.load(previous.parent / OPTIMIZER, map_location=ctx.procs.device, weights_only=True))
    return opt


def run(ctx) -> dict | None:
    from sdpo.rl.update import grpo_update

    if not ctx.procs.is_main:
        return None
    settings = grpo_settings(ctx.opts, ctx.cfg)
    traj = round_trajectories(ctx)
    adv = advantages(ctx, traj)
    fam, _ = load_family(ctx, ctx.weights_after(ctx.round - 1), needs_reference=settings.kl_beta > 0)
    opt = make_optimizer(ctx, fam.denoiser)
    with exact_threads(ctx.procs.device):
        log = grpo_update(fam, opt, traj, adv, settings, seed=seed_of(ctx))
    crash_point(ctx.crash_name("train"))
    out_dir = ctx.folder.weights
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "metrics.jsonl") as tmp:
        tmp.write_text("".join(json.dumps({"step": i + 1, **s}) + "\n" for i, s in enumerate(log)))
    with atomic_path(out_dir / OPTIMIZER) as tmp:
        torch.save(opt.state_dict(), tmp)
    path = out_dir / fam.weights_name()
    with atomic_path(path) as tmp:
        torch.save({k: v.detach().cpu() for k, v in fam.denoiser.state_dict().items()}, tmp)
    del fam, opt, traj
    release(ctx.procs.device)
    mean = lambda k: sum(s[k] for s in log) / len(log) if log and k in log[0] else None  # noqa: E731
    out = {"weights": str(Path(path).relative_to(ctx.folder.root)), "steps": len(log), "train_loss": mean("loss"),
           "policy_loss": mean("policy_loss"), "kl": mean("kl_loss"), "clipfrac": mean("clipfrac"),
           "approx_kl": mean("approx_kl"), "advantage_abs_mean": float(adv.abs().mean())}  # fmt: skip
    if settings.winner_preserving:
        out["mean_lambda"] = mean("avg_lose_l_scale")
    return out
