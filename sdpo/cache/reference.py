"""Precomputed reference losses: ``L_ref_w``, ``L_ref_l`` of every pair of every epoch a run sees, so that training
needs no reference denoiser at all (``python -m sdpo.precompute --reference_losses`` writes them,
``train.py --precomputed CACHE`` reads them).

Why this is possible: every random draw of a pair (caption dropout, flips, posterior noise, time, diffusion
noise) comes from ``(seed, epoch, index)`` (``sdpo.data.seeding``) and the reference is frozen, so its
per-sample losses are fixed numbers, known before training: 8 bytes per pair per epoch.  Why it pays: the
reference forward is a quarter of what a cached step computes, and the reference's weights are a whole
denoiser's worth of device memory (REFERENCE section 11; ``bench/reference_losses.py``).

Exactness: the numbers are computed by ``sdpo.training.step.reference_pair_losses``, the step's own arithmetic,
on the micro-batches the run will form (consecutive positions of each epoch's permutation,
``--reference_batch_size``, by default ``--train_batch_size``).  Kernels may round a row differently by the
rows beside it, so with the same micro-batches an fp32 run is bit-identical to computing the reference in the
step; with others it differs by that rounding (``micro_batch`` in the index; training logs it).

Layout, inside the latent/text cache they were computed from (``sdpo.cache.store``)::

    CACHE/reference/<key>/plan.json                   what made it (identity, layout); written first
    CACHE/reference/<key>/epoch-00000/losses-00000.safetensors
                                                      positions [k*S, (k+1)*S) of epoch 0's permutation:
                                                      index (n,) int64, losses (n, 2) float32 [winner, loser]
    CACHE/reference/<key>/index.json                  written last: the plan, the positions covered per
                                                      epoch, every file and its size

``<key>`` is a hash of the identity, so sets made with other seeds or noise flags live side by side.  The
identity holds everything the numbers depend on beyond the latent cache itself: the reference weights
(the base denoiser's files and ``--unet_init``'s), the scheduler, the precision it ran in, the seed and every
flag that changes a draw (``--proportion_empty_prompts``, ``--no_hflip``, ``--noise_offset``,
``--input_perturbation``, a family's ``forward_flags`` such as the flow ``--weighting_scheme``); resolution,
data and encoders are the latent cache's identity, digested in.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch

from sdpo.cache.identity import file_fingerprint, first_difference, folder_fingerprint, part_fingerprint
from sdpo.cache.store import precision_name, read_json
from sdpo.errors import UserError

log = logging.getLogger(__name__)

FORMAT = 1
FOLDER = "reference"
PLAN, INDEX = "plan.json", "index.json"
HINT = "python -m sdpo.precompute --reference_losses with this run's flags"
OFF = "--no-precomputed_reference computes the reference in the step instead"


def unit_file(epoch: int, k: int) -> str:
    return f"epoch-{epoch:05d}/losses-{k:05d}.safetensors"


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def weights_fingerprint(path: str | None) -> str | None:
    """``--unet_init``: a weights file or a diffusers folder, by content (``sdpo.cache.identity``'s rules)."""
    if not path:
        return None
    p = Path(path).expanduser()
    return f"files:{folder_fingerprint(p)}" if p.is_dir() else file_fingerprint(p)


def latent_digest(latent_index: dict) -> str:
    """What the latent cache's tensors depend on and how they are stored (the reference's input)."""
    layout = latent_index["layout"]
    return digest({"identity": latent_index["identity"],
                   "layout": {k: layout.get(k) for k in ("dtype", "flips", "encoder_dtype", "latent_axis_order")}})  # fmt: skip


def reference_identity(cfg, latent_index: dict, mixed_precision: str | None) -> dict:
    """Everything the reference losses depend on, from the resolved run config and the latent cache's index."""
    from sdpo.families import get_family

    model, data, objective = cfg.model, cfg.data, cfg.objective
    family = get_family(model.model_family)
    path, rev = model.pretrained_model_name_or_path, model.revision
    return {
        "latents": latent_digest(latent_index),
        "reference": {
            "denoiser": part_fingerprint(path, family.denoiser_folder, rev),
            "unet_init": weights_fingerprint(model.unet_init),
            "scheduler": part_fingerprint(path, "scheduler", rev),
            "precision": precision_name(mixed_precision),
        },
        "draws": {
            "seed": data.seed,
            "proportion_empty_prompts": data.proportion_empty_prompts,
            "no_hflip": data.no_hflip,
            "noise_offset": objective.noise_offset,
            "input_perturbation": objective.input_perturbation,
            **{name: getattr(model, name) for name in family.forward_flags},
        },
    }


def positions_needed(pairs: int, batch: int, processes: int, micro_batches: int, epoch: int = 0,
                     start: int = 0) -> dict[int, int]:  # fmt: skip
    """``{epoch: end position}`` a run reads: ``micro_batches`` more micro-batches of ``batch`` pairs on each of
    ``processes`` processes, from position ``start`` of ``epoch`` on (``sdpo.data.pairs.ShardedPairSampler``'s
    layout: the incomplete tail of an epoch is skipped, the next epoch starts at 0)."""
    step = batch * processes
    out: dict[int, int] = {}
    while micro_batches > 0:
        k = min(micro_batches, (pairs - start) // step)
        if k > 0:
            out[epoch] = start + k * step
        micro_batches -= k
        epoch, start = epoch + 1, 0
        if pairs < step:  # ShardedPairSampler refuses this; do not loop
            break
    return out


def describe_bytes(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def reference_sets(root: Path) -> list[Path]:
    return sorted(p for p in (root / FOLDER).glob("*") if (p / PLAN).is_file() or (p / INDEX).is_file())


class ReferenceLosses:
    """A finished set, read into memory one epoch at a time (8 bytes per pair)."""

    def __init__(self, folder: Path, index: dict, pairs: int):
        self.folder, self.index, self.pairs = folder, index, pairs
        self.coverage: list[int] = index["coverage"]
        self.micro_batch: int = index["layout"]["micro_batch"]
        self._epochs: dict[int, torch.Tensor] = {}

    def epoch(self, epoch: int) -> torch.Tensor:
        """``(pairs, 2)`` float32 by pair index; NaN where this set holds nothing."""
        if epoch not in self._epochs:
            from safetensors.torch import load_file

            table = torch.full((self.pairs, 2), float("nan"), dtype=torch.float32)
            prefix = unit_file(epoch, 0).split("/")[0] + "/"
            for f in self.index["files"]:
                if f["path"].startswith(prefix):
                    part = load_file(str(self.folder / f["path"]))
                    table[part["index"]] = part["losses"]
            self._epochs = {epoch: table}  # one epoch at a time: the loop moves forward
        return self._epochs[epoch]

    def lookup(self, epoch: int, indices: torch.Tensor) -> torch.Tensor:
        out = self.epoch(epoch)[indices]
        missing = torch.isnan(out).any(dim=1)
        if missing.any():
            i = int(indices[missing][0])
            raise UserError(f"{self.folder}: no reference losses for pair {i} of epoch {epoch} (it covers "
                            f"{self.describe_coverage()}); extend it with {HINT}, or {OFF}")  # fmt: skip
        return out

    def describe_coverage(self) -> str:
        full = sum(c == self.pairs for c in self.coverage)
        tail = [c for c in self.coverage if c != self.pairs]
        return f"{full} whole epoch(s)" + (f" and {tail[0]} positions of epoch {full}" if tail else "")


class ReferenceLossLoader:
    """The run's data loader with each batch's precomputed ``ref_losses`` ``(B, 2)`` added, looked up in the
    main process by the sampler's epoch and the batch's pair indices (a lookup error stays one line)."""

    def __init__(self, loader, sampler, losses: ReferenceLosses):
        self.loader, self.sampler, self.losses = loader, sampler, losses

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            batch["ref_losses"] = self.losses.lookup(self.sampler.epoch, batch["indices"])
            yield batch


def open_reference_losses(cfg, latent_index: dict, objective, mixed_precision: str | None, needed: dict[int, int],
                          micro_batch: int, start: int = 0) -> ReferenceLosses | None:  # fmt: skip
    """The set of reference losses this run uses, or None (the reference is computed in the step).

    ``--precomputed_reference`` unset: used when the cache holds a set for this run; refused in one line when it
    holds sets made for something else (a mistaken flag would otherwise load a whole reference denoiser
    unnoticed).  ``--precomputed_reference``: required.  ``--no-precomputed_reference``: never used.
    ``needed``: ``{epoch: end position}`` the run reads; ``micro_batch``: its per-process batch; ``start``: the
    position in its first epoch it starts (or resumes) at."""
    from sdpo.losses import reference_use

    wanted = cfg.data.precomputed_reference
    root = Path(cfg.data.precomputed).expanduser()
    use = reference_use(objective)
    method = cfg.objective.train_method
    if wanted is False:
        return None
    if use != "losses":
        if wanted:  # resolve refuses this combination earlier; kept for callers that skip it
            raise UserError(f"--precomputed_reference: --train_method {method} {_why_not(use)}")
        if use == "prediction" and reference_sets(root):
            log.info("--train_method %s %s: the reference is computed in the step", method, _why_not(use))
        return None
    identity = reference_identity(cfg, latent_index, mixed_precision)
    folder = root / FOLDER / digest(identity)
    if not (folder / INDEX).is_file():
        if (folder / PLAN).is_file():
            raise UserError(f"--precomputed {root}: the reference losses for this run are unfinished ({folder.name}); "
                            f"rerun {HINT}, or {OFF}")  # fmt: skip
        others = [p for p in reference_sets(root) if p != folder]
        if others:
            newest = max(others, key=lambda p: p.stat().st_mtime)
            plan = read_json(newest / PLAN if (newest / PLAN).is_file() else newest / INDEX)
            key, was, now = first_difference(plan["identity"], identity) or ("identity", "?", "?")
            raise UserError(f"--precomputed {root}: its reference losses were made for {key} {was!r} but this run has "
                            f"{now!r}; rebuild them ({HINT}), or {OFF}")  # fmt: skip
        if wanted:
            raise UserError(f"--precomputed_reference: {root} holds no reference losses; build them with {HINT}")
        return None
    index = read_json(folder / INDEX)
    if index.get("format") != FORMAT:
        raise UserError(f"{folder}: reference-loss format {index.get('format')} is not {FORMAT}; rebuild it ({HINT})")
    pairs = latent_index["layout"]["pairs"]
    losses = ReferenceLosses(folder, index, pairs)
    for f in index["files"]:
        p = folder / f["path"]
        if not p.is_file() or p.stat().st_size != f["bytes"]:
            raise UserError(f"{folder}: {f['path']} is missing or has the wrong size; rerun {HINT}")
    short = {e: end for e, end in needed.items() if (losses.coverage[e] if e < len(losses.coverage) else 0) < end}
    if short:
        e = min(short)
        raise UserError(f"--precomputed {root}: this run reads positions up to {needed[e]} of epoch {e}, its reference "
                        f"losses cover {losses.describe_coverage()}; extend them ({HINT}, or --epochs "
                        f"{max(needed) + 1}), or {OFF}")  # fmt: skip
    if losses.micro_batch != micro_batch or start % micro_batch:
        log.warning("reference losses were computed in micro-batches of %d pairs from each epoch's start, this run "
                    "forms %d-pair micro-batches from position %d: they equal the in-step values up to the kernels' "
                    "rounding by batch composition, not bit for bit", losses.micro_batch, micro_batch, start)  # fmt: skip
    log.info("precomputed reference losses from %s (%s, micro-batches of %d): the reference denoiser is not loaded",
             folder, losses.describe_coverage(), losses.micro_batch)  # fmt: skip
    return losses


def _why_not(use: str) -> str:
    if use == "prediction":
        return (
            "uses the reference's prediction itself, not only its losses: precomputed reference losses cannot stand in"
        )
    return "uses no reference model: there are no reference losses to precompute"
