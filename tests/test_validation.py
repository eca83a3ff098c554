"""In-training validation (sdpo/validation.py): files at 0, N, 2N and the end, val/* scalars, images equal to
what the evaluation sampler makes from the saved weights, training bit-identical with it on, resume, 2
processes like 1, the flow path, parts loaded by the validator itself, and bad specs refused before any
model loads."""

from __future__ import annotations

import filecmp
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import flow_flags, reset_accelerate, tiny_flags
from PIL import Image

from sdpo.errors import UserError
from sdpo.sampling.prompts import read_prompt_spec
from sdpo.training.metrics import read_jsonl
from sdpo.training.validation import grid_tile, padded_shard, untouched_rng


def read_prompts(spec):
    return read_prompt_spec(spec, "--validation_prompts")


ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["a red circle", "a blue square", "a green circle"]
METRICS = ["clip", "aesthetics"]
# 5 steps, --validation_steps 2: validations at 0, 2, 4 and 5 (the end); checkpoints at 2, 4 and 5.
COMMON = ["--max_train_steps", 5, "--report_to", "tensorboard", "--train_method", "diffusion-dpo",
          "--use_winner_preserving", "--winner_preserving_mu", "0.9"]  # fmt: skip


def _train(argv) -> Path:
    """train.py in-process, from fixed global random states (accelerate saves them in every checkpoint)."""
    from sdpo.config import parse_args
    from sdpo.training.loop import train

    reset_accelerate()
    torch.manual_seed(123)
    random.seed(1)
    np.random.seed(2)
    try:
        return train(parse_args([str(a) for a in argv]))
    finally:
        reset_accelerate()


def _val_rows(out: Path) -> list[dict]:
    return [r for r in read_jsonl(out) if any(k.startswith("val/") for k in r)]


def _meta(out: Path, step: int) -> dict:
    return json.loads((out / "validation" / f"step-{step:06d}.json").read_text())


def _tiles(out: Path, step: int) -> list[np.ndarray]:
    meta = _meta(out, step)
    with Image.open(out / "validation" / meta["grid"]) as grid:
        return [np.asarray(grid_tile(grid, i, meta["columns"], meta["tile"])) for i in range(len(meta["prompts"]))]


@pytest.fixture(scope="module")
def reward_root(tmp_path_factory):
    from sdpo.tiny.rewards import build_tiny_reward_root

    return build_tiny_reward_root(tmp_path_factory.mktemp("rewards"))


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "val.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return path


@pytest.fixture(scope="module")
def val_flags(tiny_sd15, tiny_pairs, reward_root, prompt_file):
    """The validation run's flags for an output folder."""

    def flags(out: Path, *extra) -> list:
        validation = ["--validation_prompts", prompt_file, "--validation_steps", 2, "--validation_metrics",
                      ",".join(METRICS), "--validation_model_root", reward_root, "--validation_num_inference_steps", 3]  # fmt: skip
        return tiny_flags(tiny_sd15, tiny_pairs, out, *COMMON, *validation, *extra)

    return flags


@pytest.fixture(scope="module")
def runs(tiny_sd15, tiny_pairs, val_flags, tmp_path_factory):
    """The same 5-step run without and with validation."""
    root = tmp_path_factory.mktemp("val")
    _train(tiny_flags(tiny_sd15, tiny_pairs, root / "plain", *COMMON))
    _train(val_flags(root / "val"))
    return root


