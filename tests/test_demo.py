"""The offline demo at its --quick size, on the real training path: structure only, not the paper's claim.

Whether the winner's loss rises under Diffusion-DPO and stays down with the safeguard is a result of
the full demo, reported in the README; it is deliberately not tuned into a test.
"""

from __future__ import annotations

import csv
import math

import pytest
from PIL import Image

from sdpo.checkpoint.store import complete_checkpoints
from sdpo.demo import dynamics as demo
from sdpo.training.metrics import read_jsonl

RUNS = [demo.run_name(m, sg) for m in demo.METHODS for sg in (False, True)]


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    rows = demo.run_demo(out, demo.QUICK)
    return out, rows


def _csv(out):
    with (out / "dynamics.csv").open() as f:
        return list(csv.DictReader(f))


def test_files_and_csv_columns(quick_demo):
    out, rows = quick_demo
    assert (out / demo.MARKER).is_file()
    with Image.open(out / "dynamics.png") as img:
        assert img.format == "PNG" and img.size[0] > 300 and img.size[1] > 200
    table = _csv(out)
    assert list(table[0].keys()) == list(demo.CSV_COLUMNS)
    q = demo.QUICK
    steps = list(range(0, q.steps + 1, q.eval_every))
    assert len(table) == len(rows) == len(RUNS) * len(steps)
    for name in RUNS:
        method, sg = name.removesuffix("+sdpo"), str(int(name.endswith("+sdpo")))
        assert [int(r["step"]) for r in table if r["method"] == method and r["safeguard"] == sg] == steps
        run = out / "runs" / name
        assert (run / "unet.pth").is_file()
        assert [r["step"] for r in read_jsonl(run)] == list(range(1, q.steps + 1))
        # intermediate checkpoints are scored then pruned; the last stays resumable
        assert [c.name for c in complete_checkpoints(run)] == [f"checkpoint-{q.steps}"]


def test_values_are_finite_and_lambda_in_unit_interval(quick_demo):
    out, _ = quick_demo
    for r in _csv(out):
        for key in ("win_diff", "lose_diff", "margin", "implicit_acc", "model_w", "model_l", "ref_w", "ref_l"):
            assert math.isfinite(float(r[key])), (key, r)
        assert 0.0 <= float(r["implicit_acc"]) <= 1.0
        lam = float(r["lambda"])
        if int(r["step"]) == 0:  # the reference itself: no training yet, nothing moved
            assert math.isnan(lam)
            assert abs(float(r["win_diff"])) < 1e-6 and abs(float(r["lose_diff"])) < 1e-6
            continue
        assert 0.0 <= lam <= 1.0
        if r["safeguard"] == "0":
            assert lam == 1.0  # without the safeguard the loser gradient is not scaled
        assert math.isclose(float(r["margin"]), float(r["win_diff"]) - float(r["lose_diff"]), abs_tol=1e-6)


def test_all_runs_see_the_same_batches_and_noise(quick_demo):
    """Same seed and data: the reference's per-step losses are identical in all six runs."""
    out, _ = quick_demo
    ref = {name: [r["ref_mse_unaccumulated"] for r in read_jsonl(out / "runs" / name)] for name in RUNS}
    assert all(v == ref[RUNS[0]] for v in ref.values())


def test_paired_runs_differ_only_in_the_safeguard_flag(tmp_path):
    paths = {"model": tmp_path / "m", "train_data": tmp_path / "d", "sft_unet": tmp_path / "u.pth"}
    for method in demo.METHODS:
        off = demo.preference_flags(method, False, paths, tmp_path / "run", demo.FULL)
        on = demo.preference_flags(method, True, paths, tmp_path / "run", demo.FULL)
        assert on == off + ["--use_winner_preserving"]


def test_foreign_non_empty_out_is_refused(tmp_path, capsys):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(SystemExit) as exc:
        demo.main(["--out", str(foreign), "--quick"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "not empty and was not made by sdpo.demo.dynamics" in err and "--overwrite" in err
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]


def test_overwrite_and_rerun_touch_only_the_demos_own_outputs(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    demo.prepare_out(out, overwrite=True)
    assert (out / demo.MARKER).is_file() and (out / "notes.txt").read_text() == "keep me"
    (out / "runs" / "diffusion-dpo" / "checkpoint-2").mkdir(parents=True)  # a previous demo's run
    demo.prepare_out(out, overwrite=False)  # the demo's own folder: accepted, old runs cleared
    assert not (out / "runs").exists() and (out / "notes.txt").is_file()


def test_calibrated_tiny_vae_encodes_the_picture_not_the_noise(tmp_path):
    import torch
    from diffusers import AutoencoderKL

    from sdpo import tiny

    model = tiny.build_tiny_model("sd15", tmp_path / "m", block_out_channels=(16, 32))
    pixels = demo._pixels(tiny.tiny_pair_rows(8, size=64, seed=0, tie_every=0))
    scale = tiny.calibrate_tiny_vae(model, pixels)
    vae = AutoencoderKL.from_pretrained(model, subfolder="vae")
    assert vae.config.scaling_factor == pytest.approx(scale)
    with torch.no_grad():
        dist = vae.encode(pixels).latent_dist
    assert float(dist.std.max()) < 1e-2  # a posterior sample is the mean, as with a trained VAE
    assert float((dist.mean * scale).std()) == pytest.approx(1.0, rel=1e-4)  # unit-variance latents


def test_flux_demo_runs_every_stage_on_a_flow_model(tmp_path):
    """``--family flux``: the same stages on a tiny FLUX-format transformer, with Appendix B's beta and mu."""
    import dataclasses

    size = dataclasses.replace(demo.QUICK, family="flux")
    rows = demo.run_demo(tmp_path / "out", size)
    assert {r["method"] for r in rows} == set(demo.FLOW_METHODS)
    run = tmp_path / "out" / "runs" / "diffusion-dpo+sdpo"
    assert (run / "transformer.pth").is_file() and not (run / "unet.pth").exists()
    logged = read_jsonl(run)
    assert all(0.0 <= r["avg_lose_l_scale"] <= 1.0 for r in logged)
    assert all(math.isfinite(r[k]) for r in rows for k in ("win_diff", "lose_diff", "margin"))
