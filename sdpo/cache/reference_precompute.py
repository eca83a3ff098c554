"""Compute a run's reference losses once (``python -m sdpo.precompute --reference_losses``), so that the run, and
every run of a sweep on the same data and draws, trains without a reference denoiser (``sdpo.cache.reference``).

    accelerate launch -m sdpo.precompute <train.py's flags> --out CACHE --reference_losses
    accelerate launch train.py <the same flags> --precomputed CACHE

It reads the latent/text cache at ``--out`` (made first by the same command when missing) and walks the
positions the run will read: each epoch's permutation (``sdpo.data.pairs.epoch_order``), cut into the run's
micro-batches; for each it calls ``sdpo.training.step.reference_pair_losses``, the step's own arithmetic, with
only the frozen reference loaded, under the run's ``--mixed_precision``, without gradients (inference: no
activations kept).  Which positions: those ``--max_train_steps`` / ``--num_train_epochs`` read with this
launch's process count (launch it like the training run), or ``--epochs`` whole epochs.  Work is cut into
files of ``--reference_shard_size`` pairs dealt round-robin to the processes; each file is written under a
temporary name and renamed; a rerun keeps finished files, and a rerun with a longer run extends the set;
``index.json`` is written last.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from sdpo.atomic import atomic_path, write_json
from sdpo.cache import reference as ref
from sdpo.cache import store as cache
from sdpo.cache.identity import first_difference
from sdpo.checkpoint.store import crash_point
from sdpo.config import RunConfig
from sdpo.data.pairs import PairTransform, epoch_order
from sdpo.errors import UserError
from sdpo.families import get_family
from sdpo.losses import LOSSES, reference_use

log = logging.getLogger("sdpo.cache.reference_precompute")
_UMASK = os.umask(0)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class ReferenceOptions:
    """How the reference losses are computed and laid out."""

    epochs: int | None  # whole epochs; None: the positions the run reads
    micro_batch: int  # pairs per reference call, from each epoch's start
    shard_size: int  # pairs per file (a multiple of micro_batch)


def add_arguments(parser) -> None:
    a = parser.add_argument_group("reference losses (sdpo/cache/reference.py)").add_argument
    a("--reference_losses", action="store_true",
      help="also compute the reference's per-sample losses for every pair the run will see, so that train.py "
           "--precomputed loads no reference denoiser (objectives that use only L_ref: not dspo)")  # fmt: skip
    a("--epochs", type=int, default=None,
      help="cover this many whole epochs (default: the positions --max_train_steps / --num_train_epochs read on "
           "this launch's process count)")  # fmt: skip
    a("--reference_batch_size", type=int, default=None,
      help="pairs per reference call (default --train_batch_size: the run's own micro-batches, so its losses are "
           "bit-identical to the step's; other sizes round differently, about 1e-7 relative)")  # fmt: skip
    a("--reference_shard_size", type=int, default=4096, help="pairs per reference-loss file (the unit of resumption)")


def options(ns, run: RunConfig) -> ReferenceOptions | None:
    """The parsed ``--reference_losses`` options, or None; objectives that need more than ``L_ref`` refuse."""
    given = [f"--{n}" for n in ("epochs", "reference_batch_size") if getattr(ns, n) is not None]
    if not ns.reference_losses:
        if given:
            raise UserError(f"{', '.join(given)} only act with --reference_losses; add it or drop them")
        return None
    method = run.objective.train_method
    objective = LOSSES[method]
    use = reference_use(objective)
    if use == "prediction":
        raise UserError(f"--reference_losses: --train_method {method} uses the reference's prediction itself "
                        "(pred_w - ref_pred_w), not only its per-sample losses, so it needs the reference model in "
                        "the step; drop --reference_losses (the latent/text cache still applies)")  # fmt: skip
    if use == "none":
        raise UserError(f"--reference_losses: --train_method {method} uses no reference model; there is nothing to "
                        "precompute: drop --reference_losses")  # fmt: skip
    if not objective.USES_LOSER:
        raise UserError(f"--reference_losses: --train_method {method} trains on single labelled images, which the "
                        "cache does not hold (train.py refuses --precomputed with it); drop --reference_losses")  # fmt: skip
    for name in ("epochs", "reference_batch_size", "reference_shard_size"):
        value = getattr(ns, name)
        if value is not None and value < 1:
            raise UserError(f"--{name} must be >= 1, got {value}")
    micro = ns.reference_batch_size or run.optim.train_batch_size
    return ReferenceOptions(ns.epochs, micro, math.ceil(ns.reference_shard_size / micro) * micro)


def coverage(run: RunConfig, opts: ReferenceOptions, pairs: int, processes: int) -> list[int]:
    """Positions to compute per epoch, from each epoch's start: whole epochs (their incomplete tail too, so any
    process count finds its pairs) and, for the run's last epoch, up to the position it stops at."""
    from sdpo.training.setup import total_steps

    if opts.epochs:
        return [pairs] * opts.epochs
    steps = total_steps(run.optim, pairs, processes)
    needed = ref.positions_needed(pairs, run.optim.train_batch_size, processes,
                                  steps * run.optim.gradient_accumulation_steps)  # fmt: skip
    last = max(needed)
    return [pairs] * last + [needed[last]]


def _units(cover: list[int], shard: int) -> list[tuple[int, int, int, int]]:
    """(epoch, file number, first position, end position) of every file."""
    return [(e, k, a, min(a + shard, end)) for e, end in enumerate(cover) for k, a in enumerate(range(0, end, shard))]


def _finished(path: Path, start: int, end: int) -> bool:
    """A file of this unit already holds positions [start, end) (a shorter one is from a shorter run: redone)."""
    if not path.is_file():
        return False
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get("sdpo", "{}"))
    return meta.get("start") == start and meta.get("end") == end


