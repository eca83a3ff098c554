"""The SDPO safeguard carried over to GRPO (``--winner_preserving``): this repository's extension.

Within a group, the samples with a positive advantage play the winner's role and those with a negative one the
loser's.  For one micro-batch of ``n`` rows at their trained step, split the policy objective (``sdpo.rl.objective``)
into its two branches,

    P = (1/n) sum over A_i > 0 of loss_i        Q = (1/n) sum over A_i < 0 of loss_i

and descend ``P + lambda Q`` (plus the KL term, untouched).  Lowering ``P`` is raising the positive samples'
(advantage-weighted) likelihood ratio, so the rule is the paper's: pick ``lambda`` so that the step does not
raise ``P`` to first order.  A gradient step of size ``eta`` changes ``P`` by

    dP = -eta <grad P, grad P + lambda grad Q> = -eta (||grad P||^2 + lambda <grad P, grad Q>)

which is <= 0 for every lambda when ``<grad P, grad Q> >= 0`` and for ``lambda <= ||grad P||^2 / -<grad P, grad Q>``
otherwise.  With the slack ``mu`` and the clip of Diffusion-SDPO (arXiv 2511.03317, Eq. 14):

    lambda = (1 - mu) ||grad P||^2 / (-<grad P, grad Q>)   if -<grad P, grad Q> > 0, else 1;   clipped to [0, 1]

(``sdpo.safeguard.hook.lambda_from_products`` with ``num = ||grad P||^2`` and ``den = -<grad P, grad Q>``).

**Output space, as Eq. 17.**  The parameter gradients are ``J^T g`` with ``g`` the gradient of the branch with
respect to the denoiser's (guided) prediction, one latent-shaped row per sample, so ``<grad P, grad Q> =
g_P^T (J J^T) g_Q``.  The paper's Eq. 17 replaces ``J J^T`` by the identity *between a pair's winner and loser
rows* (they share the prompt, the timestep and the noise) and by zero across pairs: its
``<g_w, g_l>`` is the element-wise product of the two halves.  The same assumption for a GRPO group (its rows
share the prompt and, at a trained step, the timestep) gives, with ``S_P(k)`` and ``S_Q(k)`` the sums of the
output gradients of group ``k``'s positive and negative rows in the micro-batch,

    ||grad P||^2 ~ sum_k ||S_P(k)||^2          <grad P, grad Q> ~ sum_k <S_P(k), S_Q(k)>

For a group of two with one positive and one negative sample this is exactly Eq. 17's products.  The output
gradients come from autograd on a detached copy of the prediction (what the reference SDPO code does for
Eq. 17): no backward through the model.  Rows of a group share their trained step here, and the update keeps a
group's rows in one micro-batch (``sdpo.rl.update``), or a micro-batch would see one branch only (lambda = 1).
The gradient reaching the negative branch is scaled by the detach trick (``sdpo.safeguard.hook.scale_loser``):
every logged value is unchanged.

What to expect: the rows of a group carry independent noises, and a step's output gradient points along the
row's own noise draw (``(x_next - mean) / std^2``), so ``S_P`` and ``S_Q`` are far less aligned than a DPO pair's
residuals, which share the noise; lambda stays 1 more often than under DPO.  docs/grpo.md reports what the
tiny demo measured.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from sdpo.safeguard.hook import lambda_from_products, scale_loser


def group_sums(grad: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """``(groups present, *shape)``: the rows of ``grad`` summed per group id (in sorted id order)."""
    ids, inverse = torch.unique(group.to(grad.device), return_inverse=True)
    out = torch.zeros((len(ids), *grad.shape[1:]), dtype=grad.dtype, device=grad.device)
    return out.index_add_(0, inverse, grad)


def branch_products(
    grad_pos: torch.Tensor, grad_neg: torch.Tensor, group: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(num, den) = (sum_k ||S_P(k)||^2, -sum_k <S_P(k), S_Q(k)>)`` in float64."""
    sp = group_sums(grad_pos.double(), group).flatten(1)
    sq = group_sums(grad_neg.double(), group).flatten(1)
    return (sp * sp).sum(), -(sp * sq).sum()


def branch_lambda(per_row_loss: Callable[[torch.Tensor], torch.Tensor], pred: torch.Tensor, advantages: torch.Tensor,
                  group: torch.Tensor, mu: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """``(lambda, num, den)`` for one micro-batch: ``per_row_loss(prediction)`` is the policy objective per row as a
    function of the (guided) prediction ``pred``; both branches are differentiated on a detached copy."""
    p = pred.detach().float().requires_grad_(True)
    adv = advantages.to(p.device)
    with torch.enable_grad():
        losses = per_row_loss(p)
        n = losses.numel()
        pos, neg = losses[adv > 0].sum() / n, losses[adv < 0].sum() / n
        g_pos = torch.autograd.grad(pos, p, retain_graph=True, allow_unused=True)[0]
        g_neg = torch.autograd.grad(neg, p, allow_unused=True)[0]
    zero = torch.zeros_like(p)
    num, den = branch_products(zero if g_pos is None else g_pos, zero if g_neg is None else g_neg, group)
    return lambda_from_products(num, den, mu), num, den


def split_objective(per_row: torch.Tensor, advantages: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """``(sum of the positive and zero-advantage rows + scale_loser(sum of the negative rows, lambda)) / n``: the
    mean of ``per_row`` in value, with the negative branch's gradient scaled by ``lambda``."""
    adv = advantages.to(per_row.device)
    neg = per_row[adv < 0].sum()
    rest = per_row[adv >= 0].sum()
    return (rest + scale_loser(neg, lam.to(per_row))) / per_row.numel()
