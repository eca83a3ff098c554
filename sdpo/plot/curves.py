"""Plot the logged scalars of training runs from their ``metrics.jsonl``, one colour per run; and the
validation images of one prompt across steps (the paper's Figure 9 view).

Colours say what the demo's Figure 1 says: runs with the SDPO safeguard in shades of blue, runs without it in
shades of red (read from the run folder's ``run_config.json``); folders without one get matplotlib's cycle.

    python -m sdpo.plot RUN_DIR [RUN_DIR ...] --out fig.png [--metrics NAME ...] [--smooth N]
    python -m sdpo.plot RUN_DIR [RUN_DIR ...] --strip PROMPT_INDEX --out strip.png [--strip_steps S ...]
    python -m sdpo.plot ONLINE_DIR [ONLINE_DIR ...] --out rounds.png     # python -m sdpo.online runs, per round

Works on any run of ``train.py`` (cluster or tiny): every logged scalar is also written to
``RUN_DIR/metrics.jsonl``, so no tensorboard or wandb is needed.  ``margin`` is derived:
``avg_win_diff_loss - avg_lose_diff_loss`` (negative: the winner gained on the loser relative to
the reference; the paper's Figure 1 plots these curves).  Smoothing is a trailing moving average.
Runs trained with ``--validation_prompts`` also get one panel per ``val/<metric>`` they logged
(markers at the validation steps, never smoothed).  ``--strip`` cuts prompt ``PROMPT_INDEX``'s image
out of every validation grid (``RUN_DIR/validation/``): one row per run, one column per step.
"""

from __future__ import annotations

import argparse
import json
import math
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image

from sdpo.errors import UserError, cli_main
from sdpo.plot.figure import pyplot, save
from sdpo.plot.rounds import is_online, plot_rounds
from sdpo.training.metrics import JSONL_NAME, read_jsonl
from sdpo.training.setup import RUN_CONFIG
from sdpo.training.validation import FOLDER, PREFIX, completed, grid_tile

DEFAULT_METRICS = (
    "avg_win_diff_loss",
    "avg_lose_diff_loss",
    "margin",
    "avg_lose_l_scale",
    "implicit_acc_accumulated",
    "train_loss",
)
TITLES = {
    "avg_win_diff_loss": "winner: L_w - L_ref_w",
    "avg_lose_diff_loss": "loser: L_l - L_ref_l",
    "margin": "margin: winner - loser",
    "avg_lose_l_scale": "lambda (SDPO safeguard)",
    "implicit_acc_accumulated": "implicit accuracy",
    "train_loss": "train loss",
}


def title(metric: str) -> str:
    if metric.startswith(PREFIX):
        from sdpo.rewards import LABELS

        name = metric.removeprefix(PREFIX)
        return f"validation: {LABELS.get(name, name)}"
    return TITLES.get(metric, metric)


def default_metrics(runs: list[list[dict]]) -> tuple[str, ...]:
    """The training panels, then every ``val/<metric>`` any run logged (in the paper's column order)."""
    from sdpo.rewards import METRICS

    logged = {k for rows in runs for r in rows for k in r if k.startswith(PREFIX)}
    order = [f"{PREFIX}{m}" for m in METRICS]
    return DEFAULT_METRICS + tuple(sorted(logged, key=lambda k: (order.index(k) if k in order else len(order), k)))


def load_run(run_dir: str | Path) -> list[dict]:
    """A run's logged rows; one clear line when the folder holds no log."""
    path = Path(run_dir)
    log = path / JSONL_NAME if path.is_dir() else path
    if not log.is_file():
        raise UserError(f"{run_dir}: no {JSONL_NAME} found; pass the --output_dir of a train.py run")
    rows = read_jsonl(log)
    if not rows:
        raise UserError(f"{log}: empty log (the run has not finished an optimizer step yet)")
    return rows