def test_files_at_step_0_N_2N_and_the_end_with_val_scalars(runs):
    out = runs / "val"
    names = sorted(p.name for p in (out / "validation").iterdir())
    assert names == [f"step-{s:06d}.{ext}" for s in (0, 2, 4, 5) for ext in ("json", "png")]
    rows = _val_rows(out)
    assert [r["step"] for r in rows] == [0, 2, 4, 5]
    for r in rows:
        meta = _meta(out, r["step"])
        assert meta["prompts"] == PROMPTS and meta["steps"] == 3 and meta["guidance"] == 7.5
        for m in METRICS:  # the logged mean is the mean of the per-image scores written beside the grid
            assert len(meta["scores"][m]) == len(PROMPTS)
            assert r[f"val/{m}"] == pytest.approx(np.mean(meta["scores"][m]), abs=1e-12)
        with Image.open(out / "validation" / meta["grid"]) as grid:
            assert grid.size == (3 * 64, 64)  # 3 tiles at the 64 px validation resolution, one row
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((out / "logs").rglob("events.out.tfevents.*"))), {"images": 0})
    events.Reload()
    assert [e.step for e in events.Images("validation")] == [0, 2, 4, 5]
    assert [e.value for e in events.Scalars("val/clip")] == pytest.approx([r["val/clip"] for r in rows], abs=1e-6)


def test_training_is_bit_identical_with_validation(runs):
    plain, val = runs / "plain", runs / "val"
    assert filecmp.cmp(plain / "unet.pth", val / "unet.pth", shallow=False)
    for ckpt in ("checkpoint-2", "checkpoint-4", "checkpoint-5"):
        files = sorted(p.name for p in (plain / ckpt).iterdir())
        assert files == sorted(p.name for p in (val / ckpt).iterdir())
        for name in files:  # weights, optimizer, lr scheduler, data position and the global RNG states
            assert filecmp.cmp(plain / ckpt / name, val / ckpt / name, shallow=False), f"{ckpt}/{name} differs"
    assert [r for r in read_jsonl(val) if "train_loss" in r] == read_jsonl(plain)


@pytest.mark.parametrize("step, weights", [(0, None), (4, "checkpoint-4/unet.pth"), (5, "unet.pth")])
def test_images_and_scores_are_what_eval_makes_from_the_saved_weights(runs, tiny_sd15, reward_root, step, weights):
    """Independent computation: the evaluation loader and sampler on the saved weights, and each
    reward model loaded on its own."""
    from sdpo.families import get_family
    from sdpo.rewards import RewardConfig, load_scorer
    from sdpo.sampling.images import generate_images

    out = runs / "val"
    comp = get_family("sd15").load_sampling_components(
        str(tiny_sd15), str(out / weights) if weights else None, "cpu", torch.float32
    )
    images = generate_images(comp, PROMPTS, 64, 64, steps=3, cfg=7.5, seed=0)
    for got, expected in zip(_tiles(out, step), images, strict=True):
        np.testing.assert_array_equal(got, np.asarray(expected))
    for m in METRICS:
        scores = load_scorer(m, "cpu", RewardConfig.make(reward_root)).score(images, PROMPTS)
        assert _meta(out, step)["scores"][m] == pytest.approx(scores, abs=1e-6)


def test_resume_redoes_an_unfinished_validation_once(runs, val_flags, tmp_path, monkeypatch):
    """Killed after checkpoint-4 was written, before its validation finished (its val row already logged):
    the resumed run validates step 4 again, replacing that row, then trains and validates step 5."""
    import sdpo.training.validation

    out = tmp_path / "val"
    shutil.copytree(runs / "val", out)
    shutil.rmtree(out / "checkpoint-5")
    (out / "unet.pth").unlink()
    for p in (out / "validation").glob("step-00000[45].*"):
        p.unlink()
    calls, real = [], sdpo.training.validation.Validator.validate
    spy = lambda self, run: calls.append(run.step) or real(self, run)  # noqa: E731
    monkeypatch.setattr(sdpo.training.validation.Validator, "validate", spy)
    _train(val_flags(out))
    assert calls == [4, 5]
    assert _val_rows(out) == _val_rows(runs / "val")  # steps 0, 2, 4, 5 once each, same values
    assert filecmp.cmp(out / "unet.pth", runs / "val" / "unet.pth", shallow=False)
    for step in (4, 5):
        for a, b in zip(_tiles(out, step), _tiles(runs / "val", step), strict=True):
            np.testing.assert_array_equal(a, b)


