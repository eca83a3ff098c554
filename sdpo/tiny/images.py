"""Tiny Pick-a-Pic-format preference data: captioned pictures of coloured shapes, written as parquet."""

from __future__ import annotations

import io
import random
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40)}
SHAPES = ("circle", "square")


def draw_shape(shape: str, colour: tuple[int, int, int], size: int, jitter: tuple[int, int] = (0, 0)) -> Image.Image:
    """A plain picture: one coloured shape on a light background."""
    img = Image.new("RGB", (size, size), (235, 235, 235))
    d = ImageDraw.Draw(img)
    q = size // 4
    box = (q + jitter[0], q + jitter[1], 3 * q + jitter[0], 3 * q + jitter[1])
    (d.ellipse if shape == "circle" else d.rectangle)(box, fill=colour)
    return img


def jpeg_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def tiny_pair_rows(n: int, size: int = 64, seed: int = 0, tie_every: int = 8) -> list[dict]:
    """``n`` Pick-a-Pic-format rows: the caption names a colour and shape; the image that matches it
    wins.  Labels alternate which column holds the winner, and every ``tie_every``-th row is a tie."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        shape = rng.choice(SHAPES)
        good, bad = rng.sample(sorted(COLOURS), 2)
        jit = (rng.randint(-3, 3), rng.randint(-3, 3))
        win = jpeg_bytes(draw_shape(shape, COLOURS[good], size, jit))
        lose = jpeg_bytes(draw_shape(shape, COLOURS[bad], size, jit))
        label = 0.5 if tie_every and i % tie_every == tie_every - 1 else float(rng.random() < 0.5)
        jpg_0, jpg_1 = (win, lose) if label != 0.0 else (lose, win)
        rows.append(
            {
                "caption": f"a {good} {shape}",
                "jpg_0": jpg_0,
                "jpg_1": jpg_1,
                "label_0": label,
                "label_1": 1.0 - label,
                "model_0": "tiny",
                "model_1": "tiny",
                "best_image_uid": f"{i}-{0 if label == 1.0 else 1}",
            }
        )
    return rows


def write_pairs(rows: list[dict], out: str | Path, split: str = "train") -> Path:
    """Write rows as ``out/data/<split>-00000-of-00001.parquet`` (the layout ``load_dataset(out)`` reads)."""
    import pandas as pd

    out = Path(out)
    (out / "data").mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(out / "data" / f"{split}-00000-of-00001.parquet", index=False)
    return out


def build_tiny_pairs(out: str | Path, n: int = 32, size: int = 64, seed: int = 0) -> Path:
    return write_pairs(tiny_pair_rows(n, size=size, seed=seed), out)
