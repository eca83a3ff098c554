"""Preference dynamics on held-out pairs: how far a checkpoint's winner and loser losses moved from the reference.

The paper's Figure 1/3 quantities, measured on pairs the run never trained on: ``L_w - L_ref_w``,
``L_l - L_ref_l``, the margin (their difference; negative means the winner gained on the loser)
and the implicit accuracy (fraction of pairs with ``u > 0``).  Every pair is drawn at fixed
timesteps and noise: its random draws come from ``(seed, repeat, index)`` (``sdpo.data.seeding``), so
two checkpoints are compared on exactly the same inputs, and the reference's losses are the same
numbers at every evaluation.  The computation is the training forward pass itself
(``preference_forward`` and ``inside_term``), run without gradients and without training-time
augmentation (no flips, no caption dropout).
"""

from __future__ import annotations

from pathlib import Path

import torch

from sdpo.config.sections import RunConfig
from sdpo.data import pairs as data
from sdpo.families import load_family as load_components
from sdpo.losses import PreferenceTerms, get_objective, inside_term
from sdpo.training.step import preference_forward

COLUMNS = ("win_diff", "lose_diff", "margin", "implicit_acc", "model_w", "model_l", "ref_w", "ref_l")


def eval_config(train_cfg: RunConfig, dataset: str | Path) -> RunConfig:
    """The training config with the held-out data and every training-only randomness switched off."""
    return train_cfg.with_flags(
        dataset_name=str(dataset), train_data_dir=None, max_train_samples=None, streaming=False,
        proportion_empty_prompts=0.0, no_hflip=True, random_crop=False, use_winner_preserving=False,
        noise_offset=0.0, input_perturbation=0.0,
    )  # fmt: skip


def heldout_batches(cfg, repeats: int = 1, batch_size: int = 16) -> list[dict]:
    """All held-out pairs ``repeats`` times (each repeat with its own fixed timestep and noise), collated."""
    hf = data.drop_ties(data.load_pairs(cfg.data))
    transform = data.PairTransform(cfg.data)
    samples = [transform(hf[i], r, i) for r in range(repeats) for i in range(len(hf))]
    return [data.collate(samples[k : k + batch_size]) for k in range(0, len(samples), batch_size)]


class HeldOutEvaluator:
    """Loads the model once (reference = ``cfg.unet_init``); ``evaluate(weights)`` scores any UNet weights.

    The reference's per-sample losses are computed once: its inputs are the same fixed draws at
    every evaluation, so recomputing them would only repeat the same numbers.
    """

    def __init__(self, cfg, repeats: int = 1, batch_size: int = 16, device: str | torch.device = "cpu"):
        self.cfg, self.device = cfg, torch.device(device)
        self.batches = heldout_batches(cfg, repeats, batch_size)
        comps = load_components(cfg.model, self.device, torch.float32, needs_reference=True)
        comps.unet.eval()
        self.objective = get_objective("diffusion-dpo")  # only its USES_LOSER matters to the forward pass
        with torch.no_grad():
            self.ref = [(t.ref_w, t.ref_l) for t in (self._forward(b, comps) for b in self.batches)]
        comps.reference = None  # the policy alone from now on
        self.comps = comps

    def _forward(self, batch: dict, comps) -> PreferenceTerms:
        return preference_forward(batch, comps, self.cfg, self.objective, self.device)

    @torch.no_grad()
    def evaluate(self, weights: str | Path) -> dict[str, float]:
        """Means over the held-out draws; ``weights`` is any weights file ``ModelFamily.load_weights_file`` reads."""
        self.comps.load_weights_file(self.comps.unet, weights)
        sums = dict.fromkeys(("model_w", "model_l", "ref_w", "ref_l", "correct"), 0.0)
        n = 0
        for batch, (ref_w, ref_l) in zip(self.batches, self.ref):
            terms = self._forward(batch, self.comps)
            terms.ref_w, terms.ref_l = ref_w, ref_l
            u = inside_term(terms, 1.0)  # its sign (the implicit accuracy) does not depend on beta > 0
            for key in ("model_w", "model_l", "ref_w", "ref_l"):
                sums[key] += getattr(terms, key).double().sum().item()
            sums["correct"] += (u > 0).double().sum().item()
            n += u.numel()
        m = {k: v / n for k, v in sums.items()}
        win, lose = m["model_w"] - m["ref_w"], m["model_l"] - m["ref_l"]
        return {
            "win_diff": win,
            "lose_diff": lose,
            "margin": win - lose,
            "implicit_acc": m["correct"],
            **{k: m[k] for k in ("model_w", "model_l", "ref_w", "ref_l")},
        }
