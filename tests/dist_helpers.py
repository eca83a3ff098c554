"""Helpers for tests that start real multi-process runs on CPU (``torch.distributed.run``, gloo).

``ACCELERATE_USE_CPU=true`` makes accelerate pick its multi-CPU mode, exactly as ``accelerate launch
--cpu`` does on a CPU cluster; each rank writes what it trained on through the opt-in
``SDPO_RANK_TRACE_DIR`` hook (``sdpo/rank_trace.py``).
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
# A near-SGD first step (AdamW with epsilon 1: lr * g / (|g| + 1)) so weight comparisons test gradients.
COMMON = [
    "--learning_rate", "1e-1",
    "--lr_warmup_steps", "0",
    "--adam_weight_decay", "0",
    "--adam_epsilon", "1",
    "--max_grad_norm", "1.0",
    "--train_method", "diffusion-dpo",
    "--report_to", "none",
    "--mixed_precision", "no",
    "--seed", "3",
]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc: int, *train_args) -> list[str]:
    """The command for ``nproc`` train.py processes on this machine."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--nnodes", "1",
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(ROOT / "train.py"), *map(str, train_args),
    ]  # fmt: skip


def env(trace: Path | None = None, cpu: bool = True, **extra: str) -> dict[str, str]:
    """A clean environment (no launcher variables leaking in from outside) for a CPU run."""
    out = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "RANK", "WORLD_SIZE", "LOCAL_"))}
    out.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(ROOT), **extra)
    if cpu:
        out["ACCELERATE_USE_CPU"] = "true"
    if trace is not None:
        out["SDPO_RANK_TRACE_DIR"] = str(trace)
    return out


def read_trace(folder: Path) -> list[dict]:
    return [json.loads(ln) for f in sorted(folder.glob("rank*.jsonl")) for ln in f.read_text().splitlines()]


def step_indices(trace: list[dict], step: int) -> list[int]:
    """The global batch of one optimizer step, in sample order: ranks in rank order, micro-batches in order."""
    rows = [r for r in trace if r["step"] == step]
    return [i for r in sorted(rows, key=lambda r: r["rank"]) for i in r["indices"]]


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def load(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)
