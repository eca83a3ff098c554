"""The offline demo: the paper's training-dynamics claim (Figures 1 and 3) on a CPU in minutes.

    python -m sdpo.demo --out DIR [--overwrite] [--quick] [--family sd15|flux]

Everything runs through the real training code (``sdpo.training.loop.train`` on flags parsed by
``sdpo.config.parse_args``, in this process) on a tiny model folder from ``sdpo.tiny``:

1. synthetic data: captioned pictures of coloured shapes; preference pairs whose winner matches
   the caption and whose loser is the same shape at the same place in another colour (same
   prompt, visually close, as in Pick-a-Pic); a held-out pair set the runs never train on;
2. an SFT run (``--train_method sft``) that makes the tiny UNet a usable denoiser: the reference
   of every later run (the paper starts from pretrained SD1.5; a random reference hides the effect);
3. six preference runs from that checkpoint (``--unet_init``): diffusion-dpo, dmpo and dspo, each
   without and with the SDPO safeguard.  A pair differs only in ``--use_winner_preserving``:
   same seed (so the same data order, noise and timesteps), lr, beta and mu;
4. every ``eval_every`` steps a checkpoint (the real ``checkpoint-<step>/unet.pth``) is scored on
   the held-out pairs at fixed timesteps and noise (``sdpo.training.heldout``).  Evaluating the saved
   checkpoints after each run scores exactly the files a user would evaluate; ``train.py
   --heldout_pairs`` logs the same numbers from inside the loop (the tests check they are equal);
5. ``DIR/dynamics.csv``, ``DIR/dynamics.png`` (per method: winner, loser and margin relative to the
   reference, with and without the safeguard, and the safeguard's lambda) and a printed table.

Settings follow the paper's SD1.5 scripts where they have a meaning at this scale (beta and mu per
method, AdamW, gradient clipping 1.0, 20% empty captions); the learning rate and step counts are
chosen for the tiny model and are the same for all six runs.

``--family flux`` runs the same stages on a tiny FLUX.1-format rectified-flow transformer (velocity
targets, packed latents, guidance embedding) with the paper's FLUX settings (Appendix B: beta 1000,
mu 0.99) for Diffusion-DPO and DMPO (DSPO is not defined on flow models here).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sdpo import tiny
from sdpo.atomic import atomic_path
from sdpo.errors import UserError, cli_main
from sdpo.families import DEFAULT_FAMILY, FAMILIES, get_family
from sdpo.training.metrics import read_jsonl

MARKER = ".sdpo-demo"  # identifies a folder this demo made, so a rerun may reuse it
_OWN = ("model", "data", "sft", "runs", "dynamics.csv", "dynamics.png")


@dataclass(frozen=True)
class DemoSize:
    family: str = DEFAULT_FAMILY
    resolution: int = 64
    channels: tuple[int, int] = (32, 64)
    sft_images: int = 256
    train_pairs: int = 128
    heldout_pairs: int = 64
    heldout_repeats: int = 4  # each held-out pair scored at this many fixed (timestep, noise) draws
    sft_steps: int = 400
    sft_lr: float = 1e-3
    decoder_steps: int = 600  # fit the tiny VAE's decoder, so sampled images (validation) show the shapes
    steps: int = 200
    eval_every: int = 20
    batch: int = 8  # pairs per step
    lr: float = 1e-4
    seed: int = 0


FULL = DemoSize()
QUICK = DemoSize(
    channels=(16, 32),
    sft_images=16,
    train_pairs=8,
    heldout_pairs=4,
    heldout_repeats=1,
    sft_steps=2,
    decoder_steps=2,
    steps=4,
    eval_every=2,
    batch=4,
)

# The paper's settings per family (``ModelFamily.paper_methods``: beta_dpo, mu, extra flags): SD1.5's scripts
# (REFERENCE.md section 4) for the default family, Appendix B's FLUX.1-dev setting for the flow families.
METHODS = dict(get_family(DEFAULT_FAMILY).paper_methods)
FLOW_METHODS = dict(next(f.paper_methods for f in FAMILIES.values() if f.process == "flow" and f.paper_methods))
DEMO_FAMILIES = tuple(n for n, f in FAMILIES.items() if f.paper_methods and not f.video)
CSV_COLUMNS = (
    "method",
    "safeguard",
    "step",
    "win_diff",
    "lose_diff",
    "margin",
    "implicit_acc",
    "lambda",
    "train_loss",
    "model_w",
    "model_l",
    "ref_w",
    "ref_l",
)


# ----------------------------------------------------------------------------- output folder


def prepare_out(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty folder this demo did not make (unless ``overwrite``); clear the demo's own outputs."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder; pass a new or empty folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).exists() and not overwrite:
        raise UserError(
            f"--out {out}: folder is not empty and was not made by sdpo.demo.dynamics; pass an empty folder or add --overwrite"
        )
    out.mkdir(parents=True, exist_ok=True)
    for name in _OWN:  # a rerun starts fresh (no resuming into old checkpoints); other files are left alone
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    (out / MARKER).write_text("made by python -m sdpo.demo; a rerun may replace its outputs\n")


# ----------------------------------------------------------------------------- data and model


def _sft_rows(n: int, size: int, seed: int) -> list[dict]:
    """Captioned pictures in the pair format ``train.py`` reads: the picture is the preferred image."""
    rows = tiny.tiny_pair_rows(n, size=size, seed=seed, tie_every=0)
    for r in rows:
        win = r["jpg_0"] if r["label_0"] == 1.0 else r["jpg_1"]
        r.update(jpg_0=win, jpg_1=win, label_0=1.0, label_1=0.0)
    return rows


def _pixels(rows: list[dict]) -> torch.Tensor:
    from sdpo.data.pairs import decode

    arrays = [np.asarray(decode(r["jpg_0"]), dtype=np.float32) for r in rows]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 127.5 - 1.0


def build_inputs(out: Path, size: DemoSize) -> dict[str, Path]:
    """Data sets and the tiny model folder (its VAE calibrated on the SFT pictures)."""
    res, seed = size.resolution, size.seed
    sft_rows = _sft_rows(size.sft_images, res, seed + 1)
    paths = {
        "sft_data": tiny.write_pairs(sft_rows, out / "data" / "sft"),
        "train_data": tiny.write_pairs(
            tiny.tiny_pair_rows(size.train_pairs, res, seed + 2, tie_every=0), out / "data" / "train"
        ),
        "heldout_data": tiny.write_pairs(
            tiny.tiny_pair_rows(size.heldout_pairs, res, seed + 3, tie_every=0), out / "data" / "heldout"
        ),
        "model": tiny.build_tiny_model(size.family, out / "model", seed=seed, block_out_channels=size.channels),
    }
    tiny.calibrate_tiny_vae(paths["model"], _pixels(sft_rows))
    tiny.fit_tiny_decoder(paths["model"], _pixels(sft_rows), steps=size.decoder_steps, seed=seed, progress=True)
    return paths


# ----------------------------------------------------------------------------- training runs


def run_train(argv: list[str]) -> Path:
    """``python train.py ARGV`` in this process; accelerate's singleton state is reset around it."""
    from accelerate.state import AcceleratorState, GradientState

    from sdpo.config import parse_args
    from sdpo.training.loop import train

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    try:
        return train(parse_args(argv))
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()


