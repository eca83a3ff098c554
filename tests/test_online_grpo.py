"""python -m sdpo.online --algorithm grpo: two rounds end to end on a tiny SD1.5 (rollouts kept whole and their
log-probabilities recomputed exactly under the weights that drew them, advantages against a hand computation,
weights and optimizer state handed from round to round), the same on a tiny FLUX.1 (Flow-GRPO's SDE), SIGKILL
at every GRPO stage then a rerun equal to the uninterrupted run bit for bit, 2 processes = 1, the GRPO flags'
bad input, and the online demo's two GRPO runs at the quick size."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from dist_helpers import env as dist_env
from dist_helpers import free_port
from test_online import launch, run_online, same_weights, stages

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["a red circle", "a blue square"]


@pytest.fixture(scope="module")
def prompt_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("grpo_prompts")
    (d / "train.txt").write_text("\n".join(PROMPTS) + "\n")
    (d / "heldout.txt").write_text("one yellow square in the middle\n")
    return d / "train.txt", d / "heldout.txt"


def flags(model, prompts, out, *extra, rounds=2, heldout=False) -> list[str]:
    """2 prompts x G=2 rollouts of 2 DDIM steps (eta 1) at 32 px; one inner epoch, one group per optimizer step, the
    winner-preserving option on (so its lambda is exercised and logged)."""
    train, held = prompts
    out_flags = [
        "--algorithm", "grpo", "--out", out, "--rounds", rounds, "--prompts", train, "--samples_per_prompt", "2",
        "--epochs_per_round", "1", "--sample_steps", "2", "--reward", "tiny_colour", "--kl_beta", "0.04",
        "--pretrained_model_name_or_path", model, "--resolution", "32", "--learning_rate", "1e-3",
        "--report_to", "none", "--use_winner_preserving", "--winner_preserving_mu", "0.5",
    ]  # fmt: skip
    if heldout:
        out_flags += ["--heldout_prompts", held, "--heldout_reward", "tiny_picture"]
    return [str(f) for f in out_flags + list(extra)]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / "weights" / "unet.pth", map_location="cpu", weights_only=True)


def optimizer_state(folder: Path) -> dict:
    return torch.load(folder / "weights" / "optimizer.pt", map_location="cpu", weights_only=True)


def same_optimizer(a: dict, b: dict) -> bool:
    return all(torch.equal(a["state"][i][k], b["state"][i][k]) for i in a["state"] for k in a["state"][i])


@pytest.fixture(scope="module")
def grpo_run(tiny_sd15, prompt_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("grpo") / "run"
    run_online(flags(tiny_sd15, prompt_files, out, heldout=True))
    return out


def _family(model, policy: Path | None):
    from sdpo.config import parse_args
    from sdpo.families import get_family

    argv = ["--pretrained_model_name_or_path", str(model), "--resolution", "32"]
    cfg = parse_args(argv + (["--policy_init", str(policy)] if policy else []))
    return get_family(cfg.model.model_family).load(cfg.model, torch.device("cpu"), torch.float32, False)


def test_grpo_rounds_end_to_end(grpo_run, tiny_sd15):
    from sdpo.online.grpo_settings import exact_threads
    from sdpo.rl.logprob import recompute
    from sdpo.rl.trajectory import Trajectories
    from sdpo.sampling.images import decode_latents

    rounds = [json.loads(line) for line in (grpo_run / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert set(rounds[1]["seconds"]) == {"samples", "scores", "train", "eval"}
    assert all(0.0 <= r["mean_lambda"] <= 1.0 and r["steps"] == 2 for r in rounds[1:])  # one step per group
    r2 = grpo_run / "round-002"
    manifest = json.loads((r2 / "samples" / "manifest.json").read_text())
    assert manifest["trajectories"] == ["trajectories/call-00000.safetensors", "trajectories/call-00001.safetensors"]
    # advantages: (r - group mean) / (std of every reward of the round + 1e-4), population std (Flow-GRPO)
    scores = [json.loads(line) for line in (r2 / "scores.jsonl").read_text().splitlines()]
    adv = [json.loads(line)["advantage"] for line in (r2 / "advantages.jsonl").read_text().splitlines()]
    r = np.array([s["reward"] for s in scores])
    want = [(r[i] - r[2 * (i // 2) : 2 * (i // 2) + 2].mean()) / (r.std() + 1e-4) for i in range(4)]
    np.testing.assert_allclose(adv, want, rtol=1e-12)
    # round 2's rollouts were drawn by round 1's weights: their log-probabilities recompute exactly under them,
    # and the scored PNG is the decoded final latent
    fam = _family(tiny_sd15, grpo_run / "round-001" / "weights" / "unet.pth")
    worst = 0.0
    with torch.no_grad(), exact_threads(torch.device("cpu")):
        for name in manifest["trajectories"]:
            traj = Trajectories.load(r2 / name)
            rows = torch.arange(len(traj))
            for j in range(traj.process.steps):
                out, _ = recompute(fam, fam.denoiser, traj, rows, torch.full((len(rows),), j))
                worst = max(worst, float((out.log_prob - traj.log_probs[:, j]).abs().max()))
        image = decode_latents(fam.sampling_components(fam.denoiser, None), traj.final[-1:])[0]
    assert worst <= 1e-6
    png = np.asarray(read_png(r2 / "samples" / "00001_1.png"))
    assert np.array_equal(png, np.asarray(image))
    # the policy moved, and round 2 continued round 1's optimizer (its step count went on)
    base = _family(tiny_sd15, None).denoiser.state_dict()
    assert not same_weights(weights(grpo_run / "round-001"), {k: v.cpu() for k, v in base.items()})
    steps = lambda f: int(next(iter(optimizer_state(f)["state"].values()))["step"])  # noqa: E731
    assert (steps(grpo_run / "round-001"), steps(r2)) == (2, 4)


def test_grpo_rounds_on_a_flow_family(tiny_flux, prompt_files, tmp_path):
    """The same rounds on a tiny FLUX.1: Flow-GRPO's SDE rollouts (noise level 0.7), transformer.pth handed on,
    round 2's rollouts recomputed exactly under round 1's weights."""
    from sdpo.online.grpo_settings import exact_threads
    from sdpo.rl.flow_sde import FlowSDE
    from sdpo.rl.logprob import recompute
    from sdpo.rl.trajectory import Trajectories

    out = tmp_path / "flux"
    argv = flags(tiny_flux, prompt_files, out, "--sample_steps", "3")
    argv = [a for a in argv if a not in ("--use_winner_preserving",)]
    run_online(argv)
    rec = stages(out / "round-002")["train"]["result"]
    assert rec["weights"] == "weights/transformer.pth" and rec["steps"] == 4  # 4 rollouts, one per step
    traj = Trajectories.load(out / "round-002" / "trajectories" / "call-00001.safetensors")
    assert isinstance(traj.process, FlowSDE) and traj.process.noise_level == 0.7
    fam = _family(tiny_flux, out / "round-001" / "weights" / "transformer.pth")
    rows = torch.arange(len(traj))
    with torch.no_grad(), exact_threads(torch.device("cpu")):
        worst = max(float((recompute(fam, fam.denoiser, traj, rows, torch.full((2,), j))[0].log_prob
                           - traj.log_probs[:, j]).abs().max()) for j in range(traj.process.steps))  # fmt: skip
    assert worst <= 1e-6


def read_png(path: Path):
    """A PNG's RGB pixels."""
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")


