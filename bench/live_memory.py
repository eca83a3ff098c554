"""Bytes of live tensor storage, counted at the dispatcher: a CPU stand-in for ``torch.cuda.max_memory_allocated``.

Inside :class:`LiveBytes` every tensor an operator returns has its storage counted once when it first appears
and uncounted when the storage is freed, so ``peak`` is the most storage held at once by tensors made inside
the block (activations, gradients, temporaries, optimizer state), independent of the host allocator's caching
and of other processes.  What existed before the block (weights) is not counted: add it by arithmetic.
It is what ``torch.distributed._tools.mem_tracker.MemTracker`` counts, without that tool's per-module hooks
(which cannot be installed on frozen parameters, so they fail on a LoRA model); tests/test_bench_memory.py
checks the two agree on a model where both run.  Not counted: allocator rounding and fragmentation, the
CUDA context and kernels' workspaces (add a margin for those on a GPU).
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveBytes(TorchDispatchMode):
    """``live``: bytes of storage made inside the block and still alive; ``peak``: the most at once."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: dict[int, int] = {}  # storage address -> bytes, for storages made inside the block

    def reset_peak(self) -> None:
        self.peak = self.live

    def _freed(self, key: int) -> None:
        self.live -= self._seen.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = {_key(t) for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        out = func(*args, **kwargs)
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            key = _key(t)
            if key in inputs or key in self._seen:  # a view, an in-place or out= result: no new storage
                continue
            storage = t.untyped_storage()
            self._seen[key] = storage.nbytes()
            weakref.finalize(storage, self._freed, key)
            self.live += self._seen[key]
            self.peak = max(self.peak, self.live)
        return out


def _key(t: torch.Tensor) -> int:
    """The storage's identity (its C++ address), stable while it lives."""
    return t.untyped_storage()._cdata
