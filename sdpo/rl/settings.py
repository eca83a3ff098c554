"""The knobs of online RL (GRPO) and where each default comes from.

Two sources, one per process kind (``ModelFamily.process``):

* ``flow`` (SD3, FLUX, Wan): Flow-GRPO's public code (github.com/yifan123/flow_grpo at commit ac4c86e),
  ``config/base.py`` and ``config/grpo.py`` (``geneval_sd3``, ``general_ocr_sd3``, ``pickscore_sd3``: the
  SD3.5-Medium runs of the paper, arXiv 2505.05470).
* ``ddpm`` (SD1.5, SDXL, CogVideoX): DDPO's public code (github.com/kvablack/ddpo-pytorch, ``config/base.py``)
  for the sampler (50 DDIM steps, ``eta`` 1.0, guidance 5.0); the objective is Flow-GRPO's (the issue asks for
  one objective on both processes), so its clip range, advantage clip and KL coefficient apply here too.

Where Flow-GRPO's code and its paper differ, the code's value is taken (REFERENCE.md: the reference
implementation is what faithful means) and the difference is named in docs/grpo.md:

* advantages: the configs set ``sample.global_std = True`` (the standard deviation of every reward of the
  batch), the paper's formula divides by the group's own standard deviation (``std_scope``);
* KL: the code divides the squared mean difference by ``2 sigma_t^2`` (the SDE's diffusion coefficient), the
  paper's closed form by ``2 sigma_t^2 |dt|`` (the step's variance): the code's is the paper's times ``|dt|``,
  and the configs' ``beta`` were tuned against the code's.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from sdpo.errors import UserError

PROCESSES = ("flow", "ddpm")
STD_SCOPES = ("global", "group")
STEP_ORDERS = ("first", "shuffled")
LAMBDA_MODES = ("output", "param")


@dataclass(frozen=True)
class RolloutSettings:
    """How rollouts are sampled.  ``noise`` is the process's stochasticity: Flow-GRPO's ``noise_level`` ``a``
    (``sigma_t = a sqrt(t / (1 - t))``) for flow, DDIM's ``eta`` for DDPM."""

    process: str
    steps: int  # denoising steps of a rollout (Flow-GRPO: 10 for training, 40 for evaluation: denoising reduction)
    noise: float
    guidance: float  # diffusers' scale: uncond + g (cond - uncond); <= 1: no negative pass.  Ignored by families
    # without classifier-free guidance (guidance-distilled FLUX.1 reads --flux_guidance instead)
    eval_steps: int  # what evaluation of the same model uses (recorded; rollouts use ``steps``)

    def check(self) -> None:
        if self.process not in PROCESSES:
            raise UserError(f"unknown noise process {self.process!r}; choose one of: {', '.join(PROCESSES)}")
        if self.steps < 1:
            raise UserError(f"rollout steps must be >= 1, got {self.steps}")
        if self.noise <= 0:
            what = "noise_level" if self.process == "flow" else "eta"
            raise UserError(f"the rollout {what} must be > 0 (a deterministic sampler has no log-probability), "
                            f"got {self.noise}")  # fmt: skip
        if self.guidance < 0:
            raise UserError(f"rollout guidance must be >= 0, got {self.guidance}")


