"""The numerics of eval/sampling.py against independent computations: the shared initial latent,
the guidance formula, SDXL's empty-prompt conditioning and time ids, and the pipeline sampler."""

from __future__ import annotations

import pytest
import torch
from diffusers import EulerDiscreteScheduler
from generate_helpers import build_models

from eval.sampling import (
    encode_prompts,
    latent_shape,
    load_components,
    prompts_per_call,
    reference_guidance,
    reference_initial_latent,
    sample_latents,
)

SIZE, CFG, SEED = 64, 7.5, 3


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return build_models(tmp_path_factory.mktemp("models"))


def _components(models, kind):
    vae = str(models[kind]) if kind == "sdxl" else None
    return load_components(str(models[kind]), str(models[f"{kind}_unet"]), kind == "sdxl", "cpu", torch.float32, vae)


@pytest.fixture(scope="module")
def sd15(models):
    return _components(models, "sd15")


@pytest.fixture(scope="module")
def sdxl(models):
    return _components(models, "sdxl")


def _euler(models, kind, steps):
    s = EulerDiscreteScheduler.from_pretrained(models[kind], subfolder="scheduler")
    s.set_timesteps(steps)
    return s


def test_latent_shape_and_seeded_draw():
    assert latent_shape(512, 512) == (1, 4, 64, 64)
    assert latent_shape(1024, 768) == (1, 4, 128, 96)
    lat = reference_initial_latent(64, 48, seed=7, device="cpu", dtype=torch.bfloat16)
    expect = torch.randn((1, 4, 8, 6), generator=torch.Generator("cpu").manual_seed(7), dtype=torch.bfloat16)
    assert lat.dtype == torch.bfloat16 and torch.equal(lat, expect)


def _capture_unet_calls(comp):
    calls = []
    hook = comp.unet.register_forward_pre_hook(lambda m, a, kw: calls.append((a, kw)), with_kwargs=True)
    return calls, hook


@pytest.fixture(params=["one prompt per call", "batched"])
def batching(request, monkeypatch):
    """The CPU's rule (each prompt denoised alone) and the accelerator's (all prompts in one call), both
    run here on the CPU; returns how many UNet calls one denoising step of N prompts makes."""
    if request.param == "batched":
        monkeypatch.setattr("eval.sampling.prompts_per_call", lambda device, n: n)
        return lambda n: 1
    return lambda n: n


def test_a_cpu_denoises_one_prompt_per_call():
    assert prompts_per_call("cpu", 8) == 1 and prompts_per_call(torch.device("cpu"), 1) == 1
    assert prompts_per_call("cuda", 8) == 8 and prompts_per_call("mps", 3) == 3


def _first_step(calls):
    """The UNet calls of the first denoising step (every prompt's, whether in one call or one each)."""
    return [c for c in calls if float(c[0][1]) == float(calls[0][0][1])]


def _merged(first, get) -> torch.Tensor:
    """One input of the first step laid out as one batched call has it: every prompt's cond row, then
    every prompt's uncond row."""
    halves = [get(c).chunk(2) for c in first]
    return torch.cat([h[0] for h in halves] + [h[1] for h in halves])


@pytest.mark.parametrize("sampler", ["reference", "pipeline"])
def test_every_prompt_starts_from_the_reference_latent(sd15, models, sampler, batching):
    calls, hook = _capture_unet_calls(sd15)
    try:
        sample_latents(sd15, ["a", "b", "a longer prompt"], SIZE, SIZE, steps=2, cfg=CFG, seed=SEED, sampler=sampler)
    finally:
        hook.remove()
    # The reference scheme: a seeded generator, a batch of one, the text encoder's dtype, times init_noise_sigma.
    ref = torch.randn(latent_shape(SIZE, SIZE), generator=torch.Generator("cpu").manual_seed(SEED), dtype=sd15.dtype)
    sched = _euler(models, "sd15", 2)
    expect = sched.scale_model_input(ref * sched.init_noise_sigma, sched.timesteps[0])
    first = _first_step(calls)
    assert len(first) == batching(3) and len(calls) == 2 * batching(3)
    first_input = _merged(first, lambda c: c[0][0])
    assert first_input.shape == (6, 4, 8, 8)  # 3 prompts x (cond, uncond)
    for row in first_input:
        assert torch.equal(row[None], expect)


def _stat(embeds: torch.Tensor) -> torch.Tensor:
    return embeds.float()[..., 0].mean(dim=1).view(-1, 1, 1, 1)


