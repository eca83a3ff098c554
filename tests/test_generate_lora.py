"""eval/generate.py --lora_path and the joint test's LORA_PATH: a LoRA run is evaluated like a unet.pth."""

from __future__ import annotations

import subprocess
from argparse import Namespace

import numpy as np
import pytest
import torch
from generate_helpers import REPO, SIZE, STEPS, cli_env, pngs, write_prompts
from PIL import Image

from eval.generate import main
from sdpo.families import get_family
from sdpo.lora import adapters as lora

PROMPTS = [{"prompt": "a red circle"}, {"prompt": "a blue square"}]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny SD1.5 base, a LoRA run folder with adapters that matter, and the merged unet.pth."""
    from sdpo.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("lora_eval")
    base = build_tiny_model("sd15", root / "sd15", seed=0)
    family = get_family("sd15")
    unet = family.denoiser_class().from_pretrained(base, subfolder="unet")
    cfg = Namespace(lora_rank=4, lora_alpha=8, lora_dropout=0.0, lora_target_modules=None)
    lora.add_adapters(unet, lora.lora_config(cfg, family, unet), torch.float32, seed=0)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if ".lora_B." in name:
                p.normal_(0, 0.3, generator=torch.Generator().manual_seed(1))
    run = root / "run"
    run.mkdir()
    lora.save_adapters(family, unet, run)
    merged_cfg = Namespace(pretrained_model_name_or_path=str(base), revision=None, unet_init=None)
    merged = lora.write_full_weights(lora.merge(family, merged_cfg, run), root / "merged", "unet")
    return {"base": base, "run": run, "merged": merged, "prompts": write_prompts(root / "two.json", PROMPTS)}


def _generate(setup, out, *flags):
    main(["--pretrain_path", str(setup["base"]), "--test_json", str(setup["prompts"]), "--height", str(SIZE),
          "--width", str(SIZE), "--steps", str(STEPS), "--output_path", str(out), *map(str, flags)])  # fmt: skip
    folder = out / f"two_seed0_{SIZE}x{SIZE}_{STEPS}s_7.5cfg"
    assert pngs(folder) == [f"{i}_{SIZE}x{SIZE}.png" for i in range(2)]
    return [np.asarray(Image.open(folder / name), dtype=np.int16) for name in pngs(folder)]


def test_lora_path_generates_what_the_merged_weights_generate(setup, tmp_path):
    with_lora = _generate(setup, tmp_path / "lora", "--lora_path", setup["run"])
    merged = _generate(setup, tmp_path / "merged", "--weights_path", setup["merged"])
    base = _generate(setup, tmp_path / "base", "--weights_path", setup["base"] / "unet")
    off = _generate(setup, tmp_path / "off", "--lora_path", setup["run"], "--lora_scale", "0")
    for a, b, c, d in zip(with_lora, merged, base, off):
        assert np.abs(a - b).max() <= 1  # fused vs unfused adapters: fp32 rounding, at most one level
        assert np.abs(a - c).max() > 8  # and the LoRA does change the picture
        assert np.array_equal(d, c)  # scale 0 is the base model exactly


def test_lora_of_another_family_stops_before_any_model_loads(setup, tmp_path, capsys):
    from sdpo.tiny import build_tiny_model

    flux_base = build_tiny_model("flux", tmp_path / "flux", seed=0)
    family = get_family("flux")
    model = family.denoiser_class().from_pretrained(flux_base, subfolder="transformer")
    cfg = Namespace(lora_rank=2, lora_alpha=None, lora_dropout=0.0, lora_target_modules=None)
    lora.add_adapters(model, lora.lora_config(cfg, family, model), torch.float32, seed=0)
    lora.save_adapters(family, model, tmp_path / "flux_run")
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        _generate(setup, tmp_path / "out", "--lora_path", tmp_path / "flux_run")
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "\n" not in err
    assert "a LoRA for a FLUX transformer, but the base model is sd15" in err
    assert not (tmp_path / "out").exists()


def test_joint_test_takes_lora_path_from_the_environment(setup, tmp_path):
    proc = subprocess.run(["bash", str(REPO / "scripts" / "eval" / "test_sd15.sh"), "--dry-run"],
                          env=cli_env(LORA_PATH=str(setup["run"]), LORA_SCALE="0.5", SETS="papv2"),
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    gens = [line for line in proc.stdout.splitlines() if line.startswith("+ ") and "eval/generate.py" in line]
    assert len(gens) == 1 and f"--lora_path {setup['run']} --lora_scale 0.5" in gens[0]
    assert "--weights_path" not in gens[0] and f"--output_path {setup['run']}" in gens[0]
