"""Video files in and out: frame counts, decoding chosen frames, writing MP4s.

Decoding and encoding go through PyAV (``av``), FFmpeg's Python bindings.  Why this reader: its
wheels bundle FFmpeg (with libx264), so one ``pip install av`` reads and writes video on a laptop
and on a cluster without a system FFmpeg; torchvision 0.29 no longer has a video API, decord's last
release (0.6.0, 2021) cannot write video and is unmaintained, and torchcodec needs a system FFmpeg
matching its build.

A *video* here is a file path, the bytes of a video file, or a folder of frame images (read in
sorted name order).  Frames come out as ``uint8`` arrays ``(F, H, W, 3)`` in RGB.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
DEFAULT_CRF = 18  # x264 constant-rate factor of written MP4s: visually lossless, as video benchmarks sample


class VideoError(ValueError):
    """A video that cannot be read as asked (a ValueError, so data loaders treat it like a bad image)."""


def _frame_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)


def _open(video):
    import av

    source = io.BytesIO(bytes(video)) if isinstance(video, (bytes, bytearray)) else str(video)
    try:
        return av.open(source, mode="r")
    except (av.FFmpegError, OSError) as e:
        raise VideoError(f"cannot open video: {e}") from None


def probe(video) -> tuple[int, int, int]:
    """``(frames, height, width)`` from the container's header (frames 0 when the header does not say)."""
    if isinstance(video, (str, os.PathLike)) and Path(video).is_dir():
        files = _frame_files(Path(video))
        if not files:
            raise VideoError(f"{video}: a frame folder without images")
        from PIL import Image

        with Image.open(files[0]) as im:
            return len(files), im.height, im.width
    with _open(video) as container:
        if not container.streams.video:
            raise VideoError("no video stream")
        s = container.streams.video[0]
        return int(s.frames or 0), int(s.codec_context.height), int(s.codec_context.width)


def read_frames(video, indices: list[int] | None = None) -> np.ndarray:
    """The frames at ``indices`` (every frame when ``None``), ``uint8 (len, H, W, 3)`` RGB.

    Raises :class:`VideoError` when the video cannot be decoded or is shorter than the largest index."""
    if isinstance(video, (str, os.PathLike)) and Path(video).is_dir():
        return _read_folder(Path(video), indices)
    wanted = None if indices is None else set(indices)
    last = None if wanted is None else max(wanted)
    got: dict[int, np.ndarray] = {}
    decoded = 0
    import av

    with _open(video) as container:
        if not container.streams.video:
            raise VideoError("no video stream")
        try:
            for k, frame in enumerate(container.decode(video=0)):
                decoded = k + 1
                if wanted is None or k in wanted:
                    got[k] = frame.to_ndarray(format="rgb24")
                if last is not None and k >= last:
                    break
        except av.FFmpegError as e:
            raise VideoError(f"undecodable video: {e}") from None
    if indices is None:
        if not got:
            raise VideoError("video has no frames")
        return np.stack([got[k] for k in sorted(got)])
    missing = [i for i in indices if i not in got]
    if missing:
        raise VideoError(f"video has {decoded} frames, frame {missing[0]} was asked for")
    return np.stack([got[i] for i in indices])


def _read_folder(folder: Path, indices: list[int] | None) -> np.ndarray:
    from PIL import Image

    files = _frame_files(folder)
    chosen = files if indices is None else [files[i] for i in indices if i < len(files)]
    if indices is not None and len(chosen) < len(indices):
        raise VideoError(f"{folder}: {len(files)} frames, frame {max(indices)} was asked for")
    if not chosen:
        raise VideoError(f"{folder}: a frame folder without images")
    try:
        return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in chosen])
    except (OSError, ValueError) as e:
        raise VideoError(f"{folder}: unreadable frame: {e}") from None


def write_mp4(frames: np.ndarray, path: str | os.PathLike, fps: float, crf: int = DEFAULT_CRF,
              description: str | None = None) -> None:  # fmt: skip
    """Encode ``uint8 (F, H, W, 3)`` RGB frames as H.264 (yuv420p) MP4 at ``path``.

    Equal frames give byte-equal files: every frame carries its timestamp, no creation time is
    written, and x264 runs with ``cpu-independent=1``.  Without it, x264 0.165's AVX-512 routines gave
    differing bitstreams for the same frames on this project's CPUs (8 distinct files in 25 writes of
    one 96x160 clip, 2 in 3 at 480x720), while forcing the AVX2 or SSE4.2 paths or ``cpu-independent``
    gave one, at the same speed.  The caller makes the write atomic (``sdpo.atomic``); the container
    format is named, not guessed from the (temporary) file name.  ``description`` (the prompt) goes
    into the container's metadata."""
    import av

    frames = np.ascontiguousarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames (F, H, W, 3), got {frames.dtype} {tuple(frames.shape)}")
    _, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"H.264 in yuv420p needs even height and width, got {h}x{w}")
    with av.open(str(path), mode="w", format="mp4") as container:
        if description:
            container.metadata["comment"] = description
        rate = _rate(fps)
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": str(crf), "x264-params": "cpu-independent=1"}
        for k, f in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(f, format="rgb24")
            frame.pts, frame.time_base = k, 1 / rate
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _rate(fps: float):
    from fractions import Fraction

    return Fraction(fps).limit_denominator(1001)


def mp4_comment(path: str | os.PathLike) -> str:
    """The description :func:`write_mp4` stored (empty if none)."""
    with _open(path) as container:
        return container.metadata.get("comment", "")


def mp4_is_complete(path: str | os.PathLike, frames: int, height: int, width: int) -> bool:
    """A readable MP4 whose header lists the expected frame count and size: what a finished write
    leaves, and what a truncated copy does not."""
    try:
        n, h, w = probe(path)
    except (VideoError, OSError):
        return False
    return (n, h, w) == (frames, height, width)