def series(rows: list[dict], metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Steps and values of one metric (``margin`` derived); rows without it are skipped."""
    steps, values = [], []
    for r in rows:
        if metric == "margin":
            w, lo = r.get("avg_win_diff_loss"), r.get("avg_lose_diff_loss")
            v = None if w is None or lo is None else w - lo
        else:
            v = r.get(metric)
        if v is not None:
            steps.append(r["step"])
            values.append(v)
    return np.asarray(steps), np.asarray(values, dtype=float)


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average over ``window`` points (the first points average what exists)."""
    if window <= 1 or len(values) == 0:
        return values
    c = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(idx - window, 0)
    return (c[idx] - c[lo]) / (idx - lo)


def plot_runs(
    run_dirs: list[str | Path], out: str | Path, metrics: tuple[str, ...] | None = None, smooth_window: int = 1
) -> Path:
    """One panel per metric, one colour per run (label = folder name); returns the written PNG path.
    ``metrics=None``: the default panels plus the runs' validation metrics."""
    runs = [(Path(d).name or str(d), load_run(d)) for d in run_dirs]
    metrics = metrics or default_metrics([rows for _, rows in runs])
    plt = pyplot()
    cols = min(3, len(metrics))
    nrows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.5 * cols, 3.2 * nrows), squeeze=False)
    colours = run_colours(run_dirs, plt.rcParams["axes.prop_cycle"].by_key()["color"])
    for k, metric in enumerate(metrics):
        ax = axes[k // cols, k % cols]
        for i, (name, rows) in enumerate(runs):
            steps, values = series(rows, metric)
            colour = colours[i]
            if len(steps) and metric.startswith(PREFIX):  # a few points, one per validation
                ax.plot(steps, values, "o-", color=colour, lw=1.3, ms=3, label=name)
            elif len(steps):
                ax.plot(steps, smooth(values, smooth_window), color=colour, lw=1.3, label=name)
        if metric in ("avg_win_diff_loss", "avg_lose_diff_loss", "margin"):
            ax.axhline(0.0, color="black", lw=0.6)
        ax.set_title(title(metric), fontsize=10)
        ax.set_xlabel("step")
    for k in range(len(metrics), nrows * cols):
        axes[k // cols, k % cols].axis("off")
    axes[0, 0].legend(fontsize=8)
    return save(plt, fig, out)


SAFEGUARD_COLOURS = ("tab:blue", "tab:cyan", "navy", "tab:purple", "steelblue")
PLAIN_COLOURS = ("tab:red", "tab:orange", "darkred", "tab:brown", "salmon")


def run_colours(run_dirs: list[str | Path], cycle: list[str]) -> list[str]:
    """Blue shades for runs with the safeguard, red shades for runs without (the demo figure's meaning); the
    default ``cycle`` for all runs when any folder does not record its settings."""
    flags = []
    for d in run_dirs:
        f = Path(d) / RUN_CONFIG
        flags.append(json.loads(f.read_text()).get("use_winner_preserving") if f.is_file() else None)
    if any(v is None for v in flags):
        return [cycle[i % len(cycle)] for i in range(len(run_dirs))]
    shades = {True: iter(SAFEGUARD_COLOURS * len(run_dirs)), False: iter(PLAIN_COLOURS * len(run_dirs))}
    return [next(shades[bool(v)]) for v in flags]



def validation_images(run_dir: str | Path, index: int) -> tuple[str, list[tuple[int, Image]]]:
    """Prompt ``index`` and its image at every finished validation of a run, by step."""
    folder = Path(run_dir) / FOLDER
    records = completed(folder)
    if not records:
        raise UserError(f"{run_dir}: no validation images ({FOLDER}/step-*.json); train with --validation_prompts")
    prompt, images = "", []
    for step, path in records:
        meta = json.loads(path.read_text(encoding="utf-8"))
        n = len(meta["prompts"])
        if not 0 <= index < n:
            raise UserError(f"--strip {index}: {path} has {n} prompts (indices 0..{n - 1})")
        prompt = meta["prompts"][index]
        with Image.open(folder / meta["grid"]) as grid:
            images.append((step, grid_tile(grid, index, meta["columns"], meta["tile"])))
    return prompt, images


def plot_strip(run_dirs: list[str | Path], index: int, out: str | Path, steps: list[int] | None = None) -> Path:
    """Prompt ``index`` across validation steps: one row per run, one column per step (Figure 9's view)."""
    runs = [(Path(d).name or str(d), *validation_images(d, index)) for d in run_dirs]
    prompts = {p for _, p, _ in runs}
    if len(prompts) > 1:
        raise UserError(f"--strip {index}: the runs validated different prompts at that index: {sorted(prompts)}")
    logged = {s for _, _, images in runs for s, _ in images}
    columns = sorted(logged & set(steps) if steps else logged)
    if not columns:
        raise UserError(f"--strip_steps {steps}: no run has a validation at those steps")
    plt = pyplot()
    fig, axes = plt.subplots(len(runs), len(columns), figsize=(1.7 * len(columns), 1.8 * len(runs) + 0.5),
                             squeeze=False)  # fmt: skip
    for r, (name, _, images) in enumerate(runs):
        by_step = dict(images)
        for c, step in enumerate(columns):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if step in by_step:
                ax.imshow(by_step[step], interpolation="nearest")
            else:
                ax.axis("off")
            if r == 0:
                ax.set_title(f"step {step}", fontsize=9)
            if c == 0:
                ax.set_ylabel(name, fontsize=9)
    fig.suptitle(textwrap.shorten(prompts.pop(), 110), fontsize=10)
    return save(plt, fig, out)


@cli_main
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m sdpo.plot", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", metavar="RUN_DIR",
                   help="train.py output folders (holding metrics.jsonl), or python -m sdpo.online folders (rounds.jsonl)")  # fmt: skip
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument(
        "--metrics", nargs="+", default=None, help="logged scalar names, or 'margin' (default: the training panels "
        "and every val/<metric> logged)",
    )  # fmt: skip
    p.add_argument("--smooth", type=int, default=1, help="moving-average window in logged steps (1: none)")
    p.add_argument("--strip", type=int, default=None, metavar="PROMPT_INDEX",
                   help="draw this validation prompt's images across steps instead of curves")  # fmt: skip
    p.add_argument("--strip_steps", type=int, nargs="+", default=None, help="--strip: only these steps")
    a = p.parse_args(argv)
    if a.smooth < 1:
        raise UserError(f"--smooth must be >= 1, got {a.smooth}")
    if Path(a.out).suffix.lower() not in (".png", ".pdf", ".svg"):
        raise UserError(f"--out {a.out}: name a .png, .pdf or .svg file")
    online = [is_online(d) for d in a.runs]
    if any(online) and a.strip is None:
        if not all(online):
            first = a.runs[online.index(False)]
            raise UserError(f"{first}: not an online run folder (no rounds.jsonl), while others are; plot online runs "
                            "(python -m sdpo.online) and train.py runs separately")  # fmt: skip
        print(plot_rounds(a.runs, a.out))
    elif a.strip is not None:
        print(plot_strip(a.runs, a.strip, a.out, a.strip_steps))
    else:
        print(plot_runs(a.runs, a.out, tuple(a.metrics) if a.metrics else None, a.smooth))


if __name__ == "__main__":
    main()
