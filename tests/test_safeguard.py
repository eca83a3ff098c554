"""The SDPO hook against an independent autograd computation of REFERENCE section 2."""

import pytest
import torch

from sdpo.safeguard.hook import scale_loser, winner_preserving_lambda


def autograd_lambda(pred: torch.Tensor, target: torch.Tensor, mu: float) -> float:
    """The reference code's route: autograd of the two half-batch MSEs w.r.t. the prediction."""
    pred = pred.detach().clone().requires_grad_(True)
    b = pred.shape[0] // 2
    a_loss = ((pred[:b] - target[:b]) ** 2).mean()
    b_loss = ((pred[b:] - target[b:]) ** 2).mean()
    g_a = torch.autograd.grad(a_loss, pred)[0][:b]
    g_b = torch.autograd.grad(b_loss, pred)[0][b:]
    num, den = (g_a * g_a).sum().item(), (g_a * g_b).sum().item()
    lam = (1 - mu) * num / (den + 1e-9) if den > 0 else 1.0
    return min(max(lam, 0.0), 1.0)


def stacked(res_w: torch.Tensor, res_l: torch.Tensor):
    """A prediction whose winner/loser residuals against a random target are the given tensors."""
    target = torch.randn(2 * res_w.shape[0], *res_w.shape[1:], dtype=torch.float64)
    return target + torch.cat([res_w, res_l]), target


@pytest.mark.parametrize("mu", [0.0, 0.2, 0.6, 0.9, 1.0])
def test_lambda_matches_autograd_random(mu):
    g = torch.Generator().manual_seed(1)
    res_w = torch.randn(3, 4, 8, 8, generator=g, dtype=torch.float64)
    res_l = 0.7 * res_w + 0.5 * torch.randn(3, 4, 8, 8, generator=g, dtype=torch.float64)  # den > 0
    pred, target = stacked(res_w, res_l)
    lam = winner_preserving_lambda(pred, target, mu)
    assert lam.shape == ()
    assert lam.item() == pytest.approx(autograd_lambda(pred, target, mu), rel=1e-6, abs=1e-12)
    assert 0.0 <= lam.item() <= 1.0


def test_lambda_branches():
    res_w = torch.randn(2, 4, 4, 4, dtype=torch.float64)
    # den = c * num: lambda = (1 - mu) / c.
    pred, target = stacked(res_w, 4.0 * res_w)
    assert winner_preserving_lambda(pred, target, 0.2).item() == pytest.approx(0.2, rel=1e-6)
    # c = 0.5 -> 2 (1 - mu) = 2 > 1: clamped to 1.
    pred, target = stacked(res_w, 0.5 * res_w)
    assert winner_preserving_lambda(pred, target, 0.0).item() == 1.0
    # Gradients that disagree (den < 0): no conflict, lambda = 1.
    pred, target = stacked(res_w, -res_w)
    assert winner_preserving_lambda(pred, target, 0.5).item() == 1.0
    assert autograd_lambda(pred, target, 0.5) == 1.0
    # Orthogonal (den == 0) also takes the "else 1" branch.
    res_l = torch.zeros_like(res_w)
    pred, target = stacked(res_w, res_l)
    assert winner_preserving_lambda(pred, target, 0.5).item() == 1.0
    # mu = 1: no loser gradient at all when the two agree; mu = 0: the exact first-order bound.
    pred, target = stacked(res_w, 4.0 * res_w)
    assert winner_preserving_lambda(pred, target, 1.0).item() == 0.0
    assert winner_preserving_lambda(pred, target, 0.0).item() == pytest.approx(0.25, rel=1e-6)


def test_lambda_per_pair_matches_independent_pairs():
    g = torch.Generator().manual_seed(2)
    res_w = torch.randn(3, 4, 4, 4, generator=g, dtype=torch.float64)
    res_l = torch.stack([2.0 * res_w[0], -res_w[1], 0.9 * res_w[2]])
    pred, target = stacked(res_w, res_l)
    lam = winner_preserving_lambda(pred, target, 0.1, per_pair=True)
    b = 3
    for i in range(b):
        one_pred = torch.stack([pred[i], pred[b + i]])
        one_target = torch.stack([target[i], target[b + i]])
        assert lam[i].item() == pytest.approx(autograd_lambda(one_pred, one_target, 0.1), rel=1e-6)


def test_lambda_is_detached_and_rejects_bad_mu():
    pred = torch.randn(4, 4, 2, 2, requires_grad=True)
    lam = winner_preserving_lambda(pred, torch.zeros(4, 4, 2, 2), 0.5)
    assert not lam.requires_grad
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            winner_preserving_lambda(pred, torch.zeros_like(pred), bad)


def test_scale_loser_value_and_gradients():
    x = torch.randn(5, dtype=torch.float64, requires_grad=True)
    loss_w = (x**2).sum(dim=0, keepdim=True) * torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    loss_l = torch.sin(x).sum() * torch.tensor([0.5, 1.5, 2.5], dtype=torch.float64)
    lam = torch.tensor(0.37, dtype=torch.float64)

    scaled = scale_loser(loss_l, lam)
    assert torch.equal(scaled, loss_l)  # forward value unchanged

    (g_scaled,) = torch.autograd.grad((loss_w - scaled).sum(), x, retain_graph=True)
    (g_w,) = torch.autograd.grad(loss_w.sum(), x, retain_graph=True)
    (g_l,) = torch.autograd.grad(loss_l.sum(), x, retain_graph=True)
    torch.testing.assert_close(g_scaled, g_w - 0.37 * g_l, rtol=1e-12, atol=1e-12)
    # The loser branch alone receives exactly lambda times its gradient.
    (g_only,) = torch.autograd.grad(scaled.sum(), x)
    torch.testing.assert_close(g_only, 0.37 * g_l, rtol=1e-12, atol=1e-12)
