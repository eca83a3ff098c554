"""Print the paper's table from score files: one row per prompt set or model, one column per reward model.

    python eval/summary.py FILE [FILE ...] [--labels L1,L2,...] [--markdown] [--out TABLE.md]
    python eval/score.py --summary FILE [FILE ...]        # the same

Each FILE is a manifest (its ``<stem>.scores.json`` beside it is read) or a score file itself.
Columns follow the paper: PickScore, HPS, Aes., CLIP, IR; a metric not scored shows ``-``.
Rows are labelled by the manifest's name (``hpsv2_seed0_512x512_50s_7.5cfg``) unless --labels says.

A GenEval summary (``<folder>.geneval.json``, written by ``python -m eval.geneval``) adds a GenEval
column, as in the paper's Table 6: its overall score joins the rows of the reward files from the same
model folder (or stands as its own row when there are none).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

import argparse  # noqa: E402
import json  # noqa: E402
from collections.abc import Sequence  # noqa: E402

from eval.outputs import SCORES_SUFFIX, scores_path  # noqa: E402
from sdpo.errors import UserError, cli_main  # noqa: E402
from sdpo.rewards import LABELS as REWARD_LABELS  # noqa: E402
from sdpo.rewards import METRICS  # noqa: E402

GENEVAL_SUFFIX = ".geneval.json"
COLUMNS = (*METRICS, "geneval")
LABELS = {**REWARD_LABELS, "geneval": "GenEval"}


def read_geneval(path: Path) -> tuple[str, dict[str, float]]:
    """(label, {"geneval": overall score}) from a summary written by ``python -m eval.geneval``."""
    try:
        overall = float(json.loads(path.read_text(encoding="utf-8"))["overall"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise UserError(f"{path}: not a GenEval summary written by python -m eval.geneval") from None
    return path.name.removesuffix(GENEVAL_SUFFIX), {"geneval": overall}


def join_geneval(files: list, rows: list) -> tuple[list, list]:
    """GenEval rows merged into the reward rows read from the same folder (one model = one folder)."""
    folder = [Path(f).resolve().parent for f in files]
    is_gen = [Path(f).name.endswith(GENEVAL_SUFFIX) for f in files]
    keep_files, keep_rows = [], []
    for i, (f, (label, means)) in enumerate(zip(files, rows)):
        partners = [j for j in range(len(files)) if not is_gen[j] and folder[j] == folder[i]]
        if is_gen[i] and partners:
            for j in partners:
                rows[j][1].update(means)
            continue
        keep_files.append(f)
        keep_rows.append((label, means))
    return keep_files, keep_rows


def read_means(path: str | Path) -> tuple[str, dict[str, float]]:
    """(row label, {metric: mean}) from a score file, the manifest it belongs to, or a GenEval summary."""
    path = Path(path)
    if path.name.endswith(GENEVAL_SUFFIX):
        return read_geneval(path)
    if not path.name.endswith(SCORES_SUFFIX):
        path = scores_path(path)
    if not path.is_file():
        raise UserError(f"{path}: no score file; run python eval/score.py --json_path on its manifest first")
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))["metrics"]
        means = {k: float(v["mean"]) for k, v in metrics.items() if k in METRICS}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise UserError(f"{path}: not a score file written by eval/score.py") from None
    return path.name.removesuffix(SCORES_SUFFIX), means


def format_table(rows: Sequence[tuple[str, dict[str, float]]], markdown: bool = False) -> str:
    """Rows of (label, {metric: mean}) as an aligned text table (or a Markdown one) in the paper's column order."""
    columns = [k for k in COLUMNS if k in METRICS or any(k in means for _, means in rows)]
    header = ["set"] + [LABELS[k] for k in columns]
    body = [[label] + [f"{means[k]:.4f}" if k in means else "-" for k in columns] for label, means in rows]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body])
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([fmt(header), *map(fmt, body)])


@cli_main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", help="manifests or their .scores.json files; <folder>.geneval.json summaries")
    ap.add_argument("--labels", default=None, help="comma-separated row labels, one per file")
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table")
    ap.add_argument("--out", default=None, help="also write the table to this file")
    args = ap.parse_args(argv)
    files, rows = join_geneval(list(args.files), [read_means(f) for f in args.files])
    names = [label for label, _ in rows]
    if len(set(names)) < len(names):  # same set from several models: say which model folder each row is
        rows = [(f"{Path(f).resolve().parent.name}/{label}", means) for f, (label, means) in zip(files, rows)]
    if args.labels is not None:
        labels = args.labels.split(",")
        if len(labels) != len(rows):
            raise UserError(f"--labels has {len(labels)} names for {len(rows)} files")
        rows = [(label, means) for label, (_, means) in zip(labels, rows)]
    table = format_table(rows, args.markdown)
    print(table)
    if args.out:
        from sdpo.atomic import atomic_path

        with atomic_path(args.out) as tmp:
            tmp.write_text(table + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
