"""LoRA training (``--lora_rank``, ``sdpo/lora.py``): only adapters train, the reference is the base model
with the adapters off, files load into diffusers pipelines, resume is exact, the safeguard acts on them."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from conftest import flow_flags, reset_accelerate, tiny_flags

from sdpo.config import parse_args
from sdpo.errors import UserError
from sdpo.families import get_family
from sdpo.lora import adapters as lora
from sdpo.losses import get_objective
from sdpo.training.step import preference_forward

CPU = torch.device("cpu")


def _family(model, *extra, needs_reference=True):
    cfg = parse_args(["--pretrained_model_name_or_path", str(model), "--resolution", "32", "--mixed_precision", "no",
                      "--lora_rank", "4", *map(str, extra)])  # fmt: skip
    return cfg, get_family(cfg.model.model_family).load(cfg.model, CPU, torch.float32, needs_reference)


def _randomise_adapters(model: torch.nn.Module, seed: int = 1) -> None:
    """B starts at zero (the run starts at the base model); give every adapter a visible effect."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def _inputs(fam, n: int = 2):
    """Noisy latents, the denoiser's time argument and the conditioning for ``n`` rows, as training builds them."""
    g = torch.Generator().manual_seed(0)
    shape = fam.latent_shape((9, 3, 32, 32) if fam.video else (3, 32, 32))  # video: 9 frames
    latents, noise = torch.randn(n, *shape, generator=g), torch.randn(n, *shape, generator=g)
    time = torch.cat([fam.draw_time(g, CPU) for _ in range(n)])
    noisy, _, t = fam.add_noise(latents, noise, time)
    cond = {**fam.encode_prompt(["a red circle", "a blue square"][:n]), **fam.extra_conditioning(n, torch.float32)}
    return noisy, t, cond


def test_reference_is_the_base_with_adapters_off_and_no_copy_is_loaded(tiny_sd15):
    cfg, fam = _family(tiny_sd15)
    assert not isinstance(fam.reference, torch.nn.Module)  # no second denoiser
    _randomise_adapters(fam.denoiser)
    noisy, t, cond = _inputs(fam)
    base = get_family("sd15").denoiser_class().from_pretrained(tiny_sd15, subfolder="unet").eval()
    with torch.no_grad():
        ref = fam.predict(fam.reference, noisy, t, cond)
        expected = fam.predict(base, noisy, t, cond)
        policy = fam.predict(fam.denoiser, noisy, t, cond)
    assert torch.equal(ref, expected)  # fp32: bit for bit the frozen base
    assert (policy - expected).abs().max() > 1e-3  # and the adapters do act on the policy
    trainable = {n for n, p in fam.denoiser.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)  # switched back on, still trainable
    assert all(p.dtype == torch.float32 for n, p in fam.denoiser.named_parameters() if n in trainable)


def test_base_stays_in_the_weight_dtype_with_fp32_adapters(tiny_sd15):
    cfg = parse_args(["--pretrained_model_name_or_path", str(tiny_sd15), "--lora_rank", "2", "--lora_alpha", "4"])
    fam = get_family("sd15").load(cfg.model, CPU, torch.bfloat16, needs_reference=True)
    dtypes = {(".lora_" in n, p.dtype) for n, p in fam.denoiser.named_parameters()}
    assert dtypes == {(False, torch.bfloat16), (True, torch.float32)}
    assert fam.denoiser.peft_config["default"].lora_alpha == 4 and fam.denoiser.peft_config["default"].r == 2


