"""Where reward-model weights come from: an explicit path, a local mirror of the hub, or the hub itself.

Clusters that evaluate are often offline, so every weight a scorer needs is named once here with
three ways to find it, tried in order:

1. an environment variable holding a local path (file or folder), e.g. ``SDPO_HPSV2_CHECKPOINT``;
2. a *model root* (``--model_root DIR`` or ``SDPO_REWARD_ROOT``) that mirrors hub repos as
   ``<root>/<org>/<name>/`` (e.g. ``<root>/xswu/HPSv2/HPS_v2_compressed.pt``);
3. the Hugging Face hub id (served from the local HF cache when ``HF_HUB_OFFLINE=1``).

When none works the error is one line naming the file and every place it was looked for.
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sdpo.errors import UserError

ROOT_ENV = "SDPO_REWARD_ROOT"
# The flag that sets the model root in the running command, for messages: eval/score.py's --model_root, train.py's
# --validation_model_root (``root_flag``).
_ROOT_FLAG: contextvars.ContextVar[str] = contextvars.ContextVar("reward_root_flag", default="--model_root")


@contextmanager
def root_flag(flag: str) -> Iterator[None]:
    """Name ``flag`` as the model root's flag in the errors raised inside."""
    token = _ROOT_FLAG.set(flag)
    try:
        yield
    finally:
        _ROOT_FLAG.reset(token)


@dataclass(frozen=True)
class Source:
    """One weight file or folder: the env var that overrides it, its hub repo, and the file inside."""

    metric: str
    env: str
    repo: str  # hub repo id, also the folder under the model root
    filename: str | None = None  # None: the whole repo folder (a from_pretrained directory)
    on_hub: bool = True  # False: only the env var and the model root can provide it
    origin: str = ""  # where a person can get it when it is not on the hub


def model_root_path(explicit: str | os.PathLike | None = None) -> Path | None:
    root = explicit if explicit else os.environ.get(ROOT_ENV)
    return Path(root).expanduser() if root else None


def _root_candidate(src: Source, root: Path | None) -> Path | None:
    if root is None:
        return None
    folder = root / src.repo
    return folder / src.filename if src.filename else folder


def describe(src: Source, root: Path | None) -> str:
    """A cheap, stable description of where ``src`` resolves to (used to invalidate cached scores)."""
    if os.environ.get(src.env):
        return str(Path(os.environ[src.env]).expanduser().resolve())
    cand = _root_candidate(src, root)
    if cand is not None and cand.exists():
        return str(cand.resolve())
    return f"{src.repo}/{src.filename}" if src.filename else str(src.repo)


def _looked(src: Source, root: Path | None) -> str:
    places = [f"${src.env} ({os.environ.get(src.env) or 'unset'})"]
    cand = _root_candidate(src, root)
    places.append(str(cand) if cand is not None else f"${ROOT_ENV}/{_ROOT_FLAG.get()} (unset)")
    if src.on_hub:
        places.append(f"the Hugging Face hub/cache for {src.repo}")
    return ", ".join(places)


def _missing(src: Source, root: Path | None, what: str, why: str = "") -> UserError:
    hint = f"; get it from {src.origin}" if src.origin else ""
    why = f" ({why})" if why else ""
    return UserError(
        f"{src.metric}: {what} not found{why}; looked in {_looked(src, root)}{hint}; "
        f"put it under {_ROOT_FLAG.get()}/${ROOT_ENV} as <root>/{src.repo}"
        f"{'/' + src.filename if src.filename else ''} or set {src.env}"
    )


def resolve_file(src: Source, root: Path | None) -> Path:
    """A local path to the weight file ``src`` names, downloading through the hub cache only as a last resort."""
    assert src.filename is not None
    if os.environ.get(src.env):
        p = Path(os.environ[src.env]).expanduser()
        if p.is_dir():
            p = p / src.filename
        if not p.is_file():
            raise _missing(src, root, src.filename, f"{p} does not exist")
        return p
    cand = _root_candidate(src, root)
    if cand is not None and cand.is_file():
        return cand
    if not src.on_hub:
        raise _missing(src, root, src.filename)
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(src.repo, src.filename))
    except Exception as e:  # offline, unreachable, gated: all mean the same thing to the user
        why = "not in the Hugging Face cache" if "LocalEntryNotFound" in type(e).__name__ else type(e).__name__
        raise _missing(src, root, src.filename, why) from None


def resolve_folder(src: Source, root: Path | None) -> str:
    """A local folder for ``from_pretrained`` when one is given or mirrored, else the hub id (cache/offline aware)."""
    if os.environ.get(src.env):
        p = Path(os.environ[src.env]).expanduser()
        if not p.is_dir():
            raise _missing(src, root, "model folder", f"{p} is not a folder")
        return str(p)
    cand = _root_candidate(src, root)
    if cand is not None and cand.is_dir():
        return str(cand)
    return src.repo


def load_pretrained(loader, src: Source, root: Path | None, what: str, **kwargs):
    """``loader(resolve_folder(src))`` with hub/offline failures turned into the one-line error."""
    where = resolve_folder(src, root)
    try:
        return loader(where, **kwargs)
    except OSError as e:
        raise _missing(src, root, what, str(e).splitlines()[0][:160] if Path(where).is_dir() else "") from None


@dataclass(frozen=True)
class RewardConfig:
    """Everything that decides which weights the scorers load (the cache key of a score, with the metric)."""

    root: Path | None = None
    hps_version: str = "v2.0"

    @classmethod
    def make(cls, model_root: str | os.PathLike | None = None, hps_version: str | None = None) -> RewardConfig:
        version = hps_version or os.environ.get("SDPO_HPSV2_VERSION") or "v2.0"
        if version not in ("v2.0", "v2.1"):
            raise UserError(f"hpsv2: unknown version {version!r}; choose v2.0 (the paper's) or v2.1")
        return cls(root=model_root_path(model_root), hps_version=version)
