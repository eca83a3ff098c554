"""matplotlib without a display, and atomic figure files: what every plot of ``sdpo.plot`` shares."""

from __future__ import annotations

from pathlib import Path

from sdpo.atomic import atomic_path


def pyplot():
    """matplotlib's pyplot on the Agg backend (files only: works on headless nodes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(plt, fig, out: str | Path) -> Path:
    """Write ``fig`` to ``out`` (format from its suffix) under a temporary name, then rename; close it."""
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=100, format=out.suffix.lstrip(".").lower() or "png")  # tmp's name has no suffix
    plt.close(fig)
    return out
