"""End to end: eval/generate.py on a tiny model writes the reference layout, and the batch size does
not change a single byte of the images (SD1.5 here; SDXL in test_generate_sdxl.py, same checks)."""

from __future__ import annotations

import json
import re

import pytest
from generate_helpers import PROMPTS, SIZE, STEPS, build_models, model_args, pngs, run_generate, write_prompts
from PIL import ExifTags, Image

from eval.generate import png_prompt
from sdpo.sampling.prompts import read_manifest


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return build_models(tmp_path_factory.mktemp("models"), ("sd15",))


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    return write_prompts(tmp_path_factory.mktemp("prompts") / "six.json")


KIND = "sd15"


def test_six_prompts_reference_layout_and_batch_invariance(models, prompt_file, tmp_path):
    check_six_prompts(KIND, models, prompt_file, tmp_path)


def check_six_prompts(kind, models, prompt_file, tmp_path):
    name = f"six_seed0_{SIZE}x{SIZE}_{STEPS}s_7.5cfg"
    ckpt = models[f"{kind}_unet"].parent

    # Default output location: the folder holding unet.pth.
    proc = run_generate([*model_args(models, kind), "--test_json", str(prompt_file), "--batch_size", "4"])
    image_dir, manifest = ckpt / name, ckpt / f"{name}.json"
    assert pngs(image_dir) == [f"{i}_{SIZE}x{SIZE}.png" for i in range(6)]
    assert re.search(r"generated 6 images \(0 already present\) in [\d.]+ s, [\d.]+ images/s", proc.stdout)

    for i, entry in enumerate(PROMPTS):
        with Image.open(image_dir / f"{i}_{SIZE}x{SIZE}.png") as im:
            assert (im.format, im.mode, im.size) == ("PNG", "RGB", (SIZE, SIZE))
            raw = im.getexif()[ExifTags.Base.ImageDescription]
        assert png_prompt(image_dir / f"{i}_{SIZE}x{SIZE}.png") == entry["prompt"]
        if entry["prompt"].isascii():
            assert raw == entry["prompt"]  # exactly what the reference scripts' Pillow call writes

    data = json.loads(manifest.read_text(encoding="utf-8"))
    assert [list(e) for e in data] == [["prompt", "gen_image_path", "raw_image_path", "metadata"]] * 6
    assert [e["prompt"] for e in data] == [e["prompt"] for e in PROMPTS]
    assert [e["gen_image_path"] for e in data] == [str(image_dir / f"{i}_{SIZE}x{SIZE}.png") for i in range(6)]
    assert data[0]["raw_image_path"] == "raw/0.jpg" and data[1]["raw_image_path"] == ""
    assert data[0]["metadata"] == {"source": "test", "id": 0} and data[1]["metadata"] == {}
    assert read_manifest(manifest) == data

    # Batch size 1 into another folder: byte-identical PNGs.
    other = tmp_path / "b1"
    run_generate(
        [*model_args(models, kind), "--test_json", str(prompt_file), "--batch_size", "1", "--output_path", str(other)]
    )
    for i in range(6):
        f = f"{i}_{SIZE}x{SIZE}.png"
        assert (other / name / f).read_bytes() == (image_dir / f).read_bytes(), f"image {i} depends on the batch size"
    # Different prompts give different images (the check above is not comparing constants).
    assert (image_dir / f"0_{SIZE}x{SIZE}.png").read_bytes() != (image_dir / f"1_{SIZE}x{SIZE}.png").read_bytes()
    # Duplicated prompts give identical images: same prompt, same shared initial latent.
    with Image.open(image_dir / f"0_{SIZE}x{SIZE}.png") as a, Image.open(image_dir / f"5_{SIZE}x{SIZE}.png") as b:
        assert a.tobytes() == b.tobytes()


def test_base_model_baseline_and_max_prompts(models, prompt_file, tmp_path):
    """No --weights_path: the base model's own denoiser is sampled (the same bytes as naming its unet/ folder);
    --max_prompts N takes the first N prompts, and the names say so."""
    from eval.generate import main

    common = ["--pretrain_path", str(models[KIND]), "--test_json", str(prompt_file), "--max_prompts", "2",
              "--height", str(SIZE), "--width", str(SIZE), "--steps", "1"]  # fmt: skip
    manifest = main([*common, "--output_path", str(tmp_path / "base")])
    assert manifest == tmp_path / "base" / f"six_seed0_{SIZE}x{SIZE}_1s_7.5cfg_2p.json"
    assert [e["prompt"] for e in read_manifest(manifest)] == [e["prompt"] for e in PROMPTS[:2]]
    named = main([*common, "--weights_path", str(models[KIND] / "unet"), "--output_path", str(tmp_path / "named")])
    for a, b in zip(read_manifest(manifest), read_manifest(named), strict=True):
        assert open(a["gen_image_path"], "rb").read() == open(b["gen_image_path"], "rb").read()
