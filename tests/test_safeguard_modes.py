"""The safeguard's lambda sources: fixed, output space per batch / per pair, parameter space (Eq. 14)."""

from __future__ import annotations

import copy
import os
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from sdpo.safeguard.hook import scale_loser, winner_preserving_lambda
from sdpo.safeguard.modes import param_space_lambda, safeguard_lambda

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def _cfg(**kw):
    base = dict(
        use_winner_preserving=True,
        winner_preserving_mu=0.0,
        winner_preserving_mode="output",
        winner_preserving_granularity="batch",
        winner_preserving_lambda=None,
        log_param_lambda=False,
    )
    return SimpleNamespace(**{**base, **kw})


def _mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3)).double()


def _brute_force_lambda(net, x, tgt, mu):
    """Eq. 14 from full flattened gradients, written out independently of ``param_space_lambda``."""
    params = list(net.parameters())
    pred = net(x)
    pw, pl = pred.chunk(2)
    tw, tl = tgt.chunk(2)
    gw = torch.cat([g.flatten() for g in torch.autograd.grad(((pw - tw) ** 2).mean(), params, retain_graph=True)])
    gl = torch.cat([g.flatten() for g in torch.autograd.grad(((pl - tl) ** 2).mean(), params)])
    num, den = float(gw @ gw), float(gl @ gw)
    lam = (1 - mu) * num / (den + 1e-9) if den > 0 else 1.0
    return min(max(lam, 0.0), 1.0), den


def _case(kind: str, seed: int):
    """A small float64 regression problem, winners then losers (3 + 3 rows).

    random: unrelated rows; agree: each loser is its winner's input with a residual 1.7 x the
    winner's (gradients agree, lambda < 1); oppose: residual -2 x (``<g_w, g_l> < 0``, lambda = 1)."""
    net = _mlp(seed)
    g = torch.Generator().manual_seed(100 + seed)
    x = torch.randn(6, 5, generator=g, dtype=torch.float64)
    tgt = torch.randn(6, 3, generator=g, dtype=torch.float64)
    if kind != "random":
        x[3:] = x[:3]
        with torch.no_grad():
            pred = net(x[:3])
            tgt[3:] = pred - (1.7 if kind == "agree" else -2.0) * (pred - tgt[:3])
    return net, x, tgt


@pytest.mark.parametrize("kind", ["random", "agree", "oppose"])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("mu", [0.0, 0.5, 0.9])
def test_param_lambda_equals_brute_force(kind, seed, mu):
    net, x, tgt = _case(kind, seed)
    expected, den = _brute_force_lambda(net, x, tgt, mu)
    if kind == "agree":
        assert expected == pytest.approx((1 - mu) / 1.7, rel=1e-6)  # the ratio branch
    if kind == "oppose":
        assert den < 0 and expected == 1.0  # the <g_w, g_l> <= 0 branch
    pred = net(x)
    pw, pl = pred.chunk(2)
    tw, tl = tgt.chunk(2)
    lam = param_space_lambda(((pw - tw) ** 2).mean(), ((pl - tl) ** 2).mean(), net.parameters(), mu)
    assert float(lam) == pytest.approx(expected, rel=1e-9, abs=1e-15)
    # nothing leaked into .grad, and the graph is still there for the objective's own backward
    assert all(p.grad is None for p in net.parameters())
    pred.sum().backward()
    assert all(p.grad is not None for p in net.parameters())


# ----------------------------------------------------------------------------- the first-order guarantee


