"""The online demo: iterative on-policy preference training (the SIPO paper's Appendix F.2) on a CPU in minutes.

    python -m sdpo.demo online --out DIR [--quick] [--rounds 4] [--threads 1]

Everything runs through the real code: ``sdpo.tiny`` builds a tiny SD1.5-format model, an SFT run
(``train.py --train_method sft``) teaches it captioned pictures of coloured shapes (the shared base of every
run), and ``python -m sdpo.online`` (in this process) runs the rounds three times from it:

* ``diffusion-dpo``, ``diffusion-dpo+sdpo`` (the safeguard, mu 0.9) and ``sipo``, with the paper's SD1.5
  beta (5000) for all three and otherwise identical settings (seeds, prompts, learning rate, steps);
* with ``--grpo``, two more runs from the same base: GRPO (``--algorithm grpo``: K stochastic rollouts per
  prompt, group-normalised advantages, Flow-GRPO's clipped update with its KL term, one inner epoch over half
  the rollout steps) with and without the winner-preserving option (the same mu), on the same prompts, K,
  sampler steps and rounds, so every run scores the same number of samples (the same reward budget);
* each round samples K images of each training prompt from the current weights, ranks them with the tiny
  colour reward (``tiny_colour``: how much of the image is the caption's colour, which a model can game by
  flooding the frame), trains on best-vs-worst pairs starting from the previous round (reference: the base),
  and scores held-out prompts (other wordings of the same scenes) with ``tiny_picture`` (how close the image is
  to the caption's picture: shape, colour and background) as well as with ``tiny_colour``.

Output: ``DIR/runs/<method>/`` (the online run folders), ``DIR/online.csv`` and ``DIR/online.png``
(``python -m sdpo.plot``'s rounds view) and a printed table.  The numbers are what they are: the toy is not
tuned to reproduce the paper's Figure A1.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from sdpo.atomic import atomic_path
from sdpo.demo.dynamics import DemoSize, _quiet, build_inputs, common_flags, run_train
from sdpo.errors import UserError, cli_main
from sdpo.families import DEFAULT_FAMILY, get_family
from sdpo.tiny.images import COLOURS, SHAPES

MARKER = ".sdpo-demo-online"
_OWN = ("model", "data", "sft", "runs", "prompts", "online.csv", "online.png")
RUNS = (("diffusion-dpo", "diffusion-dpo", False), ("diffusion-dpo+sdpo", "diffusion-dpo", True),
        ("sipo", "sipo", False))  # fmt: skip
GRPO_RUNS = (("grpo", "grpo", False), ("grpo+wp", "grpo", True))  # (name, "grpo": the algorithm, safeguard)
COLUMNS = ("run", "round", "train_reward_mean", "train_reward_max", "heldout_trained_reward_mean",
           "heldout_reward_mean", "win_rate_vs_round0", "saturation", "near_constant", "pairs_kept", "mean_lambda", "kl")  # fmt: skip


@dataclass(frozen=True)
class OnlineDemoSize:
    resolution: int = 32
    channels: tuple[int, int] = (32, 64)
    sft_images: int = 256
    sft_steps: int = 300
    sft_lr: float = 1e-3
    decoder_steps: int = 300
    rounds: int = 4
    samples_per_prompt: int = 4
    repeats: int = 2  # each training caption twice per round (prompts "a red circle", ... x repeats)
    sample_steps: int = 12
    steps_per_round: int = 16
    batch: int = 8
    lr: float = 3e-4  # chosen on the toy: at 1e-3 every method degrades, at 1e-4 little moves in 4 rounds
    seed: int = 0
    grpo_groups: int = 2  # GRPO: groups per forward (K rows each), one optimizer step per forward
    grpo_timestep_fraction: float = 0.5  # GRPO: half the rollout steps trained (DDPO's default is all of them)


FULL = OnlineDemoSize()
QUICK = OnlineDemoSize(channels=(16, 32), sft_images=16, sft_steps=2, decoder_steps=2, rounds=2,
                       samples_per_prompt=2, repeats=1, sample_steps=2, steps_per_round=1, batch=2)  # fmt: skip


def prepare_out(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty folder this demo did not make (unless ``overwrite``); clear the demo's own outputs."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder; pass a new or empty folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).exists() and not overwrite:
        raise UserError(f"--out {out}: folder is not empty and was not made by python -m sdpo.demo online; pass an "
                        "empty folder or add --overwrite")  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    for name in _OWN:  # a rerun starts fresh; other files are left alone
        p = out / name
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    (out / MARKER).write_text("made by python -m sdpo.demo online; a rerun may replace its outputs\n")


def write_prompts(out: Path, size: OnlineDemoSize) -> tuple[Path, Path]:
    """Training prompts: every colour x shape of the tiny world; held-out: the same scenes in two other wordings."""
    scenes = [(c, s) for c in sorted(COLOURS) for s in SHAPES]
    out.mkdir(parents=True, exist_ok=True)
    train, heldout = out / "train.txt", out / "heldout.txt"
    train.write_text("".join(f"a {c} {s}\n" for _ in range(size.repeats) for c, s in scenes))
    heldout.write_text("".join(f"{w.format(c=c, s=s)}\n" for w in ("one {c} {s} in the middle", "a picture of a {c} {s}")
                               for c, s in scenes))  # fmt: skip
    return train, heldout


def online_flags(name: str, method: str, safeguard: bool, paths: dict, out: Path, size: OnlineDemoSize) -> list[str]:
    """One run's flags; the DPO runs differ only in ``--train_method`` and ``--use_winner_preserving`` (``method``
    ``grpo``: a GRPO run, its length one inner epoch instead of ``steps_per_round`` optimizer steps)."""
    beta, mu, _ = get_family(DEFAULT_FAMILY).paper_methods["diffusion-dpo"]
    flags = [
        "--out", str(out / "runs" / name), "--rounds", str(size.rounds),
        "--prompts", str(paths["train_prompts"]), "--samples_per_prompt", str(size.samples_per_prompt),
        "--steps_per_round", str(size.steps_per_round), "--sample_steps", str(size.sample_steps),
        "--reward", "tiny_colour", "--heldout_prompts", str(paths["heldout_prompts"]), "--heldout_reward", "tiny_picture",
        "--sample_seed", str(size.seed),
        "--pretrained_model_name_or_path", str(paths["model"]), "--resolution", str(size.resolution),
        "--train_batch_size", str(size.batch), "--seed", str(size.seed), "--lr_warmup_steps", "0",
        "--report_to", "none", "--mixed_precision", "no", "--no-gradient_checkpointing",
        "--unet_init", str(paths["sft_unet"]), "--train_method", method, "--beta_dpo", str(beta),
        "--winner_preserving_mu", str(mu), "--learning_rate", str(size.lr), "--checkpointing_steps", "1000",
    ]  # fmt: skip
    if method == "grpo":
        k = flags.index("--steps_per_round")
        flags[k : k + 2] = ["--epochs_per_round", "1", "--algorithm", "grpo", "--timestep_fraction",
                            str(size.grpo_timestep_fraction)]  # fmt: skip
        m = flags.index("--train_method")
        flags[m : m + 4] = []  # the preference objective and its beta: not GRPO's
        rows = size.grpo_groups * (1 if safeguard else size.samples_per_prompt)  # groups, or rows, per forward
        flags[flags.index("--train_batch_size") + 1] = str(rows)
    return flags + (["--use_winner_preserving"] if safeguard else [])


def table(rows: list[dict]) -> str:
    head = (f"{'run':<20}{'round':>6}{'train R':>9}{'max':>7}{'held-out R':>11}{'picture':>9}{'win vs 0':>9}"
            f"{'sat.':>7}{'flat':>6}{'pairs':>6}{'lambda':>8}{'KL':>8}")  # fmt: skip
    lines = [head, "-" * len(head)]
    fmt = lambda v, w, p=3: f"{v:>{w}.{p}f}" if isinstance(v, float) else f"{'-' if v is None else v:>{w}}"  # noqa: E731
    for r in rows:
        lines.append(f"{r['run']:<20}{r['round']:>6}{fmt(r.get('train_reward_mean'), 9)}{fmt(r.get('train_reward_max'), 7)}"
                     f"{fmt(r.get('heldout_trained_reward_mean'), 11)}{fmt(r.get('heldout_reward_mean'), 9)}"
                     f"{fmt(r.get('win_rate_vs_round0'), 9, 2)}{fmt(r.get('saturation'), 7)}"
                     f"{fmt(r.get('near_constant'), 6, 2)}{fmt(r.get('pairs_kept'), 6)}{fmt(r.get('mean_lambda'), 8)}"
                     f"{fmt(r.get('kl'), 8, 4)}")  # fmt: skip
    return "\n".join(lines)


def write_csv(rows: list[dict], path: Path) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


def run_demo(out: Path, size: OnlineDemoSize, overwrite: bool = False, threads: int = 1,
             runs: tuple = RUNS) -> list[dict]:  # fmt: skip
    prepare_out(out, overwrite)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _run(out, size, runs)
    finally:
        torch.set_num_threads(before)


def _run(out: Path, size: OnlineDemoSize, runs: tuple) -> list[dict]:
    from sdpo.online.layout import read_jsonl
    from sdpo.online.rounds import run_online
    from sdpo.plot.rounds import plot_rounds

    t0 = time.time()
    stages = 2 + len(runs)

    def stage(k: int, what: str) -> None:
        print(f"[{k}/{stages}] {time.time() - t0:5.0f} s  {what}", flush=True)

    _quiet()
    torch.manual_seed(size.seed)
    stage(1, f"tiny model and data -> {out}")
    demo = DemoSize(resolution=size.resolution, channels=size.channels, sft_images=size.sft_images, train_pairs=2,
                    heldout_pairs=2, decoder_steps=size.decoder_steps, seed=size.seed)  # fmt: skip
    paths = build_inputs(out, demo)
    paths["train_prompts"], paths["heldout_prompts"] = write_prompts(out / "prompts", size)
    stage(2, f"SFT: the base model every run starts from ({size.sft_steps} steps)")
    sft = common_flags(paths["model"], paths["sft_data"], out / "sft", dataclasses.replace(demo, batch=2 * size.batch))
    paths["sft_unet"] = run_train(sft + ["--train_method", "sft", "--learning_rate", str(size.sft_lr),
                                         "--max_train_steps", str(size.sft_steps),
                                         "--checkpointing_steps", str(size.sft_steps)])  # fmt: skip
    rows = []
    for k, (name, method, safeguard) in enumerate(runs, start=3):
        stage(k, f"{name}: {size.rounds} rounds")
        run_online(online_flags(name, method, safeguard, paths, out, size))
        rows += [{"run": name, **r} for r in read_jsonl(out / "runs" / name / "rounds.jsonl")]
    write_csv(rows, out / "online.csv")
    plot_rounds([out / "runs" / name for name, _, _ in runs], out / "online.png")
    print(table(rows))
    print(f"wrote {out / 'online.png'} and {out / 'online.csv'} in {time.time() - t0:.0f} s")
    return rows


@cli_main
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m sdpo.demo online", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output folder (made if missing)")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty folder not made by this demo")
    p.add_argument("--quick", action="store_true", help="a seconds-long run of every stage (for tests)")
    p.add_argument("--rounds", type=int, default=None, help=f"rounds per run (default {FULL.rounds})")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is steadiest on a shared machine)")
    p.add_argument("--grpo", action="store_true", help="also GRPO with and without the winner-preserving option")
    a = p.parse_args(argv)
    if a.threads < 1:
        raise UserError(f"--threads must be >= 1, got {a.threads}")
    size = QUICK if a.quick else FULL
    if a.rounds is not None:
        if a.rounds < 1:
            raise UserError(f"--rounds must be >= 1, got {a.rounds}")
        size = dataclasses.replace(size, rounds=a.rounds)
    run_demo(Path(a.out), size, overwrite=a.overwrite, threads=a.threads, runs=RUNS + (GRPO_RUNS if a.grpo else ()))
