"""Stage ``scores``: every sample's reward and image statistics, in ``scores.jsonl``.

Work is split in fixed chunks of samples (chunk ``c`` to process ``c % world``); each finished chunk is written
as its own part file, so a killed stage scores only what is missing; the main process merges the parts in
sample order.  Each reward model is loaded once per stage and dropped at its end.  The evaluation stage
scores its held-out images with the same code.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from sdpo.atomic import atomic_path
from sdpo.checkpoint.store import crash_point
from sdpo.online.layout import read_json, write_jsonl
from sdpo.online.memory import release
from sdpo.online.rewards import load_reward
from sdpo.online.stats import STAT_NAMES, frame_stats, mean_stats

CHUNK = 32  # samples per part file
STATS = "stats"


def score_items(ctx, items: list[dict], base: Path, rewards: list[str], parts: Path, crash: str) -> list[dict] | None:
    """``{reward name: score, ...statistics}`` per item (main process; None elsewhere).  ``items`` carry a
    ``path`` relative to ``base`` and their ``prompt``."""
    procs, media = ctx.procs, ctx.media
    if procs.is_main:
        parts.mkdir(parents=True, exist_ok=True)
    procs.barrier()
    chunks = [items[i : i + CHUNK] for i in range(0, len(items), CHUNK)]
    mine = [c for c in range(len(chunks)) if c % procs.world == procs.rank]
    for name in [*rewards, STATS]:
        todo = [c for c in mine if not (parts / f"{name}-{c:05d}.json").is_file()]
        if not todo:
            continue
        reward = None if name == STATS else load_reward(name, media.kind, procs.device, ctx.opts.reward_model_root)
        for c in todo:
            samples = [media.read(base / it["path"]) for it in chunks[c]]
            if reward is None:
                values = [frame_stats(media.stats_frames(s)) for s in samples]
            else:
                values, b = [], ctx.opts.score_batch_size
                for i in range(0, len(samples), b):
                    values += [float(v) for v in reward.score(samples[i : i + b], [it["prompt"] for it in chunks[c][i : i + b]])]
            with atomic_path(parts / f"{name}-{c:05d}.json") as tmp:
                tmp.write_text(json.dumps(values))
            crash_point(crash)
        del reward
        release(procs.device)
    procs.barrier()
    if not procs.is_main:
        return None
    out = [{} for _ in items]
    for name in [*rewards, STATS]:
        for c in range(len(chunks)):
            for j, v in enumerate(read_json(parts / f"{name}-{c:05d}.json", None)):
                out[c * CHUNK + j].update(v if name == STATS else {name: v})
    return out


def run(ctx) -> dict | None:
    folder, reward = ctx.folder, ctx.opts.reward
    items = read_json(folder.samples / "manifest.json", {})["samples"]
    values = score_items(ctx, items, folder.root, [reward], folder.root / ".score-parts", ctx.crash_name("scores"))
    if values is None:
        return None
    rows = [{**it, "reward": v[reward], **{k: v[k] for k in STAT_NAMES}} for it, v in zip(items, values)]
    write_jsonl(folder.scores, rows)
    shutil.rmtree(folder.root / ".score-parts", ignore_errors=True)
    r = [row["reward"] for row in rows]
    return {"reward": reward, "reward_mean": sum(r) / len(r), "reward_max": max(r), "reward_min": min(r),
            **mean_stats(rows)}  # fmt: skip
