"""Precomputed VAE posteriors and text encodings: the folder ``sdpo.cache.precompute`` writes and
``train.py --precomputed`` reads instead of the dataset.

Why: the VAE encode is a quarter of an SD1.5 step's FLOPs and the same images are re-encoded every
epoch; a FLUX/SD3 run keeps a 4.7B-parameter T5 resident only to re-encode the same captions.  With
a cache neither the VAE nor any text encoder is loaded, and no JPEG is decoded.

Why the computation is unchanged: the cache holds the posterior's mean and std (not a sample) for
every augmentation variant training can draw (centre crop x {no flip, flip}) and every caption's
conditioning plus the empty prompt's.  Each step still makes all its draws from the pair's own
stream: the flips and the caption dropout with the very functions the pixel path uses
(``sdpo.data.pairs.flip_draws``, ``keeps_caption``), the VAE posterior noise, time and diffusion noise in
``sdpo.training.step.pair_draws``; then latents = normalise(mean + std * noise), the arithmetic of
``ModelFamily.encode_latents``.  An fp32 cache therefore trains like no cache (to float rounding of
the encoders' batch composition); bf16/fp16 caches round what they store (see the README).

Layout of CACHE/ (every file written under a temporary name and renamed when complete):

    plan.json                       what made it and how it is laid out; written first, a rerun must match
    text/empty.safetensors          the empty prompt's conditioning (caption dropout), one row
    text/text-00000.safetensors     conditioning of unique captions [k*T, (k+1)*T): the family's
                                    encode_prompt keys, rows batch-first
    latents/latents-00000.safetensors   pairs [k*S, (k+1)*S) in dataset order (ties and broken rows
                                    dropped): mean, std (S, 2 [winner, loser], flips, *latent),
                                    caption_id (S,), source_row (S,)
    index.json                      written last: the plan, shapes, and every file with its size and
                                    content hash (xxh3_128); a cache without it is unfinished and refused

Integrity: every file's size is checked when the cache is opened, and its content hash when this process's
batches first reach it (``--verify_cache open``, the default: the main process checks the files a batch will
read before handing the batch to the DataLoader workers, so each file is hashed once per process, while the
epoch goes on; no extra pass before training), or every file before training starts (``full``), or never
(``size``).  A file that fails is named, with the command that rewrites it (``python -m sdpo.precompute ...
--redo_shard FILE``).  A cache written before hashes existed is checked by size only.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from pathlib import Path

import torch
from torch.utils.data import Dataset

from sdpo.cache.identity import cache_identity, first_difference
from sdpo.checkpoint import manifest
from sdpo.data.pairs import PairTransform, flip_draws, keeps_caption
from sdpo.data.seeding import sample_seed
from sdpo.errors import UserError

log = logging.getLogger(__name__)

FORMAT = 1
PLAN, INDEX = "plan.json", "index.json"
EMPTY = "text/empty.safetensors"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
_OPEN_FILES = 16  # safetensors handles kept open per process (memory-mapped, read row by row)


def text_file(k: int) -> str:
    return f"text/text-{k:05d}.safetensors"


def latent_file(k: int) -> str:
    return f"latents/latents-{k:05d}.safetensors"


def estimate_bytes(pairs: int, captions: int, latent_shape, text_numel: int, flips: int, itemsize: int) -> dict:
    """Bytes of a cache: latents = pairs x 2 images x flips x (mean, std) x latent elements; text =
    (unique captions + the empty prompt) x the conditioning's elements per caption."""
    latent = 2 * flips * 2 * int(torch.Size(latent_shape).numel()) * itemsize
    return {"latents": pairs * latent, "text": (captions + 1) * text_numel * itemsize, "per_pair": latent}


def axis_order(t: torch.Tensor) -> list[int]:
    """The per-sample axes of a batch-first tensor, outermost in memory first (channels-last: [2, 3, 1])."""
    return sorted(range(1, t.dim()), key=lambda d: -t.stride(d))


def in_axis_order(t: torch.Tensor, order: list[int]) -> torch.Tensor:
    """``t``'s values, laid out densely in ``order``.  The cache gives the posterior back in the layout
    the VAE returned it in (channels-last on CPU), so the denoiser's input has the same memory layout
    with and without a cache: the layout selects the kernels, and with them the rounding."""
    perm = [0, *order]
    return t.permute(perm).contiguous().permute([perm.index(d) for d in range(t.dim())])


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


