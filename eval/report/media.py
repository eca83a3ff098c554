"""The report's pictures: small JPEG thumbnails of every image, a poster frame and a copy of every video, and
GenEval images with their detections drawn.

Why thumbnails at all: a 3,000-prompt A/B report links 6,000 full-size images, which a browser would
decode at full size; 256 px JPEGs are about 1/20 of the bytes. Small reports embed them in the page
as data URIs (one file to mail around); above ``EMBED_LIMIT`` they are files beside the page, so the
HTML stays small and the browser loads only the rows on screen (``loading="lazy"``). Videos are
always files (copied, or hard-linked on the same disk), so a copied report folder still plays them.
"""

from __future__ import annotations

import base64
import colorsys
import hashlib
import io
import os
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from sdpo.errors import UserError

EMBED_LIMIT = 100  # thumbnails; above it they are files (a data URI costs 4/3 of the bytes, all loaded at once)
FILES = "report_files"
QUALITY = 85


@dataclass(frozen=True)
class Job:
    """One picture to make: ``kind`` image | poster | video | geneval, from ``src`` to ``name`` under FILES."""

    kind: str
    src: Path
    name: str
    boxes: tuple = ()  # geneval: ((class, (x0, y0, x1, y1, score)), ...)


def _jpeg(im, size: int) -> bytes:
    from PIL import Image

    im = im.convert("RGB")
    im.thumbnail((size, size), Image.Resampling.BICUBIC, reducing_gap=2.0)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=QUALITY, optimize=True)
    return buf.getvalue()


def _open(path: Path):
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            im.draft("RGB", (1024, 1024))  # JPEG sources decode at a reduced scale: much faster, same thumbnail
            return ImageOps.exif_transpose(im).convert("RGB")
    except (OSError, SyntaxError, ValueError) as e:
        raise UserError(f"{path}: unreadable image ({e})") from None


def _poster(path: Path):
    from PIL import Image

    from sdpo.data.video_io import VideoError, read_frames

    try:
        return Image.fromarray(read_frames(path, [0])[0])
    except (VideoError, OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable video ({e})") from None


def colour(name: str) -> tuple[int, int, int]:
    """A stable, saturated colour per class name, so one class has one colour on every image."""
    hue = int(hashlib.md5(name.encode()).hexdigest()[:4], 16) / 0xFFFF
    r, g, b = colorsys.hsv_to_rgb(hue, 0.9, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_boxes(im, boxes: Sequence[tuple[str, Sequence[float]]], size: int):
    """The detections (in the image's own pixels) drawn on a thumbnail: a box and ``class score`` per object."""
    from PIL import ImageDraw, ImageFont

    w0 = im.width
    thumb = im.copy()
    thumb.thumbnail((size, size))
    scale = thumb.width / w0
    draw = ImageDraw.Draw(thumb)
    font = ImageFont.load_default()
    for name, (x0, y0, x1, y1, score) in boxes:
        c = colour(name)
        box = [x0 * scale, y0 * scale, max(x0 * scale, x1 * scale - 1), max(y0 * scale, y1 * scale - 1)]
        draw.rectangle(box, outline=c, width=2)
        text = f"{name} {score:.2f}"
        tx, ty = box[0] + 2, max(0, box[1] - 11)
        left, top, right, bottom = draw.textbbox((tx, ty), text, font=font)
        draw.rectangle([left - 1, top - 1, right + 1, bottom + 1], fill=c)
        draw.text((tx, ty), text, fill=(0, 0, 0), font=font)
    return thumb


def make(job: Job, size: int) -> bytes | None:
    """The thumbnail's bytes (``None`` for a video, which is copied as it is)."""
    if job.kind == "image":
        return _jpeg(_open(job.src), size)
    if job.kind == "poster":
        return _jpeg(_poster(job.src), size)
    if job.kind == "geneval":
        return _jpeg(draw_boxes(_open(job.src), job.boxes, size), size)
    return None


def _place(src: Path, dst: Path) -> None:
    """A hard link where the disk allows (no bytes copied), else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def build(
    jobs: Sequence[Job], folder: Path, size: int, embed: bool, progress: Callable[[int], None] | None = None
) -> dict[str, str]:
    """Make every job's file under ``folder`` (the caller renames it into place when all succeeded); return
    ``name -> data URI`` for thumbnails when ``embed`` (videos are files either way)."""
    uris: dict[str, str] = {}
    if not jobs:
        return uris

    def one(job: Job) -> tuple[Job, bytes | None]:
        dst = folder / job.name
        if job.kind == "video":
            dst.parent.mkdir(parents=True, exist_ok=True)
            _place(job.src, dst)
            return job, None
        data = make(job, size)
        if not embed:
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(data)
        return job, data

    workers = max(1, min(8, os.cpu_count() or 1))  # PIL decodes and encodes outside the GIL
    with ThreadPoolExecutor(workers) as pool:
        for job, data in pool.map(one, jobs):
            if embed and data is not None:
                uris[job.name] = "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")
            if progress:
                progress(1)
    return uris
