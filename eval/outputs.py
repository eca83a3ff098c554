"""Where evaluation writes its files, and how a rerun finds them: generation folders, manifests, settings
records and score files.  ``eval/generate.py`` (images) and ``eval/video_generate.py`` (videos) share the
generation rules; ``eval/score.py`` and ``eval/summary.py`` share the score file's name."""

from __future__ import annotations

import json
import os
from pathlib import Path

from sdpo.errors import UserError

SETTINGS_FILE = ".generate.json"
# Test hook: the process SIGKILLs itself after writing this many images, to test resuming.
KILL_AFTER_ENV = "SDPO_GENERATE_KILL_AFTER"
SCORES_SUFFIX = ".scores.json"


def set_name(test_json: str | Path) -> str:
    """The prompt set's name as the reference scripts take it: the file name up to its first dot."""
    return os.path.basename(str(test_json)).split(".")[0]


def prompts_suffix(max_prompts: int | None) -> str:
    """Appended to the run name when only the first N prompts are generated (``--max_prompts``), so a partial
    set never shares a folder with the whole one."""
    return "" if max_prompts is None else f"_{max_prompts}p"


def default_output_path(unet_path: str | Path) -> Path:
    """The folder holding ``unet.pth`` (or the given folder itself), where the reference scripts write."""
    p = Path(unet_path)
    return p if p.is_dir() else p.parent


def shard(indices: list[int], rank: int, world: int) -> list[int]:
    """Prompt ``i`` belongs to process ``i % world``: fixed by the index alone, so processes that scan
    the folder at different moments still agree on who does what."""
    return [i for i in indices if i % world == rank]


def check_settings(image_dir: Path, settings: dict) -> None:
    """Refuse to mix images made with different weights or numerics in one folder."""
    f = image_dir / SETTINGS_FILE
    if not f.is_file():
        return
    try:
        old = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return
    diff = [k for k in settings if k in old and old[k] != settings[k]]
    if diff:
        k = diff[0]
        raise UserError(
            f"{image_dir} holds images made with {k}={old[k]!r}, this run has {k}={settings[k]!r}: "
            f"pass another --output_path or delete the folder"
        )


def remove_stale_temps(paths: list[Path]) -> None:
    """Temp files left by a killed writer (``.<name>.tmp-<pid>``) for this process's image ``paths``."""
    by_folder: dict[Path, set[str]] = {}
    for p in paths:
        by_folder.setdefault(p.parent, set()).add(f".{p.name}.tmp-")
    for folder, prefixes in by_folder.items():
        if not folder.is_dir():
            continue
        for name in os.listdir(folder):
            if name.startswith(".") and name[: name.find(".tmp-") + 5] in prefixes:
                (folder / name).unlink(missing_ok=True)


def cpu_only() -> bool:
    """accelerate runs CPU-only processes as one data-parallel group only when told they are CPU ones."""
    import torch

    return os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true") or not torch.accelerator.is_available()


def weight_settings(args) -> dict:
    """The manifest's record of which weights generated the set (a rerun with other weights is refused)."""
    return {
        "unet_path": str(Path(args.unet_path).absolute()) if args.unet_path else None,
        "lora_path": str(Path(args.lora_path).absolute()) if args.lora_path else None,
        "lora_scale": args.lora_scale if args.lora_path else None,
    }


def attach_lora(denoiser, args) -> None:
    """``--lora_path``: the LoRA on top of the loaded denoiser, weighted by ``--lora_scale``."""
    if args.lora_path:
        from sdpo.families import get_family
        from sdpo.lora.adapters import attach

        attach(denoiser, get_family(args.model_family), args.lora_path, args.lora_scale)


def scores_path(manifest: str | Path) -> Path:
    """Where the per-image scores of ``manifest`` are cached: ``<dir>/<stem>.scores.json``."""
    manifest = Path(manifest)
    return manifest.with_name(manifest.stem + SCORES_SUFFIX)
