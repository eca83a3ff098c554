"""Peak memory of one stage: the accelerator's allocator peak, or on a CPU the process's peak resident set.

On Linux the resident-set peak (``VmHWM``) can be reset by writing 5 to ``/proc/self/clear_refs``, so each stage
reports its own peak, not the largest since the process started (what ``ru_maxrss`` would give).  Elsewhere the
CPU figure is the peak since start.
"""

from __future__ import annotations

import resource
from pathlib import Path

import torch

_CLEAR = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def reset_peak(device: torch.device) -> dict[str, float]:
    """Start a stage's measurement; returns what the process holds at its start (``*_start_mb``)."""
    start = {}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        start["device_start_mb"] = round(torch.cuda.memory_allocated(device) / 2**20, 1)
    try:
        _CLEAR.write_text("5")
    except OSError:
        pass
    rss = _status_mb("VmRSS")
    if rss is not None:
        start["host_start_mb"] = round(rss, 1)
    return start


def _status_mb(key: str) -> float | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def peak_mb(device: torch.device, start: dict[str, float] | None = None) -> dict[str, float]:
    """``{"host_mb": resident-set peak}`` plus ``{"device_mb": allocator peak}`` on a GPU, and the values at the
    stage's start (``reset_peak``'s) when given."""
    host = _status_mb("VmHWM")
    if host is None:
        host = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    out = {"host_mb": round(host, 1), **(start or {})}
    if device.type == "cuda":
        out["device_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


def release(device: torch.device) -> None:
    """What a finished stage held goes back (models are dropped by the caller first)."""
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
