"""Held-out dynamics in training (--heldout_pairs, sdpo/training/heldout.py) and the winner guard: logged values
equal the demo's evaluator on the saved weights, training bit-identical with it on, the reference stored once and
reused on resume, split:N rows never trained on (also across a 2 -> 1 process elastic resume, with results
identical to 1 process), LoRA's adapters-off reference, KTO's desirable/undesirable analogue, the cache, the
guard firing on Diffusion-DPO at a large lr and not with the safeguard, the Figure 1 plot, and bad input refused
before any model loads."""

from __future__ import annotations

import filecmp
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import reset_accelerate, tiny_flags
from dist_helpers import env, read_trace, step_indices, torchrun

from sdpo.config import parse_args
from sdpo.data import holdout
from sdpo.errors import RunStopped, UserError
from sdpo.training.guard import WinnerGuard
from sdpo.training.heldout import COLUMNS, PREFIX, HeldOutEvaluator, eval_config
from sdpo.training.metrics import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
# 4 steps, checkpoints and held-out evaluations at 2 and 4 (and step 0); two draws per held-out pair.
COMMON = ["--report_to", "tensorboard", "--mixed_precision", "no", "--train_method", "diffusion-dpo"]
HELD = ["--heldout_steps", 2, "--heldout_repeats", 2, "--heldout_batch_size", 2]


def heldout_rows(out: Path) -> list[dict]:
    return [{k.removeprefix(PREFIX): v for k, v in r.items() if k != "step"} | {"step": r["step"]}
            for r in read_jsonl(out) if any(k.startswith(PREFIX) for k in r)]  # fmt: skip


@pytest.fixture(scope="module")
def heldout_data(tmp_path_factory):
    from sdpo.tiny import build_tiny_pairs

    return build_tiny_pairs(tmp_path_factory.mktemp("heldout") / "pairs", n=5, size=64, seed=7)


@pytest.fixture(scope="module")
def runs(tiny_sd15, tiny_pairs, heldout_data, tmp_path_factory):
    """The same 4-step run without and with held-out evaluation, from the same global random states (accelerate
    saves them in every checkpoint)."""
    import random

    import numpy as np

    from sdpo.training.loop import train

    root = tmp_path_factory.mktemp("held")
    for name, extra in (("plain", []), ("held", ["--heldout_pairs", heldout_data, *HELD])):
        reset_accelerate()
        torch.manual_seed(123)
        random.seed(1)
        np.random.seed(2)
        try:
            train(parse_args([str(a) for a in tiny_flags(tiny_sd15, tiny_pairs, root / name, *COMMON, *extra)]))
        finally:
            reset_accelerate()
    return root


def test_training_is_bit_identical_with_heldout_evaluation(runs):
    plain, held = runs / "plain", runs / "held"
    assert filecmp.cmp(plain / "unet.pth", held / "unet.pth", shallow=False)
    for ckpt in ("checkpoint-2", "checkpoint-4"):
        files = sorted(p.name for p in (plain / ckpt).iterdir())
        assert files == sorted(p.name for p in (held / ckpt).iterdir())
        for name in files:  # weights, optimizer, lr scheduler, data position and the global RNG states
            assert filecmp.cmp(plain / ckpt / name, held / ckpt / name, shallow=False), f"{ckpt}/{name} differs"
    assert [r for r in read_jsonl(held) if "train_loss" in r] == read_jsonl(plain)


def test_logged_values_equal_the_demo_evaluator_on_the_saved_weights(runs, tiny_sd15, tiny_pairs, heldout_data):
    """The demo's evaluator loads its own model and reference and scores the saved weights: the numbers the run
    logged, exactly; and the tensorboard scalars are those numbers."""
    out = runs / "held"
    rows = {r["step"]: r for r in heldout_rows(out)}
    assert sorted(rows) == [0, 2, 4]
    cfg = parse_args([str(a) for a in tiny_flags(tiny_sd15, tiny_pairs, out, *COMMON)])
    evaluator = HeldOutEvaluator(eval_config(cfg, heldout_data), repeats=2, batch_size=2)
    for step, weights in ((0, tiny_sd15 / "unet"), (2, out / "checkpoint-2" / "unet.pth"), (4, out / "unet.pth")):
        assert {k: rows[step][k] for k in COLUMNS} == evaluator.evaluate(weights), f"step {step}"
    assert rows[0]["win_diff"] == rows[0]["lose_diff"] == 0.0 and rows[0]["implicit_acc"] == 0.0  # policy = ref
    assert rows[4]["win_diff"] != 0.0 and rows[4]["ref_w"] == rows[0]["ref_w"]  # it moved; the reference did not
    assert rows[4]["margin"] == rows[4]["win_diff"] - rows[4]["lose_diff"] and 0.0 <= rows[4]["lambda"] <= 1.0
    from safetensors.torch import load_file

    ref = load_file(out / "heldout" / "reference.safetensors")
    assert ref["ref_w"].shape == (2 * 5,) and ref["ref_w"].double().mean().item() == pytest.approx(rows[0]["ref_w"])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((out / "logs").rglob("events.out.tfevents.*"))))
    events.Reload()
    assert [e.step for e in events.Scalars("heldout/win_diff")] == [0, 2, 4]
    assert [e.value for e in events.Scalars("heldout/margin")] == pytest.approx([rows[s]["margin"] for s in (0, 2, 4)])


