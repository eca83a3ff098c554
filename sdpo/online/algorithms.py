"""What a round does, per algorithm: an ordered list of stages, each a small function in its own module.

A stage is ``run(ctx) -> dict | None`` (``ctx``: ``sdpo.online.context.RoundContext``); every launched process
calls it, and the main process's returned dict is its summary (``stages.json``, then the round's line of
``rounds.jsonl``).  The driver (``sdpo.online.rounds``) owns the rest: skipping a stage already done,
timing, peak memory, the records, the held-out evaluation after the algorithm's stages, the reward-hacking
check.  ``grpo`` samples whole trajectories instead (``sdpo.online.rollouts``, a ``samples`` stage with the
same plan and files), reuses ``scores``, and trains on advantages instead of pairs (``sdpo.online.grpo_train``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sdpo.online import evaluate, grpo_train, pairs, rollouts, sample, score, train_round


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
    "grpo": Algorithm("grpo", (Stage("samples", rollouts.run), SCORES, Stage("train", grpo_train.run)),
                      "K stochastic rollouts per prompt, group-normalised advantages, Flow-GRPO's clipped update "
                      "(docs/grpo.md)"),
}  # fmt: skip
