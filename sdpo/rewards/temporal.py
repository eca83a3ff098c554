"""VBench's temporal flickering, the one VBench dimension that needs no model.

As VBench computes it (``vbench/temporal_flickering.py``, read for its definition): decode every
frame as 8-bit colour, take the mean absolute difference between each pair of consecutive frames
(over all pixels and channels), average those over the video, and report ``(255 - mean) / 255``;
the dimension's score is the mean over videos.  Higher is steadier (1.0: no change at all).

Two differences from an official run, both outside this formula: VBench decodes with OpenCV while
this reads frames through PyAV (the two YUV-to-RGB conversions may differ by a level here and there),
and VBench scores this dimension on its own prompt list after removing static videos with RAFT optical
flow (``static_filter.py``), which needs a model; here every video of the manifest counts.  For the
paper's numbers, run the official VBench on the same videos (``eval/vbench_layout.py``).
"""

from __future__ import annotations

import numpy as np


def temporal_flickering(frames: np.ndarray) -> float:
    """``(255 - mean_t mean|x_{t+1} - x_t|) / 255`` for ``uint8 (F, H, W, C)`` frames, F >= 2."""
    if frames.ndim != 4 or frames.shape[0] < 2:
        raise ValueError(f"temporal flickering needs at least two frames (F, H, W, C), got shape {frames.shape}")
    x = frames.astype(np.float32)
    mae = np.abs(x[1:] - x[:-1]).mean(axis=(1, 2, 3))
    return float((255.0 - mae.mean()) / 255.0)
