"""One micro-batch through the models: pixels -> latents -> shared noise -> predictions -> losses.

Pair ``i`` is rows ``i`` (winner) and ``B + i`` (loser).  Both rows get the same time and the same
noise (REFERENCE section 1), drawn from the pair's own stream (``sdpo.data.seeding``).  Everything
model-specific (latents, noise process, text, the denoiser call) is the family's
(``sdpo.families``); nothing here knows which family it runs.
"""

from __future__ import annotations

import torch

from sdpo.config.sections import ObjectiveConfig, RunConfig
from sdpo.data.seeding import torch_generator
from sdpo.families.base import Conditioning, ModelFamily
from sdpo.losses import PreferenceTerms
from sdpo.losses.terms import at_least_fp32
from sdpo.safeguard.hook import scale_loser
from sdpo.safeguard.modes import lambda_logs, safeguard_lambda, splits_policy_forward


def per_sample_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return ((at_least_fp32(pred) - at_least_fp32(target)) ** 2).mean(dim=list(range(1, pred.dim())))


def pair_draws(seeds: torch.Tensor, latent_shape: tuple[int, ...], family: ModelFamily, device):
    """Per pair, in this order from its stream: time, diffusion noise, VAE posterior noise (winner,
    loser), noise-offset and input-perturbation draws."""
    t, eps, vae_eps, offset, perturb = [], [], [], [], []
    # --noise_offset: one draw per latent channel, broadcast over the other axes
    offset_shape = tuple(n if k == family.channel_axis else 1 for k, n in enumerate(latent_shape))
    for s in seeds.tolist():
        g = torch_generator(s, device)
        t.append(family.draw_time(g, device))
        eps.append(torch.randn(latent_shape, generator=g, device=device))
        vae_eps.append(torch.randn((2, *latent_shape), generator=g, device=device))
        offset.append(torch.randn(offset_shape, generator=g, device=device))
        perturb.append(torch.randn(latent_shape, generator=g, device=device))
    vae_eps = torch.stack(vae_eps)  # (B, 2, *latent) -> winners then losers
    return (
        torch.cat(t),
        torch.stack(eps),
        torch.cat([vae_eps[:, 0], vae_eps[:, 1]]),
        torch.stack(offset),
        torch.stack(perturb),
    )


def _repeat(x: torch.Tensor, reps: int) -> torch.Tensor:
    return x.repeat(reps, *([1] * (x.dim() - 1)))


def clean_latents(batch: dict, rows: int, family: ModelFamily, posterior_noise: torch.Tensor, device):
    """The first ``rows`` stacked images as latents: the VAE posterior sample drawn with
    ``posterior_noise``, encoded now from ``pixel_values``, or from the posterior's mean and std when
    the batch carries them (precomputed, ``sdpo.cache.store``): the same sample either way."""
    if "latent_mean" in batch:
        mean, std = batch["latent_mean"][:rows].to(device), batch["latent_std"][:rows].to(device)
        return family.latents_from_posterior(mean, std, posterior_noise)
    return family.encode_latents(batch["pixel_values"][:rows].to(device), posterior_noise)


def batch_latent_shape(batch: dict, family: ModelFamily) -> tuple[int, ...]:
    if "latent_mean" in batch:
        return tuple(batch["latent_mean"].shape[1:])
    return family.latent_shape(tuple(batch["pixel_values"].shape[1:]))


def noised_latents(batch: dict, rows: int, family: ModelFamily, noise: ObjectiveConfig, reps: int, device):
    """Latents of the first ``rows`` images, the noised latents fed to the denoiser, the regression
    target, and the denoiser's time argument (shared per pair)."""
    latent_shape = batch_latent_shape(batch, family)
    t, eps, vae_eps, offset, perturb = pair_draws(batch["sample_seeds"], latent_shape, family, device)
    latents = clean_latents(batch, rows, family, vae_eps[:rows], device)
    if noise.noise_offset:
        eps = eps + noise.noise_offset * offset
    drawn, time = _repeat(eps, reps), _repeat(t, reps)
    fed = drawn + noise.input_perturbation * _repeat(perturb, reps) if noise.input_perturbation else drawn
    noisy, target, model_t = family.add_noise(latents, fed, time)
    if noise.input_perturbation:  # the target is the noise actually drawn, not the perturbed one
        target = family.add_noise(latents, drawn, time)[1]
    return latents, noisy, target, model_t


def conditioning(family: ModelFamily, batch: dict, reps: int, dtype: torch.dtype, device) -> Conditioning:
    """The family's text conditioning (encoded now from ``captions``, or precomputed: ``text``, from
    ``sdpo.cache.store``) and its other inputs, repeated for winners and losers."""
    text = batch.get("text") or family.encode_prompt(batch["captions"])
    cond = {k: _repeat(v.to(device), reps).to(dtype) for k, v in text.items()}
    return {**cond, **family.extra_conditioning(len(batch["sample_seeds"]) * reps, dtype)}


