"""python -m sdpo.online: one round end to end, resume after SIGKILL at every stage (bit-identical to an
uninterrupted run), 2 processes = 1, plain train.py on a round's pairs, bad input, and the pure parts (pairs,
plan, divergence, rewards, statistics) against hand computations."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import reset_accelerate
from dist_helpers import env as dist_env
from dist_helpers import free_port

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["a red circle", "a blue square", "a green circle"]
HELDOUT = ["one yellow square in the middle"]
STAGES = ("samples", "scores", "pairs", "train", "eval")


@pytest.fixture(scope="module")
def prompt_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("prompts")
    (d / "train.txt").write_text("\n".join(PROMPTS) + "\n")
    (d / "heldout.txt").write_text("\n".join(HELDOUT) + "\n")
    return d / "train.txt", d / "heldout.txt"


def flags(model, prompts, out, *extra, rounds=2, heldout=True) -> list[str]:
    """A tiny online run: 3 prompts x K=2 at 32 px, 2 sampler steps, 2 optimizer steps per round."""
    train, held = prompts
    out_flags = [
        "--out", out, "--rounds", rounds, "--prompts", train, "--samples_per_prompt", "2", "--steps_per_round", "2",
        "--sample_steps", "2", "--reward", "tiny_colour",
        "--pretrained_model_name_or_path", model, "--resolution", "32", "--train_batch_size", "2",
        "--learning_rate", "1e-3", "--lr_warmup_steps", "0", "--report_to", "none", "--beta_dpo", "500",
        "--checkpointing_steps", "1", "--proportion_empty_prompts", "0",
    ]  # fmt: skip
    if heldout:
        out_flags += ["--heldout_prompts", held, "--heldout_reward", "tiny_picture"]
    return [str(f) for f in out_flags + list(extra)]


def run_online(argv):
    from sdpo.online.rounds import run_online as run

    reset_accelerate()
    try:
        return run(argv)
    finally:
        reset_accelerate()


def launch(argv, **extra_env) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **extra_env}
    return subprocess.run([sys.executable, "-m", "sdpo.online", *argv], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / "weights" / "unet.pth", map_location="cpu", weights_only=True)


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def stages(folder: Path) -> dict:
    return json.loads((folder / "stages.json").read_text())


@pytest.fixture(scope="module")
def uninterrupted(tiny_sd15, prompt_files, tmp_path_factory):
    """Two rounds without interruption, in this process (the reference every other run is compared with)."""
    out = tmp_path_factory.mktemp("online") / "run"
    run_online(flags(tiny_sd15, prompt_files, out))
    return out


def test_one_round_end_to_end(uninterrupted, capsys):
    import pyarrow.parquet as pq

    r1 = uninterrupted / "round-001"
    assert sorted(p.name for p in (r1 / "samples").glob("*.png")) == [f"{i:05d}_{k}.png" for i in range(3) for k in (0, 1)]
    scores = [json.loads(line) for line in (r1 / "scores.jsonl").read_text().splitlines()]
    assert [s["index"] for s in scores] == list(range(6)) and {s["prompt"] for s in scores} == set(PROMPTS)
    table = pq.read_table(r1 / "pairs" / "pairs.parquet").to_pylist()
    by_path = {s["path"]: s["reward"] for s in scores}
    assert len(table) == 3  # best vs worst per prompt (no ties between two distinct float rewards here)
    for row in table:
        assert row["reward_0"] >= row["reward_1"] and row["label_0"] == 1.0
        assert (row["reward_0"], row["reward_1"]) == (by_path[row["sample_0"]], by_path[row["sample_1"]])
        assert row["jpg_0"] == (r1 / row["sample_0"]).read_bytes()  # the scored pixels are the trained pixels
    assert (r1 / "weights" / "unet.pth").is_file() and stages(r1)["train"]["result"]["steps"] == 2
    rounds = [json.loads(line) for line in (uninterrupted / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert rounds[1]["pairs_kept"] == 3 and rounds[1]["train_reward_max"] == max(by_path.values())
    assert {"heldout_reward_mean", "heldout_trained_reward_mean", "win_rate_vs_round0", "saturation",
            "near_constant", "heldout_contrast"} <= rounds[1].keys()  # fmt: skip
    assert set(rounds[1]["seconds"]) == set(STAGES)
    # a rerun of the finished folder does nothing and says so
    before = (uninterrupted / "round-002" / "stages.json").read_text()
    capsys.readouterr()
    run_online(_rerun_flags(uninterrupted))
    assert "nothing to do" in capsys.readouterr().out
    assert (uninterrupted / "round-002" / "stages.json").read_text() == before


def _rerun_flags(out: Path) -> list[str]:
    cfg = json.loads((out / "online.json").read_text())
    d, t = cfg["driver"], cfg["train"]
    return flags(t["pretrained_model_name_or_path"], (d["prompts"], d["heldout_prompts"]), out)


@pytest.mark.parametrize("round_", [1, 2])
def test_pairs_train_identically_through_train_py(uninterrupted, run_train, tmp_path, round_):
    """A round's pair dataset is a normal one: train.py on it (round 2: from round 1's weights, --policy_init)
    gives the round's weights bit for bit."""
    folder = uninterrupted / f"round-{round_:03d}"
    cfg = json.loads((uninterrupted / "online.json").read_text())["train"]
    extra = ["--seed", str(cfg["seed"] + round_ - 1), "--proportion_empty_prompts", "0", "--checkpointing_steps", "1"]
    if round_ == 2:
        extra += ["--policy_init", str(uninterrupted / "round-001" / "weights" / "unet.pth")]
    out = tmp_path / "plain"
    run_train("--pretrained_model_name_or_path", cfg["pretrained_model_name_or_path"],
              "--dataset_name", folder / "pairs" / "pairs.parquet", "--output_dir", out, "--resolution", "32",
              "--train_batch_size", "2", "--learning_rate", "1e-3", "--lr_warmup_steps", "0", "--report_to", "none",
              "--beta_dpo", "500", "--max_train_steps", "2", *extra)  # fmt: skip
    plain = torch.load(out / "unet.pth", map_location="cpu", weights_only=True)
    assert same_weights(plain, weights(folder))


