"""The model-family interface: flow matching (SD3, FLUX), family detection, and training and
generation on tiny rectified-flow models.  SD1.5/SDXL behaviour is pinned by the older test files."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import flow_flags

from sdpo.config import parse_args
from sdpo.families import get_family

ROOT = Path(__file__).resolve().parents[1]
FLOW_METHODS = ("diffusion-dpo", "dmpo", "sft", "mapo", "dpop")


def _family(model, *extra):
    cfg = parse_args(["--pretrained_model_name_or_path", str(model), "--resolution", "32", *extra])
    return cfg, get_family(cfg.model.model_family).load(
        cfg.model, torch.device("cpu"), torch.float32, needs_reference=False
    )


@pytest.mark.parametrize("scheme", ["none", "logit_normal", "mode"])
def test_flow_time_draw_is_diffusers_density_and_noising_is_exact(tiny_sd3, scheme):
    from diffusers.training_utils import compute_density_for_timestep_sampling

    cfg, fam = _family(tiny_sd3, "--weighting_scheme", scheme, "--logit_mean", "0.3", "--logit_std", "0.7")
    u = torch.cat([fam.draw_time(torch.Generator().manual_seed(s), "cpu") for s in range(6)])
    expected = torch.cat([
        compute_density_for_timestep_sampling(scheme, 1, 0.3, 0.7, 1.29, generator=torch.Generator().manual_seed(s))
        for s in range(6)
    ])  # fmt: skip
    assert torch.equal(u, expected)
    x0, eps = torch.randn(6, 16, 4, 4), torch.randn(6, 16, 4, 4)
    noisy, target, timestep = fam.add_noise(x0, eps, u)
    for i in range(6):
        # SD3's static shift 3.0, computed here from its definition: s' = 3 s / (1 + 2 s), s = 1 - k/1000
        k = int(float(u[i]) * 1000)
        s = 1.0 - k / 1000.0
        sigma = 3.0 * s / (1.0 + 2.0 * s)
        assert float(timestep[i]) == pytest.approx(1000.0 * sigma, rel=1e-5)
        torch.testing.assert_close(noisy[i], (1 - sigma) * x0[i] + sigma * eps[i], rtol=1e-5, atol=1e-6)
        assert torch.equal(target[i], eps[i] - x0[i])


def test_flux_training_sigmas_are_unshifted_and_latents_packed_as_the_pipeline(tiny_flux):
    from diffusers import FluxPipeline

    cfg, fam = _family(tiny_flux)
    u = torch.tensor([0.0, 0.25, 0.999])
    _, _, timestep = fam.add_noise(torch.zeros(3, 16, 4, 4), torch.ones(3, 16, 4, 4), u)
    assert timestep.tolist() == pytest.approx([1000.0, 750.0, 1.0])  # dynamic shifting is for sampling only
    assert fam.latent_shape((3, 32, 32)) == (16, 4, 4)
    vae = fam.vae.config  # (z - shift) * scale
    z = torch.randn(2, 16, 4, 4)
    torch.testing.assert_close(fam.normalise_latents(z), (z - vae.shift_factor) * vae.scaling_factor)
    # predict == the transformer on the pipeline's packed latents and ids, unpacked the pipeline's way
    cond = fam.encode_prompt(["a red circle", ""])
    noisy, t = torch.randn(2, 16, 4, 4), torch.tensor([500.0, 20.0])
    out = fam.predict(fam.denoiser, noisy, t, cond)
    packed = FluxPipeline._pack_latents(noisy, 2, 16, 4, 4)
    ids = FluxPipeline._prepare_latent_image_ids(2, 2, 2, "cpu", torch.float32)
    direct = fam.denoiser(hidden_states=packed, timestep=t / 1000, guidance=torch.full((2,), 1.0),
                          pooled_projections=cond["pooled_projections"], encoder_hidden_states=cond["encoder_hidden_states"],
                          txt_ids=torch.zeros(cond["encoder_hidden_states"].shape[1], 3), img_ids=ids).sample  # fmt: skip
    assert torch.equal(out, FluxPipeline._unpack_latents(direct, 32, 32, 8))
    pipe = FluxPipeline.from_pretrained(tiny_flux)
    e, p, _ = pipe.encode_prompt(["a red circle", ""], prompt_2=None, max_sequence_length=32)
    torch.testing.assert_close(cond["encoder_hidden_states"], e)
    torch.testing.assert_close(cond["pooled_projections"], p)


def test_family_detection(tiny_sd15, tiny_sdxl, tiny_sd3, tiny_flux):
    from sdpo.families import resolve_family

    found = [resolve_family(str(m)) for m in (tiny_sd15, tiny_sdxl, tiny_sd3, tiny_flux)]
    assert found == ["sd15", "sdxl", "sd3", "flux"]


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_every_flow_method_trains_with_and_without_the_safeguard(family, tiny_sd3, tiny_flux, tiny_pairs, tmp_path,
                                                                  run_train):  # fmt: skip
    model = {"sd3": tiny_sd3, "flux": tiny_flux}[family]
    init = get_family(family).denoiser_class().from_pretrained(model, subfolder="transformer")
    runs = [(m, []) for m in FLOW_METHODS] + [(m, ["--use_winner_preserving", "--winner_preserving_mu", "0.5"])
                                             for m in FLOW_METHODS if m != "sft"]  # fmt: skip
    runs += [("diffusion-dpo", ["--use_winner_preserving", "--winner_preserving_mode", "param"]),
             ("diffusion-dpo", ["--use_winner_preserving", "--winner_preserving_mode", "fixed",
                                "--winner_preserving_lambda", "0.3"])]  # fmt: skip
    for i, (method, extra) in enumerate(runs):
        out = tmp_path / f"r{i}"
        path = run_train(*flow_flags(model, tiny_pairs, out, "--train_method", method, *extra))
        assert path == out / "transformer.pth"
        trained = get_family(family).denoiser_class().from_pretrained(out / "transformer")
        sd = torch.load(path, weights_only=True)
        trained.load_state_dict(sd, strict=True)
        assert any(not torch.equal(v, init.state_dict()[k]) for k, v in sd.items()), (method, extra)
        (logged,) = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
        assert all(math.isfinite(v) for v in logged.values()), (method, extra, logged)
        if extra:
            assert 0.0 <= logged["avg_lose_l_scale"] <= 1.0
            if "fixed" in extra:
                assert logged["avg_lose_l_scale"] == pytest.approx(0.3)
        else:
            assert logged.get("avg_lose_l_scale", 1.0) == 1.0  # no safeguard: the loser gradient is untouched


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_flow_resume_is_bit_identical(family, tiny_sd3, tiny_flux, tiny_pairs, tmp_path, run_train):
    model = {"sd3": tiny_sd3, "flux": tiny_flux}[family]
    flags = ["--use_winner_preserving", "--winner_preserving_mu", "0.5", "--weighting_scheme", "logit_normal"]
    straight = run_train(*flow_flags(model, tiny_pairs, tmp_path / "a", *flags, "--max_train_steps", "2"))
    run_train(*flow_flags(model, tiny_pairs, tmp_path / "b", *flags, "--max_train_steps", "1"))
    resumed = run_train(*flow_flags(model, tiny_pairs, tmp_path / "b", *flags, "--max_train_steps", "2"))
    a, b = torch.load(straight, weights_only=True), torch.load(resumed, weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(ln)["step"] for ln in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]


def _cli(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *map(str, args)], capture_output=True, text=True,
                          env=env)  # fmt: skip


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--train_method", "dspo"], "--train_method dspo is defined on DDPM quantities and does not run on the flux"),
        (["--model_family", "sdxl"], "is a flux model but --model_family sdxl was given"),
        (["--sdxl"], "is a flux model but --sdxl was given"),
    ],
)
def test_flow_refusals_are_one_line(tiny_flux, tiny_pairs, tmp_path, flags, expected):
    proc = _cli("--pretrained_model_name_or_path", tiny_flux, "--dataset_name", tiny_pairs, "--output_dir",
                tmp_path / "out", "--report_to", "none", *flags)  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and expected in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_flow_generation_is_batch_invariant(family, tiny_sd3, tiny_flux, tmp_path):
    from eval.generate import main

    model = {"sd3": tiny_sd3, "flux": tiny_flux}[family]
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps([{"prompt": p} for p in ("a red circle", "a blue square", "", "a red circle")]))
    base = ["--weights_path", str(model), "--pretrain_path", str(model), "--test_json", str(prompts),
            "--height", "32", "--width", "32", "--steps", "2"]  # fmt: skip
    for b in (1, 4):
        main([*base, "--batch_size", str(b), "--output_path", str(tmp_path / f"b{b}")])
    name = "p_seed0_32x32_2s_3.5cfg"
    one, four = sorted((tmp_path / "b1" / name).glob("*.png")), sorted((tmp_path / "b4" / name).glob("*.png"))
    assert [p.name for p in one] == [p.name for p in four] and len(one) == 4
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(one, four))
    assert one[0].read_bytes() != one[1].read_bytes()  # the prompt matters
    manifest = json.loads((tmp_path / "b1" / f"{name}.json").read_text())
    assert manifest[0]["metadata"]["model_family"] == family and manifest[0]["metadata"]["guidance"] == 3.5
