"""Stage ``eval``: the round's weights on held-out prompts, scored by a reward the rounds do not train on.

One image (or video) per held-out prompt, from the same seed in every round (``sdpo.online.plan``), scored with
``--heldout_reward`` and with the trained-on ``--reward``: when the second keeps rising while the first falls,
the rounds are gaming their reward (``sdpo.online.divergence``).  The win rate is round r's held-out reward
against round 0's (the base model) prompt by prompt, a tie counting one half.  Round 0 runs this stage alone.
"""

from __future__ import annotations

import shutil

from sdpo.atomic import write_json
from sdpo.online.layout import RoundFolder, read_jsonl, write_jsonl
from sdpo.online.plan import heldout_samples
from sdpo.online.sample import generate
from sdpo.online.score import score_items
from sdpo.online.stats import STAT_NAMES, mean_stats


def win_rate(mine: list[float], base: list[float]) -> float:
    """Fraction of prompts where ``mine`` beats ``base`` (ties count 0.5)."""
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(mine, base))
    return wins / len(mine)


def run(ctx) -> dict | None:
    folder, opts = ctx.folder, ctx.opts
    samples = heldout_samples(ctx.heldout, opts.sample_seed)
    generate(ctx, samples, folder.eval, ctx.weights_after(ctx.round), ctx.crash_name("eval"))
    items = [s.record(f"eval/{s.stem}{ctx.media.suffix}") for s in samples]
    rewards = [opts.heldout_reward, opts.reward]
    values = score_items(ctx, items, folder.root, rewards, folder.eval / ".score-parts", ctx.crash_name("eval"))
    if values is None:
        return None
    rows = [{**it, "heldout": v[opts.heldout_reward], "trained": v[opts.reward], **{k: v[k] for k in STAT_NAMES}}
            for it, v in zip(items, values)]  # fmt: skip
    write_jsonl(folder.eval / "scores.jsonl", rows)
    shutil.rmtree(folder.eval / ".score-parts", ignore_errors=True)
    mean = lambda k: sum(r[k] for r in rows) / len(rows)  # noqa: E731
    out = {"heldout_reward": opts.heldout_reward, "heldout_reward_mean": mean("heldout"),
           "heldout_trained_reward_mean": mean("trained"), **{f"heldout_{k}": v for k, v in mean_stats(rows).items()}}  # fmt: skip
    base = read_jsonl(RoundFolder(ctx.run_dir, 0).eval / "scores.jsonl") if ctx.round else []
    if base:
        out["win_rate_vs_round0"] = win_rate([r["heldout"] for r in rows], [r["heldout"] for r in base])
    write_json(folder.eval / "eval.json", out)
    return out
