"""python -m eval.geneval end to end on tiny random models: per-image rows in the official format, the summary,
batch invariance, and resuming after a kill without scoring any image twice.

The detector's resize target is shrunk from 1333 x 800 to 200 x 120 here (the only test-only change) so the
tiny model runs in milliseconds per image; every code path is the real one."""

from __future__ import annotations

import json
import statistics

import numpy as np
import pytest
from PIL import Image

import eval.geneval.detector as detector
import eval.geneval.evaluate as evaluate
from eval.geneval import layout
from eval.geneval.tiny import build_tiny_geneval_root

ROWS = [
    {"tag": "single_object", "include": [{"class": "dog", "count": 1}], "prompt": "a photo of a dog"},
    {
        "tag": "two_object",
        "include": [{"class": "dog", "count": 1}, {"class": "cat", "count": 1}],
        "prompt": "a dog and a cat",
    },
    {
        "tag": "counting",
        "include": [{"class": "clock", "count": 2}],
        "exclude": [{"class": "clock", "count": 3}],
        "prompt": "a photo of two clocks",
    },
    {"tag": "colors", "include": [{"class": "cat", "count": 1, "color": "red"}], "prompt": "a photo of a red cat"},
    {
        "tag": "position",
        "include": [{"class": "cat", "count": 1}, {"class": "dog", "count": 1, "position": ["right of", 0]}],
        "prompt": "a photo of a dog right of a cat",
    },
    {
        "tag": "color_attr",
        "include": [{"class": "dog", "count": 1, "color": "blue"}, {"class": "clock", "count": 1, "color": "green"}],
        "prompt": "a photo of a blue dog and a green clock",
    },
]
OFFICIAL_KEYS = ["filename", "tag", "prompt", "correct", "reason", "metadata", "details"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return build_tiny_geneval_root(tmp_path_factory.mktemp("geneval_models"))


@pytest.fixture(autouse=True)
def small_inputs(monkeypatch):
    monkeypatch.setattr(detector, "IMAGE_SCALE", (200, 120))


def make_folder(path, rows=ROWS, k=2, size=64, seed=0):
    rng = np.random.default_rng(seed)
    for i, row in enumerate(rows):
        layout.write_prompt_metadata(path, i, row)
        for j in range(k):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(layout.sample_path(path, i, j))
    return path


def run(folder, root, *extra):
    return evaluate.main([str(folder), "--model_root", str(root), "--device", "cpu", "--resize", "torch", *extra])


def read_rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_end_to_end_rows_and_summary(root, tmp_path, capsys):
    folder = make_folder(tmp_path / "geneval_seed0_64x64_2s_7.5cfg_2img")
    summary = run(folder, root, "--batch_size", "4")
    out = capsys.readouterr()
    results = tmp_path / "geneval_seed0_64x64_2s_7.5cfg_2img.geneval.jsonl"
    rows = read_rows(results)
    assert [(r["index"], r["sample"]) for r in rows] == [(i, k) for i in range(6) for k in range(2)]
    for r in rows:
        assert list(r)[:7] == OFFICIAL_KEYS
        assert isinstance(r["correct"], bool) and isinstance(r["metadata"], str) and isinstance(r["details"], str)
        assert json.loads(r["metadata"]) == ROWS[r["index"]] and r["prompt"] == ROWS[r["index"]]["prompt"]
        assert r["filename"] == f"{r['index']:05d}/samples/{r['sample']:04d}.png"
        for boxes in json.loads(r["details"]).values():
            assert all(len(b) == 5 and b[4] > (0.9 if r["tag"] == "counting" else 0.3) for b in boxes)
    # The tiny detector sees confident dogs, cats and clocks: the rules, colours included, really ran.
    assert any(r["correct"] for r in rows) and not all(r["correct"] for r in rows)
    colour_rows = [r for r in rows if r["tag"] in ("colors", "color_attr")]
    assert any(r["correct"] or "colours seen" in r["reason"] for r in colour_rows)
    # The summary, recomputed by hand: mean over tags of the per-tag accuracy.
    per_tag = {
        t: statistics.fmean(r["correct"] for r in rows if r["tag"] == t) for t in dict.fromkeys(r["tag"] for r in rows)
    }
    assert summary["overall"] == pytest.approx(statistics.fmean(per_tag.values()))
    assert {t: v["score"] for t, v in summary["tags"].items()} == pytest.approx(per_tag)
    on_disk = json.loads((tmp_path / "geneval_seed0_64x64_2s_7.5cfg_2img.geneval.json").read_text())
    assert on_disk["overall"] == summary["overall"] and list(on_disk["tags"]) == [r["tag"] for r in ROWS]
    assert "scored 12 images (0 cached)" in out.out and f"overall          {summary['overall']:.4f}" in out.out
    # The official summary_scores.py reads the file with pandas and groups by tag: same numbers.
    import pandas as pd

    df = pd.read_json(results, orient="records", lines=True)
    assert np.mean([g["correct"].mean() for _, g in df.groupby("tag", sort=False)]) == pytest.approx(summary["overall"])


def test_batch_size_does_not_change_results(root, tmp_path, capsys):
    folder = make_folder(tmp_path / "imgs", ROWS[:3])
    run(folder, root, "--batch_size", "6", "--outfile", str(tmp_path / "b6.jsonl"))
    run(folder, root, "--batch_size", "1", "--outfile", str(tmp_path / "b1.jsonl"))
    a, b = read_rows(tmp_path / "b6.jsonl"), read_rows(tmp_path / "b1.jsonl")
    assert [(r["correct"], r["reason"]) for r in a] == [(r["correct"], r["reason"]) for r in b]
    for ra, rb in zip(a, b):
        da, db = json.loads(ra["details"]), json.loads(rb["details"])
        assert da.keys() == db.keys()
        for k in da:
            assert np.allclose(da[k], db[k], atol=1e-5)
    assert (tmp_path / "b6.json").is_file()


class Killed(BaseException):
    """Stands in for SIGKILL inside the test process: nothing after the kill point runs."""


def test_resume_after_kill_scores_each_image_once(root, tmp_path, monkeypatch, capsys):
    folder = make_folder(tmp_path / "imgs", ROWS[:3])  # no colour prompt: CLIP is not even loaded
    scored = []
    real = evaluate.Scorer.score

    def counting(self, samples, settings):
        scored.extend((s.index, s.k) for s in samples)
        return real(self, samples, settings)

    def kill(pid, sig):
        raise Killed

    monkeypatch.setattr(evaluate.Scorer, "score", counting)
    monkeypatch.setattr(evaluate.os, "kill", kill)
    monkeypatch.setenv(evaluate.KILL_AFTER_ENV, "3")
    with pytest.raises(Killed):
        run(folder, root, "--batch_size", "2")
    results = tmp_path / "imgs.geneval.jsonl"
    written = {(r["index"], r["sample"]) for r in read_rows(results)}
    assert len(written) == 3 and not (tmp_path / "imgs.geneval.json").exists()
    with results.open("a") as f:
        f.write('{"index": 2, "sample": 1, "corr')  # a row cut short by the kill
    monkeypatch.delenv(evaluate.KILL_AFTER_ENV)
    scored.clear()
    summary = run(folder, root, "--batch_size", "2")
    assert "scored 3 images (3 cached)" in capsys.readouterr().out
    everything = {(i, k) for i in range(3) for k in range(2)}
    assert sorted(scored) == sorted(everything - written)  # each image without a row, once; none with one
    rows = read_rows(results)
    assert [(r["index"], r["sample"]) for r in rows] == sorted(everything)

    fresh = tmp_path / "fresh.jsonl"
    assert run(folder, root, "--batch_size", "3", "--outfile", str(fresh))["overall"] == summary["overall"]
    assert [r["correct"] for r in read_rows(fresh)] == [r["correct"] for r in rows]

    # A third run scores nothing; a changed image is scored again, alone.
    scored.clear()
    run(folder, root)
    assert scored == []
    Image.new("RGB", (64, 64), (0, 0, 0)).save(layout.sample_path(folder, 2, 1))
    run(folder, root)
    assert scored == [(2, 1)]