@pytest.mark.parametrize("family", ["sd15", "sdxl", "sd3", "flux", "cogvideox", "wan"])
def test_saved_adapters_load_into_the_diffusers_pipeline(family, request, tmp_path):
    """``pipe.load_lora_weights(DIR)`` reproduces the trained model's prediction (alpha != rank, attn + ff)."""
    model = request.getfixturevalue(f"tiny_{family}")
    cfg, fam = _family(model, "--lora_alpha", "8", "--lora_target_modules", "attn", "ff", needs_reference=False)
    _randomise_adapters(fam.denoiser)
    lora.save_adapters(type(fam), fam.denoiser, tmp_path)
    pipe = type(fam).pipeline_class().from_pretrained(model)
    pipe.load_lora_weights(tmp_path)
    loaded = getattr(pipe, fam.denoiser_folder)
    assert loaded.peft_config  # the pipeline's denoiser has the adapters now
    noisy, t, cond = _inputs(fam)
    with torch.no_grad():
        ours = fam.predict(fam.denoiser, noisy, t, cond)
        theirs = fam.predict(loaded, noisy, t, cond)
        with lora.adapters_disabled(fam.denoiser):
            base = fam.predict(fam.denoiser, noisy, t, cond)
    assert (ours - base).abs().max() > 1e-3
    torch.testing.assert_close(theirs, ours, atol=1e-6, rtol=0)


def _setup(flags):
    from sdpo.training.setup import setup

    reset_accelerate()
    return setup(parse_args([str(f) for f in flags]))


def test_a_step_changes_only_adapters_and_every_base_weight_is_bit_identical(tiny_sd15, tiny_pairs, tmp_path):
    from sdpo.training.loop import finish_step, micro_step

    extra = "--lora_rank 4 --use_winner_preserving --winner_preserving_mu 0.5 --checkpointing_steps 100".split()
    run = _setup(tiny_flags(tiny_sd15, tiny_pairs, tmp_path / "run", *extra))
    try:
        model = lora.unwrap(run.family.denoiser)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        assert {id(p) for p in run.params} == {id(p) for n, p in model.named_parameters() if ".lora_" in n}
        for _ in range(2):
            _, ok = micro_step(run, next(iter(run.loader)))
            assert ok
            finish_step(run, ok, {})
        after = model.state_dict()
        changed = {k for k in before if not torch.equal(before[k], after[k])}
        assert changed and all(".lora_" in k for k in changed)
        assert any(".lora_B." in k for k in changed)  # the adapters' output side moved: they now act
        assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
    finally:
        reset_accelerate()


