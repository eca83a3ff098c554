"""The report's numbers, each computed by the function the console tools use, so the page and the console
agree to the last digit: summary rows by ``eval/summary.py``'s readers and table, win rates by
``eval/winrate.py``'s ``align`` and ``compare`` (same bootstrap count and seed as its defaults), GenEval
task scores by ``eval.geneval.rules.summarise``."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from eval.report.inputs import Inputs, Run

VIDEO_LABELS = {"temporal_flickering": "Temporal flickering"}


def metric_label(key: str) -> str:
    from eval.summary import LABELS

    return LABELS.get(key) or VIDEO_LABELS.get(key) or key


def metric_columns(inputs: Inputs) -> list[str]:
    """Metrics scored in any run, in the paper's column order, then GenEval, then video metrics."""
    from eval.summary import COLUMNS

    scored = {k for r in inputs.runs for k in r.stats}
    if inputs.geneval:
        scored.add("geneval")
    return [k for k in COLUMNS if k in scored] + sorted(scored - set(COLUMNS))


@dataclass
class SummaryRow:
    model: int
    label: str  # the row label the Markdown table (and eval/summary.py) uses
    stem: str
    stats: dict[str, dict]  # metric -> {"mean", "std"?, "n"?}


def summary_rows(inputs: Inputs) -> list[SummaryRow]:
    """One row per model and set; a model's GenEval score joins each of its rows, as ``eval/summary.py`` does
    (or stands as its own row when the model has no scored set)."""
    rows = []
    for model, label in enumerate(inputs.labels):
        gen = [g for g in inputs.geneval if g.model == model]
        runs = [r for r in inputs.runs if r.model == model]
        prefix = f"{label}/" if len(inputs.labels) > 1 else ""
        for r in runs:
            stats = dict(r.stats)
            for g in gen:
                stats["geneval"] = {"mean": g.overall}
            rows.append(SummaryRow(model, prefix + r.stem, r.stem, stats))
        if not runs:
            for g in gen:
                stem = g.path.name.split(".geneval.")[0]
                rows.append(SummaryRow(model, prefix + stem, stem, {"geneval": {"mean": g.overall}}))
    return rows


def summary_markdown(rows: Sequence[SummaryRow]) -> str:
    """The table exactly as ``eval/summary.py --markdown`` prints it for these rows (reward metrics + GenEval)."""
    from eval.summary import format_table

    return format_table([(r.label, {k: v["mean"] for k, v in r.stats.items()}) for r in rows], markdown=True)


@dataclass
class Comparison:
    """Model ``a`` against model ``b`` on one prompt set: ``eval/winrate.py``'s statistics and console table."""

    a: int
    b: int
    set_name: str
    run_a: Run
    run_b: Run
    pairs: list[tuple[int, int]]
    only_a: list[int]
    only_b: list[int]
    metrics: list[str]
    results: dict[str, dict]
    table: str | None


def comparisons(
    inputs: Inputs, n_boot: int = 10000, seed: int = 0, metrics: Sequence[str] | None = None
) -> list[Comparison]:
    """Two models: A against B per shared set. More: every model against the first (the baseline of a grid)."""
    from eval.winrate import align, compare, format_table
    from sdpo.rewards import LABELS

    n = len(inputs.labels)
    plan = [(0, 1)] if n == 2 else [(k, 0) for k in range(1, n)]
    out = []
    for a, b in plan:
        for s in inputs.sets:
            ra, rb = inputs.run(s, a), inputs.run(s, b)
            if ra is None or rb is None:
                continue
            shared = [k for k in ra.scores if k in rb.scores and (metrics is None or k in metrics)]
            pairs, only_a, only_b = align(ra.prompts, rb.prompts)
            if not shared or not pairs:
                continue
            results = compare(ra.scores, rb.scores, pairs, shared, n_boot, seed)
            for k in shared:
                results[k].pop("outcomes")
            la, lb = inputs.labels[a], inputs.labels[b]
            table = format_table(results, shared, la, lb) if all(k in LABELS for k in shared) else None
            out.append(Comparison(a, b, s, ra, rb, pairs, only_a, only_b, shared, results, table))
    return out


def line_up(prompt_lists: Sequence[Sequence[str] | None]) -> list[tuple[str, list[int]]]:
    """Gallery rows ``(prompt, [entry index per model, -1 where absent])``: the k-th occurrence of a prompt in
    every model on one row, as ``eval/winrate.py``'s ``align`` pairs two manifests; rows in the first model's
    order, then prompts only later models have."""
    n = len(prompt_lists)
    where: dict[tuple[str, int], int] = {}
    rows: list[tuple[str, list[int]]] = []
    for m, prompts in enumerate(prompt_lists):
        if prompts is None:
            continue
        seen: Counter[str] = Counter()
        for i, p in enumerate(prompts):
            key = (p, seen[p])
            seen[p] += 1
            r = where.get(key)
            if r is None:
                r = where[key] = len(rows)
                rows.append((p, [-1] * n))
            rows[r][1][m] = i
    return rows
