"""Plot the logged scalars of training runs from their ``metrics.jsonl``, one colour per run.

    python -m sdpo.plot RUN_DIR [RUN_DIR ...] --out fig.png [--metrics NAME ...] [--smooth N]

Works on any run of ``train.py`` (cluster or tiny): every logged scalar is also written to
``RUN_DIR/metrics.jsonl``, so no tensorboard or wandb is needed.  ``margin`` is derived:
``avg_win_diff_loss - avg_lose_diff_loss`` (negative: the winner gained on the loser relative to
the reference; the paper's Figure 1 plots these curves).  Smoothing is a trailing moving average.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from sdpo.atomic import atomic_path
from sdpo.errors import UserError, cli_main
from sdpo.metrics import JSONL_NAME, read_jsonl

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


def pyplot():
    """matplotlib's pyplot on the Agg backend (files only: works on headless nodes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


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
    run_dirs: list[str | Path], out: str | Path, metrics: tuple[str, ...] = DEFAULT_METRICS, smooth_window: int = 1
) -> Path:
    """One panel per metric, one colour per run (label = folder name); returns the written PNG path."""
    runs = [(Path(d).name or str(d), load_run(d)) for d in run_dirs]
    plt = pyplot()
    cols = min(3, len(metrics))
    nrows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.5 * cols, 3.2 * nrows), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, metric in enumerate(metrics):
        ax = axes[k // cols, k % cols]
        for i, (name, rows) in enumerate(runs):
            steps, values = series(rows, metric)
            if len(steps):
                ax.plot(steps, smooth(values, smooth_window), color=colours[i % len(colours)], lw=1.3, label=name)
        if metric in ("avg_win_diff_loss", "avg_lose_diff_loss", "margin"):
            ax.axhline(0.0, color="black", lw=0.6)
        ax.set_title(TITLES.get(metric, metric), fontsize=10)
        ax.set_xlabel("step")
    for k in range(len(metrics), nrows * cols):
        axes[k // cols, k % cols].axis("off")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=100, format=out.suffix.lstrip(".").lower() or "png")  # tmp's name has no suffix
    plt.close(fig)
    return out


@cli_main
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m sdpo.plot", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="train.py output folders (holding metrics.jsonl)")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--metrics", nargs="+", default=list(DEFAULT_METRICS), help="logged scalar names, or 'margin'")
    p.add_argument("--smooth", type=int, default=1, help="moving-average window in logged steps (1: none)")
    a = p.parse_args(argv)
    if a.smooth < 1:
        raise UserError(f"--smooth must be >= 1, got {a.smooth}")
    if Path(a.out).suffix.lower() not in (".png", ".pdf", ".svg"):
        raise UserError(f"--out {a.out}: name a .png, .pdf or .svg file")
    print(plot_runs(a.runs, a.out, tuple(a.metrics), a.smooth))


if __name__ == "__main__":
    main()
