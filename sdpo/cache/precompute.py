"""Encode a training set once: VAE posteriors and text conditioning into a cache (``sdpo.cache.store``).

    accelerate launch -m sdpo.precompute <train.py's model and data flags> --out CACHE
    accelerate launch train.py <the same flags> --precomputed CACHE ...

Takes ``train.py``'s own flags (the same parser), so the cache is made from exactly the pairs
training would read: broken rows and ties dropped by the same functions, with the same per-reason
counts logged.  Per pair it stores the VAE posterior's mean and std of the winner and the loser,
centre-cropped, unflipped and flipped (``--no_hflip``: unflipped only); per unique caption the
family's ``encode_prompt`` output, and the empty prompt's once.  ``--random_crop`` cannot be cached
(every epoch draws a new crop) and is refused.

Work is split into shards (``--shard_size`` pairs, ``--text_shard_size`` captions), dealt round-robin
to the processes of a data-parallel launch; each shard is written under a temporary name and renamed
when complete.  A rerun after a crash skips the finished shards and redoes the rest, so it ends with
the same files as an uninterrupted run; ``index.json``, which training requires, is written last.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import functional as TF
from tqdm.auto import tqdm

from sdpo.atomic import atomic_path, write_json
from sdpo.cache import reference_precompute
from sdpo.cache import store as cache
from sdpo.cache.identity import cache_identity, first_difference
from sdpo.checkpoint import manifest
from sdpo.checkpoint.store import crash_point, remove_leftovers
from sdpo.config import RunConfig, resolve
from sdpo.config import build_parser as train_parser
from sdpo.data import pairs as data
from sdpo.diskspace import reporting_disk_full, shortfall
from sdpo.distributed.objects import from_main, gathered
from sdpo.errors import UserError, cli_main
from sdpo.families import get_family

log = logging.getLogger("sdpo.cache.precompute")
_UMASK = os.umask(0)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK


def build_parser() -> argparse.ArgumentParser:
    p = train_parser()
    p.prog = "python -m sdpo.precompute"
    p.description = "Precompute VAE posteriors and text encodings for train.py --precomputed (train.py's flags)."
    a = p.add_argument_group("precompute").add_argument
    a("--out", required=True, help="cache folder to write (rerun with the same flags to resume)")
    a(
        "--cache_dtype",
        default="auto",
        choices=["auto", *sorted(cache.DTYPES)],
        help="stored dtype; auto: the dtype the encoders run in (--mixed_precision), which stores their outputs "
        "exactly; bf16/fp16 below that halve the size and round",
    )
    a("--shard_size", type=int, default=256, help="pairs per latent shard (the unit of resumption)")
    a("--text_shard_size", type=int, default=256, help="captions per text shard (FLUX fp32: 8.4 MB each)")
    a("--encode_batch_size", type=int, default=8, help="pairs (or captions) per encoder call")
    reference_precompute.add_arguments(p)
    a(
        "--redo_shard",
        action="append",
        default=[],
        metavar="FILE",
        help="rewrite this file of a finished cache (its path in index.json, e.g. latents/latents-00003.safetensors, "
        "as a failed hash check names it) and the index; repeatable",
    )
    return p


@dataclass(frozen=True)
class PrecomputeConfig:
    """The run's own resolved config (the cache is made for it) and where and how the cache is written."""

    run: RunConfig
    out: str
    cache_dtype: str
    shard_size: int
    text_shard_size: int
    encode_batch_size: int
    reference: reference_precompute.ReferenceOptions | None = None  # --reference_losses (sdpo.cache.reference)
    redo_shard: tuple[str, ...] = ()


def parse_args(argv: list[str] | None = None) -> PrecomputeConfig:
    ns = build_parser().parse_args(argv)
    run = resolve(ns)
    if run.data.random_crop:
        raise UserError("--random_crop cannot be cached (every epoch draws a new crop); drop it: the cache holds the "
                        "centre crop, flipped and unflipped")  # fmt: skip
    if run.data.streaming:
        raise UserError("--streaming: precompute numbers the pairs of the whole split; drop it (a local copy: "
                        "--train_data_dir)")  # fmt: skip
    if run.data.precomputed:
        raise UserError("--precomputed is train.py's flag; precompute writes its cache to --out")
    for name in ("shard_size", "text_shard_size", "encode_batch_size"):
        if getattr(ns, name) < 1:
            raise UserError(f"--{name} must be >= 1, got {getattr(ns, name)}")
    return PrecomputeConfig(run, ns.out, ns.cache_dtype, ns.shard_size, ns.text_shard_size, ns.encode_batch_size,
                            reference_precompute.options(ns, run), tuple(ns.redo_shard))  # fmt: skip