def common_flags(model: Path, dataset: Path, out: Path, size: DemoSize) -> list[str]:
    return [
        "--pretrained_model_name_or_path", str(model),
        "--dataset_name", str(dataset),
        "--output_dir", str(out),
        "--resolution", str(size.resolution),
        "--train_batch_size", str(size.batch),
        "--seed", str(size.seed),
        "--lr_warmup_steps", "0",
        "--report_to", "none",
        "--resume_from_checkpoint", "none",
        "--mixed_precision", "no",
        "--no-gradient_checkpointing",
    ]  # fmt: skip


def preference_flags(method: str, safeguard: bool, paths: dict, out: Path, size: DemoSize) -> list[str]:
    """The one place a pair's flags are made: they differ only in ``--use_winner_preserving``."""
    beta, mu, extra = get_family(size.family).paper_methods[method]
    flags = common_flags(paths["model"], paths["train_data"], out, size) + [
        "--unet_init", str(paths["sft_unet"]),
        "--train_method", method,
        "--beta_dpo", str(beta),
        "--winner_preserving_mu", str(mu),  # inert without the safeguard flag
        "--learning_rate", str(size.lr),
        "--max_train_steps", str(size.steps),
        "--checkpointing_steps", str(size.eval_every),
        *extra,
    ]  # fmt: skip
    return flags + (["--use_winner_preserving"] if safeguard else [])


def run_name(method: str, safeguard: bool) -> str:
    return f"{method}+sdpo" if safeguard else method


