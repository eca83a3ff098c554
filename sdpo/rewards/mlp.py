"""The five-layer linear head shared by the LAION aesthetic predictor and ImageReward.

Both released checkpoints store it as ``layers.{0,2,4,6,7}.{weight,bias}`` (dropouts at 1, 3, 5;
no activations, so at inference it is one affine map, kept layered so the state dicts load as is).
"""

from __future__ import annotations

from torch import nn


class RewardMLP(nn.Module):
    def __init__(self, input_size: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, x):
        return self.layers(x)
