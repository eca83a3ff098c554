"""MaPO, DPOP, DPO-C&M, SIPO: values on fixed tensors vs hand computations, and 2-step training runs."""

from __future__ import annotations

import json
import math
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from sdpo.losses import LOSSES, PreferenceTerms, get_objective
from sdpo.losses.transition import transition_noise

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

T = 1000
_BETAS = np.linspace(0.00085**0.5, 0.012**0.5, T) ** 2  # SD1.5's scaled_linear schedule, written out
_ALPHAS_CUMPROD = np.cumprod(1.0 - _BETAS)


def _logsigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def _cfg(**kw):
    base = dict(beta_dpo=50.0, beta_mapo=0.1, mapo_snr=0.5, dpop_lambda=5.0, sipo_clip_eps=0.1, sipo_mask_threshold=0.9)
    return SimpleNamespace(**{**base, **kw})


def _scalar_terms(lw, ll, rw=None, rl=None):
    t = lambda v: None if v is None else torch.tensor(v, dtype=torch.float64)  # noqa: E731
    n = len(lw)
    return PreferenceTerms(
        model_pred=torch.zeros(2 * n, 1),
        target=torch.zeros(2 * n, 1),
        timesteps=torch.zeros(2 * n, dtype=torch.long),
        model_w=t(lw),
        model_l=t(ll),
        ref_w=t(rw),
        ref_l=t(rl),
        alphas_cumprod=torch.from_numpy(_ALPHAS_CUMPROD),
    )


# ----------------------------------------------------------------------------- MaPO


def test_mapo_value_by_hand():
    lw, ll = [0.3, 0.2, 0.0], [0.302, 0.19, 0.001]
    out = get_objective("mapo").loss(_scalar_terms(lw, ll), _cfg())
    s, beta = 0.5, 0.1

    def odds(v):
        return 1.0 if v == 0 else s * v / (math.exp(s * v) - 1.0)

    ratios = [_logsigmoid(T * (odds(w) - odds(lo))) for w, lo in zip(lw, ll)]
    expected = sum(lw) / 3 - beta * sum(ratios) / 3
    assert float(out.loss) == pytest.approx(expected, rel=1e-9)  # expm1 vs exp - 1, times T
    assert out.inside.tolist() == pytest.approx([odds(w) - odds(lo) for w, lo in zip(lw, ll)], rel=1e-9)
    assert out.inside[0] > 0 > out.inside[1]  # the better-denoised image has the higher odds


def test_mapo_needs_no_reference_and_loads_none(tiny_sd15):
    """No reference UNet reaches the device: the parameter count is the no-reference count."""
    from sdpo.config import parse_args
    from sdpo.families import load_family as load_components

    def count(comps):
        mods = [comps.unet, comps.vae, *comps.text_encoders] + ([comps.ref_unet] if comps.ref_unet else [])
        return sum(p.numel() for m in mods for p in m.parameters())

    args = ["--pretrained_model_name_or_path", str(tiny_sd15), "--resolution", "64", "--train_method"]
    mapo = get_objective("mapo")
    assert mapo.NEEDS_REFERENCE is False
    comps = load_components(parse_args([*args, "mapo"]).model, torch.device("cpu"), torch.float32, mapo.NEEDS_REFERENCE)
    assert comps.ref_unet is None
    unet_n = sum(p.numel() for p in comps.unet.parameters())
    no_ref = unet_n + sum(p.numel() for m in (comps.vae, *comps.text_encoders) for p in m.parameters())
    assert count(comps) == no_ref
    dpo = get_objective("diffusion-dpo")
    with_ref = load_components(parse_args([*args, "diffusion-dpo"]).model, torch.device("cpu"), torch.float32, True)
    assert dpo.NEEDS_REFERENCE and count(with_ref) == no_ref + unet_n


# ----------------------------------------------------------------------------- DPOP


