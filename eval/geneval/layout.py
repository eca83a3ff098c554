"""GenEval's folder layout and prompt metadata, shared by the generator and the evaluator.

The official layout, which the official evaluator reads as it is::

    <IMAGE_FOLDER>/<index:05d>/metadata.jsonl      the prompt's metadata row (one JSON object)
    <IMAGE_FOLDER>/<index:05d>/samples/<k:04d>.png image k of that prompt

The metadata file (``prompts/geneval/evaluation_metadata.jsonl``, vendored from the official
repository) holds one JSON object per line: ``tag``, ``include`` (clauses with ``class``, ``count``,
optional ``color`` and optional ``position`` = [relation, index of an earlier include clause]),
optional ``exclude`` (``class``, ``count``) and ``prompt``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from sdpo.atomic import atomic_path
from sdpo.errors import UserError

REPO = Path(__file__).resolve().parents[2]
METADATA = REPO / "prompts" / "geneval" / "evaluation_metadata.jsonl"
OBJECT_NAMES = REPO / "prompts" / "geneval" / "object_names.txt"
METADATA_FILE = "metadata.jsonl"
SAMPLES = "samples"
_SAMPLE_RE = re.compile(r"\d+\.png")


def object_names(path: str | Path = OBJECT_NAMES) -> list[str]:
    """The detector's 80 class names, in label order (mmdetection's COCO order, GenEval's spelling)."""
    return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def read_metadata(path: str | Path) -> list[dict]:
    """Rows of a GenEval metadata JSONL; a malformed line fails with one line naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: line {n} is not valid JSON ({e.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
            raise UserError(f"{path}: line {n} must be a JSON object with a string 'prompt'")
        rows.append(row)
    return rows


def prompt_folder(root: str | Path, index: int) -> Path:
    return Path(root) / f"{index:05d}"


def sample_path(root: str | Path, index: int, k: int) -> Path:
    return prompt_folder(root, index) / SAMPLES / f"{k:04d}.png"


def write_prompt_metadata(root: str | Path, index: int, row: dict) -> None:
    """``<index:05d>/metadata.jsonl`` holding ``row`` (and the samples folder); untouched when already equal."""
    folder = prompt_folder(root, index)
    (folder / SAMPLES).mkdir(parents=True, exist_ok=True)
    path, text = folder / METADATA_FILE, json.dumps(row, ensure_ascii=False) + "\n"
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


@dataclass(frozen=True)
class Sample:
    """One image of the layout: prompt ``index``, image ``k`` (from the file name), its path and the prompt's row."""

    index: int
    k: int
    path: Path
    metadata: dict

    @property
    def name(self) -> str:
        """The image's path inside the folder, as the per-image results name it."""
        return f"{self.path.parent.parent.name}/{SAMPLES}/{self.path.name}"


def scan(root: str | Path) -> list[Sample]:
    """Every image of the layout in (prompt, image) order; a folder that is not the layout fails with one line."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: no such folder (expected GenEval's layout <index:05d>/metadata.jsonl + samples/)")
    folders = sorted((p for p in root.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    if not folders:
        raise UserError(
            f"{root}: no <index:05d>/ prompt folders; generate with eval/generate.py --layout geneval "
            f"--test_json {METADATA.relative_to(REPO)}"
        )
    samples = []
    for folder in folders:
        meta_path = folder / METADATA_FILE
        if not meta_path.is_file():
            raise UserError(f"{meta_path}: missing (every prompt folder needs its metadata row)")
        try:
            metadata = json.loads(meta_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise UserError(f"{meta_path}: not valid JSON ({e.msg})") from None
        if not isinstance(metadata, dict):
            raise UserError(f"{meta_path}: expected one JSON object")
        images = folder / SAMPLES
        names = (
            sorted((p.name for p in images.iterdir() if _SAMPLE_RE.fullmatch(p.name)), key=lambda n: int(n[:-4]))
            if images.is_dir()
            else []
        )
        if not names:
            raise UserError(f"{images}: missing or holds no <k>.png images")
        samples += [Sample(int(folder.name), int(n[:-4]), images / n, metadata) for n in names]
    return samples
