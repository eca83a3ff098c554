"""LoRA training on peft: low-rank adapters on the denoiser, the reference = the same module with them off.

With ``--lora_rank R`` only the adapter matrices train (fp32); the denoiser's own weights stay frozen
in the weight dtype (bf16/fp16 under mixed precision).  The frozen reference of DPO-style objectives
is then the base model itself: the trained module called under peft's adapter switch
(:class:`AdaptersOff`), so no second copy of the denoiser is ever loaded.

Adapters are injected with diffusers' ``add_adapter`` (peft's ``inject_adapter_in_model``) with a
``peft.LoraConfig`` (Gaussian init of A, B = 0: the run starts exactly at the base model, as
diffusers' LoRA training examples), and written in diffusers' LoRA format
(``pytorch_lora_weights.safetensors``, the family pipeline's ``save_lora_weights`` with the LoRA
config as adapter metadata, so a rank/alpha other than 1:1 loads right) that
``pipe.load_lora_weights(DIR)`` reads.  Target modules are peft ``target_modules`` names; the
presets ``attn`` (the default: attention projections) and ``ff`` (feed-forward) expand to each
family's own names (``ModelFamily.lora_targets``).

    python -m sdpo.lora merge --pretrained_model_name_or_path BASE --lora_path RUN --output_dir OUT

writes the merged full weights (``unet.pth`` / ``transformer.pth`` and the diffusers folder) that
``eval/generate.py --weights_path`` reads; ``train.py --save_merged`` does the same at the end of a run.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from pathlib import Path

import torch

from sdpo.checkpoint.store import FullWeights
from sdpo.errors import UserError

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
ADAPTER = "default"  # peft's adapter name during training
_LAYERS = (torch.nn.Linear, torch.nn.Conv2d)  # what a peft LoRA layer can wrap in these models


# ----------------------------------------------------------------------------- configuration


def enabled(cfg) -> bool:
    return bool(cfg.lora_rank)


def matches(name: str, target: str) -> bool:
    """peft's rule for a string in ``target_modules``: the module's full name, or its dotted suffix."""
    return name == target or name.endswith("." + target)


def module_patterns(model: torch.nn.Module) -> list[str]:
    """Short names of the layers a LoRA can wrap: the last name component, two when it is an index
    (``to_out.0``, ``net.2``).  What ``--lora_target_modules`` accepts, sorted."""
    out = set()
    for name, module in model.named_modules():
        if isinstance(module, _LAYERS) and name:
            parts = name.split(".")
            out.add(".".join(parts[-2:]) if parts[-1].isdigit() and len(parts) > 1 else parts[-1])
    return sorted(out)


def target_modules(family, model: torch.nn.Module, requested: list[str] | None) -> list[str]:
    """``--lora_target_modules`` with the family's presets expanded, checked against ``model``.

    An explicit name that matches no layer is an error; a preset keeps its names that match (a family
    preset covers variants, e.g. FLUX blocks without a context branch) and must match something."""
    names = [n for r in (requested or family.lora_default) for n in r.split(",") if n]
    layers = [n for n, m in model.named_modules() if isinstance(m, _LAYERS)]
    out: list[str] = []
    for name in names:
        preset = family.lora_targets.get(name)
        found = [t for t in (preset or (name,)) if any(matches(layer, t) for layer in layers)]
        if not found:
            what = f"preset {name!r} ({', '.join(preset)})" if preset else repr(name)
            raise UserError(
                f"--lora_target_modules {what} matches no layer of the {family.name} {family.denoiser_folder}; "
                f"presets: {', '.join(family.lora_targets)}; layer names: {', '.join(module_patterns(model))}"
            )
        out += [t for t in found if t not in out]
    return out


def lora_config(cfg, family, model: torch.nn.Module):
    """The ``peft.LoraConfig`` of a run (alpha defaults to the rank: scale 1, as diffusers' examples)."""
    from peft import LoraConfig

    alpha = cfg.lora_alpha if cfg.lora_alpha is not None else cfg.lora_rank
    return LoraConfig(
        r=cfg.lora_rank,
        lora_alpha=int(alpha) if float(alpha).is_integer() else alpha,
        lora_dropout=cfg.lora_dropout,
        init_lora_weights="gaussian",
        target_modules=target_modules(family, model, cfg.lora_target_modules),
    )


# ----------------------------------------------------------------------------- training


def add_adapters(model: torch.nn.Module, config, weight_dtype: torch.dtype, seed: int) -> None:
    """Freeze ``model`` in ``weight_dtype`` and inject trainable fp32 adapters.

    The adapters' random init draws from a generator seeded with ``seed`` (on the CPU, before the
    model moves), so every run and every resume starts from the same adapters without touching the
    global RNG stream."""
    from diffusers.training_utils import cast_training_params

    model.requires_grad_(False)
    if weight_dtype != torch.float32:
        model.to(dtype=weight_dtype)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model.add_adapter(config, adapter_name=ADAPTER)
    cast_training_params(model, dtype=torch.float32)  # the trained parameters stay fp32 (autocast does the rest)


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The diffusers model under accelerate's wrappers (DDP, torch.compile): peft's switches live there."""
    from accelerate.utils import extract_model_from_parallel

    return extract_model_from_parallel(module)


@contextmanager
def adapters_disabled(module: torch.nn.Module):
    """The base model: peft's adapter layers off (diffusers' ``disable_adapters``) until the block ends.

    peft also clears the adapters' ``requires_grad`` while they are off; ``enable_adapters`` sets it
    back, before any backward pass runs."""
    model = unwrap(module)
    model.disable_adapters()
    try:
        yield model
    finally:
        model.enable_adapters()


class AdaptersOff:
    """The frozen reference of a LoRA run: the family's trained denoiser, called with its adapters off.

    It looks the denoiser up at call time, so it follows ``family.denoiser`` through
    ``accelerator.prepare``; it is called under ``torch.no_grad`` like any reference."""

    def __init__(self, family):
        self.family = family

    def __call__(self, *args, **kwargs):
        with adapters_disabled(self.family.denoiser) as model:
            return model(*args, **kwargs)


def parameter_counts(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, all) parameters of ``model``."""
    params = list(unwrap(model).parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


# ----------------------------------------------------------------------------- files


def adapter_state_dict(family, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapters (peft's ``get_peft_model_state_dict``) in the key naming the family's loader expects."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    sd = get_peft_model_state_dict(unwrap(module), adapter_name=ADAPTER)
    if family.lora_key_style == "diffusers":
        sd = convert_state_dict_to_diffusers(sd)
    return {k: v.detach().cpu().contiguous() for k, v in sd.items()}


def save_adapters(family, module: torch.nn.Module, directory: str | Path, weight_name: str = LORA_WEIGHTS) -> Path:
    """``directory/pytorch_lora_weights.safetensors`` through the family pipeline's ``save_lora_weights``."""
    model = unwrap(module)
    prefix = family.denoiser_folder
    family.pipeline_class().save_lora_weights(
        str(directory),
        **{f"{prefix}_lora_layers": adapter_state_dict(family, model),
           f"{prefix}_lora_adapter_metadata": model.peft_config[ADAPTER].to_dict()},
        weight_name=weight_name,
        safe_serialization=True,
    )  # fmt: skip
    return Path(directory) / weight_name


def load_adapters(family, module: torch.nn.Module, directory: str | Path) -> None:
    """Put the adapters saved in ``directory`` (or the LoRA file itself) back into the training model (resume,
    ``--policy_init``), exactly."""
    from diffusers.utils import convert_unet_state_dict_to_peft
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    path = Path(directory) if str(directory).endswith(".safetensors") else Path(directory) / LORA_WEIGHTS
    if not path.is_file():
        raise UserError(f"{directory}: no {LORA_WEIGHTS}; was this checkpoint written by a LoRA run?")
    prefix = family.denoiser_folder + "."
    sd = {k[len(prefix) :]: v for k, v in load_file(str(path)).items() if k.startswith(prefix)}
    model = unwrap(module)
    hint = "resume with the run's own --lora_rank and --lora_target_modules"
    try:
        result = set_peft_model_state_dict(model, convert_unet_state_dict_to_peft(sd), adapter_name=ADAPTER)
    except RuntimeError as e:  # a size mismatch: another rank
        raise UserError(
            f"{path}: adapters do not fit this run's LoRA ({str(e).splitlines()[-1].strip()}); {hint}"
        ) from None
    unexpected = getattr(result, "unexpected_keys", None) or []
    if not sd or unexpected:
        raise UserError(f"{path}: adapters do not fit this run's LoRA ({len(unexpected)} unexpected keys); {hint}")


class AdapterWeights(FullWeights):
    """What a LoRA run writes (``sdpo.checkpoint.store``'s weights interface): adapters only, in checkpoints and at
    the end (``--save_merged``: also the merged full weights).  Accelerate's own checkpoint gets no model
    weights at all (its save hook drops them); its load hook puts the adapters back."""

    def __init__(self, family, cfg):
        super().__init__(family.denoiser_folder)
        self.family, self.cfg = family, cfg

    def install(self, accelerator) -> None:
        def drop_weights(models, weights, output_dir):
            weights.clear()  # optimizer, scheduler and RNG state stay; the adapters are saved beside them

        def load_adapters_hook(models, input_dir):
            for model in models:
                load_adapters(self.family, model, input_dir)
            models.clear()

        accelerator.register_save_state_pre_hook(drop_weights)
        accelerator.register_load_state_pre_hook(load_adapters_hook)

    def save_model(self, accelerator, module, folder: Path) -> None:
        if accelerator.is_main_process:
            save_adapters(self.family, module, folder)

    def save_final(self, accelerator, module, output_dir: str | Path) -> Path:
        root = Path(output_dir)
        if accelerator.is_main_process:
            tmp = f".{LORA_WEIGHTS}.tmp-{os.getpid()}"  # written under a temp name, then renamed
            save_adapters(self.family, module, root, weight_name=tmp)
            os.replace(root / tmp, root / LORA_WEIGHTS)
            if self.cfg.save_merged:
                write_full_weights(merge(type(self.family), self.cfg, root), root, self.family.denoiser_folder)
        accelerator.wait_for_everyone()
        return root / LORA_WEIGHTS


# ----------------------------------------------------------------------------- inference and merging


def lora_file(path: str | Path) -> Path:
    """The LoRA weights file for a run folder, a checkpoint folder or the file itself."""
    p = Path(path).expanduser()
    f = p / LORA_WEIGHTS if p.is_dir() else p
    if not f.is_file():
        what = f"no {LORA_WEIGHTS} in {p}" if p.is_dir() else "no such file or folder"
        raise UserError(
            f"--lora_path {path}: {what}; pass a LoRA run's output folder, a checkpoint or the .safetensors"
        )
    if f.suffix != ".safetensors":
        raise UserError(f"--lora_path {path}: not a .safetensors LoRA file (a full unet.pth goes to --weights_path)")
    return f


def check_lora_file(path: str | Path, family, model: torch.nn.Module | None = None) -> Path:
    """Refuse, in one line, a file that is not a diffusers-format LoRA of this family's denoiser;
    with ``model``, also one whose adapted layers are missing from it or have other shapes."""
    from safetensors import safe_open

    f = lora_file(path)
    with safe_open(str(f), "pt") as sf:
        shapes = {k: tuple(sf.get_slice(k).get_shape()) for k in sf.keys()}
    keys = [k for k in shapes if re.search(r"\.lora(_[AB]|\.down|\.up)\.weight$", k)]
    if not keys:
        raise UserError(f"--lora_path {f}: no LoRA weights in it (a full state dict goes to --weights_path)")
    prefix = family.denoiser_folder + "."
    mine = [k for k in keys if k.startswith(prefix)]
    if not mine:
        raise UserError(f"--lora_path {f}: a LoRA for {family.describe_lora(keys)}, but the base model is {family.name}; "
                        "pass the base model it was trained on")  # fmt: skip
    if model is None:
        return f
    layers = dict(model.named_modules())
    bad = []
    for k in mine:
        name, kind = re.match(r"(.*)\.lora(_A|_B|\.down|\.up)\.weight$", k[len(prefix) :]).groups()
        layer = layers.get(name)
        layer = getattr(layer, "base_layer", layer)
        if not isinstance(layer, _LAYERS):
            bad.append(k)
            continue
        size_in = layer.in_features if isinstance(layer, torch.nn.Linear) else layer.in_channels
        size_out = layer.out_features if isinstance(layer, torch.nn.Linear) else layer.out_channels
        if (kind in ("_A", ".down") and shapes[k][1] != size_in) or (
            kind in ("_B", ".up") and shapes[k][0] != size_out
        ):
            bad.append(k)
    if bad:
        raise UserError(f"--lora_path {f}: {len(bad)} of {len(mine)} LoRA matrices do not fit this {family.name} "
                        f"{family.denoiser_folder} (first: {bad[0]}); it was trained on another base model")  # fmt: skip
    return f


def attach(model: torch.nn.Module, family, path: str | Path, scale: float = 1.0, name: str = "sdpo") -> None:
    """Load a saved LoRA into ``model`` (diffusers' ``load_lora_adapter``, which reads its rank and
    alpha from the file) and weight it by ``scale``; the base weights are left as they are."""
    f = check_lora_file(path, family, model)
    model.load_lora_adapter(str(f.parent), weight_name=f.name, prefix=family.denoiser_folder, adapter_name=name)
    model.set_adapters([name], [scale])


def merge(family, cfg, lora_path: str | Path, scale: float = 1.0) -> torch.nn.Module:
    """A fresh fp32 copy of the base denoiser (``--unet_init`` applied) on the CPU with the LoRA
    fused into its weights (diffusers' ``fuse_lora`` then ``unload_lora``): a plain diffusers model."""
    model = family(cfg, torch.device("cpu"), torch.float32).load_denoiser()
    attach(model, family, lora_path, scale, name="merge")
    model.fuse_lora(lora_scale=1.0)  # the scale is already in the adapter's weight
    model.unload_lora()
    return model


def write_full_weights(model: torch.nn.Module, output_dir: str | Path, name: str) -> Path:
    """``output_dir/<name>.pth`` (a plain state dict) and ``output_dir/<name>/`` (diffusers), atomically."""
    from sdpo.atomic import atomic_path, torch_save

    root = Path(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    torch_save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, root / f"{name}.pth")
    with atomic_path(root / name) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
    return root / f"{name}.pth"
