"""Model families behind one interface (``sdpo.families.base.ModelFamily``), keyed by name.

``--model_family auto`` (the default) reads the pipeline's ``model_index.json`` (a local folder, or
the hub's copy, cached) and picks the family whose pipeline class it names.  ``--sdxl`` is an alias
for ``--model_family sdxl``.  A family flag that contradicts the folder stops with one line.
"""

from __future__ import annotations

import json
from pathlib import Path

from sdpo.errors import UserError
from sdpo.families.base import ModelFamily
from sdpo.families.cogvideox import CogVideoX
from sdpo.families.flux import Flux
from sdpo.families.flux2 import Flux2
from sdpo.families.qwenimage import QwenImage
from sdpo.families.sd3 import SD3
from sdpo.families.sd15 import SD15
from sdpo.families.sdxl import SDXL
from sdpo.families.wan import Wan
from sdpo.families.zimage import ZImage

FAMILIES: dict[str, type[ModelFamily]] = {
    f.name: f for f in (SD15, SDXL, SD3, Flux, CogVideoX, Wan, QwenImage, Flux2, ZImage)
}
CHOICES = ("auto", *FAMILIES)
DEFAULT_FAMILY = "sd15"  # the paper's main model: evaluation's default when no base model is named


def add_family_arguments(add, help: str) -> None:
    """``--model_family`` (``auto`` or a family) and every family's alias flag (the SD-era ``--sdxl``), for any
    parser: ``add`` is its ``add_argument``."""
    add("--model_family", default="auto", choices=CHOICES, help=help)
    for fam in FAMILIES.values():
        if fam.alias_flag:
            add(fam.alias_flag, action="store_true", help=f"alias for --model_family {fam.name}")


def requested_family(ns) -> tuple[str, str]:
    """``(family or "auto", the flag that asked for it)`` from ``--model_family`` and the alias flags of a parsed
    namespace; an alias that contradicts ``--model_family`` is refused in one line."""
    requested, flag = ns.model_family, "--model_family"
    for fam in FAMILIES.values():
        if fam.alias_flag and getattr(ns, fam.alias_flag.lstrip("-")):
            if requested not in ("auto", fam.name):
                raise UserError(f"{fam.alias_flag} contradicts --model_family {requested}; drop one")
            requested, flag = fam.name, fam.alias_flag
    return requested, flag


def alias_flags() -> dict[str, str]:
    """Each alias flag's namespace attribute -> the family it names."""
    return {fam.alias_flag.lstrip("-"): fam.name for fam in FAMILIES.values() if fam.alias_flag}


def get_family(name: str) -> type[ModelFamily]:
    try:
        return FAMILIES[name]
    except KeyError:
        raise UserError(f"unknown model family {name!r}; choose one of: {', '.join(FAMILIES)}") from None


def load_family(cfg, device, weight_dtype, needs_reference: bool, shard_later: bool = False) -> ModelFamily:
    """The family named by the resolved config, loaded for training (``ModelFamily.load``)."""
    return get_family(cfg.model_family).load(cfg, device, weight_dtype, needs_reference, shard_later=shard_later)


def read_model_index(path: str, revision: str | None = None) -> dict | None:
    """The pipeline's ``model_index.json``: from a local folder, else from the hub (or its cache).
    ``None`` when a hub id cannot be resolved (offline and not cached)."""
    root = Path(path).expanduser()
    if root.is_dir():
        f = root / "model_index.json"
        return json.loads(f.read_text()) if f.is_file() else None
    try:
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(path, "model_index.json", revision=revision)).read_text())
    except Exception:  # offline, unknown repo, no such file: the caller says what to do
        return None


def family_of_index(index: dict | None) -> str | None:
    cls = (index or {}).get("_class_name")
    for name, fam in FAMILIES.items():
        if cls in fam.pipeline_classes:
            return name
    return None


def _guess_from_folders(root: Path) -> str | None:
    """Folders without a model_index.json (hand-assembled mirrors): guess from the subfolders."""
    if (root / "transformer").is_dir():
        return "flux" if not (root / "text_encoder_3").is_dir() else "sd3"
    if (root / "unet").is_dir():
        return "sdxl" if (root / "text_encoder_2").is_dir() else "sd15"
    return None


def resolve_family(
    path: str, requested: str = "auto", revision: str | None = None, flag: str = "--model_family"
) -> str:
    """The family of the pipeline at ``path``; ``requested`` other than ``auto`` must agree with it."""
    root = Path(path).expanduser()
    index = read_model_index(path, revision)
    found = family_of_index(index)
    if found is None and root.is_dir():
        found = _guess_from_folders(root)
        if found is None:
            raise UserError(f"{root}: not a diffusers pipeline folder (no model_index.json, unet/ or transformer/)")
    if requested == "auto":
        if found is None:
            what = f"pipeline class {index.get('_class_name')!r}" if index else "no readable model_index.json"
            raise UserError(f"{path}: cannot tell the model family ({what}); pass --model_family {'|'.join(FAMILIES)}")
        return found
    get_family(requested)
    if found is not None and found != requested:
        given = flag if flag == "--sdxl" else f"{flag} {requested}"
        raise UserError(f"{path} is a {found} model but {given} was given; drop the flag or use {found}")
    return requested
