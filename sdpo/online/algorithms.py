"""What a round does, per algorithm: an ordered list of stages, each a small function in its own module.

A stage is ``run(ctx) -> dict | None`` (``ctx``: ``sdpo.online.context.RoundContext``); every launched process
calls it, and the main process's returned dict is its summary (``stages.json``, then the round's line of
``rounds.jsonl``).  The driver (``sdpo.online.rounds``) owns the rest: skipping a stage already done,
timing, peak memory, the records, the held-out evaluation after the algorithm's stages, the reward-hacking
check.  Another algorithm (GRPO: advantages from the scores instead of pairs) is another entry here reusing
``samples`` and ``scores``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sdpo.online import evaluate, pairs, sample, score, train_round


@dataclass(frozen=True)
class Stage:
    name: str  # its record in stages.json, and what --stop_after names
    run: Callable


@dataclass(frozen=True)
class Algorithm:
    name: str
    stages: tuple[Stage, ...]
    about: str


SAMPLES = Stage("samples", sample.run)
SCORES = Stage("scores", score.run)
EVAL = Stage("eval", evaluate.run)  # added by the driver when held-out prompts are given

ALGORITHMS = {
    "dpo": Algorithm("dpo", (SAMPLES, SCORES, Stage("pairs", pairs.run), Stage("train", train_round.run)),
                     "rank K samples per prompt, train a preference objective on best-vs-worst pairs (IPO)"),
}  # fmt: skip
