"""The reference runs' logged scalars, averaged over an optimizer step, to trackers and JSONL.

Names are those of the Diffusion-DPO / SDPO reference runs, so curves compare directly:
``train_loss``, ``model_mse_unaccumulated``, ``ref_mse_unaccumulated``, ``implicit_acc_accumulated``,
``avg_win_diff_loss`` (mean ``L_w - L_ref_w``), ``avg_lose_diff_loss``, ``avg_lose_l_scale``
(lambda), plus ``lr``; objectives add their own (``LossOutput.logs``, e.g. ``kto_kl``).  A JSONL
copy (``metrics.jsonl`` in the output folder) lets anyone plot curves without tensorboard or wandb.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import torch

from sdpo.atomic import atomic_path
from sdpo.losses import LossOutput, PreferenceTerms

JSONL_NAME = "metrics.jsonl"


def micro_step_scalars(terms: PreferenceTerms, out: LossOutput) -> dict[str, torch.Tensor]:
    """Detached per-micro-batch means on this process."""
    s = {"train_loss": out.loss.detach().float()}
    if terms.model_l is None:  # one image per sample (sft, kto)
        s["model_mse_unaccumulated"] = terms.model_w.detach().mean()
        if terms.ref_w is not None:
            s["ref_mse_unaccumulated"] = terms.ref_w.mean()
    else:
        s["model_mse_unaccumulated"] = 0.5 * (terms.model_w.detach().mean() + terms.model_l.detach().mean())
        if terms.ref_w is not None:
            s["ref_mse_unaccumulated"] = 0.5 * (terms.ref_w.mean() + terms.ref_l.mean())
            s["avg_win_diff_loss"] = (terms.model_w.detach() - terms.ref_w).mean()
            s["avg_lose_diff_loss"] = (terms.model_l.detach() - terms.ref_l).mean()
    if out.inside is not None:
        s["implicit_acc_accumulated"] = (out.inside.detach() > 0).float().mean()
    if terms.lam is not None:
        s["avg_lose_l_scale"] = terms.lam.detach().float().mean()
    for k, v in {**terms.logs, **out.logs}.items():
        s[k] = v.detach().float().mean()
    return s


class StepAverager:
    """Sums micro-step scalars (averaged across processes) until the optimizer steps."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = defaultdict(float)
        self.count = 0

    def add(self, accelerator, scalars: dict[str, torch.Tensor]) -> None:
        keys = sorted(scalars)
        stacked = torch.stack([scalars[k].reshape(()) for k in keys])
        mean = accelerator.reduce(stacked, reduction="mean") if accelerator.num_processes > 1 else stacked
        for k, v in zip(keys, mean.tolist()):
            self.sums[k] += v
        self.count += 1

    def pop(self) -> dict[str, float]:
        out = {k: v / max(self.count, 1) for k, v in self.sums.items()}
        self.sums, self.count = defaultdict(float), 0
        return out


class JsonlLog:
    """Append-only JSONL of logged scalars; on resume, lines past the resumed step are dropped."""

    def __init__(self, output_dir: str | Path, resume_step: int = 0, enabled: bool = True):
        self.path = Path(output_dir) / JSONL_NAME
        self.enabled = enabled
        if enabled and self.path.exists():
            keep = [r for r in _parse_lines(self.path) if r["step"] <= resume_step]
            with atomic_path(self.path) as tmp:
                tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps({"step": step, **scalars}) + "\n")


def read_jsonl(path: str | Path) -> list[dict]:
    p = Path(path)
    if p.is_dir():
        p = p / JSONL_NAME
    return _parse_lines(p)


def _parse_lines(path: Path) -> list[dict]:
    """Records of a JSONL log; a line cut short by a crash is ignored."""
    out = []
    for ln in path.read_text().splitlines():
        try:
            out.append(json.loads(ln))
        except json.JSONDecodeError:
            continue
    return out
