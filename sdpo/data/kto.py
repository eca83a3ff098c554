"""Single labelled images for Diffusion-KTO (``--train_method kto``): from Pick-a-Pic pairs, or from
a per-image dataset with a boolean label column.

What the public Diffusion-KTO code (``jacklishufan/diffusion-kto``, ``train_kto_sd_v1.5.py``) does:
it trains on a per-image table preprocessed from Pick-a-Pic (``train_processed_v3.csv``: one row per
image with its caption and a ``split`` of ``exclusive_win``, ``exclusive_lose`` or ``intersections``,
by their names images that only won, only lost, or both).  The example run (``--policy
gt_label_wi_l``) labels ``exclusive_win`` and ``intersections`` desirable, ``exclusive_lose``
undesirable (the paper counts 237,530 desirable and 690,538 undesirable images), and
draws every training sample with replacement so that a sample is desirable with probability
``--positive_ratio`` (0.8 in the example; the flag's default is 0.5), uniformly within each class
(a ``WeightedRandomSampler`` with class weights ``ratio / count``), ``len(dataset)`` draws an epoch.

Here, two sources:

* **Pick-a-Pic pairs** (the default; same loading, data checks and tie removal as the pair
  objectives).  Sample ``index`` of epoch ``e`` is pair ``index``; one draw from the sample's own
  stream (``sdpo.data.seeding``) picks its winner (label desirable) with probability ``positive_ratio``,
  else its loser (undesirable).  The expected desirable fraction is the code's; what differs from
  its preprocessed table: an image is labelled by the pair it is drawn from (a loser that wins
  another pair is undesirable here, desirable in the code's ``wi_l`` table), images are weighted by
  how many pairs hold them, and every pair is visited once an epoch (the code draws with
  replacement).  To train on the code's own table, use the per-image source below.
* **Per-image data** (``--kto_label_column NAME``): rows with an image (``--kto_image_column``,
  default ``image``: encoded bytes, or a ``datasets`` Image), ``caption`` and a boolean label
  (true: desirable).  Sample ``index`` of epoch ``e`` draws, from its own stream, the class
  (desirable with probability ``positive_ratio``) and then a row uniformly within that class: the
  code's weighted sampling with replacement, made a pure function of ``(seed, epoch, index)`` so
  resuming stays bit-identical.  A class with no rows is never drawn (the other one always is).

Crop, flip and empty-prompt dropout are those of the pairs (``sdpo.data.pairs``), on one image; the code's
defaults agree (centre crop, a random horizontal flip, 20% of captions blanked).  A batch
holds ``pixel_values`` (B, 3, H, W), ``captions``, ``labels`` (bool, B), ``sample_seeds``, ``indices``.
"""

from __future__ import annotations

import logging

import torch
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from sdpo.data import pairs as data
from sdpo.data.checks import BadRowReport, image_problem
from sdpo.data.seeding import python_rng, sample_seed
from sdpo.errors import UserError

log = logging.getLogger(__name__)

_PICK = 4  # the sample's stream that picks winner / loser or class / row (sdpo.data.pairs uses 1-3)


def wanted(cfg) -> bool:
    """Does this run train on single labelled images (the objective says so: ``DataConfig.single_images``)?"""
    return cfg.single_images


# ----------------------------------------------------------------------------- loading


def load(cfg):
    """The training rows: checked Pick-a-Pic pairs, or checked labelled images with ``--kto_label_column``."""
    if not cfg.kto_label_column:
        return data.clean_pairs(data.load_pairs(cfg), cfg)
    from datasets import Image as ImageFeature

    image_col, label_col = cfg.kto_image_column, cfg.kto_label_column
    ds = data.load_pairs(
        cfg,
        required=(image_col, "caption", label_col),
        what="a labelled image for --train_method kto (--kto_image_column, caption, --kto_label_column)",
    )
    if isinstance(ds.features.get(image_col), ImageFeature):  # keep the bytes: decoded per sample only
        ds = ds.cast_column(image_col, ImageFeature(decode=False))
    source = cfg.train_data_dir or cfg.dataset_name
    _check_labels(ds[label_col], label_col, source)
    if cfg.data_check:
        ds = _drop_bad_images(ds, image_col, cfg, source)
    if cfg.max_train_samples is not None and cfg.max_train_samples < len(ds):
        ds = ds.shuffle(seed=cfg.seed).select(range(cfg.max_train_samples))
    n_pos = sum(bool(v) for v in ds[label_col])
    log.info("%d labelled images: %d desirable, %d undesirable", len(ds), n_pos, len(ds) - n_pos)
    return ds


def _check_labels(values: list, column: str, source: str) -> None:
    for i, v in enumerate(values):
        if not (isinstance(v, bool) or (isinstance(v, (int, float)) and v in (0, 1))):
            raise UserError(
                f"{source}: row {i} of label column {column!r} is {v!r}; a KTO label is true (desirable) or "
                "false (undesirable)"
            )


