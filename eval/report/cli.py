"""``python -m eval.report``: one self-contained HTML page per evaluation or comparison.

    python -m eval.report MANIFEST [MANIFEST ...] --out DIR [--labels A B ...]
    python -m eval.report --winrate RESULTS_DIR        # beside eval/winrate.py's results (test_vs.sh does this)
    python -m eval.report RUN_DIR --out DIR            # a training run's validations, one column per step
    python -m eval.report ONLINE_DIR --out DIR         # an online run's held-out images, one column per round

Inputs are generation manifests (their ``.scores.json`` / ``.video_scores.json`` are read from beside
them, as eval/summary.py does), score files, and GenEval results (``<folder>.geneval.jsonl`` or
``.geneval.json``). One model per folder; ``--labels`` names them in order. A training run folder (or its
``validation/``) reports its in-training validations instead, one model per step, and an online run folder its
held-out evaluations, one model per round (``eval.report.runs``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from sdpo.errors import UserError, cli_main

REPORT = "report.html"


def build_parser() -> argparse.ArgumentParser:
    from eval.report.media import EMBED_LIMIT

    ap = argparse.ArgumentParser(
        prog="python -m eval.report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("inputs", nargs="*", help="manifests, score files, GenEval results (.geneval.jsonl / .json), "
                    "or one run folder (a training run's validations, an online run's rounds)")  # fmt: skip
    ap.add_argument("--out", default=None, help="folder for report.html and report_files/ (default with --winrate: it)")
    ap.add_argument("--labels", nargs="+", default=None, help="one name per model (per folder), in order")
    ap.add_argument("--winrate", default=None, metavar="DIR", help="a results folder of eval/winrate.py: its two "
                    "manifests, labels, metrics, bootstrap count and seed")  # fmt: skip
    ap.add_argument("--metrics", default=None, help="comma list of metrics for the win rates (default: all scored)")
    ap.add_argument("--n_boot", type=int, default=None, help="bootstrap resamples (default 10000, as eval/winrate.py)")
    ap.add_argument("--seed", type=int, default=None, help="bootstrap seed (default 0, as eval/winrate.py)")
    ap.add_argument("--thumb", type=int, default=256, help="thumbnail size in pixels (longer side)")
    ap.add_argument("--embed", default="auto", choices=["auto", "always", "never"],
                    help=f"thumbnails as data URIs inside the page (auto: up to {EMBED_LIMIT} of them)")  # fmt: skip
    ap.add_argument("--page_size", type=int, default=None, help="gallery rows per page (default 50)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    return ap


def from_winrate(folder: Path) -> dict:
    """What eval/winrate.py recorded in ``summary.json``: the two manifests, labels, metrics and bootstrap."""
    f = folder / "summary.json"
    try:
        s = json.loads(f.read_text(encoding="utf-8"))
        return {
            "inputs": [s["json_a"], s["json_b"]],
            "labels": [s["label_a"], s["label_b"]],
            "metrics": list(s["metrics"]),
            "n_boot": int(s["bootstrap"]["n_boot"]),
            "seed": int(s["bootstrap"]["seed"]),
        }
    except FileNotFoundError:
        raise UserError(f"{f}: no such file (--winrate takes a results folder written by eval/winrate.py)") from None
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise UserError(f"{f}: not a summary written by eval/winrate.py") from None


def make_report(
    groups,
    out: Path,
    labels: list[str] | None = None,
    metrics: list[str] | None = None,
    n_boot: int = 10000,
    seed: int = 0,
    thumb: int = 256,
    embed: str = "auto",
    page_size: int | None = None,
    command: str = "",
    progress: bool = False,
) -> Path:
    """Read and check every input, compute the tables, make the pictures and write ``out/report.html``."""
    from eval.report import media, page, tables
    from eval.report.inputs import collect
    from eval.report.render import render
    from sdpo.atomic import atomic_path

    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    inputs = collect(groups, labels)
    comps = tables.comparisons(inputs, n_boot, seed, metrics)
    p = page.build_page(inputs, comps, out, command)
    if page_size:
        p.context["data"]["pageSize"] = page_size
    thumbs = sum(1 for j in p.jobs if j.kind != "video")
    inline = embed == "always" or (embed == "auto" and thumbs <= media.EMBED_LIMIT)
    out.mkdir(parents=True, exist_ok=True)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(p.jobs), desc="report pictures", unit="file", dynamic_ncols=True)
    with atomic_path(out / media.FILES) as tmp:  # renamed into place only once every picture exists
        tmp.mkdir()
        uris = media.build(p.jobs, tmp, thumb, inline, bar.update if bar else None)
        html = render(p.context, uris)
        keep_files = any(tmp.iterdir())
    if bar:
        bar.close()
    if not keep_files:
        (out / media.FILES).rmdir()
    with atomic_path(out / REPORT) as tmp:
        tmp.write_text(html, encoding="utf-8")
    return out / REPORT


@cli_main
def main(argv: list[str] | None = None) -> Path:
    args = build_parser().parse_args(argv)
    if args.thumb < 16 or (args.n_boot is not None and args.n_boot < 1) or (args.page_size or 1) < 1:
        raise UserError("--thumb must be >= 16, --n_boot and --page_size >= 1")
    from eval.report.inputs import group_by_folder
    from eval.report.runs import run_kind, stage

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    n_boot, seed, labels = args.n_boot, args.seed, args.labels
    swallowed = [x for x in labels or [] if x.endswith(".json") or x.endswith(".jsonl")]
    if swallowed:
        raise UserError(f"--labels took {swallowed[0]!r}: put --labels after the inputs (it takes every word after it)")
    if args.winrate:
        if args.inputs:
            raise UserError("give either --winrate DIR or manifests, not both")
        spec = from_winrate(Path(args.winrate))
        from eval.report.inputs import classify

        groups = [[classify(p)] for p in spec["inputs"]]
        labels = labels or spec["labels"]
        metrics = metrics or spec["metrics"]
        n_boot = spec["n_boot"] if n_boot is None else n_boot
        seed = spec["seed"] if seed is None else seed
        out = Path(args.out or args.winrate)
    else:
        if not args.inputs:
            raise UserError("nothing to report: pass manifests (or --winrate DIR)")
        if not args.out:
            raise UserError("--out DIR is required (where report.html goes)")
        out = Path(args.out)
        if any(run_kind(p) for p in args.inputs):
            if len(args.inputs) > 1:
                raise UserError("a run's folder is reported on its own: pass one RUN_DIR (or manifests)")
            groups, run_labels = stage(args.inputs[0], out)
            labels = labels or run_labels
        else:
            groups = group_by_folder(args.inputs)
    command = "python -m eval.report " + shlex.join(sys.argv[1:] if argv is None else argv)
    path = make_report(groups, out, labels, metrics, 10000 if n_boot is None else n_boot, seed or 0, args.thumb,
                       args.embed, args.page_size, command, progress=not args.quiet)  # fmt: skip
    print(f"report: {path}")
    return path