def _dpo_step_winner_change(net, ref, x, tgt, lr, safeguard: bool, beta=2.0):
    """One SGD step on the one-pair Diffusion-DPO objective; returns (dL_w, first-order term -lr <g_w, grad>)."""
    params = list(net.parameters())
    pred = net(x)
    pw, pl = pred.chunk(2)
    tw, tl = tgt.chunk(2)
    loss_w, loss_l = ((pw - tw) ** 2).mean(), ((pl - tl) ** 2).mean()
    with torch.no_grad():
        rp = ref(x)
        ref_w, ref_l = ((rp[:1] - tw) ** 2).mean(), ((rp[1:] - tl) ** 2).mean()
    g_w = torch.autograd.grad(loss_w, params, retain_graph=True)
    if safeguard:
        lam = param_space_lambda(loss_w, loss_l, params, mu=0.0)
        loss_l = scale_loser(loss_l, lam)
    u = -0.5 * beta * ((loss_w - loss_l) - (ref_w - ref_l))
    grads = torch.autograd.grad(-F.logsigmoid(u), params)
    first_order = -lr * sum(float((a * b).sum()) for a, b in zip(g_w, grads))
    stepped = copy.deepcopy(net)
    with torch.no_grad():
        for p, gr in zip(stepped.parameters(), grads):
            p -= lr * gr
        before = float(loss_w)
        after = float(((stepped(x)[:1] - tw) ** 2).mean())
    return after - before, first_order


def _aligned_pair(seed: int, loser_scale: float):
    """One pair whose loser gradient is about ``loser_scale`` times the winner's: nearly the same
    input, residual scaled (not exactly collinear, so the safeguarded step is not zero)."""
    net = _mlp(seed)
    g = torch.Generator().manual_seed(7 + seed)
    x1 = torch.randn(1, 5, generator=g, dtype=torch.float64)
    x2 = x1 + 0.05 * torch.randn(1, 5, generator=g, dtype=torch.float64)
    t_w = torch.randn(1, 3, generator=g, dtype=torch.float64)
    with torch.no_grad():
        t_l = net(x2) - loser_scale * (net(x1) - t_w)
    ref = _mlp(seed + 50)
    return net, ref, torch.cat([x1, x2]), torch.cat([t_w, t_l])


def test_without_safeguard_dpo_step_raises_winner_loss():
    """The constructed case: g_l ~ 10 g_w, so the DPO direction g_w - g_l ~ -9 g_w climbs L_w."""
    net, ref, x, tgt = _aligned_pair(0, loser_scale=10.0)
    for lr in (1e-2, 1e-3, 1e-4):
        change, first_order = _dpo_step_winner_change(net, ref, x, tgt, lr, safeguard=False)
        assert first_order > 0
        assert change > 0.5 * first_order  # a first-order increase, not an O(lr^2) wobble


@pytest.mark.parametrize("case", ["aligned", "random0", "random1"])
def test_param_safeguard_winner_loss_does_not_rise_to_first_order(case):
    """Same step with the param-space lambda (mu = 0): the first-order change of L_w is <= 0 (exactly 0
    when lambda < 1), and what is left scales like lr^2."""
    if case == "aligned":
        net, ref, x, tgt = _aligned_pair(0, loser_scale=10.0)
    else:
        seed = int(case[-1])
        net, ref = _mlp(seed), _mlp(seed + 50)
        g = torch.Generator().manual_seed(seed)
        x1 = torch.randn(1, 5, generator=g, dtype=torch.float64)
        x, tgt = torch.cat([x1, x1 + 0.1]), torch.randn(2, 3, generator=g, dtype=torch.float64)
    lrs = (1e-2, 1e-3, 1e-4)
    residuals = []
    for lr in lrs:
        change, first_order = _dpo_step_winner_change(net, ref, x, tgt, lr, safeguard=True)
        # <= 0 up to the 1e-9 in lambda's denominator
        assert first_order <= 1e-9 * lr
        residuals.append((change - first_order) / lr**2)
    # the remainder is second order: (change - first_order) / lr^2 stays put while lr shrinks 100x
    assert max(map(abs, residuals)) <= 1.5 * min(map(abs, residuals))
    for lr in lrs:  # so the winner loss rises by at most O(lr^2)
        change, _ = _dpo_step_winner_change(net, ref, x, tgt, lr, safeguard=True)
        assert change <= 1e-9 * lr + 1.5 * max(map(abs, residuals)) * lr**2


# ----------------------------------------------------------------------------- fixed and per-pair


