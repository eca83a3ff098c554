"""Online RL for diffusion and flow models: GRPO (Flow-GRPO for flow families, DDPO's sampler for DDPM
families), with this repository's winner-preserving option.  docs/grpo.md is the guide.

    settings.py          the knobs and where each default comes from (Flow-GRPO's and DDPO's code)
    gaussian.py          a stochastic step is a Gaussian: its result and log-density
    flow_sde.py          Flow-GRPO's ODE-to-SDE step (rectified flow)
    ddim_eta.py          DDPO's DDIM step with eta > 0 (DDPM epsilon / v)
    process.py           the step of a family's process from its own schedule (or a saved one)
    trajectory.py        rollouts as data: latents per step, log-probs, conditioning; save / load exactly
    logprob.py           the guided prediction and a recorded step's log-probability under given weights
    rollout.py           G stochastic samples per prompt, per-sample seeded
    advantages.py        group-relative advantages
    objective.py         the clipped policy-ratio objective and the KL term
    winner_preserving.py positive-advantage rows as winners, negative as losers: the SDPO lambda
    update.py            inner epochs x micro-batches x trained steps -> optimizer steps
"""