def image_bytes(value) -> bytes | None:
    """Encoded image bytes from a bytes column or a ``datasets`` Image (``{"bytes", "path"}``) column."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return value["bytes"]
        if value.get("path"):
            try:
                with open(value["path"], "rb") as f:
                    return f.read()
            except OSError:
                return None  # reported as a missing image by the data check
        return None
    return value


def _drop_bad_images(ds, image_col: str, cfg, source: str):
    """Rows whose image bytes are unusable or whose caption is missing, out (as ``data_checks`` does for pairs)."""

    def problems(batch: dict) -> dict:
        return {"_problem": [("missing caption" if not isinstance(cap, str) else image_problem(image_bytes(img))) or ""
                             for img, cap in zip(batch[image_col], batch["caption"])]}  # fmt: skip

    flags = ds.map(problems, batched=True, remove_columns=ds.column_names, num_proc=cfg.dataloader_num_workers or None,
                   desc="checking images")["_problem"]  # fmt: skip
    report, keep = BadRowReport(), []
    for i, problem in enumerate(flags):
        if problem:
            report.add(problem, i)
        else:
            keep.append(i)
    report.check_fraction(len(ds), cfg.max_bad_fraction, source)
    return ds.select(keep) if report.total else ds


# ----------------------------------------------------------------------------- one sample


class KtoTransform(data.PairTransform):
    """A Pick-a-Pic pair row -> one labelled image (``__call__``); any image -> a sample (``sample``)."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.positive_ratio = cfg.positive_ratio

    def sample(self, image, caption: str, desirable: bool, sample: int, index: int) -> dict:
        x = data._resize_crop(image, self.resolution, self.random_crop, python_rng(sample, data._CROP))
        if self.hflip and python_rng(sample, data._FLIP).random() < 0.5:
            x = TF.horizontal_flip(x)
        caption = caption if python_rng(sample, data._CAPTION).random() >= self.p_empty else ""
        pixels = x.float() / 127.5 - 1.0
        return {"pixel_values": pixels, "caption": caption, "label": bool(desirable), "sample_seed": sample,
                "index": index}  # fmt: skip

    def __call__(self, row: dict, epoch: int, index: int) -> dict:
        sample = sample_seed(self.seed, epoch, index)
        desirable = python_rng(sample, _PICK).random() < self.positive_ratio
        first_won = row["label_0"] == 1
        jpeg = row["jpg_0"] if first_won == desirable else row["jpg_1"]  # the winner if desirable, else the loser
        return self.sample(data.decode(jpeg), row["caption"], desirable, sample, index)


class LabelledImages(Dataset):
    """Per-image rows addressed by ``(epoch, index)``; the row is drawn from the sample's stream."""

    def __init__(self, hf_dataset, transform: KtoTransform, image_column: str, label_column: str):
        self.hf, self.transform, self.image_column = hf_dataset, transform, image_column
        labels = [bool(v) for v in hf_dataset[label_column]]
        self.labels = labels
        self.pools = {True: [i for i, v in enumerate(labels) if v], False: [i for i, v in enumerate(labels) if not v]}

    def __len__(self) -> int:
        return len(self.hf)

    def draw(self, epoch: int, index: int) -> tuple[list[int], int]:
        """(class pool, position in it) of the row sample ``index`` of ``epoch`` trains on: the class
        is desirable with probability ``positive_ratio``, the row uniform within it."""
        rng = python_rng(sample_seed(self.transform.seed, epoch, index), _PICK)
        desirable = rng.random() < self.transform.positive_ratio
        pool = self.pools[desirable] or self.pools[not desirable]
        return pool, rng.randrange(len(pool))

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, index = key
        sample = sample_seed(self.transform.seed, epoch, index)
        pool, pos = self.draw(epoch, index)
        for k in range(data._DECODE_TRIES):  # undecodable bytes: the next row of the same class stands in
            r = pool[(pos + k) % len(pool)]
            row = self.hf[r]
            try:
                image = data.decode(image_bytes(row[self.image_column]))
            except (OSError, ValueError, SyntaxError, TypeError) as e:
                log.warning("row %d: image failed to decode (%s); using the next row of its class", r, e)
                continue
            return self.transform.sample(image, row["caption"], self.labels[r], sample, index)
        raise UserError(f"{data._DECODE_TRIES} rows from row {pool[pos]} on failed to decode; are these images?")


def collate(samples: list[dict]) -> dict:
    """Stack to (B, 3, H, W), one image per sample, with its label."""
    return {
        "pixel_values": torch.stack([s["pixel_values"] for s in samples]),
        "captions": [s["caption"] for s in samples],
        "labels": torch.tensor([s["label"] for s in samples], dtype=torch.bool),
        "sample_seeds": torch.tensor([s["sample_seed"] for s in samples], dtype=torch.int64),
        "indices": torch.tensor([s["index"] for s in samples], dtype=torch.int64),
    }


def loader_parts(cfg):
    """``(transform, map-style dataset class, collate)`` for ``sdpo.training.loop.make_loader``."""
    transform = KtoTransform(cfg)
    if not cfg.kto_label_column:
        return transform, data.PairDataset, collate
    return transform, lambda hf, t: LabelledImages(hf, t, cfg.kto_image_column, cfg.kto_label_column), collate
