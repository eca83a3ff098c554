"""Which prompts a round samples, with which seeds, in which denoiser calls: a function of the settings alone.

* Prompts: all of the file every round, or with ``--prompts_per_round N`` the next N of a seeded shuffle of the
  file (reshuffled, with a new seed, each time it runs out), as IPO's rounds each take a fresh batch of prompts.
* Seeds: sample ``k`` of prompt ``i`` (its index in the file) in round ``r`` starts from the noise of
  ``SeedSequence([sample_seed, r, i, k])``; held-out prompt ``i`` from ``SeedSequence([sample_seed, HELDOUT, i])``
  in every round, so round r and round 0 are compared on the same noise.
* Calls: prompt positions ``[c * P, (c + 1) * P)`` of the round form call ``c`` (P = ``--prompts_per_call``),
  and call ``c`` belongs to process ``c % world``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HELDOUT = 0x4E1D  # the held-out seeds' second key: no round number collides with it in practice


def mixed_seed(*keys: int) -> int:
    """A well-mixed 63-bit seed from integer keys (numpy's SeedSequence)."""
    state = np.random.SeedSequence(list(keys)).generate_state(2, dtype=np.uint64)
    return int(state[0] >> np.uint64(1))


@dataclass(frozen=True)
class Sample:
    index: int  # position among the round's samples
    pos: int  # the prompt's position in the round
    prompt_index: int  # the prompt's index in the prompt file
    prompt: str
    k: int
    seed: int

    @property
    def stem(self) -> str:
        return f"{self.pos:05d}_{self.k}"

    def record(self, path: str) -> dict:
        return {"index": self.index, "pos": self.pos, "prompt_index": self.prompt_index, "prompt": self.prompt,
                "k": self.k, "seed": self.seed, "path": path}  # fmt: skip


def round_prompts(n_prompts: int, r: int, per_round: int | None, seed: int) -> list[int]:
    """Indices into the prompt file for round ``r`` (1-based)."""
    if per_round is None:
        return list(range(n_prompts))
    start, out, orders = (r - 1) * per_round, [], {}
    for position in range(start, start + per_round):
        epoch, offset = divmod(position, n_prompts)
        if epoch not in orders:
            orders[epoch] = np.random.default_rng(mixed_seed(seed, epoch)).permutation(n_prompts)
        out.append(int(orders[epoch][offset]))
    return out


def round_samples(prompts: list[str], r: int, k: int, per_round: int | None, seed: int) -> list[Sample]:
    out = []
    for pos, i in enumerate(round_prompts(len(prompts), r, per_round, seed)):
        for j in range(k):
            out.append(Sample(len(out), pos, i, prompts[i], j, mixed_seed(seed, r, i, j)))
    return out


def heldout_samples(prompts: list[str], seed: int) -> list[Sample]:
    return [Sample(i, i, i, p, 0, mixed_seed(seed, HELDOUT, i)) for i, p in enumerate(prompts)]


def calls(samples: list[Sample], prompts_per_call: int) -> list[list[Sample]]:
    """Samples grouped into denoiser calls by prompt position."""
    groups: dict[int, list[Sample]] = {}
    for s in samples:
        groups.setdefault(s.pos // prompts_per_call, []).append(s)
    return [groups[c] for c in sorted(groups)]