def test_resume_reuses_the_stored_reference_and_refuses_other_settings(runs, tiny_sd15, tiny_pairs, heldout_data,
                                                                         tmp_path, run_train, monkeypatch):  # fmt: skip
    """Lose step 4 and resume from checkpoint-2: the reference is read back, not recomputed (nor its model run),
    step 4 is evaluated once, to the same numbers.  Another held-out setting is refused before any model loads."""
    import sdpo.training.heldout as heldout

    out = tmp_path / "held"
    shutil.copytree(runs / "held", out)
    shutil.rmtree(out / "checkpoint-4")
    (out / "unet.pth").unlink()
    written = []
    monkeypatch.setattr(heldout, "write_reference", lambda *a: written.append(a))
    run_train(*tiny_flags(tiny_sd15, tiny_pairs, out, *COMMON, "--heldout_pairs", heldout_data, *HELD))
    assert written == []
    assert heldout_rows(out) == heldout_rows(runs / "held")
    assert filecmp.cmp(out / "unet.pth", runs / "held" / "unet.pth", shallow=False)

    import sdpo.families as families

    monkeypatch.setattr(families.ModelFamily, "load", lambda *a, **k: pytest.fail("a model was loaded"))
    shutil.rmtree(out / "checkpoint-4")
    with pytest.raises(UserError, match=r"reference.safetensors holds the held-out reference losses of a run with "
                                         r"repeats 2, this run has 3; resume with the run's own held-out settings, or "
                                         r"remove .*heldout to start a new held-out series"):  # fmt: skip
        run_train(*tiny_flags(tiny_sd15, tiny_pairs, out, *COMMON, "--heldout_pairs", heldout_data, *HELD,
                              "--heldout_repeats", 3))  # fmt: skip


def test_lora_reference_is_the_base_model_with_adapters_off(runs, tiny_sd15, tiny_pairs, heldout_data, tmp_path,
                                                              run_train):  # fmt: skip
    """A LoRA run's held-out reference (adapters off) is the full run's reference model: the same losses; at step 0
    (adapters B = 0) the policy is the reference."""
    from safetensors.torch import load_file

    out = tmp_path / "lora"
    run_train(*tiny_flags(tiny_sd15, tiny_pairs, out, *COMMON, "--heldout_pairs", heldout_data, *HELD,
                          "--lora_rank", 4, "--max_train_steps", 1, "--learning_rate", 1e-2))  # fmt: skip
    full, lora = (load_file(p / "heldout" / "reference.safetensors") for p in (runs / "held", out))
    assert all(torch.equal(full[k], lora[k]) for k in ("ref_w", "ref_l"))
    rows = heldout_rows(out)
    assert [r["step"] for r in rows] == [0, 1] and rows[0]["win_diff"] == 0.0 and rows[1]["win_diff"] != 0.0


# ----------------------------------------------------------------------------- split:N, processes, elastic resume


