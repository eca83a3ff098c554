"""Which run a checkpoint belongs to: the settings that define it, recorded in every checkpoint and compared
on resume.

Why: resuming used to check only the batch arithmetic, so a launch with another ``--train_method`` or
``--resolution`` in the same ``--output_dir`` silently continued the old run's weights and optimizer under
the new objective, and one folder quietly mixed two runs.  Now every checkpoint's ``training_state.json``
holds ``run``: the flags that define the run (family, objective and its hyper-parameters, the safeguard,
LoRA or full, resolution, data identity and pair count, seed, precision...), and a launch whose value
differs is refused in one line naming the flag and both values.  ``--allow_changed_flags NAME[,NAME]``
(or ``all``) continues anyway, deliberately; the next checkpoint records the new values.

What may change on resume without a word, because it does not change what is trained or it is checked
elsewhere (``MAY_CHANGE``): where the run writes and reports (output, logging, checkpoint cadence,
validation), the batch layout (an elastic resume keeps the saved global batch: ``sdpo.checkpoint.elastic``),
the run's length, speed and memory settings (gradient checkpointing, TF32, workers), how the data is found
(paths: the data's files and the base model's weights are fingerprinted instead, so a moved folder is the
same run), and the optimizer's hyper-parameters.  Those are restored from the checkpoint by accelerate and
torch, which silently ignored a new ``--learning_rate`` on resume; ``reapply_optimizer_settings`` puts the
values given now back, and says which changed.
"""

from __future__ import annotations

import logging
from dataclasses import fields
from pathlib import Path

from sdpo.errors import UserError

log = logging.getLogger(__name__)

MAY_CHANGE = frozenset({
    # where and how the run reports; validation
    "output_dir", "logging_dir", "report_to", "tracker_project_name", "checkpointing_steps",
    "checkpoints_total_limit", "resume_from_checkpoint", "log_param_lambda", "save_merged",
    # batch layout (sdpo.checkpoint.elastic keeps the global batch) and length
    "train_batch_size", "gradient_accumulation_steps", "max_train_steps", "num_train_epochs",
    # speed and memory only
    "gradient_checkpointing", "allow_tf32", "dataloader_num_workers", "dp_replicate", "fsdp_reduce_dtype",
    "sharding",  # checked by sdpo.checkpoint.elastic with its own message
    # how the data and the model are found: fingerprinted below instead
    "pretrained_model_name_or_path", "unet_init", "dataset_name", "train_data_dir", "dataset_config_name", "split",
    "cache_dir", "precomputed", "precomputed_reference", "verify_cache", "data_check", "max_bad_fraction",
    # optimizer hyper-parameters: reapplied from the flags (reapply_optimizer_settings)
    "learning_rate", "scale_lr", "lr_scheduler", "lr_warmup_steps", "adam_beta1", "adam_beta2",
    "adam_weight_decay", "adam_epsilon", "max_grad_norm", "max_nonfinite_steps",
})  # fmt: skip
FIRST = ("model_family", "train_method", "lora_rank", "resolution")  # reported first when several differ
_DESCRIBE = {
    "base_weights": "--pretrained_model_name_or_path (the denoiser's weights, the reference's too)",
    "unet_init": "--unet_init (its weights)",
    "data": "--dataset_name/--train_data_dir (the data's files, split and row selection)",
    "pairs": "the number of training pairs after dropping broken rows and ties",
}


def run_identity(cfg, pairs: int | None) -> dict:
    """The record of what defines the run of ``cfg`` (a resolved ``RunConfig``); ``pairs``: the rows it trains
    on (None when streamed).  JSON-ready: tuples become lists."""
    from sdpo.cache.identity import data_identity, file_fingerprint, part_fingerprint
    from sdpo.families import get_family

    m = cfg.model
    out: dict = {}
    sections = (cfg.model, cfg.data, cfg.objective.params, cfg.objective, cfg.safeguard, cfg.optim, cfg.dist)
    for section in sections:
        for f in fields(section):
            v = getattr(section, f.name)
            scalar = v is None or isinstance(v, (int, float, str, bool, tuple))
            if f.name in MAY_CHANGE or f.name in out or not scalar:
                continue
            out[f.name] = list(v) if isinstance(v, tuple) else v
    folder = get_family(m.model_family).denoiser_folder
    out["base_weights"] = part_fingerprint(m.pretrained_model_name_or_path, folder, m.revision)
    init = Path(m.unet_init).expanduser() if m.unet_init else None
    out["unet_init"] = None if init is None else (file_fingerprint(init) if init.is_file() else part_fingerprint(
        str(init), None, None))  # fmt: skip
    out["data"] = {k: v for k, v in data_identity(cfg.data).items() if k != "data_check"}  # "pairs" shows its effect
    out["pairs"] = pairs
    return {k: out[k] for k in (*FIRST, *[k for k in out if k not in FIRST])}


