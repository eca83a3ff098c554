"""Each objective on fixed tensors against a hand computation with Python floats."""

import math
from types import SimpleNamespace

import pytest
import torch

from sdpo.losses import LOSSES, PreferenceTerms, get_objective
from sdpo.safeguard.hook import scale_loser

MW, ML, RW, RL = [0.30, 0.52, 0.11], [0.41, 0.40, 0.09], [0.33, 0.50, 0.10], [0.39, 0.45, 0.12]


def terms(dspo_form="residual", **over):
    t = dict(
        model_w=torch.tensor(MW, dtype=torch.float64),
        model_l=torch.tensor(ML, dtype=torch.float64),
        ref_w=torch.tensor(RW, dtype=torch.float64),
        ref_l=torch.tensor(RL, dtype=torch.float64),
        model_pred=torch.zeros(6, 1, 2, 2, dtype=torch.float64),
        target=torch.zeros(6, 1, 2, 2, dtype=torch.float64),
        timesteps=torch.zeros(6, dtype=torch.long),
        dspo_form=dspo_form,
    )
    t.update(over)
    return PreferenceTerms(**t)


def u_values(beta):
    return [-0.5 * beta * ((mw - ml) - (rw - rl)) for mw, ml, rw, rl in zip(MW, ML, RW, RL)]


def log_sigmoid(x):
    return -math.log1p(math.exp(-x))


def test_registry_and_unknown_method():
    assert set(LOSSES) >= {"diffusion-dpo", "dspo", "dmpo", "sft"}
    with pytest.raises(ValueError, match="choose one of"):
        get_objective("ppo")


def test_diffusion_dpo_mean_of_per_pair_logsigmoid():
    beta = 50.0
    out = LOSSES["diffusion-dpo"].loss(terms(), SimpleNamespace(beta_dpo=beta))
    us = u_values(beta)
    expected = -sum(log_sigmoid(u) for u in us) / 3
    assert out.loss.item() == pytest.approx(expected, rel=1e-12)
    buggy = -log_sigmoid(sum(us) / 3)  # log-sigmoid of the mean: the known bug
    assert abs(out.loss.item() - buggy) > 1e-3
    assert out.inside.tolist() == pytest.approx(us, rel=1e-12)


@pytest.mark.parametrize("alpha", [0.0, 0.01, 0.3])
def test_dmpo_bernoulli_kl(alpha):
    beta = 40.0
    out = LOSSES["dmpo"].loss(terms(), SimpleNamespace(beta_dpo=beta, dmpo_alpha=alpha))
    q = min(max(1 - alpha, 1e-6), 1 - 1e-6)
    vals = []
    for u in u_values(beta):
        p = 1 / (1 + math.exp(-u))
        vals.append(p * (math.log(p) - math.log(q)) + (1 - p) * (math.log(1 - p) - math.log(1 - q)))
    assert out.loss.item() == pytest.approx(sum(vals) / 3, rel=1e-9, abs=1e-12)


def _preds():
    g = torch.Generator().manual_seed(3)
    pred = torch.randn(6, 1, 2, 2, generator=g, dtype=torch.float64)
    target = torch.randn(6, 1, 2, 2, generator=g, dtype=torch.float64)
    ref = pred + 0.1 * torch.randn(6, 1, 2, 2, generator=g, dtype=torch.float64)
    return pred, target, ref


def test_dspo_sd15_formula():
    beta = 0.001 * 1000
    pred, target, ref = _preds()
    out = LOSSES["dspo"].loss(terms(model_pred=pred, target=target, ref_pred=ref), SimpleNamespace(beta_dpo=beta))
    total = 0.0
    for i, u in enumerate(u_values(beta)):
        w = 1 - 1 / (1 + math.exp(-u))
        vals = [
            (pred[i].flatten()[k] - target[i].flatten()[k] - beta * w * (pred[i].flatten()[k] - ref[i].flatten()[k]))
            ** 2
            for k in range(4)
        ]
        total += float(sum(vals)) / 4
    assert out.loss.item() == pytest.approx(total / 3, rel=1e-10)


@pytest.mark.parametrize("scale", [1.0, 0.01])  # above / below the 0.1 threshold on mean (pred_w - ref_w)^2
def test_dspo_sdxl_branches(scale):
    beta = 5.0
    pred, target, _ = _preds()
    ref = pred - scale * torch.ones_like(pred)
    out = LOSSES["dspo"].loss(
        terms(dspo_form="thresholded", model_pred=pred, target=target, ref_pred=ref), SimpleNamespace(beta_dpo=beta)
    )
    weights = [1 - 1 / (1 + math.exp(-u)) for u in u_values(beta)]
    if scale**2 >= 0.1:
        expected = sum((w * scale) ** 2 for w in weights) / 3
    else:
        expected = sum(w**2 for w in weights) / 3
    assert out.loss.item() == pytest.approx(expected, rel=1e-10)


def test_sft_uses_winner_only():
    out = LOSSES["sft"].loss(terms(model_l=None, ref_w=None, ref_l=None), SimpleNamespace())
    assert out.loss.item() == pytest.approx(sum(MW) / 3)
    assert out.inside is None


@pytest.mark.parametrize("method", ["diffusion-dpo", "dspo", "dmpo"])
def test_safeguard_scales_only_the_loser_gradient_of_every_objective(method):
    """d loss / d L_l with the scaled loser equals lambda times the unscaled one; d / d L_w is unchanged."""
    pred, target, ref = _preds()
    cfg = SimpleNamespace(beta_dpo=30.0, dmpo_alpha=0.01)
    grads = {}
    for lam in (1.0, 0.25):
        mw = torch.tensor(MW, dtype=torch.float64, requires_grad=True)
        ml = torch.tensor(ML, dtype=torch.float64, requires_grad=True)
        t = terms(model_w=mw, model_l=scale_loser(ml, lam), model_pred=pred, target=target, ref_pred=ref)
        loss = LOSSES[method].loss(t, cfg).loss
        grads[lam] = torch.autograd.grad(loss, [mw, ml])
    torch.testing.assert_close(grads[0.25][0], grads[1.0][0])
    torch.testing.assert_close(grads[0.25][1], 0.25 * grads[1.0][1])
    assert grads[1.0][1].abs().sum() > 0


def test_objectives_that_share_a_hyper_parameter_declare_it_alike():
    """Each objective declares its own hyper-parameters (``Params``); a flag shared by several (``--beta_dpo``)
    must mean the same everywhere: same type, default and help, since the parser makes one flag of it."""
    from dataclasses import fields

    seen = {}
    for name, objective in LOSSES.items():
        for f in fields(objective.Params):
            spec = (str(f.type), f.default, f.metadata.get("help"))
            assert seen.setdefault(f.name, (name, spec))[1] == spec, (f.name, name, seen[f.name][0])
    assert {"beta_dpo", "dmpo_alpha", "kto_beta", "sipo_clip_eps"} <= set(seen)