def test_split_rows_never_trained_on_across_a_two_to_one_process_resume(tiny_sd15, tiny_pairs, tmp_path):
    """torchrun: 2 processes x batch 1 with split:6, 8 steps over 15 training pairs (an epoch boundary inside);
    then checkpoint-4 resumed on 1 process (accumulation 2).  No batch of either ever holds a held-back row; the
    resumed run trains the samples the 2-process run trained; the 2-process held-out values are those of one
    process scoring the same weights, exactly."""
    from dist_helpers import COMMON as DDP

    flags = ["--pretrained_model_name_or_path", tiny_sd15, "--dataset_name", tiny_pairs, "--resolution", 64, *DDP,
             "--max_train_steps", 8, "--checkpointing_steps", 2, "--heldout_pairs", "split:6", "--heldout_steps", 4,
             "--train_batch_size", 1]  # fmt: skip
    two, one = tmp_path / "two", tmp_path / "one"
    proc = subprocess.run([str(a) for a in torchrun(2, *flags, "--output_dir", two)], env=env(tmp_path / "t2"),
                          cwd=tmp_path, capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    one.mkdir()
    shutil.copytree(two / "checkpoint-4", one / "checkpoint-4")
    shutil.copytree(two / "heldout", one / "heldout")
    shutil.copy(two / "metrics.jsonl", one / "metrics.jsonl")
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *map(str, flags), "--output_dir", str(one)],
                          env=env(tmp_path / "t1"), cwd=tmp_path, capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "it was 2 processes x batch 1 x accumulation 1, now 1 process x 1 x 2" in proc.stderr

    held = json.loads((two / "heldout" / "rows.json").read_text())["rows"]
    assert held == holdout.split_rows(21, 6, 3)[0] and len(held) == 6  # 24 rows - 3 ties; --seed 3
    first, resumed = read_trace(tmp_path / "t2"), read_trace(tmp_path / "t1")
    trained = [i for r in first + resumed for i in r["indices"]]
    assert len(trained) == 16 + 8 and not set(trained) & set(held)
    assert set(trained) <= set(range(21)) - set(held) and len(set(trained)) >= 14  # an epoch: 7 global batches of 2
    for step in (5, 6, 7):  # step 8: one process takes the epoch's 15th sample, the 2 x 1 layout's dropped tail
        assert step_indices(resumed, step) == step_indices(first, step)

    rows = {r["step"]: r for r in heldout_rows(two)}
    resumed_rows = heldout_rows(one)
    assert sorted(rows) == [0, 4, 8] and [r["step"] for r in resumed_rows] == [0, 4, 8]  # 4 not evaluated again
    assert resumed_rows[:2] == [rows[0], rows[4]]
    cfg = parse_args([str(a) for a in [*flags, "--output_dir", two]])
    from sdpo.data import pairs

    train_rows = pairs.clean_pairs(pairs.load_pairs(cfg.data), cfg.data)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the torchrun processes (OMP_NUM_THREADS=1): CPU kernels round by thread count
    try:
        evaluator = HeldOutEvaluator(eval_config(cfg), batch_size=1, held=holdout.prepare(cfg, train_rows, None))
        assert {k: rows[4][k] for k in COLUMNS} == evaluator.evaluate(two / "checkpoint-4" / "unet.pth")
    finally:
        torch.set_num_threads(threads)


def test_split_larger_than_the_data_is_refused_before_any_model_loads(tiny_sd15, tiny_pairs, tmp_path, run_train):
    with pytest.raises(UserError, match=r"--heldout_pairs split:21: the training data has 21 rows \(after dropping "
                                        r"ties and broken rows\), so nothing would be left to train on; hold back "
                                        r"fewer than 21"):  # fmt: skip
        run_train(*tiny_flags(tiny_sd15, tiny_pairs, tmp_path / "out", "--heldout_pairs", "split:21"))
    assert not (tmp_path / "out").exists()  # nothing written (the data is read before the output folder is made)


def test_split_rows_are_a_pure_function_of_the_seed():
    held, train = holdout.split_rows(100, 10, seed=4)
    assert len(held) == 10 and sorted(held + train) == list(range(100)) and held == sorted(held)
    assert holdout.split_rows(100, 10, seed=4) == (held, train) and holdout.split_rows(100, 10, seed=5)[0] != held
    from sdpo.data.pairs import ShardedPairSampler

    for world in (1, 2, 3):  # every layout samples exactly the training rows, each once an epoch
        seen = [i for r in range(world) for b in ShardedPairSampler(90, 1, r, world, 0, train) for _, i in b]
        assert sorted(seen) == train
    whole = ShardedPairSampler(100, 2, 0, 1, 0)  # without rows: the order drawn before rows existed
    g = torch.Generator().manual_seed(0)
    assert [i for b in whole for _, i in b] == torch.randperm(100, generator=g).tolist()