def test_grpo_sigkill_at_every_stage_then_rerun_equals_the_uninterrupted_run(tiny_sd15, prompt_files, grpo_run,
                                                                             tmp_path):  # fmt: skip
    out = tmp_path / "killed"
    argv = flags(tiny_sd15, prompt_files, out)
    kills = ["round-001/samples", "round-001/train", "round-002/samples"]  # scores: the DPO rounds' stage, tested there
    for point in kills:
        proc = launch(argv, SDPO_CRASH_AT=f"online:{point}")
        assert proc.returncode == -signal.SIGKILL, (point, proc.stderr[-3000:])
    proc = launch(argv)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for r in (1, 2):
        folder, ref = out / f"round-{r:03d}", grpo_run / f"round-{r:03d}"
        assert same_weights(weights(folder), weights(ref)), r
        assert same_optimizer(optimizer_state(folder), optimizer_state(ref)), r
        rec = stages(folder)
        for name in ("samples", "scores", "train"):
            assert rec[name]["attempts"] == (2 if f"round-{r:03d}/{name}" in kills else 1), (r, name)
    # the first call of round 1 was drawn before the kill and not again (its file is the uninterrupted run's)
    name = "trajectories/call-00000.safetensors"
    assert (out / "round-001" / name).read_bytes() == (grpo_run / "round-001" / name).read_bytes()


