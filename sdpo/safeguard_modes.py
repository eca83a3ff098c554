"""Where lambda comes from: the one place that dispatches on ``--winner_preserving_mode``.

* ``output`` (default, the paper's method, Eq. 17): gradients w.r.t. the UNet's prediction, closed
  form, ``sdpo.safeguard.winner_preserving_lambda``.  ``--winner_preserving_granularity pair`` gives
  one lambda per pair instead of one per micro-batch.
* ``fixed`` (Table 4 ablation): lambda held at ``--winner_preserving_lambda`` for the whole run.
* ``param`` (Table 4 ablation, Eq. 14): gradients w.r.t. the UNet's parameters,
  ``lambda = (1 - mu) ||g_w||^2 / <g_w, g_l>`` (1 when ``<g_w, g_l> <= 0``), clipped to [0, 1],
  with ``g_w = grad_theta mean_i L_w,i`` and ``g_l = grad_theta mean_i L_l,i`` (the same batch means
  the output-space version uses).  See ``param_space_lambda`` for what it costs.

Every mode ends in the same detach trick (``sdpo.safeguard.scale_loser``), applied by the caller.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from sdpo.safeguard import lambda_from_products, winner_preserving_lambda

MODES = ("output", "fixed", "param")
GRANULARITIES = ("batch", "pair")


def mode(cfg) -> str:
    return getattr(cfg, "winner_preserving_mode", None) or "output"


def granularity(cfg) -> str:
    return getattr(cfg, "winner_preserving_granularity", None) or "batch"


def logs_param_lambda(cfg) -> bool:
    """``--log_param_lambda``: also compute the Eq. 14 lambda, for logging only (the paper's Figure 2)."""
    return bool(cfg.use_winner_preserving) and bool(getattr(cfg, "log_param_lambda", False))


def splits_policy_forward(cfg) -> bool:
    """``param`` mode runs the policy UNet on winners and losers as two calls (same FLOPs) so that
    the backward pass of ``L_w`` only walks the winners' graph and that of ``L_l`` only the losers'.

    ``--log_param_lambda`` alone does not split: it only logs, so the step (prediction, lambda in use,
    loss, update) must be the one the run makes without it, and a split forward does not round like the
    stacked one.  A matmul's rows may round differently by the call's row count (on an AMD EPYC, MKL's
    SGEMM has different kernels for 1, 2-3 and 4+ rows whatever ``MKL_CBWR`` says; GPU libraries also
    pick kernels by shape), and the UNet's timestep layers have one row per image: two pairs as two
    calls of 2 rows against one call of 4 moved the prediction by 1e-6 and lambda by 7e-8 (relative).
    The logged Eq. 14 lambda then comes from the stacked graph: two full-batch backward passes instead
    of two half-batch ones, one more full-batch backward per step (counting passes, about 2x an
    output-mode step where the split gives 1.5x); memory is unchanged."""
    return bool(cfg.use_winner_preserving) and mode(cfg) == "param"


def safeguard_lambda(
    cfg,
    model_pred: torch.Tensor,
    target: torch.Tensor,
    params: Iterable[torch.nn.Parameter],
    pred_halves: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """lambda for one micro-batch (winners-first stacked ``model_pred``/``target``), detached.

    ``pred_halves``: the winner and loser predictions as separate graph nodes (``param`` mode's split
    forward); without them ``param`` mode still works, at the cost of two full-batch backward passes.
    """
    m, mu = mode(cfg), cfg.winner_preserving_mu
    if m == "output":
        return winner_preserving_lambda(model_pred, target, mu, per_pair=granularity(cfg) == "pair")
    if m == "fixed":
        dtype = torch.promote_types(model_pred.dtype, torch.float32)  # float64 only if the model is (MPS has none)
        return torch.tensor(float(cfg.winner_preserving_lambda), dtype=dtype, device=model_pred.device)
    if m == "param":
        return _param_lambda(model_pred, target, params, mu, pred_halves)
    raise ValueError(f"unknown winner_preserving_mode {m!r}; choose one of: {', '.join(MODES)}")


def lambda_logs(
    cfg,
    model_pred: torch.Tensor,
    target: torch.Tensor,
    params: Iterable[torch.nn.Parameter],
    pred_halves: tuple[torch.Tensor, torch.Tensor] | None,
    lam: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Extra logged scalars: ``param_lambda`` (Eq. 14) beside the lambda in use, with ``--log_param_lambda``."""
    if not logs_param_lambda(cfg):
        return {}
    if mode(cfg) == "param":
        return {"param_lambda": lam}
    return {"param_lambda": _param_lambda(model_pred, target, params, cfg.winner_preserving_mu, pred_halves)}


def _param_lambda(model_pred, target, params, mu, pred_halves) -> torch.Tensor:
    pred_w, pred_l = pred_halves if pred_halves is not None else model_pred.chunk(2)
    tgt_w, tgt_l = target.chunk(2)
    loss_w = ((pred_w.float() - tgt_w.float()) ** 2).mean()
    loss_l = ((pred_l.float() - tgt_l.float()) ** 2).mean()
    return param_space_lambda(loss_w, loss_l, params, mu).to(model_pred.device)


def param_space_lambda(
    loss_w: torch.Tensor,
    loss_l: torch.Tensor,
    params: Iterable[torch.nn.Parameter],
    mu: float,
    eps: float = 1e-9,
    max_lambda: float = 1.0,
) -> torch.Tensor:
    """Eq. 14: lambda from ``||grad L_w||^2`` and ``<grad L_w, grad L_l>`` over ``params``; detached.

    Cost (on top of the ordinary step; numbers for ``param`` mode's split forward, see
    ``splits_policy_forward``; ``--log_param_lambda`` walks the stacked graph twice instead): two extra
    backward passes, of ``L_w`` through the winners' half of the graph and of ``L_l`` through the
    losers' half, so about one full-batch backward in all (the paper measured +72% step time; the
    extra backward is the floor for reverse-mode gradients, since ``<g_w, g_l>`` needs both
    per-parameter gradients at once).  Memory: one gradient-sized buffer for
    ``g_w`` (unavoidable for the same reason), released parameter by parameter while the second pass
    runs: a hook on each parameter takes ``<g_w, g_l>`` for that parameter as soon as autograd produces
    its loser gradient, frees that parameter's ``g_w``, and hands autograd a zero-stride zero tensor
    to capture, so ``g_l`` never exists as a whole.  The paper measured +11% peak memory (two full
    gradient copies, ~2 x 3.4 GB fp32 for SD1.5).

    Both passes use ``torch.autograd.grad`` with ``retain_graph=True``: nothing reaches ``.grad``,
    the graph stays for the objective's own backward, and under DDP no gradient hook (all-reduce)
    fires.  So lambda is computed from this process's micro-batch gradients only, exactly as the
    output-space lambda is; with gradient accumulation, each micro-batch gets its own lambda.
    Products accumulate in float64 and lambda stays float64 (a 0-dim tensor: ``scale_loser`` keeps the
    loss's dtype).
    """
    params = [p for p in params if p.requires_grad]
    g_w = list(torch.autograd.grad(loss_w, params, retain_graph=True, allow_unused=True))
    num = sum((g.double() ** 2).sum() for g in g_w if g is not None)
    den = [torch.zeros((), dtype=torch.float64, device=loss_w.device)]

    def make_hook(i: int):
        def hook(g_l: torch.Tensor) -> torch.Tensor:
            gw, g_w[i] = g_w[i], None
            if gw is not None:
                den[0] = den[0] + (gw.double() * g_l.double()).sum()
            return torch.zeros((), dtype=g_l.dtype, device=g_l.device).expand_as(g_l)

        return hook

    handles = [p.register_hook(make_hook(i)) for i, p in enumerate(params)]
    try:
        torch.autograd.grad(loss_l, params, retain_graph=True, allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    num = torch.as_tensor(num, dtype=torch.float64, device=loss_w.device)
    return lambda_from_products(num, den[0], mu, eps, max_lambda)
