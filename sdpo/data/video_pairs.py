"""Video preference pairs: three index formats, row checks, and the winner-first frame transform.

Every format becomes the same rows as Pick-a-Pic's, with videos for images: ``video_0``,
``video_1`` (an absolute path to a video file or a folder of frames, or a video file's bytes),
``label_0`` (1: ``video_0`` preferred, 0: ``video_1`` preferred, 0.5: tie, dropped before training)
and ``caption``.  From there ties, broken rows, ``--max_train_samples`` and sharding work as for
images (``sdpo.data.pairs``, ``sdpo.data.checks``).

* ``parquet``: a parquet file or a folder of them with exactly those columns; relative paths are
  resolved against the folder given (the file's folder when a file is given).
* ``videodpo``: VideoDPO's ``pair.json`` (a folder holding it, or the file): items with ``video1``,
  ``video2``, ``frame_caption`` (a string, or a list whose first entry is used) and ``label``
  (0: ``video1`` preferred, 1: ``video2``; VideoDPO's own loader always takes ``video1`` as the
  winner, so a missing label means 0).  ``video1``/``video2`` are paths relative to the folder, or,
  as VideoDPO writes them, indices into the ``metadata.json`` beside it (``basic.clip_path``).
* ``videoalign``: VideoAlign's training CSV (``path_A``, ``path_B`` relative to the CSV's folder,
  ``prompt``, and ``VQ``/``MQ``/``TA`` votes ``A``/``B``/``same``); ``--videoalign_dimension``
  chooses the vote, ``same`` is a tie and any other value a bad label.

Frames: ``--num_frames`` frames from the start of each video, every ``--frame_stride``-th (the
source frame rate is not used); a video too short for that is a broken row.  Winner and loser share
the frame window, the resize (the frame is scaled to cover ``--height`` x ``--width``) and the crop
(centre, or one random draw sequence with ``--random_crop``).  Videos are never flipped: a mirrored
clip no longer moves the way its caption may say.
"""

from __future__ import annotations

import json
import logging
import math
from functools import partial
from pathlib import Path

import torch
from torchvision.transforms.v2 import functional as TF

from sdpo.data.checks import VALID_LABELS
from sdpo.data.seeding import python_rng, sample_seed
from sdpo.data.video_io import VideoError, probe, read_frames
from sdpo.errors import UserError

log = logging.getLogger(__name__)

FORMATS = ("parquet", "videodpo", "videoalign")
COLUMNS = ("video_0", "video_1", "label_0", "caption")
MIN_SIDE = 16
_CROP, _CAPTION = 1, 3  # the image transform's streams (sdpo.data.pairs), so a pair's draws mean the same


# ----------------------------------------------------------------------------- loading


def detect_format(source: Path) -> str:
    """The index format of a local file or folder, from its name or contents."""
    if source.is_file():
        by_suffix = {".json": "videodpo", ".csv": "videoalign", ".parquet": "parquet"}
        if source.suffix.lower() in by_suffix:
            return by_suffix[source.suffix.lower()]
    elif source.is_dir():
        if (source / "pair.json").is_file():
            return "videodpo"
        if any(source.rglob("*.parquet")):
            return "parquet"
        if len(list(source.glob("*.csv"))) == 1:
            return "videoalign"
    raise UserError(
        f"{source}: cannot tell the video pair format (expected a pair.json, a VideoAlign .csv or parquet files); "
        "pass --video_pairs_format"
    )


def load_video_pairs(cfg):
    """The pairs as a ``datasets.Dataset`` with :data:`COLUMNS` (paths absolute, labels as floats)."""
    from datasets import Dataset

    given = cfg.train_data_dir or cfg.dataset_name
    source = Path(given).expanduser()
    if not source.exists():
        raise UserError(f"{given}: no such file or folder; video pairs are read from a local folder or file")
    fmt = detect_format(source) if cfg.video_pairs_format == "auto" else cfg.video_pairs_format
    if fmt == "parquet":
        return _parquet_pairs(source, cfg)
    rows = _videodpo_rows(source) if fmt == "videodpo" else _videoalign_rows(source, cfg.videoalign_dimension)
    if not rows:
        raise UserError(f"{source}: no pairs in this {fmt} index")
    log.info("%d video pairs from %s (%s)", len(rows), source, fmt)
    return Dataset.from_list(rows)


def _absolute(value, root: Path):
    if isinstance(value, str) and value and not Path(value).is_absolute():
        return str((root / value).resolve())
    return value


def _parquet_pairs(source: Path, cfg):
    from datasets import load_dataset

    files = [str(source)] if source.is_file() else sorted(str(p) for p in source.rglob("*.parquet"))
    if not files:
        raise UserError(f"{source}: no .parquet files found")
    ds = load_dataset("parquet", data_files={cfg.split: files}, split=cfg.split, cache_dir=cfg.cache_dir)
    missing = [c for c in COLUMNS if c not in ds.column_names]
    if missing:
        raise UserError(f"{source}: video pairs need columns {list(COLUMNS)}; missing {missing}")
    root = source.parent if source.is_file() else source
    return ds.map(lambda r: {k: _absolute(r[k], root) for k in ("video_0", "video_1")}, desc="resolving paths")


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: cannot read it as JSON ({e})") from None