def parse_allowed(spec: str | None) -> frozenset[str]:
    """``--allow_changed_flags``: a comma list of names (as the refusal prints them), or ``all``."""
    if not spec:
        return frozenset()
    return frozenset(s.strip().lstrip("-") for s in spec.split(",") if s.strip())


def _show(v) -> str:
    return "not set" if v is None else repr(v) if isinstance(v, str) else str(v)


def check_same_run(saved: dict | None, current: dict, allowed: frozenset[str], where: str) -> list[str]:
    """Refuse (one ``UserError`` line) a launch that would continue the run in ``where`` with other settings;
    returns the allowed differences as log lines.  ``saved``: the checkpoint's ``run`` record (None: written
    before run records existed; nothing to compare)."""
    from sdpo.cache.identity import first_difference

    if saved is None:
        return [f"{where} records no run settings (written by an older version): they were not compared"]
    notes = []
    keys = [*[k for k in saved if k in current], *[k for k in current if k not in saved]]
    for key in keys:
        a, b = saved.get(key), current.get(key)
        if a == b:
            continue
        diff = first_difference(a, b) if isinstance(a, dict) and isinstance(b, dict) else None
        shown = f"{key}.{diff[0]}" if diff else key
        was, now = (diff[1], diff[2]) if diff else (a, b)
        what = _DESCRIBE.get(key, f"--{key}")
        if key in allowed or "all" in allowed:
            notes.append(f"{what}: {_show(was)} in {where}, {_show(now)} now; continuing (--allow_changed_flags)")
            continue
        detail = f" ({shown})" if diff else ""
        raise UserError(
            f"{where} belongs to a run with {what}{detail} {_show(was)}, this launch has {_show(now)}: resume with the "
            f"run's own value, use another --output_dir, or pass --allow_changed_flags {key} to continue anyway"
        )
    return notes


def optimizer_settings(optimizer) -> list[dict]:
    """The hyper-parameters of each parameter group as the flags made them (before a checkpoint is loaded)."""
    return [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]


def reapply_optimizer_settings(optimizer, scheduler, fresh: list[dict]) -> list[str]:
    """Put the flags' optimizer hyper-parameters (``fresh``, from ``optimizer_settings``) back after a checkpoint
    restored the saved ones: torch's ``load_state_dict`` restores each group's lr, betas, weight decay... and the
    lr scheduler its base rates, so a resumed run silently kept the old values.  The moments and the schedule's
    position stay as loaded.  Returns one line per setting that changed."""
    sched = getattr(scheduler, "scheduler", scheduler)
    groups = optimizer.param_groups
    notes: list[str] = []
    for i, (group, new) in enumerate(zip(groups, fresh)):
        for key, value in new.items():
            if key in ("lr", "initial_lr") or group.get(key) == value:
                continue
            notes.append(f"optimizer {key}: {group.get(key)} in the checkpoint, {value} now")
            group[key] = value
        base = new.get("initial_lr")
        lambdas = getattr(sched, "lr_lambdas", None)
        if base is None or lambdas is None or sched.base_lrs[i] == base:
            continue
        notes.append(f"learning rate: {sched.base_lrs[i]} in the checkpoint, {base} now")
        sched.base_lrs[i] = group["initial_lr"] = base
        group["lr"] = base * lambdas[i](sched.last_epoch)
    if notes and hasattr(sched, "_last_lr"):
        sched._last_lr = [g["lr"] for g in groups]
    return list(dict.fromkeys(notes))
