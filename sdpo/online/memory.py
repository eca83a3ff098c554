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


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        _CLEAR.write_text("5")
    except OSError:
        pass


def _vm_hwm_mb() -> float | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def peak_mb(device: torch.device) -> dict[str, float]:
    """``{"host_mb": resident-set peak}`` plus ``{"device_mb": allocator peak}`` on a GPU."""
    host = _vm_hwm_mb()
    if host is None:
        host = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    out = {"host_mb": round(host, 1)}
    if device.type == "cuda":
        out["device_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


def release(device: torch.device) -> None:
    """What a finished stage held goes back (models are dropped by the caller first)."""
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