def score_run(run_dir: Path, evaluator, method: str, safeguard: bool, prune: bool = True) -> list[dict]:
    """Held-out scores of every checkpoint (step 0 = the reference), plus the training log's lambda and
    loss averaged over the steps since the previous checkpoint.  Intermediate checkpoints are deleted
    after scoring (``prune``); the last one stays, resumable."""
    from sdpo.checkpoint.store import complete_checkpoints

    log = read_jsonl(run_dir)
    ckpts = complete_checkpoints(run_dir)
    rows, prev = [], 0
    for step, weights in [(0, evaluator.cfg.model.unet_init)] + [(int(c.name.split("-")[1]), c) for c in ckpts]:
        seg = [r for r in log if prev < r["step"] <= step]
        row = {"method": method, "safeguard": int(safeguard), "step": step, **evaluator.evaluate(weights)}
        row["lambda"] = _mean(r.get("avg_lose_l_scale") for r in seg)
        row["train_loss"] = _mean(r.get("train_loss") for r in seg)
        rows.append(row)
        prev = step
    if prune:
        for c in ckpts[:-1]:
            shutil.rmtree(c)
    return rows


def _mean(values) -> float:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else math.nan


# ----------------------------------------------------------------------------- outputs


def write_csv(rows: list[dict], path: Path) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


def plot_dynamics(rows: list[dict], path: Path, family: str = DEFAULT_FAMILY) -> None:
    """Figure 1 layout, one column per method: held-out winner (solid) and loser (dashed) losses
    relative to the reference; the margin (winner - loser; below 0: the winner gained on the loser);
    the safeguard's lambda as logged in training.  Red: no safeguard, blue: with it (drawn on top,
    so where the two coincide only blue shows)."""
    from sdpo.plot.curves import pyplot

    plt = pyplot()
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, axes = plt.subplots(
        3, len(methods), figsize=(4.2 * len(methods), 7.0), squeeze=False, gridspec_kw={"height_ratios": [3, 2, 1]}
    )
    style = {0: ("tab:red", "no safeguard", 2.6), 1: ("tab:blue", "+SDPO", 1.6)}
    for j, method in enumerate(methods):
        for sg in (0, 1):
            run = [r for r in rows if r["method"] == method and r["safeguard"] == sg]
            if not run:
                continue
            colour, label, lw = style[sg]
            steps = [r["step"] for r in run]
            axes[0, j].plot(steps, [r["win_diff"] for r in run], "-", color=colour, lw=lw, label=f"winner {label}")
            axes[0, j].plot(steps, [r["lose_diff"] for r in run], "--", color=colour, lw=lw, label=f"loser {label}")
            axes[1, j].plot(steps, [r["margin"] for r in run], "-", color=colour, lw=lw, label=label)
            if sg:
                axes[2, j].plot(steps[1:], [r["lambda"] for r in run[1:]], "-", color=colour, lw=1.5)
        beta, mu, _ = get_family(family).paper_methods.get(method, (math.nan, math.nan, []))
        pair = [
            [(r["step"], r["win_diff"], r["lose_diff"]) for r in rows if r["method"] == method and r["safeguard"] == sg]
            for sg in (0, 1)
        ]
        same = " - runs coincide" if pair[0] == pair[1] else ""
        axes[0, j].set_title(f"{method} (beta {beta:g}, mu {mu:g}){same}", fontsize=10)
        for i, ylabel in enumerate(("L - L_ref (held-out)", "margin (held-out)", "lambda (train)")):
            axes[i, j].set_ylabel(ylabel)
        for i in (0, 1):
            axes[i, j].axhline(0.0, color="black", lw=0.6)
        axes[2, j].set_ylim(-0.05, 1.05)
        axes[2, j].set_xlabel("step")
    axes[0, 0].legend(fontsize=7, loc="best")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)