def test_grpo_two_processes_equal_one(tiny_sd15, prompt_files, grpo_run, tmp_path):
    out = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--nnodes", "1", "--master_addr",
           "127.0.0.1", "--master_port", str(free_port()), "-m", "sdpo.online",
           *flags(tiny_sd15, prompt_files, out, rounds=1)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=dist_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = grpo_run / "round-001", out / "round-001"
    for name in ("trajectories/call-00000.safetensors", "trajectories/call-00001.safetensors", "scores.jsonl",
                 "advantages.jsonl"):  # fmt: skip
        assert (one / name).read_bytes() == (two / name).read_bytes(), name
    assert same_weights(weights(one), weights(two))


def test_grpo_bad_input_is_one_line(tiny_sd15, prompt_files, tmp_path, capsys):
    from test_online import _error

    from sdpo.online.options import parse

    out = tmp_path / "new"
    base = flags(tiny_sd15, prompt_files, out, rounds=1)
    e = base.index("--epochs_per_round")
    err = _error(capsys, base[:e] + ["--steps_per_round", "2"] + base[e + 2 :])
    assert "--steps_per_round is for --algorithm dpo" in err
    assert "--lora_rank with --algorithm grpo is not supported yet" in _error(capsys, base + ["--lora_rank", "4"])
    assert "--winner_preserving_mode fixed is not a GRPO option" in _error(
        capsys, base + ["--winner_preserving_mode", "fixed", "--winner_preserving_lambda", "0.5"])
    assert "the rollout eta must be > 0" in _error(capsys, base + ["--rollout_noise", "0"])
    assert "a GRPO round has no pairs stage" in _error(capsys, base + ["--stop_after", "pairs"])
    assert not out.exists()
    # the process's defaults fill in (DDIM eta 1.0, every step trained); a dpo run is not bound to GRPO settings
    opts, _ = parse(base)
    assert (opts.rollout_noise, opts.timestep_fraction) == (1.0, 1.0)
    dpo = [a for a in base if a not in ("--use_winner_preserving",)]
    dpo[dpo.index("grpo")] = "dpo"
    dpo_opts, _ = parse(dpo)
    assert "kl_beta" not in dpo_opts.identity() and "kl_beta" in opts.identity()


def test_online_demo_grpo_runs_quick(tmp_path, capsys):
    """The demo's GRPO runs at the quick size: both start from the same base with the same rollouts (the same
    reward budget), only the winner-preserving one logs lambda, and the table shows both."""
    from sdpo.demo.online import GRPO_RUNS, QUICK, run_demo

    rows = run_demo(tmp_path / "demo", QUICK, runs=GRPO_RUNS)
    runs = tmp_path / "demo" / "runs"
    assert [(r["run"], r["round"]) for r in rows] == [(n, i) for n, _, _ in GRPO_RUNS for i in range(QUICK.rounds + 1)]
    name = "round-001/trajectories/call-00000.safetensors"
    assert (runs / "grpo" / name).read_bytes() == (runs / "grpo+wp" / name).read_bytes()
    assert all(("mean_lambda" in r) == (r["run"] == "grpo+wp") for r in rows if r["round"] >= 1)
    assert all(r["kl"] >= 0.0 for r in rows if r["round"] >= 1)
    out = capsys.readouterr().out
    assert "grpo+wp" in out and (tmp_path / "demo" / "online.png").is_file()