def _known_unet(comp):
    """Replace the UNet's forward by one whose output is known: each row is a statistic of its prompt
    embedding (the first channel's mean over tokens; the mean over all channels is ~0 after layer norm)."""

    def forward(sample, timestep, encoder_hidden_states, *args, **kwargs):
        value = _stat(encoder_hidden_states)
        return (torch.ones_like(sample) * value.to(sample.dtype),)

    comp.unet.forward = forward


@pytest.mark.parametrize("sampler", ["reference", "pipeline"])
def test_guidance_formula_euler_steps(models, sampler):
    comp = _components(models, "sd15")
    _known_unet(comp)
    prompts = ["a red circle", "a blue square"]
    out = sample_latents(comp, prompts, SIZE, SIZE, steps=2, cfg=CFG, seed=SEED, sampler=sampler)

    cond = _stat(encode_prompts(comp, prompts)[0])
    uncond = _stat(encode_prompts(comp, [""])[0])
    assert (cond - uncond).abs().min() > 1e-3
    guided = cond + CFG * (cond - uncond)  # the reference scripts' formula
    sched = _euler(models, "sd15", 2)
    noise = torch.randn(latent_shape(SIZE, SIZE), generator=torch.Generator("cpu").manual_seed(SEED))
    x0 = noise * sched.init_noise_sigma
    # Euler, epsilon prediction, no churn: each step adds eps * (sigma_next - sigma). The known UNet's eps
    # does not depend on the sample or timestep, so the steps telescope to x0 + eps * (0 - sigma_max).
    assert sched.sigmas[-1] == 0 and sched.sigmas[0] > 1
    expect = x0 - guided * sched.sigmas[0]
    torch.testing.assert_close(out, expect, rtol=1e-5, atol=1e-4)
    # diffusers' guidance_scale = cfg (instead of cfg + 1) would be visibly different.
    wrong = x0 - (uncond + CFG * (cond - uncond)) * sched.sigmas[0]
    assert (out - wrong).abs().min() > 100 * (out - expect).abs().max()
    assert reference_guidance(torch.tensor(2.0), torch.tensor(1.0), 7.5) == 9.5


def test_sdxl_conditioning_uses_empty_prompt_encodings_and_reference_time_ids(sdxl, batching):
    calls, hook = _capture_unet_calls(sdxl)
    try:
        sample_latents(sdxl, ["a red circle", "a blue square"], SIZE, SIZE, steps=1, cfg=CFG, seed=SEED)
    finally:
        hook.remove()
    assert len(calls) == batching(2)
    neg, neg_pooled = encode_prompts(sdxl, [""])
    cond, pooled = encode_prompts(sdxl, ["a red circle", "a blue square"])
    hidden = _merged(calls, lambda c: c[1]["encoder_hidden_states"])
    added = {k: _merged(calls, lambda c, k=k: c[1]["added_cond_kwargs"][k]) for k in ("text_embeds", "time_ids")}
    assert torch.equal(hidden[:2], cond) and torch.equal(hidden[2:], neg.expand(2, -1, -1))
    assert torch.equal(added["text_embeds"][:2], pooled)
    assert torch.equal(added["text_embeds"][2:], neg_pooled.expand(2, -1))
    assert neg_pooled.abs().sum() > 0 and neg.abs().sum() > 0  # encodings of "", not zeros
    assert added["time_ids"].tolist() == [[SIZE, SIZE, 0, 0, SIZE, SIZE]] * 4  # both halves
    # Prompt embedding = both encoders' penultimate hidden states, concatenated.
    assert hidden.shape[-1] == sum(e.config.hidden_size for e in sdxl.text_encoders)


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_pipeline_sampler_agrees_with_reference_loop_in_fp32(models, kind, sd15, sdxl):
    comp = sd15 if kind == "sd15" else sdxl
    prompts = ["a red circle", "a blue square"]
    ref = sample_latents(comp, prompts, SIZE, SIZE, steps=3, cfg=CFG, seed=SEED, sampler="reference")
    pipe = sample_latents(comp, prompts, SIZE, SIZE, steps=3, cfg=CFG, seed=SEED, sampler="pipeline")
    # Same method; only the rounding of uncond + (cfg+1)(cond-uncond) vs cond + cfg(cond-uncond) differs.
    torch.testing.assert_close(pipe, ref, rtol=0, atol=1e-4)
    assert not torch.equal(ref[0], ref[1])