# ----------------------------------------------------------------------------- KTO, the cache, every family


def test_kto_on_labelled_images_logs_the_desirable_undesirable_analogue(tiny_sd15, tmp_path, run_train):
    """KTO on labelled images: a held-out sample is one image; winner = desirable, loser = undesirable, no lambda;
    the held-back images leave the pools training draws from."""
    from types import SimpleNamespace

    from test_kto import labelled_rows

    from sdpo.data import kto
    from sdpo.tiny import write_pairs
    from sdpo.training.setup import make_loader

    images = write_pairs(labelled_rows(24, seed=5), tmp_path / "images")
    out = tmp_path / "kto"
    flags = tiny_flags(tiny_sd15, images, out, "--train_method", "kto", "--kto_label_column", "desirable",
                       "--max_train_steps", 2, "--heldout_pairs", "split:8", "--heldout_steps", 2)  # fmt: skip
    run_train(*flags)
    rows = heldout_rows(out)
    assert [r["step"] for r in rows] == [0, 2] and all("lambda" not in r for r in rows)
    assert rows[0]["win_diff"] == rows[0]["lose_diff"] == 0.0 and rows[1]["win_diff"] != 0.0
    assert rows[1]["margin"] == rows[1]["win_diff"] - rows[1]["lose_diff"] and 0.0 <= rows[1]["implicit_acc"] <= 1
    cfg = parse_args([str(a) for a in flags])
    hf = kto.load(cfg.data)
    held = holdout.prepare(cfg, hf, None)
    desirable = [bool(hf[i]["desirable"]) for i in held.rows]
    assert any(desirable) and not all(desirable)  # both classes held out: the two curves exist
    loader, _, sampler = make_loader(cfg, hf, SimpleNamespace(process_index=0, num_processes=1), held.train_rows)
    pool = loader.dataset.hf
    assert sampler.n == len(hf) - 8 and sampler.rows is None  # a sample draws its image from the pools
    assert len(pool) == len(hf) - 8 and pool["caption"] == [hf[i]["caption"] for i in held.train_rows]


def test_precomputed_run_holds_out_cache_rows_like_the_uncached_run(tiny_sd15, tiny_pairs, tmp_path, run_train):
    """split:N of the cache holds back the rows split:N holds back from the pairs, and scores them like the
    uncached run (an fp32 cache trains like no cache, to float rounding); a held-out cache made for another
    resolution is refused in one line."""
    from test_cache import SHARDS, precompute

    extra = ["--resolution", 32, "--max_train_steps", 2, "--heldout_pairs", "split:4", "--heldout_steps", 2]
    cache = precompute(*tiny_flags(tiny_sd15, tiny_pairs, tmp_path / "unused", *extra), "--out", tmp_path / "c32",
                       *SHARDS)  # fmt: skip
    run_train(*tiny_flags(tiny_sd15, tiny_pairs, tmp_path / "plain", *extra))
    run_train(*tiny_flags(tiny_sd15, tiny_pairs, tmp_path / "cached", *extra, "--precomputed", cache))
    plain, cached = heldout_rows(tmp_path / "plain"), heldout_rows(tmp_path / "cached")
    assert [r["step"] for r in cached] == [0, 2]
    for a, b in zip(plain, cached, strict=True):
        assert b == pytest.approx(a, rel=1e-5, abs=1e-9)
    rows = lambda out: json.loads((out / "heldout" / "rows.json").read_text())["rows"]  # noqa: E731
    assert rows(tmp_path / "plain") == rows(tmp_path / "cached")

    c64 = precompute(*tiny_flags(tiny_sd15, tiny_pairs, tmp_path / "unused", "--resolution", 64), "--out",
                     tmp_path / "c64", *SHARDS)  # fmt: skip
    with pytest.raises(UserError, match=r"--heldout_pairs .*c64 \(held-out cache of a --precomputed .*c32 run\): "
                                        r".*c64: the cache was made for resolution 64 but this run has 32"):  # fmt: skip
        run_train(*tiny_flags(tiny_sd15, tiny_pairs, tmp_path / "o", *extra, "--precomputed", cache,
                              "--heldout_pairs", c64))  # fmt: skip
    cfg = parse_args([str(a) for a in tiny_flags(tiny_sd15, tiny_pairs, tmp_path / "o", *extra, "--precomputed",
                                                 cache, "--heldout_pairs", cache)])  # fmt: skip
    held = holdout.prepare(cfg, None, "no")  # a cache of the run's own models is taken, whatever its pairs
    assert held.kind == "cache" and held.rows == list(range(21)) and held.train_rows is None


