"""Diffusion-KTO (Li et al., 2024, "Aligning Diffusion Models by Optimizing Human Utility",
arXiv:2404.04465): per-image binary feedback instead of pairs, with a Kahneman-Tversky utility.

Each sample is one image with a label ``y`` (1 desirable, 0 undesirable), carried in the winner
slot (``terms.model_w``, ``terms.ref_w``); ``s = 2y - 1``.  With per-image denoising losses
``L_theta`` (policy) and ``L_ref`` (frozen reference), mean over (C, H, W):

    g_i  = L_ref,i - L_theta,i                                 (policy minus reference log-likelihood)
    z    = max(0, mean_j g_j)                                  (reference point, no gradient)
    x_i  = s_i * kto_beta * (g_i - z)
    h_i  = sigmoid(x_i)                                        (--halo sigmoid)
    loss = (1/B) sum_i w_i (1 - h_i),  w_i = lambda_d_kto if y_i else lambda_u_kto

What the public code (``jacklishufan/diffusion-kto``, ``train_kto_sd_v1.5.py``, run by
``exps/example.sh``) does, and is followed here:

* Implicit reward scaling: the log-likelihood of an image is taken as minus its per-image MSE, so
  ``g = L_ref - L_theta`` with no factor of T and no 1/2 (unlike Diffusion-DPO's ``-beta/2``);
  ``kto_beta`` multiplies it directly.  Its default is the code's 1000 (its flag ``--beta_dpo``,
  renamed here because this repository's ``--beta_dpo`` is Diffusion-DPO's, default 5000).  Each
  image gets its own timestep and noise (nothing is shared: there are no pairs).
* Reference point (the code's default, ``--bce_offset none``, which the example uses): the mean of
  ``g`` over the micro-batch, averaged over all processes (``accelerator.reduce(..., "mean")``),
  clamped at 0 and detached.  Matched images only; no mismatched-prompt pairs.  Here the mean over
  processes is an all-reduce when torch.distributed is initialised, so 2 processes x batch b give
  the same ``z`` as 1 process x batch 2b.  ``z`` is per micro-batch: gradient accumulation does
  not widen it.
* Utility (``--halo``, default ``sigmoid``, the example's): ``h = sigmoid(x)``.  The code's other
  choices are kept, with ``v = kto_beta * (g - z)`` and ``x = s v``: ``loss_averse``
  ``h = logsigmoid(x)``; ``risk_seeking_1`` ``h = -s logsigmoid(-v)``; ``risk_seeking_2``
  ``h = s exp(v / 100) - 1``; ``risk_seeking_3`` ``h = -logsigmoid(-x)``.  The loss is always
  ``w (1 - h)`` averaged over the micro-batch.
* Desirable / undesirable weights ``lambda_d_kto`` / ``lambda_u_kto``: the code's flags, default 1.0
  each (the example leaves them there).
* Implicit accuracy (logged as ``implicit_acc_accumulated``, the code's ``acc``): fraction of
  images with ``x > 0``; ``inside`` is ``x``.

Logged here: ``kto_kl`` (``z``, the code's ``kl``), ``kto_diff_pos`` / ``kto_diff_neg`` (mean of
``g - z`` over the desirable / undesirable images of the micro-batch, 0 when there are none, as the
code's ``diff_pos`` / ``diff_neg``), ``kto_desirable_fraction`` (the code's ``n_pos`` over the batch).

Not implemented: the code's alternative reference points (``--bce_offset sigmoid``: the average of
the desirable and undesirable means, unclamped; ``--bce_offset original``: policy and reference
re-run with the prompts rolled by one inside the batch, mean of ``L_ref - L_theta`` on those
mismatched pairs, unclamped), its ``kto_gp`` loss, LoRA, EMA and the 8-bit optimiser.  How Pick-a-Pic
pairs become labelled images (``--positive_ratio``) is in ``sdpo.data.kto``.  The SDPO safeguard needs
a winner/loser pair and is refused for ``kto`` in ``sdpo.config``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from sdpo.losses.terms import LossOutput, PreferenceTerms, at_least_fp32, check_positive, check_range, hyper

NEEDS_REFERENCE = True
USES_LOSER = False  # one image per sample, in the winner slot (like sft)
NEEDS_LABELS = True  # the data are single images with a desirable / undesirable label (sdpo.data.kto)

# h(x, s, v) with x = s * v: the code's --halo choices.
HALOS = {
    "sigmoid": lambda x, s, v: torch.sigmoid(x),
    "loss_averse": lambda x, s, v: F.logsigmoid(x),
    "risk_seeking_1": lambda x, s, v: -s * F.logsigmoid(-v),
    "risk_seeking_2": lambda x, s, v: s * torch.exp(v / 100) - 1,
    "risk_seeking_3": lambda x, s, v: -F.logsigmoid(-x),
}


@dataclass(frozen=True)
class Params:
    """The public code's flags (``--beta_dpo`` there is ``--kto_beta`` here: this repository's ``--beta_dpo`` is
    Diffusion-DPO's).  ``positive_ratio`` is read by the data too (``sdpo.data.kto``)."""

    kto_beta: float = hyper(1000.0, "kto: scale of the implicit reward L_ref - L_theta")
    halo: str = hyper("sigmoid", "kto: the utility function of the scaled reward", choices=sorted(HALOS))
    lambda_d_kto: float = hyper(1.0, "kto: weight of desirable images")
    lambda_u_kto: float = hyper(1.0, "kto: weight of undesirable images")
    positive_ratio: float = hyper(0.5, "kto: probability that a sample is a desirable image")

    def check(self) -> None:
        check_positive("kto_beta", self.kto_beta)
        check_range("positive_ratio", self.positive_ratio, 0.0, 1.0)
        check_positive("lambda_d_kto", self.lambda_d_kto, strict=False)
        check_positive("lambda_u_kto", self.lambda_u_kto, strict=False)


def mean_over_processes(x: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over this micro-batch and, when distributed, over every process (equal batches)."""
    m = x.mean()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        m = m.clone()
        dist.all_reduce(m)
        m = m / dist.get_world_size()
    return m


def reference_point(g: torch.Tensor) -> torch.Tensor:
    """``z = max(0, mean g)`` over the batch on all processes, as a constant."""
    return mean_over_processes(g.detach()).clamp(min=0)


def _class_mean(v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (v * mask).sum() / mask.sum().clamp(min=1)  # 0 for an empty class, as the code logs it


def loss(terms: PreferenceTerms, cfg) -> LossOutput:
    if terms.labels is None or terms.ref_w is None:
        raise ValueError("kto needs per-image labels and reference losses in PreferenceTerms")
    desirable = terms.labels.to(terms.model_w.device).bool()
    g = at_least_fp32(terms.ref_w) - at_least_fp32(terms.model_w)
    z = reference_point(g)
    s = desirable.to(g.dtype) * 2 - 1
    v = cfg.kto_beta * (g - z)
    x = s * v
    h = HALOS[cfg.halo](x, s, v)
    w = torch.where(desirable, cfg.lambda_d_kto, cfg.lambda_u_kto).to(g.dtype)
    value = (w * (1 - h)).mean()
    with torch.no_grad():
        diff = g - z
        logs = {
            "kto_kl": z,
            "kto_diff_pos": _class_mean(diff, desirable),
            "kto_diff_neg": _class_mean(diff, ~desirable),
            "kto_desirable_fraction": desirable.float().mean(),
        }
    return LossOutput(loss=value, inside=x, logs=logs)
