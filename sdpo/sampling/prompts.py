"""Prompt files and generation manifests (the reference scripts' JSON format).

A prompt file and a manifest are both a JSON list of objects with at least ``prompt``; a manifest
entry also has ``gen_image_path``, ``raw_image_path`` and ``metadata``.
"""

from __future__ import annotations

import json
from pathlib import Path

from sdpo.errors import UserError


def read_entries(path: str | Path, require: tuple[str, ...] = ("prompt",)) -> list[dict]:
    """Read a prompt file or manifest; a malformed one raises one line naming the offending entry."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON list of objects with 'prompt', found a {type(data).__name__}")
    for i, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise UserError(f"{path}: entry {i} is a {type(entry).__name__}, expected an object with 'prompt'")
        for key in require:
            if key not in entry:
                raise UserError(f"{path}: entry {i} has no {key!r} (keys: {sorted(entry)[:6]})")
        if "prompt" in require and not isinstance(entry["prompt"], str):
            raise UserError(f"{path}: entry {i}: 'prompt' must be a string, found {type(entry['prompt']).__name__}")
    return data


def read_prompts(path: str | Path) -> list[str]:
    return [e["prompt"] for e in read_entries(path)]


def read_manifest(path: str | Path) -> list[dict]:
    return read_entries(path, require=("prompt", "gen_image_path"))