@pytest.mark.parametrize("family", ["sdxl", "sd3", "cogvideox", "wan"])
def test_every_family_logs_heldout_values(family, request, tiny_pairs, tmp_path, run_train):
    """SD1.5 and FLUX (tests/test_sharding.py) are covered above; the others, one step each."""
    from conftest import flow_flags, video_flags

    model = request.getfixturevalue(f"tiny_{family}")
    video = family in ("cogvideox", "wan")
    data = request.getfixturevalue("tiny_video_pairs") if video else tiny_pairs
    make = video_flags if video else flow_flags if family == "sd3" else tiny_flags
    extra = [] if video or family == "sd3" else ["--resolution", 32, "--train_batch_size", 1, "--max_train_steps", 1,
                                                 "--no-gradient_checkpointing"]  # fmt: skip
    out = tmp_path / family
    run_train(*make(model, data, out, *extra, "--heldout_pairs", "split:2"))
    rows = heldout_rows(out)
    assert [r["step"] for r in rows] == [0, 1] and rows[0]["win_diff"] == 0.0 and rows[1]["win_diff"] != 0.0
    assert all(math.isfinite(v) for r in rows for v in r.values())


# ----------------------------------------------------------------------------- the guard


def test_guard_stops_diffusion_dpo_at_a_large_lr_and_not_with_the_safeguard(tiny_sd15, tiny_pairs, tmp_path,
                                                                            run_train):  # fmt: skip
    """From the tiny random model at lr 3e-3, Diffusion-DPO raises the held-out winner loss above the reference
    (the loser's more): the guard stops it, with a checkpoint and exit status 3.  The same run with the safeguard
    lowers the winner loss and trains to the end."""
    flags = ["--train_batch_size", 4, "--learning_rate", 3e-3, "--beta_dpo", 5000, "--max_train_steps", 8,
             "--checkpointing_steps", 100, "--heldout_pairs", "split:8", "--heldout_steps", 2, "--winner_guard",
             "stop", "--winner_guard_patience", 2, "--mixed_precision", "no"]  # fmt: skip
    dpo = tmp_path / "dpo"
    cmd = [sys.executable, str(ROOT / "train.py"), *map(str, tiny_flags(tiny_sd15, tiny_pairs, dpo, *flags))]
    proc = subprocess.run(cmd, env=env(), cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == WinnerGuard.EXIT_CODE == 3, proc.stderr[-3000:]
    stop = json.loads((dpo / "heldout" / "guard_stop.json").read_text())
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("stopped: ")]
    assert line.startswith(f"stopped: winner guard at step {stop['step']}: the held-out winner loss ")
    assert f"the weights of step {stop['step']} are in {dpo / stop['checkpoint']}" in line
    rows = heldout_rows(dpo)
    assert stop["step"] in (6, 8) and rows[-1]["step"] == stop["step"]  # stopped at the evaluation that fired
    assert all(r["win_diff"] / r["ref_w"] > 0.01 for r in rows[-2:])  # two in a row above 1%
    assert (dpo / f"checkpoint-{stop['step']}" / "training_state.json").is_file() and not (dpo / "unet.pth").exists()

    safe = tmp_path / "sdpo"
    run_train(*tiny_flags(tiny_sd15, tiny_pairs, safe, *flags, "--use_winner_preserving", "--winner_preserving_mu",
                          0.9))  # fmt: skip
    rows = heldout_rows(safe)
    assert [r["step"] for r in rows] == [0, 2, 4, 6, 8] and (safe / "unet.pth").is_file()
    assert all(r["win_diff"] < 0 for r in rows[1:]) and not (safe / "heldout" / "guard_stop.json").exists()


def test_guard_counts_evaluations_in_a_row_and_ignores_step_0():
    guard = WinnerGuard(SimpleNamespace(winner_guard="warn", winner_guard_threshold=0.01, winner_guard_patience=2))

    def values(rel):
        return {"win_diff": rel * 2.0, "ref_w": 2.0, "model_w": 2.0 * (1 + rel), "margin": -0.5, "implicit_acc": 0.75}

    assert [guard.observe(s, values(r)) for s, r in ((0, 0.5), (1, 0.02), (2, 0.005), (3, 0.02))] == [None] * 4
    line = guard.observe(4, values(0.03))
    assert line == ("winner guard at step 4: the held-out winner loss 2.06 is +3.00% relative to the reference's 2, "
                    "above the threshold 1.00% for 2 evaluations in a row (steps 3: +2.00%, 4: +3.00%); margin -0.5, "
                    "implicit accuracy 0.750")  # fmt: skip
    assert guard.observe(5, values(0.04)).startswith("winner guard at step 5") and guard.observe(6, values(0.0)) is None


