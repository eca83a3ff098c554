"""Prompt files, the repository's prompt sets, and generation manifests (the reference scripts' JSON format).

A prompt file and a manifest are both a JSON list of objects with at least ``prompt``; a manifest
entry also has ``gen_image_path``, ``raw_image_path`` and ``metadata``.  The sets in ``prompts/`` can be named
with a count (``papv2:64``).
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


PROMPT_SETS = Path(__file__).resolve().parents[2] / "prompts"


def prompt_sets() -> list[str]:
    return sorted(p.stem for p in PROMPT_SETS.glob("*.json"))


def read_prompt_spec(spec: str, flag: str) -> list[str]:
    """A prompt file (a JSON list of ``{"prompt": ...}`` as in ``prompts/``, or text with one prompt per line),
    or a set in ``prompts/`` with an optional count (``papv2:64``); errors name ``flag``.

    A count takes prompts spread evenly over the set (indices ``i * len // count``): hpsv2 lists its four
    styles one after another, and its first 64 prompts would all be anime."""
    path = Path(spec).expanduser()
    if path.is_file():
        return _read_prompt_file(path, spec, flag)
    name, sep, count = spec.partition(":")
    if name not in prompt_sets():
        raise UserError(
            f"{flag} {spec}: no such file, and {name!r} is not a prompt set "
            f"(sets: {', '.join(prompt_sets())}; e.g. papv2:64)"
        )
    prompts = _read_prompt_file(PROMPT_SETS / f"{name}.json", spec, flag)
    if not sep:
        return prompts
    try:
        n = int(count)
    except ValueError:
        n = 0
    if not 1 <= n <= len(prompts):
        raise UserError(f"{flag} {spec}: the count must be a whole number in 1..{len(prompts)}")
    return [prompts[i * len(prompts) // n] for i in range(n)]


def _read_prompt_file(path: Path, spec: str, flag: str) -> list[str]:
    if path.suffix.lower() == ".json":
        prompts = read_prompts(path)
    else:
        prompts = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not prompts:
        raise UserError(f"{flag} {spec}: the file holds no prompts (a JSON list of objects with "
                        "'prompt', or one prompt per line)")  # fmt: skip
    return prompts