def test_two_processes_validate_like_one(tiny_sd15, tiny_pairs, reward_root, prompt_file, tmp_path):
    """torchrun: 2 processes x batch 1 against 1 process x batch 2, 3 prompts (uneven shards, one padded)."""
    from dist_helpers import env as _env
    from dist_helpers import free_port as _free_port

    flags = ["--pretrained_model_name_or_path", tiny_sd15, "--dataset_name", tiny_pairs, "--resolution", 64,
             "--learning_rate", 1e-4, "--lr_warmup_steps", 0, "--report_to", "none", "--mixed_precision", "no",
             "--max_train_steps", 1, "--validation_prompts", prompt_file, "--validation_steps", 1,
             "--validation_metrics", "clip", "--validation_model_root", reward_root,
             "--validation_num_inference_steps", 2, "--validation_batch_size", 1]  # fmt: skip
    ddp = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", 2, "--nnodes", 1, "--master_addr",
           "127.0.0.1", "--master_port", _free_port(), ROOT / "train.py", *flags, "--train_batch_size", 1,
           "--output_dir", tmp_path / "ddp"]  # fmt: skip
    proc = subprocess.run([str(a) for a in ddp], env=_env(tmp_path / "trace"), cwd=tmp_path, capture_output=True,
                          text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the torchrun processes (OMP_NUM_THREADS=1): CPU kernels round by thread count
    try:
        _train([*flags, "--train_batch_size", 2, "--output_dir", tmp_path / "one"])
    finally:
        torch.set_num_threads(threads)
    ddp_rows, one_rows = _val_rows(tmp_path / "ddp"), _val_rows(tmp_path / "one")
    assert [r["step"] for r in ddp_rows] == [r["step"] for r in one_rows] == [0, 1]
    for a, b in zip(_tiles(tmp_path / "ddp", 0), _tiles(tmp_path / "one", 0), strict=True):
        np.testing.assert_array_equal(a, b)  # same weights at step 0: the same images, gathered in prompt order
    assert ddp_rows[0]["val/clip"] == one_rows[0]["val/clip"]
    assert ddp_rows[1]["val/clip"] == pytest.approx(one_rows[1]["val/clip"], abs=1e-5)


def test_flow_family_validates_through_its_pipeline(tiny_flux, tiny_pairs, tmp_path):
    """FLUX: the run's last images are FluxPipeline's from the saved transformer.pth, guidance 3.5."""
    from sdpo.families import get_family
    from sdpo.sampling.images import generate_images

    out = tmp_path / "flux"
    _train(flow_flags(tiny_flux, tiny_pairs, out, "--validation_prompts", "papv2:2", "--validation_steps", 1,
                      "--validation_num_inference_steps", 2))  # fmt: skip
    assert [_meta(out, s)["guidance"] for s in (0, 1)] == [3.5, 3.5]
    prompts = _meta(out, 1)["prompts"]
    assert prompts == read_prompts("papv2:2")
    comp = get_family("flux").load_sampling_components(
        str(tiny_flux), str(out / "transformer.pth"), "cpu", torch.float32
    )
    images = generate_images(comp, prompts, 32, 32, steps=2, cfg=3.5, seed=0)
    for got, expected in zip(_tiles(out, 1), images, strict=True):
        np.testing.assert_array_equal(got, np.asarray(expected))


def test_validator_loads_vae_and_text_encoders_when_training_has_none(runs, val_flags, tmp_path):
    """Training from cached latents and text loads neither: the validator loads its own (kept on the CPU)
    and makes the same images."""
    from accelerate import Accelerator

    from sdpo.config import parse_args
    from sdpo.families import get_family
    from sdpo.training.metrics import JsonlLog
    from sdpo.training.setup import Run
    from sdpo.training.validation import Validator

    cfg = parse_args([str(a) for a in val_flags(tmp_path / "out", "--validation_metrics", "none")])
    reset_accelerate()
    try:
        acc = Accelerator(cpu=True)
        family = get_family(cfg.model.model_family).load(cfg.model, acc.device, torch.float32, True)
        family.vae, family.text_encoders, family.tokenizers = None, [], []
        run = Run(cfg, acc, family, None, None, None, None, None, None, JsonlLog(tmp_path / "out"), None, [])
        validator = Validator(run)
        assert validator.own_parts and validator.parts.vae.device.type == "cpu"
        validator.validate(run)
    finally:
        reset_accelerate()
    for a, b in zip(_tiles(tmp_path / "out", 0), _tiles(runs / "val", 0), strict=True):
        np.testing.assert_array_equal(a, b)
    assert family.vae is None  # the training family was not given parts


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--validation_prompts", "nosuchset:4"], "'nosuchset' is not a prompt set (sets: hpsv2, papv2, partiprompts"),
        (["--validation_prompts", "papv2:0"], "papv2:0: the count must be a whole number in 1..487"),
        (["--validation_prompts", "EMPTY"], "the file holds no prompts"),
        (["--validation_prompts", "papv2:2", "--validation_metrics", "clip,fid"], "--validation_metrics clip,fid: "
         "unknown reward model; use none, all or a comma list of pickscore, hpsv2, aesthetics, clip, imagereward"),
        (["--validation_metrics", "clip"], "--validation_metrics only act with --validation_prompts"),
        (["--validation_prompts", "papv2:2", "--validation_resolution", "72"], "multiple of 16"),
    ],
)  # fmt: skip
def test_bad_spec_is_one_line_before_any_model_loads(tiny_sd15, tiny_pairs, tmp_path, monkeypatch, extra, message):
    from sdpo.config import parse_args
    from sdpo.families.base import ModelFamily

    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    monkeypatch.setattr(ModelFamily, "load", classmethod(lambda *a, **k: pytest.fail("a model was loaded")))
    argv = tiny_flags(tiny_sd15, tiny_pairs, tmp_path / "o", *[empty if a == "EMPTY" else a for a in extra])
    with pytest.raises(UserError) as err:
        parse_args([str(a) for a in argv])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_bad_spec_exits_2_from_the_command_line(tiny_sd15, tiny_pairs, tmp_path):
    from test_cli import one_error_line, run_cli

    line = one_error_line(run_cli("--pretrained_model_name_or_path", tiny_sd15, "--dataset_name", tiny_pairs,
                                  "--output_dir", tmp_path / "o", "--validation_prompts", "nosuchset:4"))  # fmt: skip
    assert "--validation_prompts nosuchset:4" in line
    assert not (tmp_path / "o").exists()