@dataclass(frozen=True)
class GRPOSettings:
    """The GRPO update (Flow-GRPO ``scripts/train_sd3.py``, the training loop of ``main``)."""

    clip_range: float = 1e-4  # config/base.py train.clip_range (tiny because log-probs are means over elements)
    adv_clip_max: float = 5.0  # config/base.py train.adv_clip_max
    kl_beta: float = 0.04  # config/grpo.py geneval_sd3 / general_ocr_sd3 train.beta (pickscore_sd3: 0.01)
    timestep_fraction: float = 0.99  # config/grpo.py train.timestep_fraction: int(10 * 0.99) = 9 of 10 steps
    step_order: str = "first"  # flow: the first k steps in order (train_sd3.py); ddpm: DDPO shuffles per sample
    inner_epochs: int = 1  # config/base.py train.num_inner_epochs
    std_scope: str = "global"  # config/grpo.py sample.global_std = True (the paper: the group's own)
    std_eps: float = 1e-4  # flow_grpo/stat_tracking.py: std + 1e-4
    micro_batch: int = 1  # rollouts per forward in training (train.batch_size)
    accumulation: int = 1  # micro-batches per optimizer step (train.gradient_accumulation_steps)
    max_grad_norm: float = 1.0  # config/base.py train.max_grad_norm
    cfg_in_training: bool = True  # config/base.py train.cfg: the guided prediction, uncond branch detached
    winner_preserving: bool = False  # this repository's extension (docs/grpo.md): off by default
    winner_preserving_mu: float = 0.0  # the SDPO slack, as --winner_preserving_mu
    # output: Eq. 17's output-space products (the default, no extra pass); param: Eq. 14's parameter-space
    # gradients (two extra backward passes per micro-step; the exact first-order rule, for checking the proxy)
    winner_preserving_mode: str = "output"

    def check(self) -> None:
        if self.clip_range <= 0 or self.adv_clip_max <= 0:
            raise UserError(f"clip_range and adv_clip_max must be > 0, got {self.clip_range} and {self.adv_clip_max}")
        if self.kl_beta < 0:
            raise UserError(f"the KL coefficient must be >= 0, got {self.kl_beta}")
        if not 0 < self.timestep_fraction <= 1:
            raise UserError(f"timestep_fraction must be in (0, 1], got {self.timestep_fraction}")
        if self.step_order not in STEP_ORDERS:
            raise UserError(f"unknown step order {self.step_order!r}; choose one of: {', '.join(STEP_ORDERS)}")
        if self.std_scope not in STD_SCOPES:
            raise UserError(f"unknown std scope {self.std_scope!r}; choose one of: {', '.join(STD_SCOPES)}")
        if min(self.inner_epochs, self.micro_batch, self.accumulation) < 1:
            raise UserError("inner_epochs, micro_batch and accumulation must be >= 1")
        if self.winner_preserving_mode not in LAMBDA_MODES:
            raise UserError(f"unknown winner_preserving_mode {self.winner_preserving_mode!r}; choose one of: "
                            f"{', '.join(LAMBDA_MODES)}")  # fmt: skip
        if not 0.0 <= self.winner_preserving_mu <= 1.0:
            raise UserError(f"--winner_preserving_mu must be in [0, 1], got {self.winner_preserving_mu}")


def default_rollout(process: str) -> RolloutSettings:
    """Flow: Flow-GRPO's SD3.5 configs (10 rollout steps, 40 for evaluation, ``noise_level`` 0.7, guidance 4.5).
    DDPM: DDPO's ``config/base.py`` (50 steps, ``eta`` 1.0, guidance 5.0; its evaluation is the same sampler)."""
    if process == "flow":
        return RolloutSettings("flow", steps=10, noise=0.7, guidance=4.5, eval_steps=40)
    if process == "ddpm":
        return RolloutSettings("ddpm", steps=50, noise=1.0, guidance=5.0, eval_steps=50)
    raise UserError(f"unknown noise process {process!r}; choose one of: {', '.join(PROCESSES)}")


def default_grpo(process: str) -> GRPOSettings:
    """Flow-GRPO's objective for both processes; DDPM keeps DDPO's choice of trained steps (every step,
    ``timestep_fraction`` 1.0, in a random order per sample)."""
    if process == "ddpm":
        return replace(GRPOSettings(), timestep_fraction=1.0, step_order="shuffled")
    return GRPOSettings()


# Group size: Flow-GRPO's configs sample 24 images per prompt (sample.num_image_per_prompt) for 48 prompts a
# batch; DDPO has no groups (per-prompt statistics over a buffer of past rewards).
DEFAULT_GROUP_SIZE = 24
