"""Interrupting generation and running it again finishes the set: every index exactly once, the same
bytes as an uninterrupted run; a manifest in the reference scripts' format is read and kept as is."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from generate_helpers import PROMPTS, SIZE, STEPS, build_models, model_args, pngs, run_generate, write_prompts
from PIL import ExifTags, Image

from eval.generate import main, png_is_complete
from sdpo.sampling.prompts import read_manifest

NAME = f"six_seed0_{SIZE}x{SIZE}_{STEPS}s_7.5cfg"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return build_models(tmp_path_factory.mktemp("models"), ("sd15",))


def test_killed_run_resumes_each_index_exactly_once(models, tmp_path):
    prompts = write_prompts(tmp_path / "six.json")
    args = [*model_args(models, "sd15"), "--test_json", str(prompts), "--batch_size", "1"]
    out = tmp_path / "run"

    killed = run_generate([*args, "--output_path", str(out)], check=False, SDPO_GENERATE_KILL_AFTER="3")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert pngs(out / NAME) == [f"{i}_{SIZE}x{SIZE}.png" for i in range(3)]
    assert not (out / f"{NAME}.json").exists()  # no manifest until the set is complete

    # A damaged image (a truncated copy) and a writer's stale temp file, as a crash could leave them.
    damaged = out / NAME / f"1_{SIZE}x{SIZE}.png"
    damaged.write_bytes(damaged.read_bytes()[:200])
    assert not png_is_complete(damaged, SIZE, SIZE)
    (out / NAME / f".4_{SIZE}x{SIZE}.png.tmp-999999").write_bytes(b"partial")

    resumed = run_generate([*args, "--output_path", str(out)])
    assert "generated 4 images (2 already present)" in resumed.stdout
    assert sorted(os.listdir(out / NAME)) == [".generate.json"] + [f"{i}_{SIZE}x{SIZE}.png" for i in range(6)]
    entries = read_manifest(out / f"{NAME}.json")
    assert [e["prompt"] for e in entries] == [p["prompt"] for p in PROMPTS]
    assert [os.path.basename(e["gen_image_path"]) for e in entries] == [f"{i}_{SIZE}x{SIZE}.png" for i in range(6)]

    fresh = tmp_path / "fresh"
    run_generate([*args, "--output_path", str(fresh)])
    for i in range(6):
        f = f"{i}_{SIZE}x{SIZE}.png"
        assert (out / NAME / f).read_bytes() == (fresh / NAME / f).read_bytes(), f"resumed image {i} differs"

    # A third run has nothing to do and leaves everything untouched.
    before = {p.name: p.stat().st_mtime_ns for p in (out / NAME).iterdir()}
    manifest_bytes = (out / f"{NAME}.json").read_bytes()
    again = run_generate([*args, "--output_path", str(out)])
    assert "generated 0 images (6 already present)" in again.stdout
    assert {p.name: p.stat().st_mtime_ns for p in (out / NAME).iterdir() if p.suffix == ".png"} == {
        k: v for k, v in before.items() if k.endswith(".png")
    }
    assert (out / f"{NAME}.json").read_bytes() == manifest_bytes


def test_reference_manifest_is_read_and_kept_unchanged(models, tmp_path, monkeypatch, capsys):
    """A results folder as the reference scripts leave it: launched from the working directory with a
    relative unet path, so image paths are relative; json.dump(indent=2) of the documented entries."""
    monkeypatch.chdir(tmp_path)
    ckpt = tmp_path / "run" / "checkpoint-2000"
    ckpt.mkdir(parents=True)
    (ckpt / "unet.pth").write_bytes(models["sd15_unet"].read_bytes())
    prompts = write_prompts(tmp_path / "six.json")
    folder = os.path.join("run/checkpoint-2000", NAME)
    os.makedirs(folder)
    reference = []
    for i, entry in enumerate(PROMPTS):
        path = os.path.join(folder, f"{i}_{SIZE}x{SIZE}.png")
        exif = Image.Exif()
        exif[ExifTags.Base.ImageDescription] = entry["prompt"]
        Image.new("RGB", (SIZE, SIZE), (i * 40, 0, 0)).save(path, exif=exif)
        reference.append(
            {
                "prompt": entry["prompt"],
                "gen_image_path": path,
                "raw_image_path": entry.get("raw_image_path", ""),
                "metadata": entry.get("metadata", {}),
            }
        )
    manifest = ckpt / f"{NAME}.json"
    with open(manifest, "w") as f:
        json.dump(reference, f, indent=2)
    original = manifest.read_bytes()

    assert read_manifest(manifest) == reference
    argv = ["--unet_path", "run/checkpoint-2000/unet.pth", "--pretrain_path", str(models["sd15"]), "--test_json"]
    argv += [str(prompts), "--height", str(SIZE), "--width", str(SIZE), "--steps", str(STEPS)]
    # The default location and name line up with the reference's (relative, like the unet path given).
    assert main(argv) == Path("run/checkpoint-2000") / f"{NAME}.json"
    assert "generated 0 images (6 already present)" in capsys.readouterr().out
    assert manifest.read_bytes() == original
    with Image.open(os.path.join(folder, f"3_{SIZE}x{SIZE}.png")) as im:
        assert im.getpixel((0, 0)) == (120, 0, 0)  # the reference's images were not regenerated
