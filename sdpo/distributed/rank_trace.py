"""An opt-in per-process trace, for checking data parallelism from the outside.

Set ``SDPO_RANK_TRACE_DIR`` and every process appends, per micro-batch, the optimizer step it
belongs to and the dataset indices it trained on to ``rank<r>.jsonl``, and at the end writes its
own UNet weights to ``rank<r>_unet.pth``.  ``tests/test_distributed.py`` uses it to show that the
ranks saw disjoint pairs and ended with identical weights; normal runs leave it off and pay nothing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

ENV = "SDPO_RANK_TRACE_DIR"


class RankTrace:
    def __init__(self, accelerator):
        root = os.environ.get(ENV)
        self.dir = Path(root) if root else None
        self.rank = accelerator.process_index
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)

    def batch(self, step: int, batch: dict) -> None:
        """Record one micro-batch; ``step`` is the 1-based optimizer step it contributes to."""
        if self.dir is not None:
            with (self.dir / f"rank{self.rank}.jsonl").open("a") as f:
                f.write(json.dumps({"rank": self.rank, "step": step, "indices": batch["indices"].tolist()}) + "\n")

    def weights(self, accelerator, unet: torch.nn.Module) -> None:
        """This process's own copy of the trained weights (every rank, not only the main one; under
        ``--sharding`` its shards)."""
        if self.dir is None:
            return
        if any(hasattr(p, "to_local") for p in unet.parameters()):  # sharded: this process's own shards
            own = {k: v.to_local().detach().cpu().clone() for k, v in unet.state_dict().items()}
        else:
            from sdpo.checkpoint.store import unet_state_dict

            own = unet_state_dict(accelerator, unet)
        torch.save(own, self.dir / f"rank{self.rank}_unet.pth")