def test_fixed_mode_is_exactly_lambda_and_scales_the_loser_gradient():
    pred = torch.randn(4, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    target = torch.randn(4, 2, 3, 3, dtype=torch.float64)
    lam = safeguard_lambda(_cfg(winner_preserving_mode="fixed", winner_preserving_lambda=0.37), pred, target, [])
    assert lam.item() == 0.37 and lam.dim() == 0
    loss_l = ((pred[2:] - target[2:]) ** 2).mean()
    (plain,) = torch.autograd.grad(loss_l, pred, retain_graph=True)
    (scaled,) = torch.autograd.grad(scale_loser(loss_l, lam), pred)
    assert torch.allclose(scaled, 0.37 * plain, rtol=1e-14, atol=0)


def test_pair_granularity_matches_independent_per_pair_autograd():
    g = torch.Generator().manual_seed(3)
    B = 5
    pred = torch.randn(2 * B, 4, 4, 4, generator=g, dtype=torch.float64)
    target = torch.randn(2 * B, 4, 4, 4, generator=g, dtype=torch.float64)
    pred[B + 1] = target[B + 1] + 2.0 * (pred[1] - target[1])  # an agreeing pair: lambda < 1
    pred[B + 3] = target[B + 3] + 1.2 * (pred[3] - target[3])
    mu = 0.3
    lam = safeguard_lambda(_cfg(winner_preserving_mu=mu, winner_preserving_granularity="pair"), pred, target, [])
    expected = []
    for i in range(B):
        pw, pl = pred[i].clone().requires_grad_(), pred[B + i].clone().requires_grad_()
        (ga,) = torch.autograd.grad(((pw - target[i]) ** 2).mean(), pw)
        (gb,) = torch.autograd.grad(((pl - target[B + i]) ** 2).mean(), pl)
        num, den = float((ga * ga).sum()), float((ga * gb).sum())
        expected.append(min(max((1 - mu) * num / (den + 1e-9), 0.0), 1.0) if den > 0 else 1.0)
    assert lam.shape == (B,)
    assert lam.tolist() == pytest.approx(expected, rel=1e-6)  # the output-space lambda is computed in fp32
    assert min(expected) < 1.0 and max(expected) == 1.0
    batch = safeguard_lambda(_cfg(winner_preserving_mu=mu), pred, target, [])
    assert torch.equal(batch, winner_preserving_lambda(pred, target, mu))


# ----------------------------------------------------------------------------- through the real forward


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from sdpo.tiny import build_tiny_model

    return build_tiny_model("sd15", tmp_path_factory.mktemp("m") / "sd15", seed=0)


def _comps_and_batch(model, extra=()):
    from sdpo.config import parse_args
    from sdpo.families import load_family as load_components

    cfg = parse_args(["--pretrained_model_name_or_path", str(model), "--resolution", "64", *extra])
    comps = load_components(cfg.model, torch.device("cpu"), torch.float32, needs_reference=True)
    g = torch.Generator().manual_seed(0)
    batch = {
        "pixel_values": torch.rand(4, 3, 64, 64, generator=g) * 2 - 1,
        "captions": ["a red circle", "a blue square"],
        "sample_seeds": torch.tensor([11, 12]),
    }
    return cfg, comps, batch


@pytest.mark.parametrize("checkpointing", [False, True])
def test_param_mode_in_preference_forward_matches_brute_force(tiny_model, checkpointing):
    """The split forward + hooks give the lambda of full flattened UNet gradients on the stacked batch."""
    from sdpo.losses import get_objective
    from sdpo.training.step import preference_forward

    ckpt = ["--gradient_checkpointing"] if checkpointing else []
    flags = ["--use_winner_preserving", "--winner_preserving_mode", "param", "--winner_preserving_mu", "0.2", *ckpt]
    cfg, comps, batch = _comps_and_batch(tiny_model, flags)
    dpo = get_objective("diffusion-dpo")
    terms = preference_forward(batch, comps, cfg, dpo, torch.device("cpu"))
    assert all(p.grad is None for p in comps.unet.parameters())  # nothing leaked into .grad
    dpo.loss(terms, cfg.objective.params).loss.backward()  # the graph survived the two extra passes
    comps.unet.zero_grad(set_to_none=True)

    plain = cfg.with_flags(use_winner_preserving=False)
    ref_terms = preference_forward(batch, comps, plain, dpo, torch.device("cpu"))
    params = [p for p in comps.unet.parameters() if p.requires_grad]
    pw, pl = ref_terms.model_pred.chunk(2)
    tw, tl = ref_terms.target.chunk(2)
    gw = torch.cat([g.flatten() for g in torch.autograd.grad(((pw - tw) ** 2).mean(), params, retain_graph=True)])
    gl = torch.cat([g.flatten() for g in torch.autograd.grad(((pl - tl) ** 2).mean(), params)])
    num, den = float(gw.double() @ gw.double()), float(gw.double() @ gl.double())
    expected = min(max(0.8 * num / (den + 1e-9), 0.0), 1.0) if den > 0 else 1.0
    assert float(terms.lam) == pytest.approx(expected, rel=1e-4)
    assert torch.allclose(terms.model_pred, ref_terms.model_pred, atol=1e-5)  # split forward == stacked forward


def test_log_param_lambda_logs_eq14_beside_the_output_lambda(tiny_model):
    """Figure 2's two curves from one run: lambda in use (output space) and the Eq. 14 lambda, logged."""
    from sdpo.losses import get_objective
    from sdpo.training.metrics import micro_step_scalars
    from sdpo.training.step import preference_forward

    mu = ["--use_winner_preserving", "--winner_preserving_mu", "0.2"]
    cfg, comps, batch = _comps_and_batch(tiny_model, [*mu, "--log_param_lambda"])
    dpo = get_objective("diffusion-dpo")
    terms = preference_forward(batch, comps, cfg, dpo, torch.device("cpu"))
    param_cfg = cfg.with_flags(winner_preserving_mode="param", log_param_lambda=False)
    output_cfg = cfg.with_flags(log_param_lambda=False)
    param = preference_forward(batch, comps, param_cfg, dpo, torch.device("cpu"))
    output = preference_forward(batch, comps, output_cfg, dpo, torch.device("cpu"))
    assert float(terms.lam) == float(output.lam)
    assert float(terms.logs["param_lambda"]) == pytest.approx(float(param.lam), rel=1e-6)
    assert float(terms.lam) != pytest.approx(float(param.lam), rel=1e-3)  # two different curves
    scalars = micro_step_scalars(terms, dpo.loss(terms, cfg.objective.params))
    assert float(scalars["param_lambda"]) == pytest.approx(float(param.lam), rel=1e-6)
    assert "param_lambda" not in output.logs


# ----------------------------------------------------------------------------- flags


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--winner_preserving_mode", "param"], "only act with --use_winner_preserving"),
        (["--use_winner_preserving", "--winner_preserving_mode", "fixed"], "needs --winner_preserving_lambda"),
        (
            ["--use_winner_preserving", "--winner_preserving_mode", "fixed", "--winner_preserving_lambda", "1.5"],
            "must be in [0, 1]",
        ),
        (["--use_winner_preserving", "--winner_preserving_lambda", "0.5"], "only used with --winner_preserving_mode"),
        (
            ["--use_winner_preserving", "--winner_preserving_mode", "param", "--winner_preserving_granularity", "pair"],
            "granularity pair needs --winner_preserving_mode output",
        ),
        (["--sipo_clip_eps", "1.5"], "--sipo_clip_eps must be in (0, 1)"),
        (["--log_param_lambda"], "only act with --use_winner_preserving"),
    ],
)
def test_bad_safeguard_flags_are_one_line_errors(flags, message):
    from sdpo.config import parse_args
    from sdpo.errors import UserError

    with pytest.raises(UserError) as e:
        parse_args(["--pretrained_model_name_or_path", "org/model", *flags])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_default_mode_is_output_batch():
    from sdpo.config import parse_args

    # A hub id: offline, the family must be named (it cannot be read from the hub's model_index.json).
    cfg = parse_args(
        ["--pretrained_model_name_or_path", "org/model", "--model_family", "sd15", "--use_winner_preserving"]
    )
    assert (cfg.safeguard.winner_preserving_mode, cfg.safeguard.winner_preserving_granularity) == ("output", "batch")