def test_lora_run_writes_adapters_only_resumes_bit_identically_and_merges(tiny_sd15, tiny_pairs, tmp_path, run_train):
    from safetensors.torch import load_file

    out = tmp_path / "run"
    flags = tiny_flags(tiny_sd15, tiny_pairs, out, "--lora_rank", "4", "--lora_alpha", "2", "--learning_rate", "1e-3",
                       "--use_winner_preserving", "--winner_preserving_mu", "0.9", "--save_merged")  # fmt: skip
    final = run_train(*flags)
    assert final == out / lora.LORA_WEIGHTS
    ckpt = out / "checkpoint-2"
    # Adapters and optimizer state only: no model.safetensors, no unet.pth.
    expected = [lora.LORA_WEIGHTS, "manifest.json", "optimizer.bin", "random_states_0.pkl", "scheduler.bin",
                "training_state.json"]  # fmt: skip
    assert sorted(p.name for p in ckpt.iterdir()) == sorted(expected)
    straight = load_file(final)
    assert all(".lora." in k for k in straight) and (out / "unet.pth").is_file()

    # checkpoint-4's adapters cut short: the run resumes from checkpoint-2 (the newest that verifies) and ends
    # with the same adapters, bit for bit.
    adapters = out / "checkpoint-4" / lora.LORA_WEIGHTS
    os.truncate(adapters, adapters.stat().st_size // 2)
    final.unlink()
    run_train(*flags)
    resumed = load_file(final)
    assert straight.keys() == resumed.keys() and all(torch.equal(straight[k], resumed[k]) for k in straight)

    # Resuming with another rank, or as a full fine-tune, stops with one line (sdpo.checkpoint.identity).
    i = flags.index("--lora_rank")
    other_rank = [*flags[: i + 1], "8", *flags[i + 2 :]]
    with pytest.raises(UserError, match="a run with --lora_rank 4, this launch has 8: .*--allow_changed_flags lora_r"):
        run_train(*other_rank)
    with pytest.raises(UserError, match="a run with --lora_rank 4, this launch has not set"):
        run_train(*tiny_flags(tiny_sd15, tiny_pairs, out))
    with pytest.raises(UserError, match="adapters do not fit this run's LoRA .*--lora_rank"):  # when allowed anyway
        run_train(*other_rank, "--allow_changed_flags", "lora_rank")

    # --save_merged and the merge CLI write the same full weights; they predict what base + LoRA predicts.
    from sdpo.lora.__main__ import main as lora_cli

    merged_cli = lora_cli(["merge", "--pretrained_model_name_or_path", str(tiny_sd15), "--lora_path", str(out),
                           "--output_dir", str(tmp_path / "merged")])  # fmt: skip
    a, b = (torch.load(p, weights_only=True) for p in (out / "unet.pth", merged_cli))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    cfg, fam = _family(tiny_sd15, needs_reference=False)
    unet, unet_with = (fam.denoiser_class().from_pretrained(tiny_sd15, subfolder="unet") for _ in range(2))
    unet.load_state_dict(a, strict=True)
    lora.attach(unet_with, type(fam), out)
    noisy, t, cond = _inputs(fam)
    with torch.no_grad():
        torch.testing.assert_close(fam.predict(unet, noisy, t, cond), fam.predict(unet_with, noisy, t, cond),
                                   atol=1e-5, rtol=0)  # fmt: skip


def test_flow_lora_run_trains_with_the_reference_off_the_same_module(tiny_flux, tiny_pairs, tmp_path, run_train):
    out = tmp_path / "flux"
    final = run_train(*flow_flags(tiny_flux, tiny_pairs, out, "--lora_rank", "2", "--max_train_steps", "2",
                                  "--use_winner_preserving", "--winner_preserving_mu", "0.99"))  # fmt: skip
    from safetensors.torch import load_file

    sd = load_file(final)
    assert sd and all(k.startswith("transformer.") for k in sd)
    assert any(".single_transformer_blocks." in k for k in sd)  # the single-stream attention is adapted too
    assert not (out / "transformer.pth").exists()  # no --save_merged: adapters only


def test_gradient_checkpointing_recomputes_with_the_adapters_on(tiny_sdxl):
    """The reference runs with adapters off between the policy forward and its backward; the backward's
    recomputation (gradient checkpointing) must see them on again: same adapter gradients as without it."""
    cfg, fam = _family(
        tiny_sdxl, "--gradient_checkpointing", "--use_winner_preserving", "--winner_preserving_mu", "0.5"
    )
    _randomise_adapters(fam.denoiser)
    g = torch.Generator().manual_seed(0)
    batch = {"pixel_values": torch.rand(4, 3, 32, 32, generator=g) * 2 - 1, "captions": ["a red circle", "a cube"],
             "sample_seeds": torch.tensor([5, 6])}  # fmt: skip
    dpo = get_objective("diffusion-dpo")
    params = [p for p in fam.denoiser.parameters() if p.requires_grad]
    grads = []
    for checkpointing in (True, False):
        fam.denoiser.enable_gradient_checkpointing() if checkpointing else fam.denoiser.disable_gradient_checkpointing()
        terms = preference_forward(batch, fam, cfg, dpo, CPU)
        assert terms.ref_pred is not None
        grads.append(_grads(dpo.loss(terms, cfg.objective.params).loss, params))
    assert any(g.abs().max() > 0 for g in grads[0])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-5)


def _grads(loss, params):
    return torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)


