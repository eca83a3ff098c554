"""Loading denoiser weights (UNet or transformer) from the files people pass around, safely and with
errors that help.

Accepted sources: a ``unet.pth`` / ``transformer.pth`` state dict (loaded with ``weights_only=True``,
so a pickle that would run code is refused), a ``.safetensors`` file, a checkpoint folder holding
one of those, or a diffusers folder (the model folder itself or a pipeline folder with ``unet/`` or
``transformer/``; sharded safetensors included).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from sdpo.errors import UserError

_PREFIXES = ("module.", "_orig_mod.")


def _strip_prefixes(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        for p in _PREFIXES:
            while k.startswith(p):
                k = k[len(p) :]
        out[k] = v
    return out


def load_tensor_dict(path: str | Path, label: str = "") -> dict[str, torch.Tensor]:
    """A state dict from a ``.safetensors`` file or a torch file read with ``weights_only=True``.

    A pickle that would run code is refused (one line, nothing executed); a checkpoint that nests
    its weights under ``state_dict`` (HPSv2, some trainers) is unwrapped.  ``label`` prefixes errors.
    """
    path = Path(path)
    where = f"{label}: {path}" if label else str(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as e:  # truncated, or not safetensors at all
            raise UserError(f"{where}: not a readable safetensors file ({_first_line(e)}); it may be cut short: copy "
                            "or download it again") from None  # fmt: skip
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(
            f"{where}: refused to load: the file holds Python objects beyond tensors, and unpickling them could "
            "run code; re-save it as a plain state_dict or as safetensors"
        ) from None
    except (RuntimeError, EOFError, OSError) as e:
        raise UserError(f"{where}: not a readable PyTorch file ({_first_line(e)}); it may be cut short: copy or "
                        "download it again") from None  # fmt: skip
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{where}: expected a state_dict (a dict of tensors), found {type(obj).__name__}")
    return obj


def _first_line(e: BaseException) -> str:
    """The first sentence of a library's message (torch's zip reader appends a paragraph of advice)."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0].split(". ")[0][:160]


_NAMES = ("unet", "transformer")
_INDEX = "diffusion_pytorch_model.safetensors.index.json"


def _diffusers_weights(folder: Path) -> Path | None:
    for name in ("diffusion_pytorch_model.safetensors", _INDEX, "diffusion_pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    return None


def resolve_unet_file(path: str | Path) -> Path:
    """The file holding the denoiser weights for any accepted ``path`` (see module docstring)."""
    p = Path(path)
    if p.is_file():
        return p
    if p.is_dir():
        for name in _NAMES:
            for cand in (p / f"{name}.pth", p / name / "diffusion_pytorch_model.safetensors"):
                if cand.is_file():
                    return cand
        for folder in (p, *(p / n for n in _NAMES)):
            f = _diffusers_weights(folder)
            if f is not None:
                return f
        if (p / "model" / ".metadata").is_file():  # a checkpoint of a --sharding run: shards, no .pth
            raise UserError(
                f"{p}: a sharded checkpoint (DCP shards, no unet.pth/transformer.pth); convert it once with "
                f"python -m sdpo.sharded_checkpoint {p}"
            )
        raise UserError(
            f"{p}: no denoiser weights found (looked for unet.pth, transformer.pth, unet/, transformer/ and "
            "diffusion_pytorch_model.*)"
        )
    raise UserError(f"{p}: no such file or folder; pass a unet.pth/transformer.pth, a checkpoint or a diffusers folder")


def check_readable(path: str | Path, label: str = "") -> Path:
    """Fail now, in one line, if the weights at ``path`` (any accepted source) cannot be read, without reading
    the tensors: a safetensors header is checked against the file's length, a torch file's zip directory (at its
    end) is opened lazily.  For commands that write an output folder before loading the model."""
    f = resolve_unet_file(path)
    where = f"{label}: {f}" if label else str(f)
    files = [f]
    if f.name == _INDEX:
        import json

        files = [f.parent / s for s in sorted(set(json.loads(f.read_text())["weight_map"].values()))]
    for file in files:
        if file.suffix == ".safetensors":
            from safetensors import SafetensorError, safe_open

            try:
                with safe_open(str(file), framework="pt") as st:
                    st.keys()
            except (SafetensorError, OSError) as e:
                raise UserError(f"{where}: not a readable safetensors file ({_first_line(e)}); it may be cut short: "
                                "copy or download it again") from None  # fmt: skip
        else:  # torch's zip format keeps its directory at the end: a file cut short has none
            import zipfile

            with open(file, "rb") as fh:
                zipped = fh.read(4) == b"PK\x03\x04"
            if zipped and not zipfile.is_zipfile(file):
                raise UserError(f"{where}: not a readable PyTorch file (a zip archive without its directory); it may be "
                                "cut short: copy or download it again")  # fmt: skip
    return f


def _load_file(path: Path) -> dict[str, torch.Tensor]:
    if path.name == _INDEX:  # sharded safetensors: every shard the index names
        import json

        shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
        out: dict[str, torch.Tensor] = {}
        for shard in shards:
            out.update(load_tensor_dict(path.parent / shard))
        return out
    return load_tensor_dict(path)


def load_unet_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a denoiser state dict from any accepted source, with DDP/compile prefixes removed."""
    return _strip_prefixes(_load_file(resolve_unet_file(path)))


def load_denoiser_weights(model: torch.nn.Module, path: str | Path, describe=None, model_label: str = "") -> None:
    """Load weights into ``model`` (any denoiser) strictly; a mismatch raises one line naming the counts, what the
    file looks like (``describe(keys)``: the families' recogniser) and what the model is."""
    sd = load_unet_state_dict(path)
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    bad_shape = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or bad_shape:
        looks = f"; the file looks like {describe(sd)}" if describe else ""
        model_is = f", the model is {model_label}" if model_label else ""
        if describe and model_label:
            model_is += ": give the base model these weights were trained from, or weights trained from this one"
        raise UserError(
            f"{path}: weights do not fit this {'UNet' if 'UNet' in type(model).__name__ else 'model'} ({len(missing)} "
            f"missing, {len(unexpected)} unexpected, {len(bad_shape)} wrong-shape keys){looks}{model_is}"
        )
    model.load_state_dict(sd, strict=True)


load_unet_weights = load_denoiser_weights  # the SD-era name