def preference_forward(
    batch: dict, family: ModelFamily, cfg: RunConfig, objective, device: torch.device
) -> PreferenceTerms:
    """Forward passes of one micro-batch and the per-sample losses, the safeguard applied (``cfg``: its
    ``objective`` noise settings and ``safeguard`` section)."""
    bsz = len(batch["sample_seeds"])  # pairs: 2B stacked rows (winners, then losers); kto: B single images
    uses_loser = objective.USES_LOSER
    reps = 2 if uses_loser else 1  # SFT: only the preferred images are denoised (kto: each sample's one image)
    latents, noisy, target, timesteps = noised_latents(batch, reps * bsz, family, cfg.objective, reps, device)
    safeguard = cfg.safeguard
    # Inputs in the trained parameters' dtype: fp32 normally (autocast does the rest; LoRA: the adapters',
    # not the frozen base's), bf16/fp16 when DeepSpeed has cast the module itself and autocast is off.
    params = family.denoiser.parameters()
    dtype = next((p for p in params if p.requires_grad), next(family.denoiser.parameters())).dtype
    noisy = noisy.to(dtype)
    cond = conditioning(family, batch, reps, dtype, device)

    halves = None
    if uses_loser and splits_policy_forward(safeguard):  # param-mode lambda: winners and losers as separate graphs
        halves = tuple(
            _rows(family, family.denoiser, noisy, timesteps, cond, rows)
            for rows in (slice(None, bsz), slice(bsz, None))
        )
        model_pred = torch.cat(halves)
    else:
        model_pred = family.predict(family.denoiser, noisy, timesteps, cond)
    losses = per_sample_mse(model_pred, target)
    process = family.process_terms()
    if not uses_loser:
        ref_pred = ref_w = None
        if family.reference is not None:  # kto: the reference denoises the same single images
            ref_pred, ref_w = reference_losses(family, noisy, timesteps, cond, target)
        labels = batch["labels"].to(device) if "labels" in batch else None  # kto: True = desirable
        return PreferenceTerms(model_pred=model_pred, target=target, timesteps=timesteps, model_w=losses,
                               ref_pred=ref_pred, ref_w=ref_w, labels=labels)  # fmt: skip

    model_w, model_l = losses.chunk(2)
    lam, logs = torch.ones((), device=device), {}
    if safeguard.use_winner_preserving:
        params = family.denoiser.parameters()
        lam = safeguard_lambda(safeguard, model_pred, target, params, halves)
        logs = lambda_logs(safeguard, model_pred, target, family.denoiser.parameters(), halves, lam)
        model_l = scale_loser(model_l, lam)
    ref_pred = ref_w = ref_l = None
    if family.reference is not None:
        ref_pred, ref = reference_losses(family, noisy, timesteps, cond, target)
        ref_w, ref_l = ref.chunk(2)
    elif "ref_losses" in batch:  # precomputed (sdpo.cache.reference): these very numbers, no reference loaded
        ref_w, ref_l = batch["ref_losses"].to(device).t().contiguous()
    return PreferenceTerms(
        model_pred=model_pred,
        target=target,
        timesteps=timesteps,
        model_w=model_w,
        model_l=model_l,
        ref_pred=ref_pred,
        ref_w=ref_w,
        ref_l=ref_l,
        lam=lam,
        noisy_latents=noisy,
        latents=latents,
        dspo_form=family.dspo_form,
        sample_seeds=batch["sample_seeds"],
        logs=logs,
        **process,
    )


def reference_losses(family: ModelFamily, noisy, timesteps, cond: Conditioning, target):
    """The frozen reference's prediction and per-sample losses, without gradients.  The step and the
    precompute of reference losses (``reference_pair_losses``) both call this, so they do the same arithmetic."""
    with torch.no_grad():
        ref_pred = family.predict(family.reference, noisy, timesteps, cond)
        return ref_pred, per_sample_mse(ref_pred, target)


def reference_pair_losses(batch: dict, family: ModelFamily, cfg: RunConfig, device,
                          dtype: torch.dtype = torch.float32) -> torch.Tensor:  # fmt: skip
    """``(B, 2)`` reference losses ``[L_ref_w, L_ref_l]`` of one micro-batch of pairs, as ``preference_forward``
    computes them: the same draws, latents, conditioning and reference call, without the policy.  ``dtype``: the
    denoiser's input dtype, the trained parameters' (fp32 unless DeepSpeed has cast the module)."""
    bsz = len(batch["sample_seeds"])
    _, noisy, target, timesteps = noised_latents(batch, 2 * bsz, family, cfg.objective, 2, device)
    cond = conditioning(family, batch, 2, dtype, device)
    _, losses = reference_losses(family, noisy.to(dtype), timesteps, cond, target)
    return torch.stack(losses.chunk(2), dim=1)


def _rows(family: ModelFamily, module, noisy, timesteps, cond: Conditioning, rows: slice) -> torch.Tensor:
    """The policy on a slice of the stacked batch (rows are independent: the same result up to
    rounding, which may depend on the row count; see ``sdpo.safeguard.modes.splits_policy_forward``)."""
    return family.predict(module, noisy[rows], timesteps[rows], {k: v[rows] for k, v in cond.items()})
