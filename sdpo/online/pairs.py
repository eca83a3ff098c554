"""Stage ``pairs``: preference pairs from the scored samples, as a pair dataset train.py reads unchanged.

Per prompt, ``best_worst`` pairs the best-scored sample against the worst (IPO's pairwise ranking); ``all`` pairs
every two samples of the prompt, the better one winning.  A pair whose reward gap is 0 (a tie) or below
``--min_reward_gap`` (a near-tie: the reward cannot tell them apart) is dropped; both are counted.  Within a
prompt, a tie in the ranking goes to the lower k.  The file: one row per pair, the winner in ``jpg_0`` /
``video_0`` with ``label_0 = 1``, the prompt as ``caption``, plus the two rewards and sample paths.
"""

from __future__ import annotations

import itertools

from sdpo.atomic import atomic_path, write_json
from sdpo.checkpoint.store import crash_point
from sdpo.errors import UserError
from sdpo.online.layout import read_jsonl


def build(rows: list[dict], mode: str, min_gap: float) -> tuple[list[tuple[dict, dict]], dict]:
    """``(pairs as (winner row, loser row), counts)`` from ``scores.jsonl`` rows."""
    by_prompt: dict[int, list[dict]] = {}
    for r in rows:
        by_prompt.setdefault(r["pos"], []).append(r)
    pairs, ties, below = [], 0, 0
    for pos in sorted(by_prompt):
        ranked = sorted(by_prompt[pos], key=lambda r: (-r["reward"], r["k"]))
        candidates = [(ranked[0], ranked[-1])] if mode == "best_worst" else list(itertools.combinations(ranked, 2))
        for win, lose in candidates:
            gap = win["reward"] - lose["reward"]
            if gap == 0:
                ties += 1
            elif gap < min_gap:
                below += 1
            else:
                pairs.append((win, lose))
    return pairs, {"pairs_kept": len(pairs), "pairs_dropped": ties + below, "ties": ties, "below_gap": below}


def run(ctx) -> dict | None:
    folder, opts = ctx.folder, ctx.opts
    rows = read_jsonl(folder.scores)
    pairs, counts = build(rows, opts.pairs, opts.min_reward_gap)
    if not pairs:  # every process reaches the same verdict from the same file
        raise UserError(f"{folder.name}: all {counts['pairs_dropped']} candidate pairs tie or differ by less than "
                        f"--min_reward_gap {opts.min_reward_gap}; lower it or raise --samples_per_prompt")  # fmt: skip
    if not ctx.procs.is_main:
        return None
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = []
    for win, lose in pairs:
        table.append({**ctx.media.pair_row(win, lose, folder.root, folder.pairs), "label_0": 1.0, "label_1": 0.0,
                      "caption": win["prompt"], "reward_0": win["reward"], "reward_1": lose["reward"],
                      "sample_0": win["path"], "sample_1": lose["path"]})  # fmt: skip
    folder.pairs.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder.pairs_file) as tmp:
        pq.write_table(pa.Table.from_pylist(table), tmp)
        crash_point(ctx.crash_name("pairs"))
    gaps = [w["reward"] - lo["reward"] for w, lo in pairs]
    summary = {**counts, "mode": opts.pairs, "min_reward_gap": opts.min_reward_gap, "gap_mean": sum(gaps) / len(gaps),
               "winner_mean": sum(w["reward"] for w, _ in pairs) / len(pairs),
               "loser_mean": sum(lo["reward"] for _, lo in pairs) / len(pairs)}  # fmt: skip
    write_json(folder.pairs / "summary.json", summary)
    return summary
