"""Rollouts as data: every latent of every step, the log-probabilities recorded while sampling, the prompt
conditioning and the schedule, in one safetensors file that reloads bit for bit.

Rows are samples; ``group[i]`` is the index of row ``i``'s prompt in ``prompts`` (the rows of one prompt are one
GRPO group).  ``latents[:, j]`` is the input of step ``j`` and ``latents[:, j + 1]`` its output, as Flow-GRPO's
``latents`` / ``next_latents`` (``scripts/train_sd3.py``); ``cond`` holds one row per prompt (text and the
family's extra conditioning), ``negative`` the empty prompt's row when the rollout used classifier-free
guidance (empty otherwise).  JSON-able settings go in the file's metadata.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sdpo.atomic import atomic_path
from sdpo.errors import UserError
from sdpo.rl.process import Process, process_from_state


@dataclass
class Trajectories:
    prompts: list[str]
    group: torch.Tensor  # (N,) long: row -> prompt index
    seeds: torch.Tensor  # (N,) int64: each sample's own random stream
    latents: torch.Tensor  # (N, steps + 1, *latent_shape) float32
    log_probs: torch.Tensor  # (N, steps) float32, recorded at sampling
    cond: dict[str, torch.Tensor]  # one row per prompt
    negative: dict[str, torch.Tensor]  # one row (the empty prompt) or {}
    process: Process
    guidance: float
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.group.numel())

    @property
    def final(self) -> torch.Tensor:
        """The denoised latents (what is decoded and scored)."""
        return self.latents[:, -1]

    def cond_rows(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """The conditioning of ``rows`` (prompt rows repeated per sample)."""
        idx = self.group[rows.cpu()]
        return {k: v[idx.to(v.device)] for k, v in self.cond.items()}

    def rows(self, rows: torch.Tensor) -> Trajectories:
        """A subset of the samples (a process's share, a micro-batch) sharing the prompts and schedule."""
        r = rows.cpu()
        return Trajectories(self.prompts, self.group[r], self.seeds[r], self.latents[r], self.log_probs[r],
                            self.cond, self.negative, self.process, self.guidance, dict(self.meta))  # fmt: skip

    # ------------------------------------------------------------------ files

    def save(self, path: str | Path) -> None:
        """One safetensors file, written under a temporary name and renamed."""
        from safetensors.torch import save_file

        tensors = {"group": self.group, "seeds": self.seeds, "latents": self.latents, "log_probs": self.log_probs}
        tensors.update({f"cond.{k}": v for k, v in self.cond.items()})
        tensors.update({f"negative.{k}": v for k, v in self.negative.items()})
        state = self.process.state()
        scalars = {k: v for k, v in state.items() if not isinstance(v, torch.Tensor)}
        tensors.update({f"process.{k}": v for k, v in state.items() if isinstance(v, torch.Tensor)})
        meta = {"prompts": self.prompts, "guidance": self.guidance, "process": scalars, "meta": self.meta}
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"sdpo.rl": json.dumps(meta)})

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> Trajectories:
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: no trajectory file")
        try:
            with safe_open(str(path), "pt", device=str(device)) as f:
                raw = (f.metadata() or {}).get("sdpo.rl")
                t = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError) as e:
            raise UserError(
                f"{path}: not a readable safetensors file ({str(e).strip()[:120]}); rerun the rollout"
            ) from None
        if raw is None:
            raise UserError(f"{path}: not a trajectory file (no sdpo.rl metadata)")
        meta = json.loads(raw)

        def part(prefix: str) -> dict[str, torch.Tensor]:
            return {k[len(prefix) :]: v for k, v in t.items() if k.startswith(prefix)}

        process = process_from_state({**part("process."), **meta["process"]})
        return cls(meta["prompts"], t["group"], t["seeds"], t["latents"], t["log_probs"], part("cond."),
                   part("negative."), process, float(meta["guidance"]), meta["meta"])  # fmt: skip


def concat(parts: list[Trajectories]) -> Trajectories:
    """Several rollouts of one schedule as one (the calls of a round, in order): prompts and their conditioning
    appended, each part's group ids shifted past the previous parts' prompts."""
    if not parts:
        raise ValueError("no trajectories to concatenate")
    first = parts[0]
    for p in parts[1:]:
        if p.latents.shape[1:] != first.latents.shape[1:] or p.guidance != first.guidance:
            raise ValueError("trajectories of different schedules or guidance cannot be concatenated")
    offsets, n = [], 0
    for p in parts:
        offsets.append(n)
        n += len(p.prompts)
    group = torch.cat([p.group + off for p, off in zip(parts, offsets)])
    cond = {k: torch.cat([p.cond[k] for p in parts]) for k in first.cond}
    return Trajectories([q for p in parts for q in p.prompts], group, torch.cat([p.seeds for p in parts]),
                        torch.cat([p.latents for p in parts]), torch.cat([p.log_probs for p in parts]), cond,
                        first.negative, first.process, first.guidance, dict(first.meta))  # fmt: skip
