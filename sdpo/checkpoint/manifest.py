"""A record of what a folder holds (every file, its size and a content hash), written when the folder is
complete and checked before it is read back.

Why: a checkpoint that was damaged after it was written (a truncated copy, a file lost by a network file
system, one flipped bit) otherwise fails somewhere inside safetensors, torch or DCP with a traceback, or,
worse, loads: a truncated ``random_states_0.pkl`` resumes with other random streams and only an INFO line
from accelerate.  With the manifest the damage is found before anything is loaded, named in one line, and
the run falls back to an older checkpoint (``sdpo.checkpoint.store``).  The precomputed cache keeps the same
per-file records in its ``index.json`` (``sdpo.cache``).

The hash is xxHash's XXH3 128-bit (the ``xxhash`` package, which ``datasets`` already depends on): not a
cryptographic hash (it does not defend against tampering; the safe loaders do that), but it detects accidental
damage, and it runs at about 10 GB/s on one core, faster than the disk that wrote the file
(``bench/checkpoint_hashing.py`` measures what it adds to a checkpoint).  Files are hashed right after they
are written, while they are still in the page cache.
"""

from __future__ import annotations

import json
from pathlib import Path

from sdpo.atomic import write_json

MANIFEST = "manifest.json"
HASH = "xxh3_128"
FORMAT = 1
_CHUNK = 16 << 20


def file_hash(path: str | Path) -> str:
    """XXH3-128 of a file's bytes, read in chunks (constant memory whatever the file's size)."""
    import xxhash

    h = xxhash.xxh3_128()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def listing(folder: str | Path) -> list[str]:
    """Every file under ``folder`` (posix paths relative to it, sorted), the manifest itself excepted."""
    root = Path(folder)
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)


def records(folder: str | Path, names: list[str]) -> dict[str, dict]:
    """``{name: {"bytes": size, HASH: hash}}`` for the given files of ``folder``."""
    root = Path(folder)
    return {n: {"bytes": (root / n).stat().st_size, HASH: file_hash(root / n)} for n in names}


def write(folder: str | Path, files: dict[str, dict]) -> None:
    """Write ``folder/manifest.json`` (atomically) from per-file records (``records``)."""
    write_json(Path(folder) / MANIFEST, {"format": FORMAT, "hash": HASH, "files": dict(sorted(files.items()))})


def read(folder: str | Path) -> dict | None:
    """The manifest's file records; None when the folder has none (written before manifests existed).
    A manifest that cannot be read raises ``ValueError`` with the reason."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        files = data["files"]
        if data.get("hash") != HASH or not isinstance(files, dict):
            raise ValueError(f"unknown hash {data.get('hash')!r}")
        return files
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{MANIFEST}: unreadable ({str(e).splitlines()[0][:120] or type(e).__name__})") from None


def problem(folder: str | Path, files: dict[str, dict], part: tuple[int, int] = (0, 1)) -> str | None:
    """The first thing wrong with ``folder`` against its manifest records, as ``"<file>: <what>"``, or None.

    Every file's presence and size is checked (cheap: one ``stat`` each), then the contents of this part's
    share of the files: ``part = (index, count)`` takes every ``count``-th file from ``index`` on, so the
    processes of a launch can split the reading.
    """
    root = Path(folder)
    for name, rec in files.items():
        path = root / name
        if not path.is_file():
            return f"{name}: missing"
        size = path.stat().st_size
        if size != rec["bytes"]:
            return f"{name}: {size} bytes, the manifest records {rec['bytes']} (truncated or replaced)"
    index, count = part
    for name in list(files)[index::count]:
        if file_hash(root / name) != files[name][HASH]:
            return f"{name}: its content differs from the manifest's hash (the file changed after it was written)"
    return None


def total_bytes(folder: str | Path) -> int | None:
    """What the manifest says the folder weighs (None without a readable manifest)."""
    try:
        files = read(folder)
    except ValueError:
        return None
    return None if files is None else sum(int(r["bytes"]) for r in files.values())
