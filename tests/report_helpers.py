"""Shared by the report tests: tiny manifests with hand-made score files (no reward model loads), and a
parser that reads back what the page shows (numbers by their ``data-k`` key, the gallery's JSON block)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
from PIL import Image

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


def video_manifest(folder: Path, prompts: list[str], seed: int) -> Path:
    """Two-model video tests: tiny MP4s (9 frames, 32 px) in eval/generate.py's video manifest format, scored by
    eval/video_score.py."""
    from eval.video_score import main as video_score
    from sdpo.data.video_io import write_mp4

    rng = np.random.default_rng(seed)
    clips = folder / "vbench_seed0_32x32_9f_2s_6.0cfg"
    clips.mkdir(parents=True)
    entries = []
    for i, p in enumerate(prompts):
        frames = np.repeat(rng.integers(0, 256, (1, 32, 32, 3), dtype=np.uint8), 9, axis=0)
        frames[:, :, : 4 * (i + seed)] = 255 - frames[:, :, : 4 * (i + seed)]  # some change, some flicker
        frames[::2] //= 2
        write_mp4(frames, clips / f"{i}_32x32.mp4", fps=8)
        path = str(clips / f"{i}_32x32.mp4")
        entries.append({"prompt": p, "gen_image_path": path, "gen_video_path": path, "raw_image_path": "",
                        "metadata": {"media": "video", "num_frames": 9, "fps": 8}})  # fmt: skip
    manifest = folder / f"{clips.name}.json"
    manifest.write_text(json.dumps(entries))
    video_score(["--json_path", str(manifest)])
    return manifest


def geneval_results(folder: Path) -> Path:
    """A GenEval image folder and its results file, by hand: two prompts x two images, boxes in image pixels."""
    from eval.geneval import layout, rules

    images = folder / "geneval_seed0_64x64_2s_7.5cfg_2img"
    metas = [{"tag": "single_object", "include": [{"class": "dog", "count": 1}], "prompt": "a photo of a <dog>"},
             {"tag": "counting", "include": [{"class": "clock", "count": 2}], "prompt": "two clocks"}]  # fmt: skip
    rows = []
    for i, meta in enumerate(metas):
        layout.write_prompt_metadata(images, i, meta)
        for k in range(2):
            Image.new("RGB", (64, 64), (40, 40, 40)).save(layout.sample_path(images, i, k))
            correct = (i, k) == (0, 0)
            rows.append({"filename": f"{i:05d}/samples/{k:04d}.png", "tag": meta["tag"], "prompt": meta["prompt"],
                         "correct": correct, "reason": "" if correct else "dog: expected 1, found 0",
                         "metadata": json.dumps(meta), "details": json.dumps({"dog": [[8, 8, 40, 40, 0.95]]}),
                         "index": i, "sample": k})  # fmt: skip
    results = folder / f"{images.name}.geneval.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / f"{images.name}.geneval.json").write_text(json.dumps(rules.summarise(rows)))
    return results


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
