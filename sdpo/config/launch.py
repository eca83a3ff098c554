"""What the launch recipes (``scripts/train/*.sh``) take from a family, in one place: ``common.sh`` asks here.

    python -m sdpo.config.launch FAMILY [--sharding none|fsdp|hsdp] [--lora] [--method NAME] [--online] [-- TRAIN_ARGS...]

prints shell assignments (``MODEL_DEFAULT=...``, ``LR=...``, ``TRAIN_FLAGS=(...)``, ...) for ``eval``, or
``ERROR=...`` with the one line to stop on (also when the extra train.py arguments after ``--`` would be
refused: an unknown or abbreviated flag would dodge the launcher's batch arithmetic).  The numbers are each family's ``launch`` record
(``sdpo.families.recipe.LaunchDefaults``), whose sources the family modules state; the train.py defaults that depend on the
run (Adafactor only for an unsharded full fine-tune, gradient checkpointing) come from the same family
methods ``sdpo.config`` resolves with, so the launcher and the parser cannot disagree.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys


def family_flags(family) -> list[str]:
    """The flags that select ``family`` in train.py (none for the default family)."""
    from sdpo.families import DEFAULT_FAMILY

    return [] if family.name == DEFAULT_FAMILY else family.flag_hint().split()


def launch_values(name: str, sharding: str | None, lora: bool, method: str | None) -> dict[str, object]:
    """The shell variables of one launch (see the module docstring); raises UserError for a refusal."""
    from sdpo.errors import UserError
    from sdpo.families import get_family
    from sdpo.losses import LOSSES, processes

    family = get_family(name)
    d = family.launch
    if d is None:
        raise UserError(f"the {name} family has no launch recipe")
    if method is not None and method in LOSSES and family.process not in processes(LOSSES[method]):
        raise UserError(
            f"--method {method} needs DDPM transition densities and {family.display_name} is rectified flow (no flow "
            f"form of {method} is implemented); use --method diffusion-dpo"
        )
    sharding = sharding or ("none" if lora else d.sharding)
    flags = family_flags(family)
    if family.heavy:
        flags.append("--gradient_checkpointing")
    if family.adafactor_by_default(sharded=sharding != "none", lora=lora):
        flags.append("--use_adafactor")
    flags += d.flags
    return {
        "MODEL_DEFAULT": family.default_model or "", "VAE_DEFAULT": d.vae or "none", "LR": short_float(d.lr),
        "SCALE_LR": int(d.scale_lr), "GLOBAL_BATCH_DEFAULT": d.global_batch, "PER_GPU_BATCH_DEFAULT": d.per_gpu_batch,
        "PRECISION_DEFAULT": d.precision, "SHARDING_DEFAULT": sharding, "VIDEO": int(d.video), "TRAIN_FLAGS": flags,
        "SCHEDULE": list(d.schedule) if d.schedule is not None else None,
    }  # fmt: skip


def train_args_problem(args: list[str], online: bool = False) -> str | None:
    """Why train.py would reject these extra arguments, or None.  Flags must be spelled in full: argparse's prefix
    matching would let an abbreviated --train_batch slip past the launcher's batch arithmetic.  ``online``: the
    round driver's own flags (``python -m sdpo.online``) are taken out first; the rest must be train.py's."""
    from sdpo.config import build_parser
    from sdpo.errors import UserError

    if online:
        from sdpo.online.options import split_args

        try:
            _, args = split_args(args)
        except UserError as e:
            return f"python -m sdpo.online would reject the extra arguments: {e}"
    if not args:
        return None
    parser = build_parser()
    known = {s for action in parser._actions for s in action.option_strings}
    for a in args:
        if a.startswith("-") and a.split("=", 1)[0] not in known and not a.lstrip("-").replace(".", "").isdigit():
            return f"unknown option '{a.split('=', 1)[0]}'"
    try:
        _, rest = parser.parse_known_args(["--pretrained_model_name_or_path", "x", *args])
    except UserError as e:
        return f"train.py would reject the extra arguments: {e}"
    return f"unknown option '{rest[0]}'" if rest else None


def short_float(x: float) -> str:
    """``1e-08`` -> ``1e-8``: how the recipes write learning rates."""
    return re.sub(r"e([+-])0*(\d)", lambda m: "e" + ("-" if m.group(1) == "-" else "") + m.group(2), f"{x:g}")


def shell(values: dict[str, object]) -> str:
    lines = []
    for k, v in values.items():
        if v is None:
            continue
        lines.append(
            f"{k}=({' '.join(shlex.quote(str(x)) for x in v)})" if isinstance(v, list) else f"{k}={shlex.quote(str(v))}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from sdpo.errors import UserError

    p = argparse.ArgumentParser(prog="python -m sdpo.config.launch", description=__doc__.split("\n\n")[0])
    p.add_argument("family")
    p.add_argument("--sharding", default=None)
    p.add_argument("--lora", action="store_true")
    p.add_argument("--method", default=None)
    p.add_argument("--online", action="store_true", help="the extra arguments may hold python -m sdpo.online's flags")
    argv = list(argv) if argv is not None else sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    a = p.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    problem = train_args_problem(extra, a.online)
    if problem:
        print(f"ARGS_ERROR={shlex.quote(problem)}")
        return
    try:
        print(shell(launch_values(a.family, a.sharding or None, a.lora, a.method)))
    except UserError as e:
        print(f"ERROR={shlex.quote(str(e))}")


if __name__ == "__main__":
    main()
