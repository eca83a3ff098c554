"""Held-out preference pairs (``--heldout_pairs``): where they come from, and which rows training keeps.

Two sources:

* ``split:N``: N rows of the training data itself, held back.  The rows are drawn from ``--seed`` alone
  (a stream of their own, never the training order's), over the data as training counts it (broken rows
  and ties dropped, ``--max_train_samples`` applied), so every process, every resume and every process
  count hold back the same rows.  Training then samples only the other rows
  (``ShardedPairSampler(rows=...)``); a pair keeps its row number, so its random streams and the rank trace
  (``SDPO_RANK_TRACE_DIR``) are those of a run without held-out pairs.
* a path: a separate pair dataset, read and checked like the training data (broken rows and ties dropped).
  With ``--precomputed`` it must be a cache of the held-out pairs (``python -m sdpo.precompute`` with the run's
  flags and ``--dataset_name`` set to them): the run loads no VAE or text encoder to encode raw pairs.  Its
  identity (family, resolution, VAE, text encoders) must be the run's cache's; only its data may differ.

What a held-out sample is depends on the run's data:

* ``pairs`` (Pick-a-Pic pairs; also KTO trained on pairs, where the winner is the desirable image and the
  loser the undesirable one), ``cache`` (pairs read from a latent cache);
* ``images`` (KTO on labelled images, ``--kto_label_column``): one image and its desirable/undesirable label.

Every error here is one line, raised before any model loads.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from sdpo.errors import UserError

log = logging.getLogger("sdpo")
_STREAM = 0x48454C44  # "HELD": keeps the held-out draw apart from every other use of --seed


@dataclass
class HeldOutData:
    """The held-out rows of ``source`` (a ``datasets`` Dataset, or a latent cache's ``CacheIndex``)."""

    kind: str  # pairs | cache | images
    source: object
    rows: list[int]  # rows of ``source`` held out, in evaluation order
    train_rows: list[int] | None  # split:N: the training rows left, ascending; None: training data untouched
    description: str  # for log lines
    data: object  # the DataConfig the held-out samples are made with (training randomness off)


def eval_data(cfg, dataset: str | None = None):
    """The data section with every training-only randomness off (no flips, random crops or empty captions), and
    ``dataset`` as the data when given."""
    changes = dict(proportion_empty_prompts=0.0, no_hflip=True, random_crop=False, streaming=False)
    if dataset is not None:
        changes.update(dataset_name=str(dataset), train_data_dir=None, max_train_samples=None)
    return replace(cfg, **changes)


def split_rows(n: int, count: int, seed: int) -> tuple[list[int], list[int]]:
    """``(held-out rows, training rows)`` of ``n`` rows, both ascending: ``count`` rows drawn from ``seed``."""
    if count >= n:
        raise UserError(f"--heldout_pairs split:{count}: the training data has {n} rows (after dropping ties and "
                        f"broken rows), so nothing would be left to train on; hold back fewer than {n} or pass a "
                        "separate held-out dataset (--heldout_pairs PATH)")  # fmt: skip
    order = np.random.default_rng([seed, _STREAM]).permutation(n)
    held = np.sort(order[:count])
    keep = np.ones(n, dtype=bool)
    keep[held] = False
    return held.tolist(), np.flatnonzero(keep).tolist()


def prepare(cfg, train_data, mixed_precision: str | None) -> HeldOutData | None:
    """The run's held-out rows (``cfg``: the resolved run config; ``train_data``: the training rows as setup read
    them); None when ``--heldout_pairs`` is off."""
    h = cfg.heldout
    if not h.enabled:
        return None
    d = cfg.data
    kind = "cache" if d.precomputed else "images" if d.kto_label_column else "pairs"
    if h.split is not None:
        held, train = split_rows(len(train_data), h.split, d.seed)
        desc = f"{len(held)} of the {len(train_data)} training rows held back ({h.heldout_pairs})"
        return HeldOutData(kind, train_data, held, train, desc, eval_data(d))
    data = eval_data(d, h.heldout_pairs)
    if kind == "cache":
        source = open_heldout_cache(cfg, mixed_precision)
    else:
        source = _read(data, kind, h.heldout_pairs)
    desc = f"{len(source)} {'images' if kind == 'images' else 'pairs'} from {h.heldout_pairs}"
    return HeldOutData(kind, source, list(range(len(source))), None, desc, data)


def _read(data, kind: str, spec: str):
    """A held-out pair (or labelled image) dataset, checked like training data; its problems name the flag."""
    from sdpo.data import kto, pairs

    try:
        return kto.load(data) if kind == "images" else pairs.clean_pairs(pairs.load_pairs(data), data)
    except UserError as e:
        raise UserError(f"--heldout_pairs {spec}: {e}") from None


def open_heldout_cache(cfg, mixed_precision: str | None):
    """A cache of held-out pairs: the run's own cache's identity except for its data."""
    from sdpo.cache import store as cache

    path = cfg.heldout.heldout_pairs
    own = cfg.data.precomputed
    try:
        return cache.open_cache(cfg.with_flags(precomputed=path), mixed_precision, compare_data=False)
    except UserError as e:
        raise UserError(f"--heldout_pairs {path} (held-out cache of a --precomputed {own} run): {e}") from None


def training_rows(held: HeldOutData | None) -> list[int] | None:
    """The rows training may sample: all (None) unless ``split:N`` held some back."""
    return None if held is None else held.train_rows


def local_path(spec: str) -> str:
    """A held-out path as the stored reference names it (absolute when it is a local path)."""
    p = Path(spec).expanduser()
    return str(p.resolve()) if p.exists() else spec