class CacheIndex:
    """A finished cache, checked against this run's flags.  ``verify``: ``--verify_cache``."""

    def __init__(self, root: Path, index: dict, verify: str = "open"):
        self.root, self.index, self.verify = root, index, verify
        self.hashes: dict[str, str] = {f["path"]: f[manifest.HASH] for f in index["files"] if manifest.HASH in f}
        self._verified: set[str] = set()
        layout = index["layout"]
        self.pairs: int = layout["pairs"]
        self.shard_size: int = layout["shard_size"]
        self.text_shard_size: int = layout["text_shard_size"]
        self.flips: int = layout["flips"]
        self.text_keys: list[str] = sorted(layout["text_shapes"])
        self.axis_order: list[int] = layout["latent_axis_order"]

    def __len__(self) -> int:
        return self.pairs

    def check_file(self, name: str) -> None:
        """Hash ``name`` once (in this process) against the index; a mismatch is one line naming the file and
        the command that rewrites it."""
        if name in self._verified or name not in self.hashes:
            return
        if manifest.file_hash(self.root / name) != self.hashes[name]:
            raise UserError(
                f"--precomputed {self.root}: {name} does not match its content hash in {INDEX} (it changed after "
                f"precompute wrote it); rewrite it with python -m sdpo.precompute <this run's flags> --out {self.root} "
                f"--redo_shard {name}"
            )
        self._verified.add(name)

    def check_batch(self, keys, caption_ids) -> None:
        """Before a batch of ``(epoch, index)`` keys is read: its latent shards, then the text shards of its
        captions (``caption_ids(index)``) and the empty prompt's."""
        if self.verify != "open":
            return
        for _, index in keys:
            self.check_file(latent_file(index // self.shard_size))
        self.check_file(EMPTY)
        for _, index in keys:
            self.check_file(text_file(caption_ids(index) // self.text_shard_size))


def precision_name(mixed_precision: str | None) -> str:
    """accelerate's ``no``/``fp16``/``bf16`` as the dtype the frozen encoders run in."""
    return {"no": "fp32", None: "fp32"}.get(mixed_precision, mixed_precision)


def open_cache(cfg, mixed_precision: str | None, compare_data: bool = True) -> CacheIndex:
    """The cache named by ``--precomputed``, refused with one line if it is unfinished, damaged, or made
    for anything this run would compute differently (``cfg``: the resolved run config).  ``mixed_precision``:
    the run's (accelerate's).  ``compare_data=False``: a cache of other pairs made for this run's models
    (held-out pairs, ``sdpo.data.holdout``)."""
    root = Path(cfg.data.precomputed).expanduser()
    if not (root / INDEX).is_file():
        hint = "rerun python -m sdpo.precompute with the same flags to finish it" if (root / PLAN).is_file() else (
            "build one with python -m sdpo.precompute ... --out " + str(root))  # fmt: skip
        raise UserError(f"--precomputed {root}: not a finished cache (no {INDEX}); {hint}")
    index = read_json(root / INDEX)
    if index.get("format") != FORMAT:
        raise UserError(f"--precomputed {root}: cache format {index.get('format')} is not {FORMAT}; rebuild it")
    current = cache_identity(cfg)
    check_identity(root, index["identity"], current if compare_data else {**current, "data": index["identity"]["data"]})
    cache = CacheIndex(root, index, cfg.data.verify_cache)
    if not cfg.data.no_hflip and cache.flips < 2:
        raise UserError(f"--precomputed {root}: made with --no_hflip (no flipped latents); add --no_hflip or rebuild")
    for f in index["files"]:
        p = root / f["path"]
        if not p.is_file() or p.stat().st_size != f["bytes"]:
            raise UserError(f"--precomputed {root}: {f['path']} is missing or has the wrong size; rerun precompute")
    if not cache.hashes:
        log.warning("--precomputed %s: its index records no content hashes (written by an older version): only the "
                    "files' sizes are checked", root)  # fmt: skip
    elif cfg.data.verify_cache == "full":
        for f in index["files"]:
            cache.check_file(f["path"])
        log.info("--verify_cache full: the %d files of %s match their hashes", len(index["files"]), root)
    layout = index["layout"]
    ours = precision_name(mixed_precision)
    if layout["encoder_dtype"] != ours:
        log.warning("the cache's encoders ran in %s, this run's frozen parts in %s: latents and text differ from "
                    "uncached training by that rounding", layout["encoder_dtype"], ours)  # fmt: skip
    log.info("precomputed latents and text from %s (%d pairs, %s): VAE and text encoders not loaded",
             root, cache.pairs, layout["dtype"])  # fmt: skip
    return cache


def check_identity(root: Path, cached: dict, current: dict) -> None:
    diff = first_difference(cached, current)
    if diff:
        key, was, now = diff
        raise UserError(
            f"{root}: the cache was made for {key} {was!r} but this run has {now!r}; rebuild it with "
            "python -m sdpo.precompute and this run's flags (or train with the flags it was made with)"
        )


class CachedPairs(Dataset):
    """The cache as training samples addressed by ``(epoch, index)``, like ``sdpo.data.pairs.PairDataset``:
    the same per-sample streams choose the flip variant of each image and the caption dropout."""

    def __init__(self, cache: CacheIndex, transform: PairTransform):
        self.cache, self.t = cache, transform
        self._files: OrderedDict[str, object] = OrderedDict()
        self._empty: dict[str, torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.cache)

    def __getstate__(self) -> dict:  # DataLoader workers open their own handles
        return {**self.__dict__, "_files": OrderedDict(), "_empty": None}

    def _open(self, name: str):
        from safetensors import safe_open

        f = self._files.pop(name, None) or safe_open(str(self.cache.root / name), framework="pt")
        self._files[name] = f
        while len(self._files) > _OPEN_FILES:
            self._files.popitem(last=False)
        return f

    def caption_id(self, index: int) -> int:
        shard, row = divmod(index, self.cache.shard_size)
        return int(self._open(latent_file(shard)).get_slice("caption_id")[row : row + 1][0])

    def text(self, caption_id: int | None) -> dict[str, torch.Tensor]:
        """One caption's conditioning (no batch axis); ``None``: the empty prompt."""
        if caption_id is None:
            if self._empty is None:
                f = self._open(EMPTY)
                self._empty = {k: f.get_slice(k)[0] for k in self.cache.text_keys}
            return self._empty
        shard, row = divmod(caption_id, self.cache.text_shard_size)
        f = self._open(text_file(shard))
        return {k: f.get_slice(k)[row] for k in self.cache.text_keys}

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, index = key
        sample = sample_seed(self.t.seed, epoch, index)
        flips = flip_draws(sample, self.t.hflip, self.t.joint)
        shard, row = divmod(index, self.cache.shard_size)
        f = self._open(latent_file(shard))
        mean, std = f.get_slice("mean"), f.get_slice("std")
        caption_id = int(f.get_slice("caption_id")[row : row + 1][0])
        return {
            "latent_mean": torch.stack([mean[row, k, int(flip)] for k, flip in enumerate(flips)]),
            "latent_std": torch.stack([std[row, k, int(flip)] for k, flip in enumerate(flips)]),
            "text": self.text(caption_id if keeps_caption(sample, self.t.p_empty) else None),
            "sample_seed": sample,
            "index": index,
            "axis_order": self.cache.axis_order,
        }


class CheckedBatches:
    """A batch sampler that has the cache check the files of each batch (``CacheIndex.check_batch``) in the
    process that draws the batches, before any DataLoader worker reads them; otherwise it is ``sampler``."""

    def __init__(self, sampler, pairs: CachedPairs):
        self.sampler, self.pairs = sampler, pairs

    def __iter__(self):
        for batch in self.sampler:
            self.pairs.cache.check_batch(batch, self.pairs.caption_id)
            yield batch

    def __len__(self) -> int:
        return len(self.sampler)


def collate(samples: list[dict]) -> dict:
    """Winners then losers, as ``sdpo.data.pairs.collate``; conditioning batch-first under ``text``."""
    mean = torch.stack([s["latent_mean"] for s in samples])  # (B, 2, *latent)
    std = torch.stack([s["latent_std"] for s in samples])
    order = samples[0]["axis_order"]
    return {
        "latent_mean": in_axis_order(torch.cat([mean[:, 0], mean[:, 1]]), order),
        "latent_std": in_axis_order(torch.cat([std[:, 0], std[:, 1]]), order),
        "text": {k: torch.stack([s["text"][k] for s in samples]) for k in samples[0]["text"]},
        "sample_seeds": torch.tensor([s["sample_seed"] for s in samples], dtype=torch.int64),
        "indices": torch.tensor([s["index"] for s in samples], dtype=torch.int64),
    }
