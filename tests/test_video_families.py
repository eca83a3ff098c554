"""The video families (CogVideoX: DDPM v-prediction; Wan2.1: rectified flow) against their diffusers
pipelines, and training on them with the shared loop: methods, the safeguard, resume."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import video_flags

from sdpo.config import parse_args
from sdpo.errors import UserError
from sdpo.families import get_family


def _family(model, *extra, dtype=torch.float32):
    cfg = parse_args(["--pretrained_model_name_or_path", str(model), "--resolution", "32", "--num_frames", "9", *extra])
    return cfg, get_family(cfg.model.model_family).load(cfg.model, torch.device("cpu"), dtype, needs_reference=False)


def test_cogvideox_noising_target_latents_text_and_call_match_the_pipeline(tiny_cogvideox):
    from diffusers import CogVideoXPipeline

    cfg, fam = _family(tiny_cogvideox)
    assert cfg.model.model_family == "cogvideox" and (cfg.model.height, cfg.model.width) == (32, 32)
    sched = fam.scheduler
    assert sched.config.prediction_type == "v_prediction" and sched.config.snr_shift_scale == 1.0
    assert float(sched.alphas_cumprod[-1]) == 0.0  # zero terminal SNR
    assert fam.latent_shape((9, 3, 32, 32)) == (3, 4, 4, 4)  # (F', C, h, w)

    # noising and target, from alphas_cumprod by hand, on 5-D latents
    x0, eps = torch.randn(3, 3, 4, 4, 4, dtype=torch.float64), torch.randn(3, 3, 4, 4, 4, dtype=torch.float64)
    t = torch.tensor([0, 500, 999])
    noisy, target, model_t = fam.add_noise(x0, eps, t)
    ab = sched.alphas_cumprod.double()[t].view(-1, 1, 1, 1, 1)
    torch.testing.assert_close(noisy, ab.sqrt() * x0 + (1 - ab).sqrt() * eps, rtol=0, atol=1e-12)
    torch.testing.assert_close(target, ab.sqrt() * eps - (1 - ab).sqrt() * x0, rtol=0, atol=1e-12)
    assert torch.equal(model_t, t)

    # latents: the VAE posterior (noise 0 -> its mean) times scaling_factor, frames first
    pixels = torch.rand(2, 9, 3, 32, 32) * 2 - 1
    lat = fam.encode_latents(pixels, torch.zeros(2, 3, 4, 4, 4))
    mean = fam.vae.encode(pixels.permute(0, 2, 1, 3, 4)).latent_dist.mean
    torch.testing.assert_close(lat, mean.permute(0, 2, 1, 3, 4) * fam.vae.config.scaling_factor)

    # text: exactly max_text_seq_length T5 states, as the pipeline encodes them
    pipe = CogVideoXPipeline.from_pretrained(tiny_cogvideox)
    cond = fam.encode_prompt(["a red circle moving right", ""])
    want, _ = pipe.encode_prompt(["a red circle moving right", ""], do_classifier_free_guidance=False,
                                 max_sequence_length=pipe.transformer.config.max_text_seq_length)  # fmt: skip
    assert cond["encoder_hidden_states"].shape == (2, 32, 32)
    torch.testing.assert_close(cond["encoder_hidden_states"], want)

    # the call: the pipeline's 3-D rotary embeddings for this size and frame count
    noisy = torch.randn(2, 3, 4, 4, 4)
    out = fam.predict(fam.denoiser, noisy, torch.tensor([10, 900]), cond)
    rope = pipe._prepare_rotary_positional_embeddings(32, 32, 3, torch.device("cpu"))
    direct = pipe.transformer(hidden_states=noisy, encoder_hidden_states=cond["encoder_hidden_states"],
                              timestep=torch.tensor([10, 900]), image_rotary_emb=rope).sample  # fmt: skip
    assert torch.equal(out, direct)


def test_the_cogvideox_lora_examples_x0_loss_is_the_v_mse(tiny_cogvideox):
    """diffusers' CogVideoX LoRA example: ``mean(w * (get_velocity(pred, x_t, t) - x_0)^2)``,
    ``w = 1 / (1 - alpha_bar_t)``; the DPO inside term uses the plain v-MSE instead: they are equal."""
    _, fam = _family(tiny_cogvideox)
    sched = fam.scheduler
    g = torch.Generator().manual_seed(0)
    x0, eps, pred = (torch.randn(6, 3, 4, 4, 4, generator=g, dtype=torch.float64) for _ in range(3))
    t = torch.tensor([0, 1, 250, 500, 990, 998])
    noisy, v, _ = fam.add_noise(x0, eps, t)
    w = (1 / (1 - sched.alphas_cumprod.double()[t])).view(-1, 1, 1, 1, 1)
    example = (w * (sched.get_velocity(pred, noisy, t) - x0) ** 2).mean(dim=(1, 2, 3, 4))
    v_mse = ((pred - v) ** 2).mean(dim=(1, 2, 3, 4))
    torch.testing.assert_close(example, v_mse, rtol=1e-7, atol=0)


def test_transition_weights_on_5d_latents_equal_those_of_the_same_elements_in_4d(tiny_cogvideox):
    """dpo-cm / sipo average the log-density ratio over every latent element: the frame axis is just
    more elements (same numbers as folding frames into channels)."""
    from sdpo.losses import PreferenceTerms
    from sdpo.losses.transition import log_importance_weights

    _, fam = _family(tiny_cogvideox)
    g = torch.Generator().manual_seed(1)
    x0, xt, pred = (torch.randn(4, 3, 4, 4, 4, generator=g) for _ in range(3))
    common = dict(timesteps=torch.tensor([3, 700, 3, 700]), model_w=torch.zeros(2), sample_seeds=torch.tensor([5, 9]),
                  **fam.process_terms())  # fmt: skip
    five = PreferenceTerms(model_pred=pred, target=pred, latents=x0, noisy_latents=xt, **common)
    four = PreferenceTerms(model_pred=pred.flatten(1, 2), target=pred.flatten(1, 2), latents=x0.flatten(1, 2),
                           noisy_latents=xt.flatten(1, 2), **common)  # fmt: skip
    w5 = log_importance_weights(five)
    assert w5.shape == (4,) and torch.isfinite(w5).all()
    torch.testing.assert_close(w5, log_importance_weights(four), rtol=1e-12, atol=0)


def test_wan_noising_latents_and_text_match_the_pipeline(tiny_wan):
    from diffusers import WanPipeline

    cfg, fam = _family(tiny_wan)
    assert cfg.model.model_family == "wan" and fam.process == "flow"
    assert fam.latent_shape((9, 3, 32, 32)) == (16, 3, 4, 4)  # (C, F', h, w)
    u = torch.tensor([0.0, 0.25, 0.999])
    x0, eps = torch.randn(3, 16, 3, 4, 4), torch.randn(3, 16, 3, 4, 4)
    noisy, target, timestep = fam.add_noise(x0, eps, u)
    for i in range(3):  # the folder's flow_shift 3.0 applied to the training sigmas: s' = 3 s / (1 + 2 s)
        s = 1.0 - int(float(u[i]) * 1000) / 1000.0
        sigma = 3.0 * s / (1.0 + 2.0 * s)
        assert float(timestep[i]) == pytest.approx(1000.0 * sigma, rel=1e-5)
        torch.testing.assert_close(noisy[i], (1 - sigma) * x0[i] + sigma * eps[i], rtol=1e-5, atol=1e-6)
    assert torch.equal(target, eps - x0)

    # latents normalised so that WanPipeline's decode step (z / (1/std) + mean) gives the posterior back
    pixels = torch.rand(1, 9, 3, 32, 32) * 2 - 1
    lat = fam.encode_latents(pixels, torch.zeros(1, 16, 3, 4, 4))
    c = fam.vae.config
    back = lat / (1.0 / torch.tensor(c.latents_std).view(1, 16, 1, 1, 1)) + torch.tensor(c.latents_mean).view(
        1, 16, 1, 1, 1
    )
    torch.testing.assert_close(back, fam.vae.encode(pixels.permute(0, 2, 1, 3, 4)).latent_dist.mean)

    # text: the pipeline's UMT5 states, rows past each prompt's length exactly zero
    pipe = WanPipeline.from_pretrained(tiny_wan)
    cond = fam.encode_prompt(["a red circle moving right", "up"])["encoder_hidden_states"]
    want, _ = pipe.encode_prompt(["a red circle moving right", "up"], do_classifier_free_guidance=False,
                                 max_sequence_length=32)  # fmt: skip
    torch.testing.assert_close(cond, want)
    length = len(pipe.tokenizer("up").input_ids)
    assert cond[1, length:].abs().max() == 0 and cond[1, :length].abs().max() > 0
    out = fam.predict(fam.denoiser, noisy, timestep, {"encoder_hidden_states": cond[[0, 1, 0]]})
    assert out.shape == noisy.shape


def test_fp16_keeps_the_t5_output_projections_in_fp32(tiny_cogvideox):
    _, fam = _family(tiny_cogvideox, dtype=torch.float16)
    enc = fam.text_encoders[0]
    dtypes = {n: p.dtype for n, p in enc.named_parameters()}
    assert {d for n, d in dtypes.items() if n.endswith("wo.weight")} == {torch.float32}
    assert {d for n, d in dtypes.items() if n.endswith("wi_0.weight")} == {torch.float16}


@pytest.mark.parametrize(
    "family, flags, expected",
    [
        ("wan", ["--num_frames", "8"], "--num_frames 8 does not work for wan: its VAE keeps (F - 1) // 4 + 1 latent "
         "frames, so F must be 4k + 1; use one of 1, 5, 9, 13,"),
        ("cogvideox", ["--num_frames", "5"], "--num_frames 5 does not work for cogvideox: its VAE keeps (F - 1) // 4 "
         "+ 1 latent frames and decodes them back to F frames only for F = 8k + 1; use one of 1, 9, 17, 25, 33, 41, 49"),
        ("wan", ["--num_frames", "9", "--train_method", "sipo"], "--train_method sipo is defined on DDPM quantities "
         "and does not run on the wan family (rectified flow); it works on: sd15, sdxl, cogvideox"),
        ("wan", ["--num_frames", "9", "--train_method", "dpo-cm"], "--train_method dpo-cm is defined on DDPM"),
        ("cogvideox", ["--num_frames", "9", "--height", "40"], "--height/--width must be positive multiples of 16"),
        ("cogvideox", ["--max_sequence_length", "64"], "--max_sequence_length does not apply to cogvideox"),
    ],
)  # fmt: skip
def test_video_refusals_are_one_line(family, flags, expected, tiny_cogvideox, tiny_wan):
    model = {"cogvideox": tiny_cogvideox, "wan": tiny_wan}[family]
    with pytest.raises(UserError) as e:
        parse_args(["--pretrained_model_name_or_path", str(model), *flags])
    assert expected in str(e.value) and "\n" not in str(e.value)


def test_image_families_refuse_the_video_flags(tiny_sd15):
    with pytest.raises(UserError, match=r"--num_frames only apply to video families \(cogvideox, wan\), not sd15"):
        parse_args(["--pretrained_model_name_or_path", str(tiny_sd15), "--num_frames", "9"])


SAFEGUARD = ["--use_winner_preserving", "--winner_preserving_mu", "0.5"]
RUNS = {
    "cogvideox": [(m, s) for m in ("diffusion-dpo", "dpo-cm", "sipo") for s in ([], SAFEGUARD)]
    + [("sipo", ["--use_winner_preserving", "--winner_preserving_mode", "fixed", "--winner_preserving_lambda", "0.3"])],
    "wan": [("diffusion-dpo", s) for s in ([], SAFEGUARD)],
}


@pytest.mark.parametrize("family", ["cogvideox", "wan"])
def test_video_methods_train_with_and_without_the_safeguard(family, tiny_cogvideox, tiny_wan, tiny_video_pairs,
                                                            tmp_path, run_train):  # fmt: skip
    model = {"cogvideox": tiny_cogvideox, "wan": tiny_wan}[family]
    init = get_family(family).denoiser_class().from_pretrained(model, subfolder="transformer").state_dict()
    for i, (method, extra) in enumerate(RUNS[family]):
        out = tmp_path / f"r{i}"
        path = run_train(*video_flags(model, tiny_video_pairs, out, "--train_method", method, *extra))
        assert path == out / "transformer.pth"
        sd = torch.load(path, weights_only=True)
        assert sd.keys() == init.keys() and any(not torch.equal(v, init[k]) for k, v in sd.items()), (method, extra)
        (logged,) = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
        assert all(math.isfinite(v) for v in logged.values()), (method, extra, logged)
        if "fixed" in extra:
            assert logged["avg_lose_l_scale"] == pytest.approx(0.3)
        elif extra:
            assert 0.0 <= logged["avg_lose_l_scale"] <= 1.0
        else:
            assert logged["avg_lose_l_scale"] == 1.0
        if method != "diffusion-dpo":  # importance weights of a 5-D transition, clipped to [0.9, 1.1]
            assert 0.0 <= logged["importance_weight"] <= 1.1


@pytest.mark.parametrize(
    "family, method", [("cogvideox", "sipo"), ("wan", "diffusion-dpo")]
)  # fmt: skip
def test_video_resume_is_bit_identical(family, method, tiny_cogvideox, tiny_wan, tiny_video_pairs, tmp_path,
                                       run_train):  # fmt: skip
    model = {"cogvideox": tiny_cogvideox, "wan": tiny_wan}[family]
    flags = ["--train_method", method, *SAFEGUARD, "--noise_offset", "0.05"]
    straight = run_train(*video_flags(model, tiny_video_pairs, tmp_path / "a", *flags, "--max_train_steps", "2"))
    run_train(*video_flags(model, tiny_video_pairs, tmp_path / "b", *flags, "--max_train_steps", "1"))
    resumed = run_train(*video_flags(model, tiny_video_pairs, tmp_path / "b", *flags, "--max_train_steps", "2"))
    a, b = torch.load(straight, weights_only=True), torch.load(resumed, weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    logs = [json.loads(ln) for ln in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs] == [1, 2]
    straight_logs = [json.loads(ln) for ln in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert logs == straight_logs
