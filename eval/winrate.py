"""A/B win rates of two generation manifests, per reward model, with intervals and a sign test.

    python eval/winrate.py --json_a A.json --json_b B.json [--label_a A] [--label_b B]
                           [--metrics all] [--device cuda] [--batch_size 16] [--outdir outputs/winrate]
                           [--model_root DIR] [--n_boot 10000] [--seed 0]

Entries are paired by prompt text; a prompt listed k times in both manifests pairs its k-th
occurrences (the HPSv2 prompt set really has duplicates). Prompts present in only one manifest,
or more often in one, are counted and listed in the summary, never silently dropped. Per metric,
A wins a pair when its score is higher; exact ties count 0.5, so A-over-B + B-over-A = 1.

The 95% interval is a percentile bootstrap over pairs (the same resamples for every metric, so
the "Mean" column, the average of the per-metric win rates, gets one too); the p-value is an
exact two-sided sign test on wins vs losses (ties left out). Per-image scores come from the
manifests' ``.scores.json`` caches when valid, otherwise both manifests are scored first (each
model loaded once). Results go to ``<outdir>/<A>_vs_<B>_<timestamp>/``: summary.json, table.txt,
one per-pair JSON per metric, and winrate.png.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

import argparse  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402
from collections import defaultdict, deque  # noqa: E402
from collections.abc import Sequence  # noqa: E402

import numpy as np  # noqa: E402

from eval.score import Manifest, add_model_args, open_manifest, score_manifests  # noqa: E402
from sdpo.atomic import atomic_path, write_json  # noqa: E402
from sdpo.errors import UserError, cli_main  # noqa: E402
from sdpo.rewards import LABELS, RewardConfig, parse_metrics  # noqa: E402


def align(prompts_a: Sequence[str], prompts_b: Sequence[str]) -> tuple[list[tuple[int, int]], list[int], list[int]]:
    """Pair indices of equal prompts, k-th occurrence with k-th, in A's order; also the unpaired indices of each."""
    queues: dict[str, deque[int]] = defaultdict(deque)
    for j, p in enumerate(prompts_b):
        queues[p].append(j)
    pairs, only_a = [], []
    for i, p in enumerate(prompts_a):
        if queues[p]:
            pairs.append((i, queues[p].popleft()))
        else:
            only_a.append(i)
    only_b = sorted(j for q in queues.values() for j in q)
    return pairs, only_a, only_b