def test_set_counts_spread_over_the_set_and_files_read_both_formats(tmp_path):
    papv2 = read_prompts("papv2")
    assert len(papv2) == 487 and read_prompts("papv2:3") == [papv2[0], papv2[162], papv2[324]]
    hps = read_prompts("hpsv2")  # four styles in blocks of 800: a count of 4 takes one of each
    assert read_prompts("hpsv2:4") == [hps[0], hps[800], hps[1600], hps[2400]]
    (tmp_path / "p.json").write_text(json.dumps([{"prompt": "a"}, {"prompt": "b"}]))
    assert read_prompts(str(tmp_path / "p.json")) == ["a", "b"]


def test_padded_shards_cover_every_prompt_once_with_equal_lengths():
    for n, world in [(3, 2), (1, 4), (8, 3), (5, 5)]:
        shards = [padded_shard(n, r, world) for r in range(world)]
        assert len({len(idx) for idx, _ in shards}) == 1  # every process makes the same number of sampler calls
        real = sorted(i for idx, k in shards for i in idx[:k])
        assert real == list(range(n))


def test_untouched_rng_restores_every_global_stream():
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    with untouched_rng(torch.device("cpu")):
        torch.rand(10), random.random(), np.random.rand(4)
    assert torch.equal(torch.rand(3), expected[0])
    assert random.random() == expected[1] and np.random.rand() == expected[2]


