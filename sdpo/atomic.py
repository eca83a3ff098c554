"""Write-then-rename helpers: a reader never sees a half-written file or folder."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; on success rename it onto ``path``, on error remove it.

    Works for files and folders (the caller decides what to create at the yielded path).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    _remove(tmp)
    try:
        yield tmp
        if path.is_dir() and tmp.is_dir():
            _remove(path)
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists() or p.is_symlink():
        p.unlink()


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent, ensure_ascii=False) + "\n", encoding="utf-8")


def torch_save(obj: Any, path: str | os.PathLike) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


_TEMP = re.compile(r"^\..+\.tmp-(\d+)$")  # atomic_path's temporary names: .<name>.tmp-<pid>


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (one we may not signal counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_temps(folder: str | os.PathLike) -> list[Path]:
    """``atomic_path`` temporaries in ``folder`` and its subfolders one level down whose writer is gone: left by a
    process that was killed mid-write (SIGKILL, out of memory, a node lost), never renamed, never removed.

    The writer is recognised by the pid in the name, on this machine: on a multi-node job only the main process
    writes these (final weights, manifests, logs), so a run started on another node with a live writer of the
    same pid is the one case this would misjudge.
    """
    root = Path(folder)
    if not root.is_dir():
        return []
    found = []
    for p in [*root.glob(".*.tmp-*"), *root.glob("*/.*.tmp-*")]:
        m = _TEMP.match(p.name)
        if m and int(m.group(1)) != os.getpid() and not pid_alive(int(m.group(1))):
            found.append(p)
    return sorted(found)


def remove(p: str | os.PathLike) -> None:
    """Remove a file or a folder tree (nothing if absent)."""
    _remove(Path(p))


@contextmanager
def removed_if_left_empty(folder: str | os.PathLike) -> Iterator[None]:
    """A command that fails leaves no empty ``folder`` behind when it was the one that made it: a refused run must
    not look like a run that started."""
    folder = Path(folder)
    existed = folder.exists()
    try:
        yield
    except BaseException:
        if not existed and folder.is_dir() and not any(p.is_file() for p in folder.rglob("*")):
            shutil.rmtree(folder, ignore_errors=True)
        raise