def test_sigkill_at_every_stage_then_rerun_equals_the_uninterrupted_run(tiny_sd15, prompt_files, uninterrupted, tmp_path):
    out = tmp_path / "killed"
    argv = flags(tiny_sd15, prompt_files, out)
    kills = ["round-000/eval", "round-001/samples", "round-001/scores", "round-001/pairs",
             "round-001/train:checkpoint-2", "round-002/eval"]  # fmt: skip
    first_sample = out / "round-001" / "samples" / "00000_0.png"
    mtime = None
    for point in kills:
        proc = launch(argv, SDPO_CRASH_AT=f"online:{point}")
        assert proc.returncode == -signal.SIGKILL, (point, proc.stderr[-3000:])
        if point == "round-001/samples":
            mtime = first_sample.stat().st_mtime_ns  # drawn before the kill
    proc = launch(argv)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for r in (1, 2):
        assert same_weights(weights(out / f"round-{r:03d}"), weights(uninterrupted / f"round-{r:03d}"))
    assert first_sample.stat().st_mtime_ns == mtime  # not drawn again
    killed = {tuple(p.split("/")) for p in kills}
    for r, names in ((0, ("eval",)), (1, STAGES), (2, STAGES)):
        rec = stages(out / f"round-{r:03d}")
        for name in names:
            hit = any(k[0] == f"round-{r:03d}" and k[1].split(":")[0] == name for k in killed)
            assert rec[name]["done"] and rec[name]["attempts"] == (2 if hit else 1), (r, name, rec[name])
    # train resumed from its checkpoint-1 rather than starting over: its metrics log has each step once
    log = [json.loads(line) for line in (out / "round-001" / "weights" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2]
    assert [json.loads(x)["round"] for x in (out / "rounds.jsonl").read_text().splitlines()] == [0, 1, 2]
    for name in ("scores.jsonl", "pairs/pairs.parquet"):
        assert (out / "round-002" / name).read_bytes() == (uninterrupted / "round-002" / name).read_bytes()


def test_two_processes_make_the_same_samples_scores_and_pairs_as_one(tiny_sd15, prompt_files, uninterrupted, tmp_path):
    out = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--nnodes", "1", "--master_addr",
           "127.0.0.1", "--master_port", str(free_port()), "-m", "sdpo.online",
           *flags(tiny_sd15, prompt_files, out, "--stop_after", "pairs", rounds=1, heldout=False)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=dist_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = uninterrupted / "round-001", out / "round-001"
    names = sorted(p.name for p in (one / "samples").iterdir())
    assert names == sorted(p.name for p in (two / "samples").iterdir())
    for name in names:
        assert (one / "samples" / name).read_bytes() == (two / "samples" / name).read_bytes(), name
    assert (one / "scores.jsonl").read_bytes() == (two / "scores.jsonl").read_bytes()
    assert (one / "pairs" / "pairs.parquet").read_bytes() == (two / "pairs" / "pairs.parquet").read_bytes()
    assert not (two / "weights").exists()  # --stop_after pairs


# ----------------------------------------------------------------------------- bad input


def _error(capsys, argv) -> str:
    from sdpo.online.cli import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_bad_input_is_one_line_and_writes_nothing(tiny_sd15, prompt_files, uninterrupted, tmp_path, capsys):
    out = tmp_path / "new"
    base = flags(tiny_sd15, prompt_files, out, rounds=1)
    k = base.index("--samples_per_prompt")
    assert "--samples_per_prompt must be >= 2" in _error(capsys, base[:k + 1] + ["1"] + base[k + 2:])
    r = base.index("--reward")
    err = _error(capsys, base[:r + 1] + ["hps"] + base[r + 2:])
    assert "--reward hps: unknown reward" in err and "pickscore, hpsv2, aesthetics, clip, imagereward" in err
    assert "temporal_flickering is for video families" in _error(capsys, base[:r + 1] + ["temporal_flickering"] + base[r + 2:])
    p = base.index("--prompts")
    assert "no such file" in _error(capsys, base[:p + 1] + [str(tmp_path / "missing.txt")] + base[p + 2:])
    (tmp_path / "empty.txt").write_text("\n")
    assert "holds no prompts" in _error(capsys, base[:p + 1] + [str(tmp_path / "empty.txt")] + base[p + 2:])
    assert "--output_dir is set by the driver" in _error(capsys, base + ["--output_dir", str(tmp_path)])
    assert "--heldout_reward tiny_colour is the reward the rounds train on" in _error(
        capsys, flags(tiny_sd15, prompt_files, out, "--heldout_reward", "tiny_colour"))
    assert not out.exists()
    # a folder made with other settings: the field named, nothing overwritten
    files = {p: p.stat().st_mtime_ns for p in uninterrupted.rglob("*") if p.is_file()}
    err = _error(capsys, _rerun_flags(uninterrupted) + ["--learning_rate", "5e-4"])
    assert "made with --learning_rate 0.001, this command has 0.0005" in err
    err = _error(capsys, [a if a != "tiny_picture" else "pickscore" for a in _rerun_flags(uninterrupted)])
    assert "--heldout_reward 'tiny_picture', this command has 'pickscore'" in err
    assert {p: p.stat().st_mtime_ns for p in uninterrupted.rglob("*") if p.is_file()} == files


# ----------------------------------------------------------------------------- the pure parts


def test_pairs_best_worst_and_all_with_ties_and_gaps():
    from sdpo.online.pairs import build

    rows = [{"pos": 0, "k": k, "reward": v} for k, v in enumerate([0.2, 0.5, 0.5, 0.1])] + \
           [{"pos": 1, "k": k, "reward": 0.3} for k in range(3)] + \
           [{"pos": 2, "k": 0, "reward": 0.40}, {"pos": 2, "k": 1, "reward": 0.42}]  # fmt: skip
    pairs, counts = build(rows, "best_worst", 0.05)
    assert [(w["pos"], w["k"], lo["k"]) for w, lo in pairs] == [(0, 1, 3)]  # the tie for best goes to the lower k
    assert counts == {"pairs_kept": 1, "pairs_dropped": 2, "ties": 1, "below_gap": 1}
    pairs, counts = build(rows, "all", 0.0)
    # prompt 0: 6 pairs, one tie (0.5, 0.5); prompt 1: 3 ties; prompt 2: 1 pair
    assert counts == {"pairs_kept": 6, "pairs_dropped": 4, "ties": 4, "below_gap": 0}
    assert all(w["reward"] > lo["reward"] for w, lo in pairs)


def test_plan_seeds_prompts_and_calls():
    from sdpo.online.plan import calls, heldout_samples, round_prompts, round_samples

    a, b = round_samples(PROMPTS, 1, 2, None, 0), round_samples(PROMPTS, 2, 2, None, 0)
    assert len({s.seed for s in a + b}) == 12  # every sample of every round its own noise
    assert [s.seed for s in heldout_samples(PROMPTS, 0)] == [s.seed for s in heldout_samples(PROMPTS, 0)]
    # --prompts_per_round: each pass over the file takes every prompt once
    seen = round_prompts(5, 1, 2, 7) + round_prompts(5, 2, 2, 7) + round_prompts(5, 3, 2, 7)[:1]
    assert sorted(seen) == list(range(5))
    assert [[s.stem for s in c] for c in calls(a, 2)] == [["00000_0", "00000_1", "00001_0", "00001_1"],
                                                          ["00002_0", "00002_1"]]  # fmt: skip


def test_divergence_needs_patience_rounds_of_rising_train_and_falling_heldout():
    from sdpo.online.divergence import streak, warning

    def row(r, trained, held):
        return {"round": r, "heldout_trained_reward_mean": trained, "heldout_reward_mean": held}

    rows = [row(0, 0.1, 0.9), row(1, 0.2, 0.95), row(2, 0.3, 0.8), row(3, 0.4, 0.7)]
    assert streak(rows) == 2 and streak(rows[:3]) == 1 and streak(rows[:2]) == 0
    assert warning(rows, 3, "a", "b") is None
    line = warning(rows, 2, "tiny_colour", "tiny_picture")
    assert line.startswith("warning: possible reward hacking: tiny_colour rose and tiny_picture fell")
    assert "round 1 -> 3" in line and "0.95 -> 0.7" in line


def test_tiny_rewards_and_image_statistics():
    from PIL import Image

    from sdpo.online.stats import frame_stats
    from sdpo.rewards.colour import TinyColour, TinyPicture
    from sdpo.tiny.images import COLOURS, draw_shape

    red = draw_shape("circle", COLOURS["red"], 32)
    blue = draw_shape("circle", COLOURS["blue"], 32)
    flood = Image.new("RGB", (32, 32), COLOURS["red"])
    colour = TinyColour(torch.device("cpu")).score([red, blue, flood], ["a red circle"] * 3)
    area = np.mean(np.all(np.asarray(red) == COLOURS["red"], axis=-1))  # the drawn circle's pixels, exactly
    assert colour[0] == pytest.approx(area, abs=0.02) and colour[1] < 0.01 and colour[2] == 1.0
    picture = TinyPicture(torch.device("cpu")).score([red, blue, flood], ["a red circle"] * 3)
    assert picture[0] == 1.0 and picture[2] < picture[1] < 1.0  # flooding the frame games colour, not picture
    flat = frame_stats(np.full((1, 8, 8, 3), 128, np.uint8))
    assert flat == {"saturation": 0.0, "contrast": 0.0, "near_constant": 1.0}
    assert frame_stats(np.asarray(red)[None])["near_constant"] == 0.0