def test_plot_draws_val_panels_and_a_strip_of_one_prompt_across_steps(runs, tmp_path, capsys):
    from sdpo.plot.curves import default_metrics, load_run, main, plot_runs, validation_images

    val, plain = runs / "val", runs / "plain"
    assert default_metrics([load_run(val)])[-2:] == ("val/aesthetics", "val/clip")  # the paper's column order
    with Image.open(plot_runs([plain, val], tmp_path / "curves.png")) as im:
        assert im.size == (1350, 960)  # 6 training panels + 2 validation panels: 3 x 3 at 4.5 x 3.2 in, 100 dpi
    prompt, images = validation_images(val, 1)
    assert prompt == PROMPTS[1] and [s for s, _ in images] == [0, 2, 4, 5]
    for step, image in images:
        np.testing.assert_array_equal(np.asarray(image), _tiles(val, step)[1])
    main([str(val), str(val), "--strip", "1", "--strip_steps", "2", "5", "--out", str(tmp_path / "strip.png")])
    with Image.open(tmp_path / "strip.png") as im:
        assert im.size == (340, 410)  # 2 steps x 1.7 in wide, 2 runs x 1.8 in + 0.5 in for the prompt, 100 dpi
    with pytest.raises(SystemExit) as exc:
        main([str(plain), "--strip", "0", "--out", str(tmp_path / "none.png")])
    assert exc.value.code == 2 and "no validation images" in capsys.readouterr().err
    with pytest.raises(UserError, match="has 3 prompts"):
        validation_images(val, 3)


def test_eval_mode_restores_each_submodules_own_flag():
    from sdpo.training.validation import eval_mode

    net = torch.nn.Sequential(torch.nn.Dropout(0.5), torch.nn.Sequential(torch.nn.Dropout(0.5)))
    net.train()
    net[1].eval()  # e.g. a frozen part kept in eval mode inside a trained module
    with eval_mode(net):
        assert not any(m.training for m in net.modules())
    assert [m.training for m in net.modules()] == [True, True, False, False]


def test_report_of_a_run_shows_every_step_with_its_logged_scores(runs, tmp_path, capsys):
    """python -m eval.report RUN_DIR: one model per validation, tiles cut from the grids, scores as logged."""
    from report_helpers import parse

    from eval.report.cli import main as report_main

    val, out = runs / "val", tmp_path / "rep"
    report_main([str(val), "--out", str(out), "--quiet", "--n_boot", "50"])
    assert capsys.readouterr().out.strip() == f"report: {out / 'report.html'}"
    page = parse((out / "report.html").read_text(encoding="utf-8"))
    steps = (0, 2, 4, 5)
    assert page.data["mode"] == "grid" and page.data["models"] == [f"step {s}" for s in steps]
    for k, step in enumerate(steps):
        meta = _meta(val, step)
        manifest = next((out / "run_inputs" / f"step-{step:06d}").glob("*.json"))
        assert manifest.stem == "validation_seed0_64x64_3s_7.5cfg"
        for m in METRICS:
            assert page.num(f"summary/{k}/{manifest.stem}/{m}/mean") == pytest.approx(np.mean(meta["scores"][m]))
        for i, tile in enumerate(_tiles(val, step)):
            with Image.open(manifest.parent / manifest.stem / f"{i}.png") as im:
                np.testing.assert_array_equal(np.asarray(im), tile)
    with pytest.raises(SystemExit) as exc:
        report_main([str(val), str(val / "validation"), "--out", str(tmp_path / "two"), "--quiet"])
    assert exc.value.code == 2 and "pass one RUN_DIR" in capsys.readouterr().err
    assert not (tmp_path / "two").exists()
