"""Shared by the report tests: tiny manifests with hand-made score files (no reward model loads), and a
parser that reads back what the page shows (numbers by their ``data-k`` key, the gallery's JSON block)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import numpy as np

import eval.score as score
from sdpo.rewards import METRICS, RewardConfig
from sdpo.tiny.rewards import write_tiny_manifest

STEM = "hpsv2_seed0_32x32_50s_7.5cfg"


def scored_manifest(folder: Path, prompts: list[str], seed: int, stem: str = STEM, size: int = 32) -> Path:
    """A manifest of random images and its ``.scores.json`` with random scores, written by eval/score.py's own
    writer (the weights' sources point at a folder that does not exist, so nothing can load)."""
    m = score.open_manifest(write_tiny_manifest(folder, stem, prompts, size=size, seed=seed))
    rng = np.random.default_rng(seed)
    m.scores = {k: [float(x) for x in rng.normal(size=len(prompts))] for k in METRICS}
    score.write_scores(m, RewardConfig.make(folder.parent / "no-models-here"))
    return m.path


@dataclass
class Parsed:
    values: dict[str, str] = field(default_factory=dict)  # data-k -> data-v
    texts: dict[str, str] = field(default_factory=dict)  # data-k -> the text shown
    data: dict = field(default_factory=dict)  # the gallery's JSON block
    pres: list[str] = field(default_factory=list)
    scripts: int = 0

    def num(self, key: str) -> float:
        return float(self.values[key])


class _Parser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out = Parsed()
        self._key: str | None = None
        self._text: list[str] = []
        self._in: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "script":
            self.out.scripts += 1
            self._in = "json" if a.get("id") == "report-data" else "script"
            self._text = []
        elif tag == "pre":
            self._in, self._text = "pre", []
        elif "data-k" in a:
            self.out.values[a["data-k"]] = a["data-v"]
            self._key, self._text = a["data-k"], []

    def handle_data(self, data):
        if self._key is not None or self._in in ("json", "pre"):
            self._text.append(data)

    def handle_endtag(self, tag):
        if tag == "script" and self._in == "json":
            self.out.data = json.loads("".join(self._text))
        if tag == "pre" and self._in == "pre":
            self.out.pres.append("".join(self._text))
        if tag in ("script", "pre"):
            self._in = None
        if tag == "span" and self._key is not None:
            self.out.texts[self._key] = "".join(self._text)
            self._key = None


def parse(html: str) -> Parsed:
    p = _Parser()
    p.feed(html)
    return p.out
