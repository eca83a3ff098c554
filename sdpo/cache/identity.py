"""What made a latent/text cache (``sdpo.cache.store``), as a record two runs can compare.

Training checks a cache against its own flags at start-up without loading any weights, so every
fingerprint here is cheap:

* a local model part (a text encoder, a tokenizer, the VAE) is its files: small files hashed whole,
  large ones (weights) by name, size and a hash of their first and last MiB -- the safetensors header
  with every shape, and weights from both ends of the file, so another architecture, other random
  weights or another fine-tune all show, and a 9.5 GB T5-XXL costs two MiB of reading;
* a hub model part is its repository id, revision and subfolder (the hub names its content);
* local data is its files' relative names and sizes (the folder may move; the content may not);
  hub data is its id, and both come with the split, config, row selection and row checking flags.

The record leaves out what a cache does not depend on: the denoiser and ``--unet_init``, the seed
(every augmentation variant and the empty prompt are cached; the per-step draws happen in
training), the objective.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

_WHOLE = 8 << 20  # files up to this size are hashed whole
_SAMPLE = 1 << 20  # larger ones: this much from each end
TEXT_PARTS = ("text_encoder", "tokenizer")  # model_index.json keys (text_encoder_2, tokenizer_3, ...)


def file_fingerprint(path: Path) -> str:
    h = hashlib.sha256()
    size = path.stat().st_size
    with path.open("rb") as f:
        if size <= _WHOLE:
            h.update(f.read())
        else:
            h.update(f.read(_SAMPLE))
            f.seek(size - _SAMPLE)
            h.update(f.read(_SAMPLE))
    return f"{size}:{h.hexdigest()[:16]}"


def folder_fingerprint(folder: Path) -> str:
    """One hash over every (relative name, file fingerprint) below ``folder``, hidden files aside."""
    entries = [
        (str(p.relative_to(folder)), file_fingerprint(p))
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    ]
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:16]


def part_fingerprint(path: str, subfolder: str | None, revision: str | None) -> str:
    local = Path(path).expanduser()
    if local.is_dir():
        folder = local / subfolder if subfolder else local
        return f"files:{folder_fingerprint(folder)}" if folder.is_dir() else "missing"
    return f"hub:{path}@{revision or 'main'}" + (f"/{subfolder}" if subfolder else "")


def text_parts(path: str, revision: str | None) -> list[str]:
    """The pipeline's text encoders and tokenizers, by their model_index.json names (any family)."""
    from sdpo.families import read_model_index

    index = read_model_index(path, revision)
    local = Path(path).expanduser()
    if index:
        names = [k for k, v in index.items() if k.startswith(TEXT_PARTS) and isinstance(v, list) and v[0]]
    elif local.is_dir():  # a hand-assembled folder without model_index.json
        names = [p.name for p in local.iterdir() if p.is_dir() and p.name.startswith(TEXT_PARTS)]
    else:  # a hub id whose index cannot be read here: the family's loading will say what is missing
        names = []
    return sorted(names)


def data_identity(cfg) -> dict:
    source = cfg.train_data_dir or cfg.dataset_name
    local = Path(source).expanduser()
    if local.exists():
        files = [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file())
        root = local.parent if local.is_file() else local
        listing = [(str(p.relative_to(root)), p.stat().st_size) for p in files
                   if not any(part.startswith(".") for part in p.relative_to(root).parts)]  # fmt: skip
        what = f"files:{hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:16]}"
    else:
        what = f"hub:{source}"
    selected = cfg.max_train_samples is not None  # only then does the seed choose rows (data.drop_ties)
    return {
        "source": what,
        "config": cfg.dataset_config_name,
        "split": cfg.split,
        "max_train_samples": cfg.max_train_samples,
        "selection_seed": cfg.seed if selected else None,
        "data_check": cfg.data_check,
    }


def cache_identity(cfg) -> dict:
    """Everything the cached tensors depend on, from the resolved run config (its ``model`` and ``data``)."""
    import torch

    from sdpo.families import get_family

    model = cfg.model
    family = get_family(model.model_family)(model, torch.device("cpu"), torch.float32)
    path, rev = model.pretrained_model_name_or_path, model.revision
    vae_path, vae_kw = family.vae_source()
    return {
        "family": model.model_family,
        "resolution": model.resolution,
        "max_sequence_length": model.max_sequence_length,
        "vae": part_fingerprint(vae_path, vae_kw.get("subfolder"), vae_kw.get("revision")),
        "text": {name: part_fingerprint(path, name, rev) for name in text_parts(path, rev)},
        "data": data_identity(cfg.data),
    }


def first_difference(cached: dict, current: dict, prefix: str = "") -> tuple[str, object, object] | None:
    """``(dotted key, cached value, current value)`` of the first field that differs, or None."""
    for key in dict.fromkeys([*cached, *current]):
        a, b = cached.get(key), current.get(key)
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            found = first_difference(a, b, f"{name}.")
            if found:
                return found
        elif a != b:
            return name, a, b
    return None
