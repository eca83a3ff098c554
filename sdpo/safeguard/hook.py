"""The SDPO safeguard: scale the loser branch's gradient so the winner's loss does not rise.

Paper: Diffusion-SDPO (arXiv:2511.03317), Algorithm 1.  For a preference step that descends
``L_w - lambda * L_l`` the first-order change of the winner loss is proportional to
``-(||g_w||^2 - lambda <g_w, g_l>)``; it stays <= 0 for ``lambda <= ||g_w||^2 / <g_w, g_l>`` when the
two gradients agree (``<g_w, g_l> > 0``), and any ``lambda`` works when they do not.  The slack
``mu`` keeps a margin: ``lambda = (1 - mu) ||g_w||^2 / <g_w, g_l>``, clipped to ``[0, 1]``.

* Eq. 14 takes the gradients in parameter space (expensive: two extra backward passes).
* Eq. 17, the paper's method, takes them in *output* space, with respect to the UNet's
  prediction: for ``A = mean((pred_w - eps_w)^2)`` over all winner elements of the micro-batch and
  ``B`` likewise for the losers, ``dA/dpred_w = 2 (pred_w - eps_w) / N``.  The reference code gets
  these by autograd on a detached copy; the closed form below is the same number without a graph.

The scale reaches the loss through the detach trick (``scale_loser``): the forward value is the
unscaled loser loss, so every logged quantity and every objective's value is unchanged; only the
gradient flowing into the loser branch is multiplied by ``lambda``.
"""

from __future__ import annotations

import torch


def winner_preserving_lambda(
    model_pred: torch.Tensor,
    target: torch.Tensor,
    mu: float,
    eps: float = 1e-9,
    max_lambda: float = 1.0,
    per_pair: bool = False,
) -> torch.Tensor:
    """Output-space safety factor (Eq. 17) for a winners-first stacked batch; detached.

    ``model_pred`` and ``target`` have shape ``(2B, ...)``: rows ``[:B]`` are winners, ``[B:]`` losers.
    Returns a scalar (one lambda per micro-batch, as the reference code does) or, with
    ``per_pair=True``, a ``(B,)`` tensor computed from each pair's own winner/loser gradients.
    """
    if not 0.0 <= mu <= 1.0:
        raise ValueError(f"winner_preserving_mu must be in [0, 1], got {mu}")
    if model_pred.shape != target.shape or model_pred.shape[0] % 2:
        raise ValueError(f"expected equal winners-first stacked shapes, got {model_pred.shape} and {target.shape}")
    with torch.no_grad():
        res_w, res_l = (model_pred.detach().float() - target.detach().float()).chunk(2)
        if per_pair:
            n = res_w[0].numel()
            g_w, g_l = (2.0 / n) * res_w.flatten(1), (2.0 / n) * res_l.flatten(1)
            num, den = (g_w * g_w).sum(1), (g_w * g_l).sum(1)
        else:
            n = res_w.numel()
            g_w, g_l = (2.0 / n) * res_w, (2.0 / n) * res_l
            num, den = (g_w * g_w).sum(), (g_w * g_l).sum()
        return lambda_from_products(num, den, mu, eps, max_lambda)


def lambda_from_products(
    num: torch.Tensor, den: torch.Tensor, mu: float, eps: float = 1e-9, max_lambda: float = 1.0
) -> torch.Tensor:
    """``(1 - mu) * num / (den + eps)`` where ``den > 0``, else 1; clipped to ``[0, max_lambda]``.

    ``num = ||g_w||^2`` and ``den = <g_w, g_l>`` in whichever space the gradients live (Eq. 14 / 17).
    """
    lam = torch.where(den > 0, (1.0 - mu) * num / (den + eps), torch.ones_like(den))
    return lam.clamp(0.0, max_lambda).detach()


def scale_loser(loss_l: torch.Tensor, lam: torch.Tensor | float) -> torch.Tensor:
    """The detach trick: value of ``loss_l``, gradient ``lam * d(loss_l)``.

    ``lam`` may be a scalar or broadcast against ``loss_l`` (per-pair lambda).
    """
    frozen = loss_l.detach()
    return frozen + lam * (loss_l - frozen)