@pytest.mark.parametrize("mode", ["fixed", "output"])
def test_safeguard_scales_exactly_the_loser_gradient_with_lora(tiny_sd15, mode):
    """The adapters' gradient is the winner branch's plus lambda times the loser branch's, nothing else."""
    extra = ["--winner_preserving_mode", mode] + (["--winner_preserving_lambda", "0.37"] if mode == "fixed" else [])
    cfg, fam = _family(tiny_sd15, "--use_winner_preserving", "--winner_preserving_mu", "0.5", *extra)
    _randomise_adapters(fam.denoiser)
    fam.denoiser.double()  # float64 end to end, so "exactly" can be checked to 1e-12
    g = torch.Generator().manual_seed(0)
    batch = {"pixel_values": torch.rand(4, 3, 32, 32, generator=g) * 2 - 1, "captions": ["a red circle", "a cube"],
             "sample_seeds": torch.tensor([5, 6])}  # fmt: skip
    dpo = get_objective("diffusion-dpo")
    params = [p for p in fam.denoiser.parameters() if p.requires_grad]
    terms = preference_forward(batch, fam, cfg, dpo, CPU)
    lam = float(terms.lam)
    assert 0.0 < lam < 1.0 and (lam == pytest.approx(0.37) if mode == "fixed" else True)
    scaled = _grads(dpo.loss(terms, cfg.objective.params).loss, params)

    plain_cfg = cfg.with_flags(use_winner_preserving=False)
    plain = preference_forward(batch, fam, plain_cfg, dpo, CPU)
    assert torch.equal(plain.model_pred, terms.model_pred)
    # The same loss value, split by branch: d loss / d pred for winner rows and loser rows.
    loss = dpo.loss(plain, plain_cfg.objective.params).loss
    (g_pred,) = torch.autograd.grad(loss, plain.model_pred, retain_graph=True)
    bsz = g_pred.shape[0] // 2
    win = torch.cat([g_pred[:bsz], torch.zeros_like(g_pred[bsz:])])
    lose = torch.cat([torch.zeros_like(g_pred[:bsz]), g_pred[bsz:]])
    g_w = torch.autograd.grad(plain.model_pred, params, grad_outputs=win, retain_graph=True)
    g_l = torch.autograd.grad(plain.model_pred, params, grad_outputs=lose, retain_graph=True)
    for s, w, lo in zip(scaled, g_w, g_l):
        torch.testing.assert_close(s, w + lam * lo, atol=1e-12, rtol=1e-10)
    assert all(p.grad is None for p in fam.denoiser.parameters())


def test_param_space_lambda_runs_over_the_adapters_only(tiny_sd15):
    from sdpo.safeguard.modes import safeguard_lambda

    cfg, fam = _family(tiny_sd15, "--use_winner_preserving", "--winner_preserving_mode", "param",
                       "--winner_preserving_mu", "0.2")  # fmt: skip
    _randomise_adapters(fam.denoiser)
    noisy, t, cond = _inputs(fam)  # row 0 plays the winner, row 1 the loser
    target = torch.randn_like(noisy)
    pred = fam.predict(fam.denoiser, noisy, t, cond)
    lam = safeguard_lambda(cfg.safeguard, pred, target, fam.denoiser.parameters())
    adapters = [p for n, p in fam.denoiser.named_parameters() if ".lora_" in n]
    assert len(adapters) < len(list(fam.denoiser.parameters()))
    gw = torch.cat([g.flatten() for g in _grads(((pred[0] - target[0]) ** 2).mean(), adapters)]).double()
    gl = torch.cat([g.flatten() for g in _grads(((pred[1] - target[1]) ** 2).mean(), adapters)]).double()
    num, den = float(gw @ gw), float(gw @ gl)
    expected = min(max(0.8 * num / (den + 1e-9), 0.0), 1.0) if den > 0 else 1.0
    assert float(lam) == pytest.approx(expected, rel=1e-6)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--lora_rank", "0"], "--lora_rank must be a positive integer, got 0"),
        (["--lora_rank", "-4"], "--lora_rank must be a positive integer, got -4"),
        (["--lora_rank", "4", "--lora_alpha", "0"], "--lora_alpha must be positive, got 0.0"),
        (["--lora_rank", "4", "--lora_dropout", "1"], "--lora_dropout must be in [0, 1), got 1.0"),
        (["--lora_alpha", "8", "--save_merged"], "--lora_alpha, --save_merged only act with --lora_rank"),
    ],
)
def test_bad_lora_flags_are_one_line(tiny_sd15, flags, message):
    with pytest.raises(UserError) as e:
        parse_args(["--pretrained_model_name_or_path", str(tiny_sd15), *flags])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_target_modules_that_match_nothing_list_what_exists(tiny_sd15):
    with pytest.raises(UserError) as e:
        _family(tiny_sd15, "--lora_target_modules", "to_q", "query")
    msg = str(e.value)
    assert "--lora_target_modules 'query' matches no layer of the sd15 unet" in msg and "\n" not in msg
    assert "presets: attn, ff" in msg and all(n in msg for n in ("to_q", "to_out.0", "net.2", "proj_in"))


