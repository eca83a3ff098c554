"""Per-GPU training-state sizes of the SDXL UNet full fine-tune, by arithmetic (no GPU, no download).

Builds the SDXL-base UNet from its published config on the meta device and counts, in GB:
fp32 weights and gradients, AdamW's two moments, Adafactor's factored second moment as
transformers' Adafactor lays it out per tensor (``scale_parameter=False, relative_step=False``,
no first moment), and the same Adafactor state when ZeRO hands it flat 1-D partitions (it can no
longer factor, so the second moment becomes full-size, divided over the processes).

    python bench/sdxl_state_sizes.py [--processes 8]
    python bench/sdxl_state_sizes.py --quick        # the same rows for the --quick stand-in config
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.model_configs import SDXL_UNET, SDXL_UNET_QUICK  # noqa: E402
from bench.quick import parse  # noqa: E402

GB = 1e9


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--processes", type=int, default=8)
    args = parse(p, argv)
    n = args.processes

    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    with init_empty_weights():
        unet = UNet2DConditionModel(**(SDXL_UNET_QUICK if args.quick else SDXL_UNET))
    params = [q for q in unet.parameters()]
    count = sum(q.numel() for q in params)
    # transformers' Adafactor: a tensor with >= 2 dims keeps row (shape[:-1]) and column
    # (shape[:-2] + shape[-1:]) statistics; a 1-D tensor keeps a full-size second moment.
    factored = sum(
        (q.shape[:-1].numel() + q.shape[:-2].numel() * q.shape[-1]) if q.dim() >= 2 else q.numel() for q in params
    )
    rows = [
        (f"SDXL UNet{' (--quick stand-in)' if args.quick else ''} parameters (billions)", count / 1e9),
        ("fp32 weights", 4 * count / GB),
        ("fp32 gradients", 4 * count / GB),
        ("AdamW moments (2 x fp32)", 8 * count / GB),
        ("Adafactor factored 2nd moment (fp32), per tensor", 4 * factored / GB),
        (f"Adafactor under ZeRO: full 2nd moment / {n}", 4 * count / n / GB),
        (f"AdamW moments under ZeRO-2 / {n}", 8 * count / n / GB),
        (f"fp32 gradients under ZeRO-2 / {n}", 4 * count / n / GB),
        (f"fp32 master weights under ZeRO-2 + bf16 / {n}", 4 * count / n / GB),
        ("bf16 module weights under DeepSpeed bf16", 2 * count / GB),
    ]
    for name, value in rows:
        print(f"{name:55s} {value:8.2f}")


if __name__ == "__main__":
    main()