def test_dpop_value_by_hand():
    lw, ll, rw, rl = [0.30, 0.25], [0.31, 0.24], [0.29, 0.26], [0.30, 0.245]
    out = get_objective("dpop").loss(_scalar_terms(lw, ll, rw, rl), _cfg())
    beta, lam = 50.0, 5.0
    us = [-0.5 * beta * ((a - b) - (c - d) + lam * max(0.0, a - c)) for a, b, c, d in zip(lw, ll, rw, rl)]
    assert float(out.loss) == pytest.approx(-sum(_logsigmoid(u) for u in us) / 2, rel=1e-12)
    assert out.inside.tolist() == pytest.approx(us, rel=1e-12)
    # with lambda_dpop = 0 it is Diffusion-DPO
    plain = get_objective("diffusion-dpo").loss(_scalar_terms(lw, ll, rw, rl), _cfg())
    assert float(get_objective("dpop").loss(_scalar_terms(lw, ll, rw, rl), _cfg(dpop_lambda=0.0)).loss) == float(
        plain.loss
    )


# ----------------------------------------------------------------------------- DPO-C&M and SIPO


def _diffusion_terms():
    """Three pairs at t = 1 (a poor prediction: weight < 0.9), t = 0 and t = 500, float64."""
    g = np.random.default_rng(0)
    shape = (4, 4, 4)
    t = np.array([1, 0, 500])
    x0 = g.standard_normal((6, *shape))
    eps = np.repeat(g.standard_normal((3, *shape))[None], 2, axis=0).reshape(6, *shape)  # shared per pair
    tt = np.concatenate([t, t])
    ab = _ALPHAS_CUMPROD[tt].reshape(-1, 1, 1, 1)
    xt = np.sqrt(ab) * x0 + np.sqrt(1 - ab) * eps
    err = np.array([0.8, 0.2, 0.3, 0.5, 0.1, 0.6]).reshape(-1, 1, 1, 1)
    pred = eps + err * g.standard_normal((6, *shape))
    arrays = dict(x0=x0, eps=eps, xt=xt, pred=pred, t=tt)
    seeds = torch.tensor([101, 202, 303])
    f = lambda a: torch.from_numpy(a)  # noqa: E731
    terms = PreferenceTerms(
        model_pred=f(pred),
        target=f(eps),
        timesteps=f(tt),
        model_w=torch.tensor([0.30, 0.25, 0.20], dtype=torch.float64),
        model_l=torch.tensor([0.31, 0.24, 0.22], dtype=torch.float64),
        ref_w=torch.tensor([0.29, 0.26, 0.21], dtype=torch.float64),
        ref_l=torch.tensor([0.30, 0.245, 0.205], dtype=torch.float64),
        noisy_latents=f(xt),
        latents=f(x0),
        alphas_cumprod=torch.from_numpy(_ALPHAS_CUMPROD),
        sample_seeds=seeds,
    )
    return terms, arrays, transition_noise(seeds, shape, "cpu").numpy()


def _logpdf(x, mean, var):
    return -0.5 * ((x - mean) ** 2 / var + math.log(2 * math.pi * var))


def _hand_log_weights(a, z):
    """log p_theta(x_{t-1}|x_t) - log q(x_{t-1}|x_t,x_0), mean over elements, from the epsilon-form
    DDPM means and explicit Gaussian log-densities (an independent route from the module's x0-form)."""
    out = []
    for i in range(6):
        t = int(a["t"][i])
        ab = _ALPHAS_CUMPROD[t]
        ab_prev = _ALPHAS_CUMPROD[t - 1] if t > 0 else 1.0
        alpha, beta = ab / ab_prev, 1 - ab / ab_prev
        if t > 0:
            var = (1 - ab_prev) / (1 - ab) * beta
        else:  # clipped posterior variance: that of t = 1
            var = (1 - _ALPHAS_CUMPROD[0]) / (1 - _ALPHAS_CUMPROD[1]) * (1 - _ALPHAS_CUMPROD[1] / _ALPHAS_CUMPROD[0])
        mean_q = (a["xt"][i] - beta / math.sqrt(1 - ab) * a["eps"][i]) / math.sqrt(alpha)
        mean_p = (a["xt"][i] - beta / math.sqrt(1 - ab) * a["pred"][i]) / math.sqrt(alpha)
        x_prev = mean_q + math.sqrt(var) * z[i % 3]

        out.append(float(np.mean(_logpdf(x_prev, mean_p, var) - _logpdf(x_prev, mean_q, var))))
    return np.array(out)