def test_lora_path_of_another_family_or_not_a_lora_is_refused(tiny_sd15, tiny_sdxl, tiny_flux, tmp_path):
    _, flux = _family(tiny_flux, needs_reference=False)
    lora.save_adapters(type(flux), flux.denoiser, tmp_path / "flux")
    with pytest.raises(UserError, match="a LoRA for a FLUX transformer, but the base model is sd15"):
        lora.check_lora_file(tmp_path / "flux", get_family("sd15"))
    _, sd15 = _family(tiny_sd15, needs_reference=False)
    lora.save_adapters(type(sd15), sd15.denoiser, tmp_path / "sd15")
    sdxl_unet = get_family("sdxl").denoiser_class().from_pretrained(tiny_sdxl, subfolder="unet")
    with pytest.raises(UserError, match=r"LoRA matrices do not fit this sdxl unet .*trained on another base model"):
        lora.check_lora_file(tmp_path / "sd15", get_family("sdxl"), sdxl_unet)
    torch.save(sd15.denoiser.state_dict(), tmp_path / "unet.pth")
    with pytest.raises(UserError, match="not a .safetensors LoRA file"):
        lora.check_lora_file(tmp_path / "unet.pth", get_family("sd15"))
    with pytest.raises(UserError, match="no pytorch_lora_weights.safetensors in"):
        lora.check_lora_file(tmp_path, get_family("sd15"))


def test_video_lora_trains_and_generates_like_its_merged_weights(tiny_cogvideox, tiny_video_pairs, tmp_path, run_train):
    """CogVideoX (DDPM, SIPO's reference = adapters off): a LoRA run, its merged weights, and --lora_path
    generation that matches the merged weights and is the base model exactly at scale 0."""
    import json

    from conftest import video_flags
    from safetensors.torch import load_file

    from eval.generate import main
    from sdpo.data.video_io import read_frames

    out = tmp_path / "run"
    final = run_train(*video_flags(tiny_cogvideox, tiny_video_pairs, out, "--train_method", "sipo", "--beta_dpo",
                                   "0.02", "--lora_rank", "4", "--learning_rate", "5e-2", "--save_merged"))  # fmt: skip
    sd = load_file(final)
    assert sd and all(k.startswith("transformer.") and ".lora_" in k for k in sd)  # peft names, as diffusers writes
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps([{"prompt": "a red circle moving right"}]))

    def frames(name, *flags):
        main(["--pretrain_path", str(tiny_cogvideox), "--test_json", str(prompts), "--height", "32", "--width", "32",
              "--num_frames", "9", "--steps", "2", "--output_path", str(tmp_path / name), *map(str, flags)])  # fmt: skip
        (video,) = (tmp_path / name).glob("*/*.mp4")
        return read_frames(video).astype(np.int16)

    with_lora = frames("lora", "--lora_path", out)
    merged = frames("merged", "--weights_path", out / "transformer.pth")
    base = frames("base", "--weights_path", tiny_cogvideox)
    off = frames("off", "--lora_path", out, "--lora_scale", "0")
    assert np.abs(with_lora - merged).max() <= 2  # fused vs unfused adapters, through the video encoder
    assert np.abs(with_lora - base).max() > 8  # the trained adapters change the video
    assert np.array_equal(off, base)
