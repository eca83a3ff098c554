"""``python -m sdpo.sharded_checkpoint CHECKPOINT [--out FILE]``: a sharded (DCP) checkpoint of a
``--sharding fsdp|hsdp`` run -> one plain ``unet.pth`` / ``transformer.pth``, offline, in one process
(the checkpoint format is ``sdpo.checkpoint.sharded``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from sdpo.atomic import torch_save
from sdpo.checkpoint.sharded import checkpoint_weights
from sdpo.errors import UserError, cli_main


def _denoiser_folder(weights: dict) -> str:
    """``unet`` or ``transformer``: the folder name of the family whose denoiser these keys are."""
    from sdpo.families import FAMILIES

    found = {fam.denoiser_folder for fam in FAMILIES.values() if fam.owns_weights(weights)}
    if len(found) != 1:
        raise UserError("cannot tell from its keys whether this checkpoint holds a unet or a transformer; pass --name")
    return found.pop()


def main(argv: list[str] | None = None) -> None:
    """``python -m sdpo.sharded_checkpoint CHECKPOINT [--out FILE]``: a sharded checkpoint -> ``<name>.pth``."""
    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("checkpoint", type=Path, help="a checkpoint-<step> folder of a --sharding fsdp|hsdp run")
    p.add_argument("--out", type=Path, default=None, help="default: CHECKPOINT/<unet|transformer>.pth")
    p.add_argument("--name", default=None, help="unet or transformer (default: the family the keys belong to)")
    args = p.parse_args(argv)
    weights = checkpoint_weights(args.checkpoint)
    name = args.name or _denoiser_folder(weights)
    out = args.out or args.checkpoint / f"{name}.pth"
    torch_save(weights, out)
    print(f"wrote {out} ({len(weights)} tensors, {sum(v.numel() for v in weights.values()):,} parameters)")


if __name__ == "__main__":
    cli_main(main)()