def outcomes(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """1 where A scored higher, 0 where lower, 0.5 on an exact tie."""
    return np.where(a > b, 1.0, np.where(a < b, 0.0, 0.5))


def sign_test(wins: int, losses: int) -> float:
    """Exact two-sided binomial sign test of wins vs losses under p = 1/2 (ties excluded)."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(wins, losses) + 1))
    return min(1.0, 2 * tail / 2**n)


def bootstrap(columns: np.ndarray, n_boot: int, seed: int, chunk: int = 256) -> np.ndarray:
    """Means of ``columns`` (pairs x k) over ``n_boot`` resamples of the pairs with replacement -> (n_boot, k)."""
    n = columns.shape[0]
    rng = np.random.default_rng(seed)
    out = []
    for start in range(0, n_boot, chunk):
        idx = rng.integers(0, n, size=(min(chunk, n_boot - start), n))
        out.append(np.stack([columns[:, j][idx].mean(axis=1) for j in range(columns.shape[1])], axis=1))
    return np.concatenate(out)


def compare(
    scores_a: dict[str, Sequence[float]],
    scores_b: dict[str, Sequence[float]],
    pairs: Sequence[tuple[int, int]],
    metrics: Sequence[str],
    n_boot: int = 10000,
    seed: int = 0,
) -> dict[str, dict]:
    """Per-metric win statistics of A over B on ``pairs``, plus ``"mean"`` (average of the per-metric win rates)."""
    if not pairs:
        raise UserError("the two manifests share no prompt: nothing to compare")
    ia, ib = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    results, cols = {}, []
    for k in metrics:
        a, b = np.asarray(scores_a[k], dtype=np.float64)[ia], np.asarray(scores_b[k], dtype=np.float64)[ib]
        o = outcomes(a, b)
        cols.append(o)
        wins, losses = int((o == 1).sum()), int((o == 0).sum())
        results[k] = {
            "win_rate": float(o.mean()),
            "mean_a": float(a.mean()),
            "mean_b": float(b.mean()),
            "wins": wins,
            "losses": losses,
            "ties": len(o) - wins - losses,
            "n": len(o),
            "p_value": sign_test(wins, losses),
            "outcomes": o,
        }
    table = np.stack(cols, axis=1)
    table = np.concatenate([table, table.mean(axis=1, keepdims=True)], axis=1)
    lo, hi = np.percentile(bootstrap(table, n_boot, seed), [2.5, 97.5], axis=0)
    for j, k in enumerate(metrics):
        results[k]["ci95"] = [float(lo[j]), float(hi[j])]
    results["mean"] = {"win_rate": float(table[:, -1].mean()), "ci95": [float(lo[-1]), float(hi[-1])], "n": len(pairs)}
    return results


def format_table(results: dict[str, dict], metrics: Sequence[str], label_a: str, label_b: str) -> str:
    head = f"{'metric':<10} {'win rate':>8}  {'95% CI':<15} {'mean ' + label_a[:10]:>15} {'mean ' + label_b[:10]:>15}  {'W/L/T':<15} {'p (sign)':>9}"
    lines = [head]
    for k in metrics:
        r = results[k]
        wlt = f"{r['wins']}/{r['losses']}/{r['ties']}"
        ci = f"[{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]"
        lines.append(
            f"{LABELS[k]:<10} {r['win_rate']:>8.4f}  {ci:<15} {r['mean_a']:>15.4f} {r['mean_b']:>15.4f}  {wlt:<15} {r['p_value']:>9.3g}"
        )
    m = results["mean"]
    lines.append(f"{'Mean':<10} {m['win_rate']:>8.4f}  [{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}]")
    return "\n".join(lines)


def plot(results: dict[str, dict], metrics: Sequence[str], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [LABELS[k] for k in metrics] + ["Mean"]
    rows = [results[k] for k in metrics] + [results["mean"]]
    rates = np.array([r["win_rate"] for r in rows])
    err = np.array([[r["win_rate"] - r["ci95"][0], r["ci95"][1] - r["win_rate"]] for r in rows]).T
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 3.5))
    ax.bar(names, rates, yerr=err, capsize=4, color=["#4C72B0"] * len(metrics) + ["#DD8452"])
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("win rate (95% CI)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_") or "model"


def _unpaired(m: Manifest, idx: Sequence[int]) -> dict:
    return {"count": len(idx), "entries": [{"index": i, "prompt": m.entries[i]["prompt"]} for i in idx]}


def write_results(
    outdir: Path,
    ma: Manifest,
    mb: Manifest,
    label_a: str,
    label_b: str,
    metrics: Sequence[str],
    n_boot: int = 10000,
    seed: int = 0,
) -> tuple[Path, str]:
    """Align, compare and write everything into ``<outdir>/<A>_vs_<B>_<timestamp>/``; return it and the table."""
    pairs, only_a, only_b = align(ma.prompts, mb.prompts)
    results = compare(ma.scores, mb.scores, pairs, metrics, n_boot, seed)
    table = format_table(results, metrics, label_a, label_b)
    unpaired = f"{len(only_a)} entries only in {label_a}, {len(only_b)} only in {label_b}"
    header = f"{label_a} vs {label_b}: {len(pairs)} paired prompts ({unpaired})"
    folder = Path(outdir) / f"{_slug(label_a)}_vs_{_slug(label_b)}_{time.strftime('%Y%m%d-%H%M%S')}"
    folder.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        for k in metrics:
            o = results[k].pop("outcomes")
            write_json(
                tmp / f"{k}.json",
                [
                    {
                        "prompt": ma.entries[i]["prompt"],
                        "index_a": i,
                        "index_b": j,
                        "image_a": str(ma.images[i]),
                        "image_b": str(mb.images[j]),
                        "score_a": ma.scores[k][i],
                        "score_b": mb.scores[k][j],
                        "outcome": float(oc),
                    }
                    for (i, j), oc in zip(pairs, o)
                ],
            )
        summary = {
            "label_a": label_a,
            "label_b": label_b,
            "json_a": str(ma.path.resolve()),
            "json_b": str(mb.path.resolve()),
            "n_pairs": len(pairs),
            "only_in_a": _unpaired(ma, only_a),
            "only_in_b": _unpaired(mb, only_b),
            "metrics": {k: results[k] for k in metrics},
            "mean": results["mean"],
            "bootstrap": {"n_boot": n_boot, "seed": seed, "interval": "percentile 2.5-97.5"},
        }
        write_json(tmp / "summary.json", summary)
        (tmp / "table.txt").write_text(header + "\n" + table + "\n", encoding="utf-8")
        plot(results, metrics, f"{label_a} vs {label_b} (n={len(pairs)})", tmp / "winrate.png")
    return folder, header + "\n" + table


def _default_labels(a: Path, b: Path) -> tuple[str, str]:
    la, lb = a.resolve().parent.name, b.resolve().parent.name
    return (la, lb) if la and lb and la != lb else ("A", "B")


@cli_main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json_a", required=True, help="manifest of model A")
    ap.add_argument("--json_b", required=True, help="manifest of model B")
    ap.add_argument("--label_a", default=None, help="default: the folder holding json_a")
    ap.add_argument("--label_b", default=None, help="default: the folder holding json_b")
    ap.add_argument("--outdir", default="outputs/winrate")
    ap.add_argument("--n_boot", type=int, default=10000, help="bootstrap resamples for the 95%% interval")
    ap.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    add_model_args(ap)
    args = ap.parse_args(argv)
    if args.batch_size < 1 or args.n_boot < 1:
        raise UserError("--batch_size and --n_boot must be >= 1")
    metrics = parse_metrics(args.metrics)
    cfg = RewardConfig.make(args.model_root, args.hps_version)
    ma, mb = open_manifest(args.json_a), open_manifest(args.json_b)  # both checked before any model loads
    da, db = _default_labels(ma.path, mb.path)
    label_a, label_b = args.label_a or da, args.label_b or db
    score_manifests([ma, mb], metrics, cfg, args.device, args.batch_size, args.rescore)
    folder, table = write_results(Path(args.outdir), ma, mb, label_a, label_b, metrics, args.n_boot, args.seed)
    print(table)
    print(f"results: {folder}")


if __name__ == "__main__":
    main()