# ----------------------------------------------------------------------------- the plot


def test_plot_draws_figure_1_from_a_run_folder(runs, tmp_path):
    from PIL import Image

    from sdpo.plot.curves import main

    main([str(runs / "held"), "--heldout", "--out", str(tmp_path / "fig1.png")])
    with Image.open(tmp_path / "fig1.png") as img:
        assert img.format == "PNG" and img.size[0] > 600
    with pytest.raises(SystemExit) as e:
        main([str(runs / "plain"), "--heldout", "--out", str(tmp_path / "no.png")])
    assert e.value.code == 2 and not (tmp_path / "no.png").exists()


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--heldout_steps", "5"], "--heldout_steps only act with --heldout_pairs; add it or drop them"),
        (["--winner_guard", "stop"], "--winner_guard only act with --heldout_pairs"),
        (["--heldout_pairs", "split:4", "--winner_guard_patience", "2"],
         "--winner_guard_patience only act with --winner_guard warn or stop"),
        (["--heldout_pairs", "split:x"], "--heldout_pairs split:x: split:N needs a whole number of pairs N >= 1"),
        (["--heldout_pairs", "split:0"], "split:N needs a whole number of pairs N >= 1"),
        (["--heldout_pairs", "split:4", "--streaming", "--max_train_steps", "2"],
         "--heldout_pairs split:4 with --streaming: a stream is read in buffer-shuffled order, so held-back rows "
         "cannot be kept out of training exactly"),
        (["--heldout_pairs", "./no/such/pairs"], "--heldout_pairs ./no/such/pairs: no such folder or file"),
        (["--heldout_pairs", "split:4", "--heldout_repeats", "0"], "--heldout_repeats must be >= 1, got 0"),
        (["--heldout_pairs", "split:4", "--winner_guard", "warn", "--winner_guard_threshold", "-1"],
         "--winner_guard_threshold must be >= 0"),
    ],
)  # fmt: skip
def test_bad_heldout_flags_are_one_line(flags, message, tiny_sd15):
    with pytest.raises(UserError) as e:
        parse_args(["--pretrained_model_name_or_path", str(tiny_sd15), *flags])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_heldout_set_for_another_family_is_refused_before_any_model_loads(tiny_sd15, tiny_pairs, tiny_video_pairs,
                                                                           tmp_path, run_train, monkeypatch):  # fmt: skip
    import sdpo.families as families

    monkeypatch.setattr(families.ModelFamily, "load", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(UserError, match=r"--heldout_pairs .*video_pairs: dataset .* lacks column\(s\) \['jpg_0', "
                                        r"'jpg_1'\]; a Pick-a-Pic pair needs"):  # fmt: skip
        run_train(*tiny_flags(tiny_sd15, tiny_pairs, tmp_path / "o", "--heldout_pairs", tiny_video_pairs))


def test_heldout_source_must_match_the_precomputed_setting(tiny_sd15, tiny_pairs, tmp_path):
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "plan.json").write_text("{}")
    base = ["--pretrained_model_name_or_path", str(tiny_sd15), "--heldout_pairs"]
    with pytest.raises(UserError, match=r"a --precomputed run loads no VAE or text encoder, so its held-out pairs "
                                        r"come from a cache too; pass split:N"):  # fmt: skip
        parse_args([*base, str(tiny_pairs), "--precomputed", str(tmp_path / "cache")])
    with pytest.raises(UserError, match=r"a latent cache; it needs --precomputed"):
        parse_args([*base, str(tmp_path / "cache")])


def test_guard_stop_is_a_run_stopped_with_exit_status_3(capsys):
    from sdpo.errors import cli_main

    @cli_main
    def stops():
        raise RunStopped("winner guard at step 4: ...", exit_code=3)

    with pytest.raises(SystemExit) as e:
        stops()
    assert e.value.code == 3 and capsys.readouterr().err == "stopped: winner guard at step 4: ...\n"
