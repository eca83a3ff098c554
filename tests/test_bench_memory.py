"""bench/live_memory.py: the CPU memory probe of the LoRA memory bench agrees with PyTorch's MemTracker."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.live_memory import LiveBytes  # noqa: E402


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def test_live_bytes_peak_matches_memtracker_on_a_training_step():
    from torch.distributed._tools.mem_tracker import MemTracker

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.LayerNorm(256),
                                torch.nn.Linear(256, 64))  # fmt: skip
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(32, 64)

    def step():
        model(x).pow(2).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # the optimizer state exists from here on: both probes see the same steady step
    tracker = MemTracker()
    tracker.track_external(model, opt)
    with tracker:
        step()
    kept = _nbytes(model.parameters()) + _nbytes(v for s in opt.state.values() for v in s.values())
    expected = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"] - kept

    probe = LiveBytes()
    with probe:
        step()
    assert probe.live == 0  # everything the step made was freed again; in-place updates made nothing new
    assert expected > _nbytes(model.parameters())  # the step holds at least the gradients at its peak
    assert abs(probe.peak - expected) <= 64, (probe.peak, expected)  # a scalar or two of bookkeeping apart
