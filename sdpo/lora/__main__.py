"""``python -m sdpo.lora merge``: write a LoRA run's merged full weights (``unet.pth`` / ``transformer.pth`` and
the diffusers folder) for ``eval/generate.py --weights_path``."""

from __future__ import annotations

import argparse
from pathlib import Path

from sdpo.errors import cli_main
from sdpo.families import CHOICES, get_family, resolve_family
from sdpo.lora.adapters import check_lora_file, lora_file, merge, write_full_weights


@cli_main
def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(prog="python -m sdpo.lora", description="Merge a LoRA into its base denoiser.")
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("merge", help="write merged full weights (unet.pth / transformer.pth + diffusers folder)")
    m.add_argument("--pretrained_model_name_or_path", required=True, help="the base model the LoRA was trained on")
    m.add_argument("--lora_path", required=True, help="a LoRA run's folder, a checkpoint, or the .safetensors file")
    m.add_argument("--output_dir", required=True)
    m.add_argument("--unet_init", default=None, help="the --unet_init the run started from, if any")
    m.add_argument("--lora_scale", type=float, default=1.0)
    m.add_argument("--model_family", default="auto", choices=CHOICES)
    m.add_argument("--revision", default=None)
    a = p.parse_args(argv)
    family = get_family(resolve_family(a.pretrained_model_name_or_path, a.model_family, a.revision))
    check_lora_file(a.lora_path, family)
    path = write_full_weights(merge(family, a, a.lora_path, a.lora_scale), a.output_dir, family.denoiser_folder)
    print(f"merged {lora_file(a.lora_path)} (scale {a.lora_scale}) into {path}")
    return path


if __name__ == "__main__":
    main()
