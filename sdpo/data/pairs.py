"""Pick-a-Pic preference pairs: loading, tie removal, winner-first transforms, sharded batching.

Every function here reads the run's data section (``sdpo.config.sections.DataConfig``).

A row has ``jpg_0``/``jpg_1`` (JPEG bytes), ``label_0`` (1: ``jpg_0`` preferred, 0: ``jpg_1``
preferred, 0.5: tie) and ``caption``.  Ties carry no preference and are dropped before training.
A sample comes out as ``pixel_values`` of shape (2, 3, H, W), the preferred image first.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset, IterableDataset
from torchvision.transforms.v2 import functional as TF

from sdpo.data.checks import BadRowReport, filter_bad_rows, row_problem
from sdpo.data.seeding import python_rng, sample_seed
from sdpo.errors import UserError

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("jpg_0", "jpg_1", "label_0", "caption")
_CROP, _FLIP, _CAPTION = 1, 2, 3  # independent random streams per sample
_DECODE_TRIES = 8  # bytes that pass the header check but fail to decode: try the next rows


# ----------------------------------------------------------------------------- loading


def _data_files(folder: Path) -> list[str]:
    files = sorted(str(p) for p in folder.rglob("*.parquet"))
    if not files:
        raise UserError(
            f"{folder}: no .parquet files found; expected Pick-a-Pic shards (jpg_0, jpg_1, label_0, caption)"
        )
    return files


def load_pairs(cfg, required: tuple[str, ...] = REQUIRED_COLUMNS, what: str = "a Pick-a-Pic pair"):
    """The raw split as a ``datasets`` Dataset (or IterableDataset with ``--streaming``), columns checked
    (``required``, named ``what`` in the error: ``sdpo.data.kto`` loads per-image rows through here)."""
    from datasets import load_dataset

    if cfg.video:
        from sdpo.data.video_pairs import load_video_pairs

        return load_video_pairs(cfg)

    kw = dict(split=cfg.split, cache_dir=cfg.cache_dir, streaming=cfg.streaming)
    source = cfg.train_data_dir or cfg.dataset_name
    _refuse_empty_parquet(cfg)
    try:
        if cfg.train_data_dir:
            ds = load_dataset("parquet", data_files={cfg.split: _data_files(Path(cfg.train_data_dir))}, **kw)
        elif Path(source).is_file():
            ds = load_dataset("parquet", data_files={cfg.split: [source]}, **kw)
        else:
            ds = load_dataset(source, cfg.dataset_config_name, **kw)
    except UserError:
        raise
    except Exception as e:  # hub unreachable, unknown split, unreadable shard...
        raise UserError(_load_failure(cfg, e)) from None
    if hasattr(ds, "__len__") and len(ds) == 0:
        raise UserError(f"{_flag(cfg)} {source}: split {cfg.split!r} has 0 rows; point it at the pairs to train on")
    columns = ds.column_names if ds.column_names is not None else list(next(iter(ds)).keys())
    missing = [c for c in required if c not in columns]
    if missing:
        raise UserError(
            f"dataset {source!r} lacks column(s) {missing}; {what} needs {list(required)} "
            f"(found {sorted(columns)[:10]})"
        )
    return ds


def _flag(cfg) -> str:
    return "--train_data_dir" if cfg.train_data_dir else "--dataset_name"


def _refuse_empty_parquet(cfg) -> None:
    """Local parquet files with no rows make ``datasets`` fail with "An error occurred while generating the
    dataset" (the cause only in an ERROR log line above it): count the rows from the files' footers first."""
    given = cfg.train_data_dir or cfg.dataset_name
    source = Path(given).expanduser()
    if not source.exists():
        return
    files = [source] if source.is_file() else sorted(source.rglob("*.parquet"))
    if not files or any(f.suffix != ".parquet" for f in files):
        return
    import pyarrow.parquet as pq

    try:
        rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    except Exception:  # unreadable: datasets says what is wrong with it
        return
    if rows == 0:
        raise UserError(f"{_flag(cfg)} {given}: its {len(files)} parquet file(s) hold 0 rows; point it at the pairs "
                        "to train on")  # fmt: skip


