"""One micro-batch through the models: pixels -> latents -> shared noise -> predictions -> losses.

Pair ``i`` is rows ``i`` (winner) and ``B + i`` (loser).  Both rows get the same timestep and
the same noise (REFERENCE section 1), drawn from the pair's own stream (``sdpo.seeding``).
"""

from __future__ import annotations

import torch

from sdpo.losses import PreferenceTerms
from sdpo.losses.terms import at_least_fp32
from sdpo.models import Components, encode_prompt, sdxl_time_ids
from sdpo.safeguard import scale_loser
from sdpo.safeguard_modes import lambda_logs, safeguard_lambda, splits_policy_forward
from sdpo.seeding import torch_generator


def per_sample_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return ((at_least_fp32(pred) - at_least_fp32(target)) ** 2).mean(dim=list(range(1, pred.dim())))


def pair_draws(seeds: torch.Tensor, latent_shape: tuple[int, ...], num_timesteps: int, cfg, device):
    """Per pair: timestep, diffusion noise, VAE posterior noise (winner, loser), optional extras."""
    t, eps, vae_eps, offset, perturb = [], [], [], [], []
    for s in seeds.tolist():
        g = torch_generator(s, device)
        t.append(torch.randint(0, num_timesteps, (1,), generator=g, device=device))
        eps.append(torch.randn(latent_shape, generator=g, device=device))
        vae_eps.append(torch.randn((2, *latent_shape), generator=g, device=device))
        offset.append(torch.randn((latent_shape[0], 1, 1), generator=g, device=device))
        perturb.append(torch.randn(latent_shape, generator=g, device=device))
    vae_eps = torch.stack(vae_eps)  # (B, 2, C, h, w) -> winners then losers
    return (
        torch.cat(t),
        torch.stack(eps),
        torch.cat([vae_eps[:, 0], vae_eps[:, 1]]),
        torch.stack(offset),
        torch.stack(perturb),
    )


def encode_latents(vae, pixels: torch.Tensor, posterior_noise: torch.Tensor) -> torch.Tensor:
    """A VAE posterior sample ``mean + std * noise`` with the given noise, scaled to unit variance."""
    with torch.no_grad():
        dist = vae.encode(pixels.to(vae.dtype)).latent_dist
        latents = dist.mean.float() + dist.std.float() * posterior_noise
    return latents * vae.config.scaling_factor


def noised_latents(batch: dict, pixels: torch.Tensor, comps: Components, cfg, reps: int, device):
    """Latents, the noised latents fed to the UNet, the regression target, and timesteps (shared per pair)."""
    f = 2 ** (len(comps.vae.config.block_out_channels) - 1)
    latent_shape = (comps.vae.config.latent_channels, pixels.shape[-2] // f, pixels.shape[-1] // f)
    sched = comps.noise_scheduler
    t, eps, vae_eps, offset, perturb = pair_draws(
        batch["sample_seeds"], latent_shape, sched.config.num_train_timesteps, cfg, device
    )
    latents = encode_latents(comps.vae, pixels, vae_eps[: pixels.shape[0]])
    if cfg.noise_offset:
        eps = eps + cfg.noise_offset * offset
    noise, timesteps = eps.repeat(reps, 1, 1, 1), t.repeat(reps)
    fed_noise = noise + cfg.input_perturbation * perturb.repeat(reps, 1, 1, 1) if cfg.input_perturbation else noise
    noisy = sched.add_noise(latents, fed_noise, timesteps)
    if sched.config.prediction_type == "epsilon":
        target = noise
    else:
        target = sched.get_velocity(latents, noise, timesteps)
    return latents, noisy, target, timesteps


def conditioning(comps: Components, captions: list[str], cfg, reps: int, dtype: torch.dtype, device):
    """Text states (and SDXL's pooled embedding and time ids), repeated for winners and losers."""
    hidden, pooled = encode_prompt(comps, captions, device)
    hidden = hidden.repeat(reps, 1, 1).to(dtype)
    if not comps.sdxl:
        return hidden, None
    added = {
        "text_embeds": pooled.repeat(reps, 1).to(dtype),
        "time_ids": sdxl_time_ids(cfg.resolution, hidden.shape[0], device, dtype),
    }
    return hidden, added


def preference_forward(batch: dict, comps: Components, cfg, objective, device: torch.device) -> PreferenceTerms:
    pixels = batch["pixel_values"].to(device)
    bsz = len(batch["captions"])  # pairs: 2B rows (winners, then losers); kto: B single images
    uses_loser = objective.USES_LOSER
    if not uses_loser:  # SFT: only the preferred images are denoised (kto: the one image of each sample)
        pixels = pixels[:bsz]
    reps = 2 if uses_loser else 1
    latents, noisy, target, timesteps = noised_latents(batch, pixels, comps, cfg, reps, device)
    # Inputs in the trained UNet's parameter dtype: fp32 normally (autocast does the rest), bf16/fp16
    # when DeepSpeed has cast the module itself and accelerate's autocast is off.
    dtype = next(comps.unet.parameters()).dtype
    noisy = noisy.to(dtype)
    hidden, added = conditioning(comps, batch["captions"], cfg, reps, dtype, device)

    halves = None
    if uses_loser and splits_policy_forward(cfg):  # param-mode lambda: winners and losers as separate graphs
        halves = tuple(
            _policy(comps.unet, noisy, timesteps, hidden, added, rows) for rows in (slice(None, bsz), slice(bsz, None))
        )
        model_pred = torch.cat(halves)
    else:
        model_pred = comps.unet(noisy, timesteps, hidden, added_cond_kwargs=added).sample
    losses = per_sample_mse(model_pred, target)
    if not uses_loser:
        ref_pred = ref_w = None
        if comps.ref_unet is not None:  # kto: the reference denoises the same single images
            with torch.no_grad():
                ref_pred = comps.ref_unet(noisy, timesteps, hidden, added_cond_kwargs=added).sample
                ref_w = per_sample_mse(ref_pred, target)
        labels = batch["labels"].to(device) if "labels" in batch else None  # kto: True = desirable
        return PreferenceTerms(model_pred=model_pred, target=target, timesteps=timesteps, model_w=losses,
                               ref_pred=ref_pred, ref_w=ref_w, labels=labels)  # fmt: skip

    model_w, model_l = losses.chunk(2)
    lam, logs = torch.ones((), device=device), {}
    if cfg.use_winner_preserving:
        lam = safeguard_lambda(cfg, model_pred, target, comps.unet.parameters(), halves)
        logs = lambda_logs(cfg, model_pred, target, comps.unet.parameters(), halves, lam)
        model_l = scale_loser(model_l, lam)
    ref_pred = ref_w = ref_l = None
    if comps.ref_unet is not None:
        with torch.no_grad():
            ref_pred = comps.ref_unet(noisy, timesteps, hidden, added_cond_kwargs=added).sample
            ref_w, ref_l = per_sample_mse(ref_pred, target).chunk(2)
    sched = comps.noise_scheduler
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
        sdxl=comps.sdxl,
        alphas_cumprod=sched.alphas_cumprod,
        prediction_type=sched.config.prediction_type,
        sample_seeds=batch["sample_seeds"],
        logs=logs,
    )


def _policy(unet, noisy, timesteps, hidden, added, rows: slice) -> torch.Tensor:
    """The policy UNet on a slice of the stacked batch (UNet rows are independent: same result)."""
    kw = None if added is None else {k: v[rows] for k, v in added.items()}
    return unet(noisy[rows], timesteps[rows], hidden[rows], added_cond_kwargs=kw).sample