# ----------------------------------------------------------------------------- inputs


class PosteriorInputs(Dataset):
    """Rows of one latent shard as VAE inputs: winner and loser, centre-cropped, each flip variant."""

    def __init__(self, hf, rows: range, resolution: int, flips: int, caption_ids: dict[str, int]):
        self.hf, self.rows, self.resolution, self.flips, self.caption_ids = hf, rows, resolution, flips, caption_ids

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        """``(pixels (2, flips, 3, R, R), caption id, source row)``.  Bytes that fail to decode are
        replaced by the next decodable row, as ``sdpo.data.pairs.PairDataset`` does in training."""
        index = self.rows[i]
        for k in range(data._DECODE_TRIES):
            j = (index + k) % len(self.hf)
            row = self.hf[j]
            try:
                first, second = data.decode(row["jpg_0"]), data.decode(row["jpg_1"])
            except (OSError, ValueError, SyntaxError) as e:
                log.warning("row %d: image failed to decode (%s); using row %d instead", j, e, j + 1)
                continue
            winner, loser = (first, second) if row["label_0"] == 1 else (second, first)
            pixels = data.pair_pixels(winner, loser, self.resolution, random_crop=False, hflip=False, joint=True,
                                      sample=0)  # fmt: skip
            variants = [pixels, TF.horizontal_flip(pixels)][: self.flips]  # flip after crop, as pair_pixels
            return torch.stack(variants, dim=1), self.caption_ids[row["caption"]], j
        raise UserError(
            f"rows {index}..{index + data._DECODE_TRIES - 1} all failed to decode; is this Pick-a-Pic data?"
        )


# ----------------------------------------------------------------------------- the run


def _plan(cfg: PrecomputeConfig, pairs: int, captions: int, encoder_dtype: str) -> dict:
    return {
        "format": cache.FORMAT,
        "identity": cache_identity(cfg.run),
        "layout": {
            "dtype": encoder_dtype if cfg.cache_dtype == "auto" else cfg.cache_dtype,
            "flips": 1 if cfg.run.data.no_hflip else 2,
            "shard_size": cfg.shard_size,
            "text_shard_size": cfg.text_shard_size,
            "pairs": pairs,
            "captions": captions,
            "encoder_dtype": encoder_dtype,
        },
    }


def _check_out(out: Path, plan: dict) -> str:
    """``new``, ``resume`` or ``finished`` for ``out`` under this plan (read only: every process runs it,
    so a refusal stops them all alike); another cache's folder, or a folder that is no cache, is refused."""
    found = out / cache.INDEX if (out / cache.INDEX).is_file() else out / cache.PLAN
    if found.is_file():
        old = cache.read_json(found)  # index.json adds shapes and files to the plan: compare the plan's fields
        old = {**old, "layout": {k: old.get("layout", {}).get(k) for k in plan["layout"]}}
        diff = first_difference({k: old.get(k) for k in plan}, plan)
        if diff:
            key, was, now = diff
            raise UserError(f"--out {out} holds a cache begun for {key} {was!r}, this run has {now!r}; "
                            "use another --out or delete that folder")  # fmt: skip
        return "finished" if found.name == cache.INDEX else "resume"
    if out.is_dir() and any(out.iterdir()):
        raise UserError(f"--out {out} exists and is not a cache; choose a new or empty folder")
    return "new"


def _save(tensors: dict, out: Path, name: str, meta: dict | None = None) -> None:
    from safetensors.torch import save_file

    path = out / name
    path.parent.mkdir(parents=True, exist_ok=True)
    need = sum(v.numel() * v.element_size() for v in tensors.values())
    with reporting_disk_full(out, name, need, after="; the finished shards are kept"), \
            atomic_path(path) as tmp:  # fmt: skip
        # One metadata key: safetensors writes several in hash order, and the files must not depend on it.
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp),
                  metadata={"sdpo": json.dumps(meta, sort_keys=True)} if meta else None)  # fmt: skip
        os.chmod(tmp, _FILE_MODE)  # safetensors creates files owner-only; a cache is shared like any dataset
        crash_point(f"precompute:{name}")


