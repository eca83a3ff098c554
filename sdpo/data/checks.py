"""Finding broken Pick-a-Pic rows before they reach a DataLoader worker.

Hundreds of gigabytes of scraped pairs contain rows with undecodable JPEG bytes, missing
captions, labels outside {0, 0.5, 1} and odd images.  A row is checked cheaply (labels and
captions as columns; images by reading their header, not decoding them) and dropped with a
reason; the counts per reason are logged, with the first few row indices, and a dataset that is
mostly broken stops the run (``--max_bad_fraction``) rather than training on what is left.
Bytes that pass the header check but fail to decode later are handled in ``sdpo.data.pairs``.
"""

from __future__ import annotations

import io
import logging
import math
from collections import Counter

from PIL import Image

from sdpo.errors import UserError

log = logging.getLogger(__name__)

VALID_LABELS = (0.0, 0.5, 1.0)
MIN_SIDE = 32  # smaller images are thumbnails or placeholders, not training data
MAX_ASPECT = 4.0  # resizing the short side of a 1:10 strip to 512 px would make a 5120 px strip
_MODES = {"RGB", "RGBA", "L", "LA", "P", "CMYK", "YCbCr", "I", "I;16", "F", "1"}
EXAMPLES_SHOWN = 5


def image_problem(data) -> str | None:
    """Why these image bytes cannot be used, or None.  Reads the header only."""
    if not isinstance(data, (bytes, bytearray)) or not data:
        return "missing image"
    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
            mode = img.mode
    except Exception:
        return "undecodable image"
    if mode not in _MODES:
        return "unusual image mode"
    if min(w, h) < MIN_SIDE or max(w, h) / max(min(w, h), 1) > MAX_ASPECT:
        return "unusual image size"
    return None


def row_problem(row: dict) -> str | None:
    """The first reason this row is unusable, or None.  Ties are valid rows (dropped elsewhere)."""
    label = row.get("label_0")
    if not isinstance(label, (int, float)) or isinstance(label, bool) or math.isnan(label):
        return "bad label"
    if float(label) not in VALID_LABELS:
        return "bad label"
    caption = row.get("caption")
    if not isinstance(caption, str):
        return "missing caption"
    return image_problem(row.get("jpg_0")) or image_problem(row.get("jpg_1"))


class BadRowReport:
    """Counts of dropped rows per reason, with the first few indices of each."""

    def __init__(self):
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[int]] = {}

    def add(self, reason: str, index: int) -> None:
        self.counts[reason] += 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < EXAMPLES_SHOWN:
            shown.append(index)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        return "; ".join(f"{r}: {n} (rows {', '.join(map(str, self.examples[r]))}{', ...' if n > EXAMPLES_SHOWN else ''})"
                         for r, n in self.counts.most_common())  # fmt: skip

    def check_fraction(self, n_rows: int, max_fraction: float, source: str) -> None:
        """Log the counts; stop if more than ``max_fraction`` of ``n_rows`` were bad."""
        if not self.total:
            return
        log.warning("skipped %d/%d broken rows of %s: %s", self.total, n_rows, source, self.summary())
        if self.total > max_fraction * n_rows:
            raise UserError(
                f"{source}: {self.total} of {n_rows} rows are broken ({self.summary()}), more than "
                f"--max_bad_fraction {max_fraction}; check that this is a Pick-a-Pic-format dataset, or raise the cap"
            )


def filter_bad_rows(ds, max_fraction: float, source: str, num_proc: int | None = None, check=row_problem):
    """Drop unusable rows of a map-style ``datasets.Dataset``; log and enforce the cap.  ``check`` is the
    per-row test (``row_problem`` for Pick-a-Pic images; ``sdpo.data.video_pairs.row_checker`` for videos)."""
    flags = ds.map(
        lambda batch: {"_problem": [check(dict(zip(batch, vals))) or "" for vals in zip(*batch.values())]},
        batched=True,
        input_columns=None,
        remove_columns=ds.column_names,
        num_proc=num_proc,
        desc="checking rows",
    )["_problem"]
    report = BadRowReport()
    keep = []
    for i, problem in enumerate(flags):
        if problem:
            report.add(problem, i)
        else:
            keep.append(i)
    report.check_fraction(len(ds), max_fraction, source)
    return ds.select(keep) if report.total else ds, report
