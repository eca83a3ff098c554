"""Reward hacking made visible: the trained-on reward rising while a held-out reward falls, round after round.

Both are measured on the same held-out images after each round (``sdpo.online.evaluate``), so the only thing
that differs is the reward model: when the one the rounds optimise keeps improving and the other keeps getting
worse, the model is learning what the first one likes, not what the prompts ask for.
"""

from __future__ import annotations


def streak(rows: list[dict]) -> int:
    """Rounds in a row, counting back from the last, where the held-out trained-on reward rose and the
    held-out reward fell (each against the round before; rows in round order, round 0 first)."""
    rows = [r for r in rows if "heldout_reward_mean" in r]
    n = 0
    for prev, cur in zip(rows[-2::-1], rows[::-1]):
        rose = cur["heldout_trained_reward_mean"] > prev["heldout_trained_reward_mean"]
        fell = cur["heldout_reward_mean"] < prev["heldout_reward_mean"]
        if not (rose and fell):
            break
        n += 1
    return n


def warning(rows: list[dict], patience: int, reward: str, heldout: str) -> str | None:
    """The one warning line when the streak reached ``patience`` rounds, else None."""
    n = streak(rows)
    if n < patience:
        return None
    first, last = [r for r in rows if "heldout_reward_mean" in r][-n - 1], rows[-1]
    return (f"warning: possible reward hacking: {reward} rose and {heldout} fell on the held-out prompts for {n} "
            f"rounds in a row (round {first['round']} -> {last['round']}: {reward} "
            f"{first['heldout_trained_reward_mean']:.4g} -> {last['heldout_trained_reward_mean']:.4g}, {heldout} "
            f"{first['heldout_reward_mean']:.4g} -> {last['heldout_reward_mean']:.4g})")  # fmt: skip