def _text_unit(family, captions: list[str], dtype, batch: int, autocast) -> dict[str, torch.Tensor]:
    parts: dict[str, list[torch.Tensor]] = {}
    for i in range(0, len(captions), batch):
        with autocast():
            enc = family.encode_prompt(captions[i : i + batch])
        for k, v in enc.items():
            parts.setdefault(k, []).append(v.to(dtype).cpu())
    return {k: torch.cat(v) for k, v in parts.items()}


def _latent_unit(family, inputs: PosteriorInputs, dtype, cfg, autocast, bar) -> dict[str, torch.Tensor]:
    loader = DataLoader(inputs, batch_size=cfg.encode_batch_size, num_workers=cfg.run.data.dataloader_num_workers)
    means, stds, ids, rows = [], [], [], []
    for pixels, caption_id, source in loader:
        b, _, flips = pixels.shape[:3]
        with autocast():
            mean, std = family.encode_posterior(pixels.flatten(0, 2).to(family.device))
        means.append(mean.view(b, 2, flips, *mean.shape[1:]).to(dtype).cpu())
        stds.append(std.view(b, 2, flips, *std.shape[1:]).to(dtype).cpu())
        ids.append(caption_id)
        rows.append(source)
        bar.update(b)
    return {"mean": torch.cat(means), "std": torch.cat(stds), "caption_id": torch.cat(ids).long(),
            "source_row": torch.cat(rows).long()}  # fmt: skip


def precompute(cfg: PrecomputeConfig) -> Path:
    """Write (or finish) the cache; returns its folder.  Every process of a launch calls this."""
    from accelerate import Accelerator

    run = cfg.run
    acc = Accelerator(mixed_precision=run.optim.mixed_precision)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if not acc.is_main_process:
        logging.getLogger().setLevel(logging.WARNING)
    out = Path(cfg.out).expanduser()
    with acc.main_process_first():  # datasets caches the load and the row checks: the main process goes first
        hf = data.clean_pairs(data.load_pairs(run.data), run.data)
    captions = list(dict.fromkeys(hf["caption"]))  # unique, in order of first appearance
    encoder_dtype = cache.precision_name(acc.mixed_precision)
    plan = _plan(cfg, len(hf), len(captions), encoder_dtype)
    state = _check_out(out, plan)
    if acc.is_main_process and state != "new":  # shards a killed precompute was writing (before anyone writes)
        remove_leftovers(out)
    acc.wait_for_everyone()
    if cfg.redo_shard:
        state = _redo(out, cfg.redo_shard, state, acc)
    if state == "finished":
        log.info("%s is already a finished cache for these flags", out)
        return out
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / cache.PLAN, plan)
        for tmp in [*out.glob(".*.tmp-*"), *out.glob("*/.*.tmp-*")]:  # temporary files of a killed run
            tmp.unlink()
    acc.wait_for_everyone()

    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(acc.mixed_precision, torch.float32)
    family = get_family(run.model.model_family).load_for_encoding(run.model, acc.device, weight_dtype)
    dtype = cache.DTYPES[plan["layout"]["dtype"]]
    with acc.autocast():
        empty = family.encode_prompt([""])
        res = run.data.resolution
        probe, _ = family.encode_posterior(torch.zeros(2, 3, res, res, device=acc.device))
    text_shapes = {k: list(v.shape[1:]) for k, v in empty.items()}
    latent_shape, axis_order = list(probe.shape[1:]), cache.axis_order(probe)  # the layout the VAE returns
    flips = plan["layout"]["flips"]

    # Units of work (one file each), dealt round-robin: (file, items, kind, shard number)
    text_shards, latent_shards = _chunks(len(captions), cfg.text_shard_size), _chunks(len(hf), cfg.shard_size)
    units = [(cache.EMPTY, 1, "empty", 0)]
    units += [(cache.text_file(k), len(r), "text", k) for k, r in enumerate(text_shards)]
    units += [(cache.latent_file(k), len(r), "latents", k) for k, r in enumerate(latent_shards)]
    mine = units[acc.process_index :: acc.num_processes]
    if acc.is_main_process:
        size = cache.estimate_bytes(len(hf), len(captions), latent_shape,
                                    sum(torch.Size(s).numel() for s in text_shapes.values()), flips,
                                    dtype.itemsize)  # fmt: skip
        done = sum((out / u[0]).is_file() for u in units)
        free = shutil.disk_usage(out).free
        log.info("cache %s: %d pairs, %d unique captions, %d flip variant(s), %s: about %s of latents (%s per pair) "
                 "+ %s of text; %d of %d shards already done, the rest dealt over %d process(es); %s free there",
                 out, len(hf), len(captions), flips, plan["layout"]["dtype"], _gb(size["latents"]),
                 _gb(size["per_pair"]), _gb(size["text"]), done, len(units), acc.num_processes, _gb(free))  # fmt: skip
        left = [u for u in units if not (out / u[0]).is_file()]
        need = (size["latents"] + size["text"]) * sum(u[1] for u in left) // max(1, sum(u[1] for u in units))
        refusal = shortfall(out, need, f"the {len(left)} shard(s) left to write", "the estimate above")
    else:
        refusal = None
    refusal = from_main(acc, refusal)
    if refusal:
        raise UserError(refusal)

    caption_ids = {c: i for i, c in enumerate(captions)}
    bar = tqdm(total=sum(u[1] for u in mine), initial=sum(u[1] for u in mine if (out / u[0]).is_file()),
               desc="precompute", unit="item", disable=not acc.is_local_main_process)  # fmt: skip
    for name, n, kind, k in mine:
        if (out / name).is_file():
            continue
        if kind == "empty":
            _save({key: v.to(dtype).cpu() for key, v in empty.items()}, out, name, {"captions": [""]})
        elif kind == "text":
            chunk = [captions[i] for i in text_shards[k]]
            _save(_text_unit(family, chunk, dtype, cfg.encode_batch_size, acc.autocast), out, name, {"captions": chunk})
        else:
            inputs = PosteriorInputs(hf, latent_shards[k], run.data.resolution, flips, caption_ids)
            _save(_latent_unit(family, inputs, dtype, cfg, acc.autocast, bar), out, name)
            continue  # the bar moved with every batch
        bar.update(n)
    bar.close()
    acc.wait_for_everyone()
    if acc.is_main_process:
        missing = [u[0] for u in units if not (out / u[0]).is_file()]
        if missing:
            raise UserError(f"{out}: {len(missing)} shard(s) were not written (first: {missing[0]}); rerun to finish")
    # Every file's size and content hash (sdpo.checkpoint.manifest), each process hashing the files it was dealt
    # (just written: still in the page cache); training checks them when it first reads a file (sdpo.cache.store).
    mine_records = manifest.records(out, [u[0] for u in mine])
    records = {k: v for part in gathered(acc, mine_records) for k, v in part.items()}
    if acc.is_main_process:
        files = [{"path": u[0], **records[u[0]]} for u in units]
        plan["layout"].update(latent_shape=latent_shape, latent_axis_order=axis_order, text_shapes=text_shapes)
        write_json(out / cache.INDEX, {**plan, "files": files})
        log.info("cache %s finished: %s in %d files", out, _gb(sum(f["bytes"] for f in files)), len(files))
    acc.wait_for_everyone()
    return out


