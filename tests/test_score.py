"""eval/score.py and eval/summary.py: one pass, the per-image cache, bad input, the set x metric table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import eval.score as score
from sdpo.rewards import METRICS, RewardConfig, load_scorer
from sdpo.tiny.rewards import build_tiny_reward_root, write_tiny_manifest

REPO = Path(__file__).resolve().parents[1]
PROMPTS = ["a red cube", "a blue ball on grass", "a red cube", "sunset, 4k"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return build_tiny_reward_root(tmp_path_factory.mktemp("rewards"))


def _run(argv, capsys):
    """Run a CLI main in-process; return (exit code, stdout, stderr)."""
    code = 0
    try:
        (score.main if argv[0] != "summary" else __import__("eval.summary").summary.main)(argv[1:])
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def _forbid_loading(monkeypatch):
    def fail(*a, **k):
        raise AssertionError("a reward model was loaded")

    monkeypatch.setattr(score, "load_scorer", fail)


def test_one_pass_writes_scores_keyed_like_the_manifest(root, tmp_path, capsys):
    manifest = write_tiny_manifest(tmp_path, "papv2_seed0_64x64_2s_7.5cfg", PROMPTS)
    code, out, err = _run(
        ["score", "--json_path", str(manifest), "--model_root", str(root), "--device", "cpu", "--batch_size", "3"],
        capsys,
    )
    assert code == 0, err
    data = json.loads(score.scores_path(manifest).read_text())
    assert score.scores_path(manifest).name == "papv2_seed0_64x64_2s_7.5cfg.scores.json"
    entries = json.loads(manifest.read_text())
    assert [(e["prompt"], e["gen_image_path"]) for e in data["entries"]] == [
        (e["prompt"], e["gen_image_path"]) for e in entries
    ]
    assert list(data["metrics"]) == list(METRICS)
    # Independent: each scorer on its own, all images in one batch, gives the same numbers.
    cfg = RewardConfig.make(root)
    images = [Image.open(e["gen_image_path"]).convert("RGB") for e in entries]
    for k in METRICS:
        expected = load_scorer(k, "cpu", cfg).score(images, PROMPTS)
        got = [e["scores"][k] for e in data["entries"]]
        assert got == pytest.approx(expected, abs=1e-5)
        mean = sum(got) / len(got)
        assert data["metrics"][k]["mean"] == pytest.approx(mean)
        assert f"mean {mean:.4f}" in next(line for line in out.splitlines() if line.startswith(k))
    assert "4/4" in err  # the tqdm bar counted images


def test_cached_scores_are_reused_and_invalidated(root, tmp_path, capsys, monkeypatch):
    manifest = write_tiny_manifest(tmp_path, "set", PROMPTS[:2])
    args = ["score", "--json_path", str(manifest), "--model_root", str(root), "--device", "cpu"]
    assert _run(args + ["--metrics", "clip"], capsys)[0] == 0
    assert _run(args + ["--metrics", "aesthetics"], capsys)[0] == 0  # accumulates: clip stays cached
    assert list(json.loads(score.scores_path(manifest).read_text())["metrics"]) == ["aesthetics", "clip"]
    first = score.scores_path(manifest).read_text()
    with monkeypatch.context() as m:
        _forbid_loading(m)
        code, out, _ = _run(args + ["--metrics", "clip,aesthetics"], capsys)
        assert code == 0 and "clip" in out and "aesthetics" in out
    assert score.scores_path(manifest).read_text() == first  # nothing rescored, nothing rewritten
    # A regenerated image (new size/mtime) invalidates the cache; so do other weights (--hps_version).
    img = tmp_path / "set" / "1_64x64.png"
    Image.new("RGB", (64, 64), (200, 10, 10)).save(img)
    os.utime(img, ns=(1, 1))
    loaded = []
    with monkeypatch.context() as m:
        m.setattr(score, "load_scorer", lambda name, *a: loaded.append(name) or load_scorer(name, *a))
        assert _run(args + ["--metrics", "clip"], capsys)[0] == 0
        assert _run(args + ["--metrics", "hpsv2"], capsys)[0] == 0
        assert _run(args + ["--metrics", "hpsv2", "--hps_version", "v2.1"], capsys)[0] == 0
        assert _run(args + ["--metrics", "hpsv2", "--hps_version", "v2.1"], capsys)[0] == 0
    assert loaded == ["clip", "hpsv2", "hpsv2"]


def test_missing_images_listed_before_any_model_loads(tmp_path, capsys, monkeypatch):
    manifest = write_tiny_manifest(tmp_path, "set", [f"prompt {i}" for i in range(8)])
    for i in range(1, 8):
        (tmp_path / "set" / f"{i}_64x64.png").unlink()
    _forbid_loading(monkeypatch)
    code, _, err = _run(["score", "--json_path", str(manifest)], capsys)
    assert code == 2
    line = err.strip()
    assert line.startswith("error: ") and "\n" not in line
    assert "7 of 8 images are missing" in line
    assert all(f"{i}_64x64.png" in line for i in range(1, 6)) and "6_64x64.png" not in line and ", ..." in line


def test_unreadable_image_and_unknown_metric(tmp_path, capsys, monkeypatch):
    manifest = write_tiny_manifest(tmp_path, "set", PROMPTS[:2])
    bad = tmp_path / "set" / "1_64x64.png"
    bad.write_bytes(b"not a png at all")
    _forbid_loading(monkeypatch)
    code, _, err = _run(["score", "--json_path", str(manifest)], capsys)
    assert code == 2 and f"error: {bad}: unreadable image" in err
    code, _, err = _run(["score", "--json_path", str(manifest), "--metrics", "pickscore,aes"], capsys)
    assert code == 2
    assert "unknown metric aes; valid: all, pickscore, hpsv2, aesthetics, clip, imagereward" in err


def test_relative_image_paths_resolve(tmp_path, monkeypatch):
    manifest = write_tiny_manifest(tmp_path / "run", "set", PROMPTS[:2], relative=True)
    monkeypatch.chdir(tmp_path)  # not the manifest's folder: resolves against the manifest
    m = score.open_manifest(manifest)
    assert m.images == [tmp_path / "run/set/0_64x64.png", tmp_path / "run/set/1_64x64.png"]
    # Written relative to the launch directory (as the reference scripts did), then read from there.
    entries = json.loads(manifest.read_text())
    for e in entries:
        e["gen_image_path"] = str(Path("run") / e["gen_image_path"])
    cwd_manifest = tmp_path / "run" / "cwd.json"
    cwd_manifest.write_text(json.dumps(entries))
    assert score.open_manifest(cwd_manifest).images[0] == tmp_path / "run/set/0_64x64.png"
    # A results folder copied from another machine: absolute paths that no longer exist, or relative ones
    # from elsewhere, fall back to the image of the same name in the folder named like the manifest.
    copied = tmp_path / "run" / "set.json"
    copied.write_text(
        json.dumps([{**e, "gen_image_path": "/old/cluster/run/set/" + Path(e["gen_image_path"]).name} for e in entries])
    )
    assert score.open_manifest(copied).images[1] == tmp_path / "run/set/1_64x64.png"


def test_summary_table_in_paper_column_order(tmp_path, capsys):
    def fake(name, means):
        man = tmp_path / name / "hpsv2_seed0_512x512_50s_7.5cfg.json"
        man.parent.mkdir()
        metrics = {k: {"source": "x", "mean": v, "std": 0.0, "n": 1} for k, v in means.items()}
        score.scores_path(man).write_text(json.dumps({"manifest": man.name, "metrics": metrics, "entries": []}))
        return man

    a = fake(
        "sd15", {"imagereward": -0.0469, "pickscore": 0.2088, "hpsv2": 0.2697, "aesthetics": 5.4933, "clip": 0.348}
    )
    b = fake("sdpo", {"pickscore": 0.21744, "clip": 0.36})
    code, out, err = _run(["summary", str(a), str(score.scores_path(b))], capsys)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0].split() == ["set", "PickScore", "HPS", "Aes.", "CLIP", "IR"]
    assert lines[1].split() == [
        "sd15/hpsv2_seed0_512x512_50s_7.5cfg",
        "0.2088",
        "0.2697",
        "5.4933",
        "0.3480",
        "-0.0469",
    ]
    assert lines[2].split() == ["sdpo/hpsv2_seed0_512x512_50s_7.5cfg", "0.2174", "-", "-", "0.3600", "-"]
    code, out, _ = _run(
        ["summary", str(a), str(b), "--labels", "SD1.5,+SDPO", "--markdown", "--out", str(tmp_path / "t.md")], capsys
    )
    assert out.splitlines()[0] == "| set | PickScore | HPS | Aes. | CLIP | IR |"
    assert out.splitlines()[2].startswith("| SD1.5 | 0.2088 |")
    assert (tmp_path / "t.md").read_text() == out
    code, _, err = _run(["summary", str(a), "--labels", "x,y"], capsys)
    assert code == 2 and "--labels has 2 names for 1 files" in err
    code, _, err = _run(["summary", str(tmp_path / "nope.json")], capsys)
    assert code == 2 and "no score file; run python eval/score.py --json_path" in err
    # As a script from another folder, through score.py --summary (the bootstrap puts the repo on sys.path).
    proc = subprocess.run(
        [sys.executable, str(REPO / "eval/score.py"), "--summary", str(a), "--labels", "base"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[1].split() == ["base", "0.2088", "0.2697", "5.4933", "0.3480", "-0.0469"]
