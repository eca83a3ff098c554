"""The winner guard (``--winner_guard warn|stop``): the collapse SDPO exists to prevent, caught while it happens.

The paper's argument (Figure 1): under Diffusion-DPO the margin on held-out pairs widens while the *winner's*
denoising loss rises above the reference's, and image quality follows it down; the SDPO safeguard keeps the
winner's loss from rising.  The guard watches exactly that quantity on the held-out pairs
(``sdpo.training.heldout``): the winner loss's rise relative to the reference's,
``(L_w - L_ref_w) / L_ref_w``.  When it stays above ``--winner_guard_threshold`` (default 0.01, 1%) for
``--winner_guard_patience`` evaluations in a row (default 3), it fires:

* ``warn``: one line (the step, the relative rise at each evaluation of the streak, the margin and the
  implicit accuracy), at every evaluation while the streak lasts;
* ``stop``: the same line, a checkpoint of the current step (``checkpoint-<step>``, resumable),
  ``OUTPUT_DIR/heldout/guard_stop.json`` with the line, and exit status 3 (``EXIT_CODE``; 2 is bad input).

Step 0 does not count (the policy is the reference there).  A resumed run replays the evaluations it logged
before, so a streak carries over a resume; a run stopped by the guard stops again at its next evaluation unless
the winner loss came back down, so to go on, raise the threshold or turn the guard off.
"""

from __future__ import annotations

import math


class WinnerGuard:
    EXIT_CODE = 3

    def __init__(self, cfg):
        self.mode, self.threshold = cfg.winner_guard, cfg.winner_guard_threshold
        self.patience = cfg.winner_guard_patience
        self.streak: list[tuple[int, float]] = []  # (step, relative rise) of the evaluations above the threshold

    def observe(self, step: int, values: dict[str, float]) -> str | None:
        """Record one evaluation; the line to print when the guard fires (None otherwise)."""
        if self.mode == "off" or step == 0:
            return None
        rel = values["win_diff"] / values["ref_w"] if values["ref_w"] else math.nan
        if rel > self.threshold:
            self.streak.append((step, rel))
        else:
            self.streak = []
        if len(self.streak) < self.patience:
            return None
        seen = ", ".join(f"{s}: {100 * r:+.2f}%" for s, r in self.streak[-self.patience :])
        return (
            f"winner guard at step {step}: the held-out winner loss {values['model_w']:.6g} is {100 * rel:+.2f}% "
            f"relative to the reference's {values['ref_w']:.6g}, above the threshold {100 * self.threshold:.2f}% for "
            f"{len(self.streak)} evaluations in a row (steps {seen}); margin {values['margin']:+.4g}, implicit "
            f"accuracy {values['implicit_acc']:.3f}"
        )