def _save(tensors: dict, path: Path, meta: dict) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"sdpo": json.dumps(meta, sort_keys=True)})
        os.chmod(tmp, _FILE_MODE)  # safetensors creates files owner-only; a cache is shared like any dataset
        crash_point(f"precompute:reference:{path.parent.name}/{path.name}")


def _state(folder: Path, plan: dict, cover: list[int]) -> tuple[str, list[int]]:
    """(``new`` | ``resume`` | ``finished``, the coverage to reach): a set begun with another layout is refused;
    a longer run extends a shorter one's coverage."""
    found = folder / ref.INDEX if (folder / ref.INDEX).is_file() else folder / ref.PLAN
    if not found.is_file():
        return "new", cover
    old = cache.read_json(found)
    diff = first_difference({"format": old.get("format"), "layout": old.get("layout")},
                            {"format": plan["format"], "layout": plan["layout"]})  # fmt: skip
    if diff:
        key, was, now = diff
        raise UserError(f"{folder}: reference losses begun with {key} {was!r}, this run has {now!r}; pass the same "
                        f"--reference_batch_size / --reference_shard_size, or delete that folder")  # fmt: skip
    before = old.get("coverage", [])
    merged = [max(a, b) for a, b in zip(before + [0] * len(cover), cover + [0] * len(before))]
    merged = merged[: max(len(before), len(cover))]
    if found.name == ref.INDEX and merged == before:
        return "finished", merged
    return "resume", merged


def precompute_reference(run: RunConfig, out: Path, opts: ReferenceOptions) -> Path:
    """Write (or finish, or extend) the reference losses for ``run`` inside the latent cache ``out``; returns
    their folder.  Every process of a launch calls this."""
    from accelerate import Accelerator

    from sdpo.training.step import reference_pair_losses

    acc = Accelerator(mixed_precision=run.optim.mixed_precision)
    cfg = run.with_flags(precomputed=str(out))  # the run as training will see it: latents and text from the cache
    index = cache.open_cache(cfg, acc.mixed_precision)
    pairs = len(index)
    identity = ref.reference_identity(cfg, index.index, acc.mixed_precision)
    folder = out / ref.FOLDER / ref.digest(identity)
    plan = {"format": ref.FORMAT, "identity": identity,
            "layout": {"micro_batch": opts.micro_batch, "shard_size": opts.shard_size, "pairs": pairs}}  # fmt: skip
    state, cover = _state(folder, plan, coverage(cfg, opts, pairs, acc.num_processes))
    acc.wait_for_everyone()
    if state == "finished":
        log.info("%s already holds these reference losses (%d epoch(s))", folder, len(cover))
        return folder
    if acc.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / ref.PLAN, {**plan, "coverage": cover})
        (folder / ref.INDEX).unlink(missing_ok=True)  # extending: unfinished until the new index is written
        for tmp in folder.glob("epoch-*/.*.tmp-*"):  # temporary files of a killed run
            tmp.unlink()
    acc.wait_for_everyone()

    units = _units(cover, opts.shard_size)
    mine = units[acc.process_index :: acc.num_processes]
    if acc.is_main_process:
        done = sum(_finished(folder / ref.unit_file(e, k), a, b) for e, k, a, b in units)
        log.info("reference losses %s: %d positions over %d epoch(s), micro-batches of %d pairs, %s; %d of %d files "
                 "already done, the rest dealt over %d process(es)", folder, sum(cover), len(cover), opts.micro_batch,
                 ref.describe_bytes(8 * sum(cover)), done, len(units), acc.num_processes)  # fmt: skip
    weight_dtype = _DTYPES.get(acc.mixed_precision, torch.float32)
    family = get_family(cfg.model.model_family).load_reference(cfg.model, acc.device, weight_dtype)
    dataset = cache.CachedPairs(index, PairTransform(cfg.data))
    orders: dict[int, list[int]] = {}
    for e, k, a, b in mine:
        path = folder / ref.unit_file(e, k)
        if _finished(path, a, b):
            continue
        if e not in orders:
            orders = {e: epoch_order(pairs, cfg.data.seed, e)}
        keys = [(e, i) for i in orders[e][a:b]]
        batches = [keys[i : i + opts.micro_batch] for i in range(0, len(keys), opts.micro_batch)]
        loader = DataLoader(dataset, batch_sampler=batches, collate_fn=cache.collate,
                            num_workers=cfg.data.dataloader_num_workers)  # fmt: skip
        losses = []
        for batch in loader:
            with acc.autocast():
                losses.append(reference_pair_losses(batch, family, cfg, acc.device).float().cpu())
        _save({"index": torch.tensor(orders[e][a:b], dtype=torch.int64), "losses": torch.cat(losses)}, path,
              {"epoch": e, "start": a, "end": b, "micro_batch": opts.micro_batch})  # fmt: skip
    acc.wait_for_everyone()
    if acc.is_main_process:
        missing = [ref.unit_file(e, k) for e, k, a, b in units if not _finished(folder / ref.unit_file(e, k), a, b)]
        if missing:
            raise UserError(f"{folder}: {len(missing)} file(s) were not written (first: {missing[0]}); rerun to finish")
        files = [{"path": ref.unit_file(e, k), "bytes": (folder / ref.unit_file(e, k)).stat().st_size}
                 for e, k, _, _ in units]  # fmt: skip
        write_json(folder / ref.INDEX, {**plan, "coverage": cover, "files": files})
        log.info("reference losses %s finished: %d positions in %d files", folder, sum(cover), len(files))
    acc.wait_for_everyone()
    return folder
