"""The DDPM noise process as the families on it use it (SD1.5, SDXL, CogVideoX).

    t ~ U{0..T-1},   x_t = scheduler.add_noise(x_0, eps, t),
    target = eps (``epsilon``) or scheduler.get_velocity(x_0, eps, t) (``v_prediction``)

Everything comes from the model's own scheduler (its betas, any SNR shift and zero-terminal-SNR
rescaling), and the schedule is handed to objectives that need transition densities (dpo-cm, sipo).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from sdpo.errors import UserError
from sdpo.families.base import ModelFamily

PREDICTION_TYPES = ("epsilon", "v_prediction")


class DDPMFamily(ModelFamily):
    process: ClassVar[str] = "ddpm"

    def check_scheduler(self, sched):
        if sched.config.prediction_type not in PREDICTION_TYPES:
            raise UserError(
                f"{self.cfg.pretrained_model_name_or_path}: prediction_type {sched.config.prediction_type!r} is not "
                f"supported (only {', '.join(PREDICTION_TYPES)})"
            )
        return sched

    def draw_time(self, generator, device) -> torch.Tensor:
        return torch.randint(0, self.scheduler.config.num_train_timesteps, (1,), generator=generator, device=device)

    def add_noise(self, latents, noise, time):
        sched = self.scheduler
        noisy = sched.add_noise(latents, noise, time)
        target = noise if sched.config.prediction_type == "epsilon" else sched.get_velocity(latents, noise, time)
        return noisy, target, time

    def process_terms(self) -> dict:
        sched = self.scheduler
        return {
            "alphas_cumprod": sched.alphas_cumprod,
            "prediction_type": sched.config.prediction_type,
            "num_train_timesteps": sched.config.num_train_timesteps,
        }

    def rollout_schedule(self, steps: int, latent_shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
        """DDIM's timesteps for ``steps`` steps from the model's scheduler config (its spacing and offset, as DDPO
        builds ``DDIMScheduler.from_config``), with the cumulative alphas of the training scheduler (CogVideoX's SNR
        shift included) at each step and at the step it goes to (``sdpo.rl.ddim_eta``)."""
        from diffusers import DDIMScheduler

        sched = self.scheduler
        if sched.config.get("thresholding"):
            raise UserError(f"{self.cfg.pretrained_model_name_or_path}: dynamic thresholding is not supported by the "
                            "rollout sampler")  # fmt: skip
        ddim = DDIMScheduler.from_config(sched.config)
        ddim.set_timesteps(steps)
        t = ddim.timesteps.long().cpu()
        ac = sched.alphas_cumprod.double().cpu()
        final = torch.tensor(1.0, dtype=torch.float64) if sched.config.get("set_alpha_to_one", True) else ac[0]
        prev = t - sched.config.num_train_timesteps // steps  # diffusers' DDIM step rule
        ac_prev = torch.where(prev >= 0, ac[prev.clamp(min=0)], final)
        clip = float(sched.config.get("clip_sample_range", 1.0)) if sched.config.get("clip_sample") else 0.0
        return {"timesteps": t, "alphas_cumprod": ac[t].float(), "alphas_cumprod_prev": ac_prev.float(),
                "clip_sample_range": torch.tensor(clip)}  # fmt: skip
