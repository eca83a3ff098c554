"""Online RL (sdpo.rl): the stochastic samplers and their log-probabilities against independent computations,
advantages, the clipped objective and KL, the winner-preserving lambda, and a tiny GRPO update end to end on a
flow family and a DDPM family (tiny models, a tiny colour reward defined here)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from sdpo.config import parse_args
from sdpo.errors import UserError
from sdpo.families import get_family
from sdpo.rl.advantages import group_advantages
from sdpo.rl.flow_sde import FlowSDE
from sdpo.rl.logprob import recompute
from sdpo.rl.objective import clipped_policy_loss, kl_per_row
from sdpo.rl.rollout import rollout
from sdpo.rl.settings import default_grpo, default_rollout
from sdpo.rl.trajectory import Trajectories
from sdpo.rl.update import grpo_update
from sdpo.rl.winner_preserving import branch_lambda, split_objective

RES = 32
PROMPTS = ["a red square", "a blue circle"]


def _family(model, needs_reference: bool = False):
    cfg = parse_args(["--pretrained_model_name_or_path", str(model), "--resolution", str(RES)])
    fam = get_family(cfg.model.model_family).load(cfg.model, torch.device("cpu"), torch.float32, needs_reference)
    return fam, tuple(fam.latent_shape((3, RES, RES)))


def _rollout(fam, shape, steps: int = 3, group: int = 2):
    settings = replace(default_rollout(fam.process), steps=steps)
    return rollout(fam, PROMPTS, group, list(range(10, 10 + group * len(PROMPTS))), settings, shape)


def _parity(fam, traj) -> float:
    """Largest |recomputed - recorded| log-probability over every step, each group recomputed as it was sampled."""
    worst = 0.0
    with torch.no_grad():
        for g in range(len(traj.prompts)):
            rows = torch.nonzero(traj.group == g).flatten()
            for j in range(traj.process.steps):
                out, _ = recompute(fam, fam.denoiser, traj, rows, torch.full((len(rows),), j))
                worst = max(worst, float((out.log_prob - traj.log_probs[rows, j]).abs().max()))
    return worst


def test_flow_sde_rollout_logprobs_recompute_exactly_and_reload(tiny_flux, tmp_path):
    fam, shape = _family(tiny_flux)
    traj = _rollout(fam, shape)
    assert traj.latents.shape == (4, 4, *shape) and not traj.negative  # FLUX.1 is guidance-distilled: no CFG pass
    assert _parity(fam, traj) <= 1e-6
    traj.save(tmp_path / "t.safetensors")
    back = Trajectories.load(tmp_path / "t.safetensors")
    assert torch.equal(back.latents, traj.latents) and torch.equal(back.log_probs, traj.log_probs)
    assert torch.equal(back.process.sigmas, traj.process.sigmas) and back.process.noise_level == 0.7
    assert back.prompts == PROMPTS and torch.equal(back.cond["pooled_projections"], traj.cond["pooled_projections"])
    assert _parity(fam, back) <= 1e-6
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(UserError, match="bad.safetensors: not a readable safetensors file"):
        Trajectories.load(tmp_path / "bad.safetensors")
    with pytest.raises(UserError, match="no trajectory file"):
        Trajectories.load(tmp_path / "missing.safetensors")


def test_flow_rollout_schedule_is_the_pipelines_and_the_step_is_flow_grpos(tiny_flux):
    """The rollout's sigmas are those FluxPipeline sets for the same step count and size; one step equals Flow-GRPO's
    formula (sde_step_with_logprob) written out here in float64, and its log-density is torch's Normal's."""
    from sdpo.sampling.images import sample_latents

    fam, shape = _family(tiny_flux)
    comp = fam.sampling_components(fam.denoiser, fam.sampling_scheduler())
    sample_latents(comp, ["x"], RES, RES, 4, 3.5, 0)  # the pipeline sets its scheduler's timesteps
    sched = fam.rollout_schedule(4, shape)
    torch.testing.assert_close(sched["sigmas"], comp.scheduler.sigmas.float().cpu())
    torch.testing.assert_close(sched["timesteps"], comp.scheduler.timesteps.float().cpu())

    proc = FlowSDE(sched["timesteps"], sched["sigmas"], 0.7)
    g = torch.Generator().manual_seed(0)
    x, v, z = (torch.randn(2, *shape, generator=g) for _ in range(3))
    j = torch.tensor([0, 2])
    out = proc.step(j, v, x, noise=z)
    s = sched["sigmas"].double()
    for r in range(2):
        sig, nxt = float(s[j[r]]), float(s[j[r] + 1])
        dt = nxt - sig
        st = 0.7 * math.sqrt(sig / (1 - (float(s[1]) if sig == 1 else sig)))
        mean = x[r].double() * (1 + st**2 / (2 * sig) * dt) + v[r].double() * (1 + st**2 * (1 - sig) / (2 * sig)) * dt
        std = st * math.sqrt(-dt)
        torch.testing.assert_close(out.mean[r].double(), mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out.next_latent[r].double(), mean + std * z[r].double(), rtol=1e-5, atol=1e-6)
        lp = torch.distributions.Normal(mean, std).log_prob(out.next_latent[r].double()).mean()
        assert float(out.log_prob[r]) == pytest.approx(float(lp), rel=1e-5)
        assert float(out.kl_std.flatten()[r]) == pytest.approx(st, rel=1e-6)  # the code's std_dev_t, not x sqrt(-dt)


def test_ddim_eta_rollout_logprobs_recompute_exactly_and_step_is_diffusers_ddim(tiny_sd15):
    """SD1.5: the stochastic DDIM step equals diffusers' DDIMScheduler.step with the same eta and noise (DDPO's
    sampler is that step plus its density), and recorded log-probabilities recompute exactly."""
    from diffusers import DDIMScheduler

    fam, shape = _family(tiny_sd15)
    traj = _rollout(fam, shape)
    assert traj.negative  # classifier-free guidance 5.0 (DDPO's default): one empty-prompt row
    assert _parity(fam, traj) <= 1e-6

    ddim = DDIMScheduler.from_config(fam.scheduler.config)
    ddim.set_timesteps(3)
    assert torch.equal(traj.process.timesteps, ddim.timesteps.long())
    g = torch.Generator().manual_seed(1)
    x, eps, z = (torch.randn(1, *shape, generator=g) for _ in range(3))
    for j, t in enumerate(ddim.timesteps):
        want = ddim.step(eps, t, x, eta=1.0, variance_noise=z).prev_sample
        out = traj.process.step(torch.tensor([j]), eps, x, noise=z)
        torch.testing.assert_close(out.next_latent, want, rtol=1e-5, atol=1e-5)
        lp = torch.distributions.Normal(out.mean.double(), out.noise_std.double()).log_prob(want.double()).mean()
        assert float(out.log_prob) == pytest.approx(float(lp), rel=1e-4)


def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 2.0, 3.0, 10.0, 10.0, 13.0])
    group = torch.tensor([0, 0, 0, 1, 1, 1])
    r = rewards.tolist()
    std_all = float(np.std(r))  # population std, as flow_grpo's stat tracker (numpy default)
    want_global = [(v - 2.0) / (std_all + 1e-4) for v in r[:3]] + [(v - 11.0) / (std_all + 1e-4) for v in r[3:]]
    assert group_advantages(rewards, group).tolist() == pytest.approx(want_global, rel=1e-12)
    s0, s1 = math.sqrt(2 / 3), math.sqrt(2.0)  # the groups' own population stds
    want_group = [(v - 2.0) / (s0 + 1e-4) for v in r[:3]] + [(v - 11.0) / (s1 + 1e-4) for v in r[3:]]
    assert group_advantages(rewards, group, "group").tolist() == pytest.approx(want_group, rel=1e-12)
    assert group_advantages(torch.ones(4), torch.tensor([0, 0, 1, 1])).tolist() == [0.0] * 4


def test_clipped_objective_and_kl_by_hand():
    lp = torch.tensor([-1.0, -1.0, -1.0, -1.0])
    old = torch.tensor([-1.0, -1.3, -0.7, -1.05])
    adv = torch.tensor([2.0, 1.0, -1.0, -9.0])  # the last is clipped to -5
    loss, ratio = clipped_policy_loss(lp, old, adv, clip_range=0.2, adv_clip_max=5.0)
    want = []
    for a, lo in zip([2.0, 1.0, -1.0, -5.0], old.tolist()):
        r = math.exp(-1.0 - lo)
        want.append(max(-a * r, -a * min(max(r, 0.8), 1.2)))
    assert loss.tolist() == pytest.approx(want, rel=1e-6)
    assert ratio.tolist() == pytest.approx([math.exp(-1.0 - o) for o in old.tolist()], rel=1e-6)
    mean, ref = torch.zeros(2, 1, 2, 2), torch.zeros(2, 1, 2, 2)
    mean[0, 0, 0, 0], ref[1] = 1.0, -0.5
    kl = kl_per_row(mean, ref, torch.tensor([0.5, 2.0]).view(2, 1, 1, 1))
    assert kl.tolist() == pytest.approx([(1.0 / 4) / (2 * 0.25), 0.25 / (2 * 4.0)])


def test_winner_preserving_lambda_is_the_closed_form_on_the_two_branches():
    """Flow step, four rows in two groups; the output-space gradients of the two branches written out by hand:
    d loss_i / d pred_i = -A_i r_i b_i (x'_i - mean_i) / (s_i^2 E n) inside the clip window (0 outside), with
    b = (1 + sigma_t^2 (1 - sigma) / (2 sigma)) dt the velocity's coefficient in the mean."""
    sigmas = torch.tensor([1.0, 0.8, 0.5, 0.2, 0.0])
    proc = FlowSDE(sigmas[:-1] * 1000, sigmas, 0.7)
    g = torch.Generator().manual_seed(3)
    shape = (2, 3, 3)
    x, pred = torch.randn(4, *shape, generator=g), torch.randn(4, *shape, generator=g)
    j = torch.tensor([1, 1, 2, 2])
    mean = proc.step(j, pred, x, noise=torch.zeros(4, *shape)).mean
    base = torch.randn(2, *shape, generator=g)
    resid = torch.stack([base[0], 2.0 * base[0] + 0.3 * torch.randn(shape, generator=g), base[1], -base[1]])
    nxt = mean + 0.2 * resid  # group 0's two rows agree: the negative one would raise the positive one's loss
    group, adv = torch.tensor([0, 0, 1, 1]), torch.tensor([1.5, -4.0, 0.8, -1.2])
    out = proc.step(j, pred, x, next_latent=nxt)
    old = out.log_prob.detach() + torch.tensor([0.01, -0.02, 0.0, 0.5])  # row 3's ratio exp(-0.5) is clipped
    clip, mu = 0.2, 0.1

    def loss_of(p):
        return clipped_policy_loss(proc.step(j, p, x, next_latent=nxt).log_prob, old, adv, clip, 5.0)[0]

    lam, num, den = branch_lambda(loss_of, pred, adv, group, mu)

    n, e = 4, float(np.prod(shape))
    grads = []
    for i in range(4):
        sig, dt = float(sigmas[j[i]]), float(sigmas[j[i] + 1] - sigmas[j[i]])
        st = 0.7 * math.sqrt(sig / (1 - (0.8 if sig == 1 else sig)))
        b, s2 = (1 + st**2 * (1 - sig) / (2 * sig)) * dt, st**2 * -dt
        r = math.exp(float(out.log_prob[i] - old[i]))
        flows = r <= 1 + clip if float(adv[i]) > 0 else r >= 1 - clip  # else the clipped ratio is the max: constant
        gi = -float(adv[i]) * r * b * (nxt[i] - mean[i]).double() / (s2 * e * n) if flows else torch.zeros(shape)
        grads.append(gi.double())
    sp = [grads[0], grads[2]]  # positive rows of groups 0 and 1
    sq = [grads[1], grads[3]]  # negative rows
    want_num = sum(float((a * a).sum()) for a in sp)
    want_den = -sum(float((a * c).sum()) for a, c in zip(sp, sq))
    assert float(num) == pytest.approx(want_num, rel=1e-4) and float(den) == pytest.approx(want_den, rel=1e-4)
    assert torch.equal(grads[3], torch.zeros(shape, dtype=torch.float64))  # the clipped row has no gradient
    assert want_den > 0
    assert float(lam) == pytest.approx(min(1.0, (1 - mu) * want_num / want_den), rel=1e-4) and float(lam) < 1

    # the objective the update descends: value = mean of the rows, gradient = positive branch + lambda x negative
    p = pred.clone().requires_grad_(True)
    per_row = loss_of(p)
    obj = split_objective(per_row, adv, lam)
    assert float(obj.detach()) == pytest.approx(float(per_row.detach().mean()), rel=1e-6)
    (grad,) = torch.autograd.grad(obj, p)
    want = torch.stack([grads[0], float(lam) * grads[1], grads[2], float(lam) * grads[3]])
    torch.testing.assert_close(grad.double(), want, rtol=1e-3, atol=1e-9)


def _redness(fam, latents: torch.Tensor) -> torch.Tensor:
    """The tiny colour reward: mean red minus mean green and blue of the decoded images, in [-1, 1]."""
    from sdpo.sampling.images import decode_latents

    images = decode_latents(fam.sampling_components(fam.denoiser, None), latents)
    px = [np.asarray(im, dtype=np.float64) / 255.0 for im in images]
    return torch.tensor([float(a[..., 0].mean() - 0.5 * (a[..., 1].mean() + a[..., 2].mean())) for a in px])


@pytest.mark.parametrize("kind,mode", [("flux", None), ("flux", "param"), ("sd15", "output")])
def test_tiny_grpo_update_end_to_end_changes_the_weights(kind, mode, request):
    """Rollouts -> the colour reward -> advantages -> GRPO steps; plain, and with the winner-preserving lambda from
    parameter-space gradients (Eq. 14) and from output-space ones (Eq. 17, the default)."""
    fam, shape = _family(request.getfixturevalue(f"tiny_{kind}"), needs_reference=True)
    traj = _rollout(fam, shape, steps=2)
    rewards = _redness(fam, traj.final)
    adv = group_advantages(rewards, traj.group)
    before = {k: v.clone() for k, v in fam.denoiser.state_dict().items()}
    opt = torch.optim.AdamW([p for p in fam.denoiser.parameters() if p.requires_grad], lr=1e-3)
    settings = replace(default_grpo(fam.process), micro_batch=1, timestep_fraction=0.5,  # one trained step of two
                       winner_preserving=mode is not None, winner_preserving_mu=0.5,
                       winner_preserving_mode=mode or "output")  # fmt: skip
    log = grpo_update(fam, opt, traj, adv, settings, seed=0)
    assert len(log) == (2 if mode else 4)  # one optimizer step per micro-batch: a group, or a sample
    assert log[0]["kl_loss"] == 0.0  # the policy is still the reference during the first micro-batch
    assert all(math.isfinite(v) for s in log for v in s.values())
    assert ("avg_lose_l_scale" in log[0]) == (mode is not None)
    assert all(0.0 <= s.get("avg_lose_l_scale", 0.0) <= 1.0 for s in log)
    changed = [k for k, v in fam.denoiser.state_dict().items() if not torch.equal(v, before[k])]
    assert changed
