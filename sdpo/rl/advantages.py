"""Group-relative advantages: each sample's reward against its prompt's group.

    A_i = (r_i - mean of r over i's group) / (std + 1e-4)

as Flow-GRPO's ``flow_grpo/stat_tracking.py`` (``PerPromptStatTracker.update``, type ``grpo``) computes it:
population standard deviations (numpy's default), in float64, ``+ 1e-4`` after the square root.  ``std_scope``
chooses the standard deviation: ``global``, over every reward of the batch, is what Flow-GRPO's configs run
(``sample.global_std = True``); ``group``, the group's own, is the paper's formula (Flow-GRPO, arXiv
2505.05470, and GRPO's, DeepSeekMath).  The batch is every process's rewards (the caller gathers them), as the
code gathers before normalising.  A group whose rewards are all equal gets zero advantages; Flow-GRPO then
drops those samples from the update, here they stay (their policy term is zero, their KL term still counts).
"""

from __future__ import annotations

import torch

from sdpo.rl.settings import STD_SCOPES


def group_advantages(rewards: torch.Tensor, group: torch.Tensor, std_scope: str = "global",
                     eps: float = 1e-4) -> torch.Tensor:  # fmt: skip
    """``(N,)`` float64 advantages of ``rewards`` (``(N,)``) grouped by ``group`` (``(N,)`` integer ids)."""
    if std_scope not in STD_SCOPES:
        raise ValueError(f"unknown std scope {std_scope!r}; choose one of: {', '.join(STD_SCOPES)}")
    r = rewards.detach().double().cpu().flatten()
    g = group.detach().cpu().flatten()
    if r.shape != g.shape:
        raise ValueError(f"{r.numel()} rewards for {g.numel()} group ids")
    out = torch.empty_like(r)
    global_std = r.std(unbiased=False)
    for gid in torch.unique(g):
        mine = g == gid
        std = global_std if std_scope == "global" else r[mine].std(unbiased=False)
        out[mine] = (r[mine] - r[mine].mean()) / (std + eps)
    return out