def _load_failure(cfg, e: BaseException) -> str:
    """One line for a ``load_dataset`` failure: a name that is neither a local path nor a hub dataset says so (a
    mistyped relative path used to read as an unreachable hub); otherwise the innermost cause, which is where
    ``datasets`` keeps it."""
    import os

    source = cfg.train_data_dir or cfg.dataset_name
    text = " ".join(f"{type(x).__name__} {x}" for x in _chain(e))
    hub_miss = any(t in text for t in ("OfflineModeIsEnabled", "Couldn't reach", "DatasetNotFound", "doesn't exist"))
    if hub_miss and not Path(source).expanduser().exists():
        offline = any(
            os.environ.get(v, "") not in ("", "0", "false") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
        )
        hub = "not in the local datasets cache (offline mode)" if offline else "not found on the hub"
        return (f"{_flag(cfg)} {source}: no such folder or file (relative to {Path.cwd()}), and as a hub dataset id "
                f"{hub}; check the path")  # fmt: skip
    root = _chain(e)[-1]
    first = (str(root).strip().splitlines() or [""])[0][:300]
    return f"could not load dataset {source!r} split {cfg.split!r}: {type(root).__name__}: {first}"


def _chain(e: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    while e is not None and e not in out:
        out.append(e)
        e = e.__cause__ or e.__context__
    return out


def clean_pairs(ds, cfg):
    """Broken rows out (``sdpo.data.checks``), then ties out, then ``--max_train_samples``."""
    source = cfg.train_data_dir or cfg.dataset_name
    if cfg.data_check and hasattr(ds, "__len__"):
        check = row_problem
        if cfg.video:
            from sdpo.data.video_pairs import row_checker

            check = row_checker(cfg)
        ds, _ = filter_bad_rows(ds, cfg.max_bad_fraction, source, num_proc=cfg.dataloader_num_workers or None,
                                check=check)  # fmt: skip
    return drop_ties(ds, cfg.max_train_samples, cfg.seed)


def drop_ties(ds, max_samples: int | None = None, seed: int = 0):
    """Remove ``label_0 == 0.5`` rows (logged with their count); then keep ``max_samples`` shuffled pairs."""
    is_pref = lambda labels: [lab in (0, 1) for lab in labels]  # noqa: E731
    if hasattr(ds, "__len__"):
        before = len(ds)
        ds = ds.filter(is_pref, input_columns="label_0", batched=True, desc="dropping ties")
        log.info("dropped %d/%d tied pairs (label_0 == 0.5)", before - len(ds), before)
        if len(ds) == 0:
            raise UserError("no preference pairs left after dropping ties (every label_0 is 0.5)")
        if max_samples is not None and max_samples < len(ds):
            ds = ds.shuffle(seed=seed).select(range(max_samples))
    else:
        ds = ds.filter(is_pref, input_columns="label_0", batched=True)
        if max_samples is not None:
            ds = ds.take(max_samples)
    return ds


# ----------------------------------------------------------------------------- one sample


def decode(jpeg: bytes) -> Image.Image:
    return Image.open(io.BytesIO(jpeg)).convert("RGB")


def _resize_crop(img: Image.Image, resolution: int, random_crop: bool, rng) -> torch.Tensor:
    x = TF.to_image(img)
    x = TF.resize(x, [resolution], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    h, w = x.shape[-2:]
    if random_crop:
        top, left = rng.randint(0, h - resolution), rng.randint(0, w - resolution)
    else:
        top, left = int(round((h - resolution) / 2.0)), int(round((w - resolution) / 2.0))
    return TF.crop(x, top, left, resolution, resolution)


def pair_pixels(
    winner: Image.Image,
    loser: Image.Image,
    resolution: int,
    *,
    random_crop: bool,
    hflip: bool,
    joint: bool,
    sample: int,
) -> torch.Tensor:
    """(2, 3, R, R) in [-1, 1], winner first.

    The reference SD1.5 script crops and flips the two images independently; its SDXL script
    applies one crop and one flip to both (``joint=True``).  Draws come from the sample's stream.
    """
    crop_rng = python_rng(sample, _CROP)
    out = []
    for img, flip in zip((winner, loser), flip_draws(sample, hflip, joint)):
        if joint and out:
            crop_rng = python_rng(sample, _CROP)  # replay the winner's crop
        x = _resize_crop(img, resolution, random_crop, crop_rng)
        out.append(TF.horizontal_flip(x) if flip else x)
    pixels = torch.stack(out).float() / 127.5 - 1.0
    return pixels


def flip_draws(sample: int, hflip: bool, joint: bool) -> tuple[bool, bool]:
    """Whether the winner and the loser are flipped: one draw each from the sample's flip stream, or
    the winner's draw for both (``joint``).  Precomputed latents (``sdpo.cache.store``) pick their variant
    with this same function, so cached and uncached training flip alike."""
    if not hflip:
        return False, False
    rng = python_rng(sample, _FLIP)
    winner = rng.random() < 0.5
    return winner, winner if joint else rng.random() < 0.5


def keeps_caption(sample: int, proportion_empty: float) -> bool:
    """The sample's caption-dropout draw (False: train on the empty prompt); shared with ``sdpo.cache.store``."""
    return python_rng(sample, _CAPTION).random() >= proportion_empty


class PairTransform:
    """Row -> training sample; also the single place where ``label_0 == 0`` pairs are flipped."""

    def __init__(self, cfg):
        self.video = None  # video families: frames instead of images (sdpo.data.video_pairs), the rest is shared
        if cfg.video:
            from sdpo.data.video_pairs import VideoPairTransform

            self.video = VideoPairTransform(cfg)
        self.resolution = cfg.resolution
        self.random_crop = cfg.random_crop
        self.hflip = not cfg.no_hflip
        self.joint = cfg.joint_augment
        self.p_empty = cfg.proportion_empty_prompts
        self.seed = cfg.seed

    def __call__(self, row: dict, epoch: int, index: int) -> dict:
        if self.video is not None:
            return self.video(row, epoch, index)
        sample = sample_seed(self.seed, epoch, index)
        first, second = decode(row["jpg_0"]), decode(row["jpg_1"])
        winner, loser = (first, second) if row["label_0"] == 1 else (second, first)
        caption = row["caption"] if keeps_caption(sample, self.p_empty) else ""
        pixels = pair_pixels(
            winner,
            loser,
            self.resolution,
            random_crop=self.random_crop,
            hflip=self.hflip,
            joint=self.joint,
            sample=sample,
        )
        return {"pixel_values": pixels, "caption": caption, "sample_seed": sample, "index": index}


class PairDataset(Dataset):
    """Map-style pairs addressed by ``(epoch, index)`` keys, so per-sample randomness is a pure function."""

    def __init__(self, hf_dataset, transform: PairTransform):
        self.hf = hf_dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.hf)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        """The sample at ``index``; if its bytes fail to decode, the next decodable row stands in,
        drawn with ``index``'s random stream so the run stays deterministic."""
        epoch, index = key
        for k in range(_DECODE_TRIES):
            row_index = (index + k) % len(self.hf)
            try:
                return self.transform(self.hf[row_index], epoch, index)
            except (OSError, ValueError, SyntaxError) as e:
                log.warning("row %d: image failed to decode (%s); using row %d instead", row_index, e, row_index + 1)
        raise UserError(f"rows {index}..{index + _DECODE_TRIES - 1} all failed to decode; is this Pick-a-Pic data?")


class StreamingPairs(IterableDataset):
    """Streaming pairs for one process: shuffled with a buffer, split by rank, resumable by skipping rows."""

    def __init__(self, hf_iterable, transform: PairTransform, rank: int, world: int, buffer_size: int, seed: int,
                 max_bad_fraction: float = 1.0):  # fmt: skip
        from datasets.distributed import split_dataset_by_node

        self.stream = split_dataset_by_node(hf_iterable.shuffle(seed=seed, buffer_size=buffer_size), rank, world)
        self.transform = transform
        self.max_bad_fraction = max_bad_fraction
        self.rank, self.world = rank, world
        self.epoch, self.start = 0, 0

    def set_position(self, epoch: int, start_row: int) -> None:
        self.epoch, self.start = epoch, start_row

    def __iter__(self) -> Iterator[dict]:
        self.stream.set_epoch(self.epoch)
        rows = self.stream.skip(self.start) if self.start else self.stream  # skipped rows are never decoded
        report = BadRowReport()
        for i, row in enumerate(rows, start=self.start):
            problem = row_problem(row)
            if problem is None and row["label_0"] != 0.5:
                try:
                    yield self.transform(row, self.epoch, i * self.world + self.rank)
                    continue
                except (OSError, ValueError, SyntaxError):
                    problem = "undecodable image"
            if problem:
                report.add(problem, i)
                seen = i - self.start + 1
                if report.total in (1, 10, 100, 1000) or (seen >= 200 and report.total > self.max_bad_fraction * seen):
                    report.check_fraction(seen, self.max_bad_fraction if seen >= 200 else 1.0, "stream")


# ----------------------------------------------------------------------------- batching


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The sample indices of ``epoch`` by position: the permutation every process count and batch size shares
    (``ShardedPairSampler``; ``sdpo.cache.reference_precompute`` walks the same positions)."""
    g = torch.Generator().manual_seed(seed + epoch)
    return torch.randperm(n, generator=g).tolist()


class ShardedPairSampler:
    """Batches of ``(epoch, index)`` keys for one process.

    Epoch ``e`` is a permutation drawn from ``seed + e``, the same for any process count.  Starting at
    sample ``s`` of it, global micro-batch ``k`` is positions ``[s + k*B*W, s + (k+1)*B*W)`` and process
    ``r`` takes slice ``r`` of it (the layout of accelerate's sharded batch sampler).  Positions count
    samples, not batches, so a run resumed on another process count or batch size continues at the
    same sample (``sdpo.checkpoint.elastic``).  The incomplete tail is dropped so every process steps equally.
    ``set_epoch`` skips by index arithmetic, loading nothing.

    ``rows``: the dataset rows training may use (``--heldout_pairs split:N`` holds the others back,
    ``sdpo.data.holdout``), ``num_samples`` of them.  The permutation is over their positions and yields the
    rows themselves, so a pair keeps its index, hence its random streams, and the rank trace names dataset
    rows; without ``rows`` (all rows) the order is exactly the one drawn before ``rows`` existed.
    """

    def __init__(self, num_samples: int, batch_size: int, rank: int, world: int, seed: int,
                 rows: Sequence[int] | None = None):  # fmt: skip
        if rows is not None and len(rows) != num_samples:
            raise ValueError(f"{len(rows)} rows for {num_samples} samples")
        self.n, self.batch_size, self.rank, self.world, self.seed = num_samples, batch_size, rank, world, seed
        self.rows = None if rows is None else torch.as_tensor(rows, dtype=torch.int64)
        self.epoch, self.start = 0, 0
        if self.batches_per_epoch == 0:
            raise UserError(
                f"{num_samples} pairs cannot fill one global batch of {batch_size} x {world} processes; "
                "lower --train_batch_size or add data"
            )

    @property
    def batches_per_epoch(self) -> int:
        return self.n // (self.batch_size * self.world)

    def set_epoch(self, epoch: int, start_batch: int = 0, start_sample: int | None = None) -> None:
        """Start ``epoch`` at sample ``start_sample`` (or at micro-batch ``start_batch`` of this layout)."""
        self.epoch = epoch
        self.start = start_sample if start_sample is not None else start_batch * self.batch_size * self.world

    def __len__(self) -> int:
        return max(0, (self.n - self.start) // (self.batch_size * self.world))

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = epoch_order(self.n, self.seed, self.epoch)
        order = order if self.rows is None else self.rows[order].tolist()
        b, w = self.batch_size, self.world
        for k in range(len(self)):
            lo = self.start + k * b * w + self.rank * b
            yield [(self.epoch, i) for i in order[lo : lo + b]]


def collate(samples: list[dict]) -> dict:
    """Stack to (2B, 3, H, W): the B winners, then the B losers (pair i is rows i and B + i)."""
    pixels = torch.stack([s["pixel_values"] for s in samples])  # (B, 2, 3, H, W)
    return {
        "pixel_values": torch.cat([pixels[:, 0], pixels[:, 1]]),
        "captions": [s["caption"] for s in samples],
        "sample_seeds": torch.tensor([s["sample_seed"] for s in samples], dtype=torch.int64),
        "indices": torch.tensor([s["index"] for s in samples], dtype=torch.int64),
    }


def num_update_steps_per_epoch(batches_per_epoch: int, accumulation: int) -> int:
    return math.ceil(batches_per_epoch / accumulation)