def _videodpo_rows(source: Path) -> list[dict]:
    pair_file = source / "pair.json" if source.is_dir() else source
    root = pair_file.parent
    pairs = _read_json(pair_file)
    if not isinstance(pairs, list):
        raise UserError(f"{pair_file}: expected a JSON list of pairs")
    clips = None

    def clip(ref, i: int):
        nonlocal clips
        if isinstance(ref, int) and not isinstance(ref, bool):
            if clips is None:
                meta = root / "metadata.json"
                if not meta.is_file():
                    raise UserError(f"{pair_file}: pair {i} names videos by index but {meta} does not exist")
                clips = _read_json(meta)
            if not 0 <= ref < len(clips):
                return None
            return str((root / clips[ref]["basic"]["clip_path"]).resolve())
        return _absolute(ref, root) if isinstance(ref, str) else None

    rows = []
    for i, p in enumerate(pairs):
        caption = p.get("frame_caption")
        caption = caption[0] if isinstance(caption, list) and caption else caption
        label = p.get("label", 0)
        label_0 = {0: 1.0, 1: 0.0}.get(label, math.nan) if not isinstance(label, bool) else math.nan
        rows.append({"video_0": clip(p.get("video1"), i), "video_1": clip(p.get("video2"), i), "label_0": label_0,
                     "caption": caption if isinstance(caption, str) else None})  # fmt: skip
    return rows


def _videoalign_rows(source: Path, dimension: str) -> list[dict]:
    import pandas as pd

    csv = source if source.is_file() else next(iter(source.glob("*.csv")))
    try:
        table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as e:
        raise UserError(f"{csv}: cannot read it as CSV ({e})") from None
    missing = [c for c in ("path_A", "path_B", "prompt", dimension) if c not in table.columns]
    if missing:
        raise UserError(
            f"{csv}: a VideoAlign CSV needs columns path_A, path_B, prompt and {dimension}; missing {missing}"
        )
    label = {"A": 1.0, "B": 0.0, "same": 0.5}
    return [{"video_0": _absolute(r["path_A"], csv.parent), "video_1": _absolute(r["path_B"], csv.parent),
             "label_0": label.get(r[dimension].strip(), math.nan), "caption": r["prompt"]}
            for r in table.to_dict("records")]  # fmt: skip


# ----------------------------------------------------------------------------- checks


def video_problem(video, frames_needed: int) -> str | None:
    """Why this video cannot give ``frames_needed`` frames, or None.  Reads the container header only."""
    if video is None or (isinstance(video, (str, bytes)) and not video):
        return "missing video"
    if isinstance(video, str) and not Path(video).exists():
        return "missing video file"
    try:
        frames, h, w = probe(video)
    except (VideoError, OSError):
        return "undecodable video"
    if frames and frames < frames_needed:
        return "video too short"
    if min(h, w) < MIN_SIDE:
        return "unusual video size"
    return None


def video_row_problem(row: dict, frames_needed: int) -> str | None:
    """The first reason this row is unusable, or None.  Ties are valid rows (dropped elsewhere)."""
    label = row.get("label_0")
    if not isinstance(label, (int, float)) or isinstance(label, bool) or math.isnan(label):
        return "bad label"
    if float(label) not in VALID_LABELS:
        return "bad label"
    if not isinstance(row.get("caption"), str):
        return "missing caption"
    return video_problem(row.get("video_0"), frames_needed) or video_problem(row.get("video_1"), frames_needed)


def frame_indices(num_frames: int, stride: int) -> list[int]:
    return list(range(0, num_frames * stride, stride))


def row_checker(cfg):
    """The per-row check for ``sdpo.data.checks.filter_bad_rows`` (picklable for worker processes)."""
    return partial(video_row_problem, frames_needed=frame_indices(cfg.num_frames, cfg.frame_stride)[-1] + 1)


# ----------------------------------------------------------------------------- one sample


def fit_frames(frames: torch.Tensor, height: int, width: int, random_crop: bool, rng) -> torch.Tensor:
    """``uint8 (F, 3, h, w)`` -> ``(F, 3, height, width)``: scaled to cover the target, then cropped."""
    h, w = frames.shape[-2:]
    scale = max(height / h, width / w)
    size = [max(height, round(h * scale)), max(width, round(w * scale))]
    x = TF.resize(frames, size, interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    if random_crop:
        top, left = rng.randint(0, size[0] - height), rng.randint(0, size[1] - width)
    else:
        top, left = int(round((size[0] - height) / 2.0)), int(round((size[1] - width) / 2.0))
    return TF.crop(x, top, left, height, width)


class VideoPairTransform:
    """Row -> training sample ``pixel_values (2, F, 3, H, W)`` in [-1, 1], the preferred video first."""

    def __init__(self, cfg):
        self.height, self.width = cfg.height, cfg.width
        self.indices = frame_indices(cfg.num_frames, cfg.frame_stride)
        self.random_crop = cfg.random_crop
        self.p_empty = cfg.proportion_empty_prompts
        self.seed = cfg.seed

    def __call__(self, row: dict, epoch: int, index: int) -> dict:
        sample = sample_seed(self.seed, epoch, index)
        first, second = (read_frames(row[k], self.indices) for k in ("video_0", "video_1"))
        winner, loser = (first, second) if row["label_0"] == 1 else (second, first)
        caption = row["caption"] if python_rng(sample, _CAPTION).random() >= self.p_empty else ""
        out = []
        for frames in (winner, loser):  # one draw sequence, replayed: the same crop for both
            x = torch.from_numpy(frames).permute(0, 3, 1, 2)
            out.append(fit_frames(x, self.height, self.width, self.random_crop, python_rng(sample, _CROP)))
        pixels = torch.stack(out).float() / 127.5 - 1.0
        return {"pixel_values": pixels, "caption": caption, "sample_seed": sample, "index": index}