def _u(terms, beta):
    return [
        -0.5 * beta * ((a - b) - (c - d))
        for a, b, c, d in zip(*(v.tolist() for v in (terms.model_w, terms.model_l, terms.ref_w, terms.ref_l)))
    ]


def test_dpo_cm_value_by_hand():
    terms, arrays, z = _diffusion_terms()
    log_w = _hand_log_weights(arrays, z)
    w_pair = np.exp(log_w[:3] + log_w[3:])
    assert w_pair[0] < 0.9 < w_pair[2]  # the t = 1 pair is masked, the t = 500 pair is kept
    c = np.clip(w_pair, 0.9, 1.1) * (w_pair >= 0.9)
    us = _u(terms, 50.0)
    expected = sum(ci * -_logsigmoid(u) for ci, u in zip(c, us)) / 3
    out = get_objective("dpo-cm").loss(terms, _cfg())
    assert float(out.loss) == pytest.approx(expected, rel=1e-9)
    assert float(out.logs["cm_kept_fraction"]) == pytest.approx((w_pair >= 0.9).mean())


def test_sipo_value_by_hand():
    terms, arrays, z = _diffusion_terms()
    log_w = _hand_log_weights(arrays, z)
    inv = np.clip(np.exp(-log_w), 0.9, 1.1)
    s = np.maximum(inv[:3], inv[3:])
    assert s.max() > s.min()  # the weights differ between pairs
    us = _u(terms, 50.0)
    expected = -sum(_logsigmoid(si * u) for si, u in zip(s, us)) / 3
    out = get_objective("sipo").loss(terms, _cfg())
    assert float(out.loss) == pytest.approx(expected, rel=1e-9)
    assert out.inside.tolist() == pytest.approx([si * u for si, u in zip(s, us)], rel=1e-9)


def test_transition_noise_follows_the_pair_not_its_slot():
    a = transition_noise(torch.tensor([5, 9]), (2, 3), "cpu")
    b = transition_noise(torch.tensor([9, 5]), (2, 3), "cpu")
    assert torch.equal(a[0], b[1]) and torch.equal(a[1], b[0]) and not torch.equal(a[0], a[1])


# ----------------------------------------------------------------------------- end to end


@pytest.mark.parametrize(
    "method, extra",
    [
        ("mapo", ["--use_winner_preserving", "--winner_preserving_mu", "0.5"]),
        ("dpop", []),
        ("dpo-cm", ["--use_winner_preserving", "--winner_preserving_mode", "param"]),
        ("sipo", ["--use_winner_preserving", "--winner_preserving_mode", "fixed", "--winner_preserving_lambda", "0.5"]),
    ],
)
def test_two_step_training_run(method, extra, tiny_sd15, tiny_pairs, tmp_path, run_train):
    from conftest import tiny_flags

    out = tmp_path / "out"
    assert run_train(*tiny_flags(tiny_sd15, tiny_pairs, out, "--max_train_steps", "2", "--train_method", method,
                                 *extra)).is_file()  # fmt: skip
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(math.isfinite(r["train_loss"]) and 0.0 <= r["avg_lose_l_scale"] <= 1.0 for r in rows)
    if method == "mapo":
        assert "ref_mse_unaccumulated" not in rows[0]  # no reference model ran
    if "fixed" in extra:
        assert all(r["avg_lose_l_scale"] == 0.5 for r in rows)


def test_registry_holds_the_new_methods():
    assert {"mapo", "dpop", "dpo-cm", "sipo"} <= set(LOSSES)
