"""Reward per round for online runs (``python -m sdpo.online`` folders, read from their ``rounds.jsonl``): the
SIPO paper's Figure A1 view, one colour per run.

    python -m sdpo.plot ONLINE_DIR [ONLINE_DIR ...] --out rounds.png

Panels: the trained-on reward of each round's own samples (mean, with the max dotted), the held-out reward and
the trained-on reward on the held-out images after each round (round 0: the base model), the held-out win rate
against round 0, the image statistics where reward hacks show first (mean saturation, fraction of
near-constant images), pairs kept per round and, for runs with the SDPO safeguard, the mean lambda.
"""

from __future__ import annotations

from pathlib import Path

from sdpo.errors import UserError

ROUNDS = "rounds.jsonl"
PANELS = (
    ("train_reward_mean", "trained-on reward, round's samples"),
    ("heldout_trained_reward_mean", "trained-on reward, held-out prompts"),
    ("heldout_reward_mean", "held-out reward, held-out prompts"),
    ("win_rate_vs_round0", "held-out win rate vs round 0"),
    ("saturation", "mean saturation (round's samples)"),
    ("near_constant", "near-constant images (fraction)"),
    ("pairs_kept", "pairs kept"),
    ("mean_lambda", "mean lambda (SDPO safeguard)"),
)


def is_online(run_dir: str | Path) -> bool:
    return (Path(run_dir) / ROUNDS).is_file()


def load_rounds(run_dir: str | Path) -> list[dict]:
    from sdpo.online.layout import read_jsonl

    rows = read_jsonl(Path(run_dir) / ROUNDS)
    if not rows:
        raise UserError(f"{run_dir}: {ROUNDS} is empty (no round has finished yet)")
    return rows


def plot_rounds(run_dirs: list[str | Path], out: str | Path) -> Path:
    """One panel per quantity (those some run logged), x = round, one colour per run (label = folder name)."""
    from sdpo.plot.figure import pyplot, save

    runs = [(Path(d).name or str(d), load_rounds(d)) for d in run_dirs]
    panels = [(k, t) for k, t in PANELS if any(r.get(k) is not None for _, rows in runs for r in rows)]
    plt = pyplot()
    cols = min(4, len(panels))
    nrows = -(-len(panels) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.6 * cols, 2.9 * nrows), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j, (key, title) in enumerate(panels):
        ax = axes[j // cols, j % cols]
        for i, (name, rows) in enumerate(runs):
            pts = [(r["round"], r[key]) for r in rows if r.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), "o-", color=colours[i % len(colours)], lw=1.4, ms=3, label=name)
            if key == "train_reward_mean":
                top = [(r["round"], r["train_reward_max"]) for r in rows if r.get("train_reward_max") is not None]
                if top:
                    ax.plot(*zip(*top), ":", color=colours[i % len(colours)], lw=1.0)
        if key == "win_rate_vs_round0":
            ax.axhline(0.5, color="black", lw=0.6)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("round")
        ax.xaxis.get_major_locator().set_params(integer=True)
    for j in range(len(panels), nrows * cols):
        axes[j // cols, j % cols].axis("off")
    axes[0, 0].legend(fontsize=7)
    return save(plt, fig, out)