def final_table(rows: list[dict]) -> str:
    """Final held-out values per run, and where the winner's loss ended relative to the reference."""
    last = {}
    for r in rows:
        key = (r["method"], r["safeguard"])
        if key not in last or r["step"] >= last[key]["step"]:
            last[key] = r
    head = f"{'run':<20}{'step':>6}{'winner':>12}{'loser':>12}{'margin':>12}{'acc':>7}{'lambda':>8}  winner vs ref"
    lines = [head, "-" * len(head)]
    for (method, sg), r in last.items():
        where = "above (worse)" if r["win_diff"] > 0 else "below (better)"
        lines.append(
            f"{run_name(method, sg):<20}{r['step']:>6}{r['win_diff']:>+12.3e}{r['lose_diff']:>+12.3e}"
            f"{r['margin']:>+12.3e}{r['implicit_acc']:>7.2f}{r['lambda']:>8.3f}  {where}"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def _quiet() -> None:
    """Keep the console to progress bars and the demo's own lines."""
    import datasets
    import diffusers
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    # dtype-cast notices about float32 modules the tiny model does not have
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    logging.basicConfig(level=logging.INFO)
    for name in ("sdpo", "accelerate", "datasets"):
        logging.getLogger(name).setLevel(logging.WARNING)


def run_demo(
    out: Path, size: DemoSize, overwrite: bool = False, methods: tuple[str, ...] | None = None, threads: int = 1
) -> list[dict]:
    """The whole demo; returns the CSV rows.  ``threads``: torch intra-op threads while it runs (restored after)."""
    prepare_out(out, overwrite)
    methods = methods or tuple(get_family(size.family).paper_methods)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _run(out, size, methods)
    finally:
        torch.set_num_threads(before)


def _run(out: Path, size: DemoSize, methods: tuple[str, ...]) -> list[dict]:
    from sdpo.config import parse_args
    from sdpo.training.heldout import HeldOutEvaluator, eval_config

    t0 = time.time()
    stages = 2 + 2 * len(methods)

    def stage(k: int, what: str) -> None:
        print(f"[{k}/{stages}] {time.time() - t0:5.0f} s  {what}", flush=True)

    _quiet()
    torch.manual_seed(size.seed)
    stage(1, f"data and tiny model -> {out}")
    paths = build_inputs(out, size)

    stage(2, f"SFT: making the reference denoiser ({size.sft_steps} steps)")
    sft_flags = common_flags(paths["model"], paths["sft_data"], out / "sft", size) + [
        "--train_method", "sft",
        "--learning_rate", str(size.sft_lr),
        "--max_train_steps", str(size.sft_steps),
        "--checkpointing_steps", str(size.sft_steps),
        "--train_batch_size", str(2 * size.batch),
    ]  # fmt: skip
    paths["sft_unet"] = run_train(sft_flags)
    # Held-out scoring uses a preference run's own config (reference = the SFT UNet) on the held-out pairs;
    # the sign of u, hence the implicit accuracy, does not depend on beta.
    eval_cfg = eval_config(
        parse_args(preference_flags(methods[0], False, paths, out / "runs", size)), paths["heldout_data"]
    )
    evaluator = HeldOutEvaluator(eval_cfg, repeats=size.heldout_repeats)
    init, ref = evaluator.evaluate(paths["model"]), evaluator.evaluate(paths["sft_unet"])
    sft_line = f"reference (SFT) held-out winner denoising MSE: {init['model_w']:.4f} at init -> {ref['model_w']:.4f}"
    print("       " + sft_line, flush=True)

    rows, k = [], 3
    for method in methods:
        for safeguard in (False, True):
            name = run_name(method, safeguard)
            stage(k, f"{name}: {size.steps} steps, held-out eval every {size.eval_every}")
            run_dir = out / "runs" / name
            run_train(preference_flags(method, safeguard, paths, run_dir, size))
            rows += score_run(run_dir, evaluator, method, safeguard)
            k += 1
    write_csv(rows, out / "dynamics.csv")
    plot_dynamics(rows, out / "dynamics.png", size.family)
    print(final_table(rows))
    print(sft_line)
    print(f"wrote {out / 'dynamics.png'} and {out / 'dynamics.csv'} in {time.time() - t0:.0f} s")
    return rows


@cli_main
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m sdpo.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output folder (made if missing)")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty folder not made by this demo")
    p.add_argument("--quick", action="store_true", help="a seconds-long run of every stage (for tests)")
    p.add_argument(
        "--family",
        default=DEFAULT_FAMILY,
        choices=DEMO_FAMILIES,
        help="the tiny model's family (the README shows sd15 and flux)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads; the tiny model's ops are too small to gain from more, and on a busy machine "
        "extra threads make each op many times slower",
    )
    a = p.parse_args(argv)
    if a.threads < 1:
        raise UserError(f"--threads must be >= 1, got {a.threads}")
    size = dataclasses.replace(QUICK if a.quick else FULL, family=a.family)
    run_demo(Path(a.out), size, overwrite=a.overwrite, threads=a.threads)


if __name__ == "__main__":
    main()