def _redo(out: Path, names: tuple[str, ...], state: str, acc) -> str:
    """``--redo_shard``: remove the named files (and ``index.json``, so that no training reads the cache
    meanwhile); the run then writes what is missing, as after a crash, and a new index."""
    if state == "new":
        raise UserError(f"--redo_shard: --out {out} holds no cache yet; drop --redo_shard to build it")
    known = {f["path"] for f in cache.read_json(out / cache.INDEX)["files"]} if state == "finished" else None
    for name in names:
        if (known is not None and name not in known) or Path(name).is_absolute() or ".." in Path(name).parts:
            raise UserError(f"--redo_shard {name}: not a file of the cache in {out} (give its path there, as in "
                            f"{cache.INDEX}: e.g. {cache.latent_file(0)})")  # fmt: skip
    acc.wait_for_everyone()
    if acc.is_main_process:
        for name in names:
            (out / name).unlink(missing_ok=True)
        (out / cache.INDEX).unlink(missing_ok=True)
        log.info("redoing %s in %s", ", ".join(names), out)
    acc.wait_for_everyone()
    return "resume"


def _chunks(n: int, size: int) -> list[range]:
    return [range(i, min(n, i + size)) for i in range(0, n, size)]


def _gb(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def build(cfg: PrecomputeConfig) -> Path:
    """The latent/text cache, then (``--reference_losses``) the reference losses, which read the finished cache."""
    out = precompute(cfg)
    if cfg.reference is not None:
        reference_precompute.precompute_reference(cfg.run, out, cfg.reference)
    return out


@cli_main
def main(argv: list[str] | None = None) -> Path:
    return build(parse_args(argv))


if __name__ == "__main__":
    main()
