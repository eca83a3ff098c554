"""Free disk space: checked before a large write, and a full disk during one reported as what it is.

Why: a checkpoint that hit a full disk ended with ``RuntimeError: [enforce fail at inline_container.cc:672]
unexpected pos ...`` (torch's zip writer), safetensors with ``Error while serializing: I/O error``, and
nothing said the disk was full.  Writers that know roughly how much they will write (a checkpoint: the size
of the previous one; the cache: its estimate) call ``shortfall`` first and stop with one line before
writing anything; every writer wraps its writing in ``reporting_disk_full`` so that an out-of-space error
(or over quota, as on many clusters) becomes one ``UserError`` line: ``disk full at PATH`` with the sizes.
"""

from __future__ import annotations

import errno
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sdpo.errors import UserError

_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_FULL_TEXT = ("No space left on device", "Disk quota exceeded", "os error 28", "os error 122")
_NEARLY_FULL = 16 << 20  # a write that failed with less than this free failed for lack of space


def human(n: float) -> str:
    """Bytes in the unit people read them in (1 kB = 1000 B, as ``df -H``)."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def free_bytes(path: str | Path) -> int:
    """Free bytes on the file system that holds ``path`` (or its nearest existing parent)."""
    p = Path(path).expanduser().absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def shortfall(path: str | Path, need: int, what: str, why: str) -> str | None:
    """The one-line refusal when ``need`` bytes (``why``: where the number comes from) do not fit at ``path``;
    None when they do."""
    free = free_bytes(path)
    if need <= free:
        return None
    return (f"not enough disk space at {path} for {what}: it needs about {human(need)} ({why}), {human(free)} is "
            "free; free some space (or point the output elsewhere) and rerun")  # fmt: skip


def bytes_under(path: str | Path) -> int:
    """Total size of a file, or of every file below a folder."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else 0


def is_disk_full(exc: BaseException, path: str | Path) -> bool:
    """Whether ``exc``, raised while writing at ``path``, means the disk (or the quota) is full."""
    seen: BaseException | None = exc
    while seen is not None:
        if getattr(seen, "errno", None) in _FULL_ERRNOS or any(t in str(seen) for t in _FULL_TEXT):
            return True
        seen = seen.__cause__ or seen.__context__
    try:
        return free_bytes(path) < _NEARLY_FULL
    except OSError:
        return False


@contextmanager
def reporting_disk_full(path: str | Path, what: str, need: int | None = None, after: str = "",
                        cleanup: bool = False) -> Iterator[None]:  # fmt: skip
    """Run the writing inside; an out-of-space failure becomes ``disk full at PATH while writing WHAT`` with what
    was written (the size of ``path``), what was needed and what is free, plus ``after`` (what is still intact).
    ``cleanup``: remove ``path`` then (a partial folder); ``sdpo.atomic`` removes its own temporary names."""
    try:
        yield
    except UserError:
        raise
    except Exception as e:
        if not is_disk_full(e, path):
            raise
        written, free = bytes_under(path), free_bytes(path)
        if cleanup:
            from sdpo.atomic import remove

            remove(path)
        needed = f", about {human(need)} needed" if need else ""
        raise UserError(
            f"disk full at {path} while writing {what} ({human(written)} written{needed}, {human(free)} free)"
            f"{after}; free some space and rerun"
        ) from None
