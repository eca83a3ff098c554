"""The 2026 families (Qwen-Image, FLUX.2 [dev] and [klein], Z-Image) on tiny folders: each loads into its diffusers
pipeline, trains Diffusion-DPO + SDPO and resumes bit-identically, computes the per-sample loss exactly as the
pipeline's own components do (written here from diffusers' LoRA trainers, not through the family), writes LoRA
adapters the pipeline's ``load_lora_weights`` reads, trains from the latent/text cache like from pixels, and
generates the same bytes at batch 1 and 4."""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import flow_flags, reset_accelerate

from sdpo.config import parse_args
from sdpo.families import get_family, resolve_family

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
KINDS = {"qwenimage": "qwenimage", "flux2": "flux2", "flux2-klein": "flux2", "zimage": "zimage"}  # tiny kind: family
SDPO = ["--train_method", "diffusion-dpo", "--use_winner_preserving", "--winner_preserving_mu", "0.5"]


@pytest.fixture(scope="session")
def tiny2026(tmp_path_factory):
    """The tiny folder of a kind, built once per session on first use."""
    from sdpo.tiny import build_tiny_model

    root, built = tmp_path_factory.mktemp("models2026"), {}

    def get(kind: str) -> Path:
        if kind not in built:
            built[kind] = build_tiny_model(kind, root / kind, seed=0)
        return built[kind]

    return get


def _load(model, *extra, needs_reference=True):
    cfg = parse_args(["--pretrained_model_name_or_path", str(model), "--resolution", "32", "--mixed_precision", "no",
                      *map(str, extra)])  # fmt: skip
    return cfg, get_family(cfg.model.model_family).load(cfg.model, CPU, torch.float32, needs_reference)


@pytest.mark.parametrize("kind", KINDS)
def test_tiny_folder_is_its_pipeline_and_the_family_is_recognised(kind, tiny2026):
    from diffusers import DiffusionPipeline

    folder, family = tiny2026(kind), get_family(KINDS[kind])
    pipe = DiffusionPipeline.from_pretrained(folder)
    assert type(pipe).__name__ in family.pipeline_classes and resolve_family(str(folder)) == family.name
    # its denoiser's keys name this family, not an earlier one with the same block names (FLUX.2 vs FLUX.1)
    assert family.owner_of(pipe.transformer.state_dict()) is family
    if kind == "qwenimage":  # the pipeline drops 34 template tokens: the tiny vocabulary cuts its system turn there
        prefix = pipe.prompt_template_encode.split("{}")[0]
        assert len(pipe.tokenizer(prefix)["input_ids"]) == pipe.prompt_template_encode_start_idx == 34


@pytest.mark.parametrize("kind", KINDS)
def test_shard_blocks_are_the_denoisers_repeated_blocks(kind, tiny2026):
    """The FSDP/HSDP units the family names are exactly the classes of its denoiser's repeated blocks (every
    element of its top-level block lists), so sharding and the memory plan, which builds the real configs from
    the same names, cannot silently leave a block list in the root unit."""
    family = get_family(KINDS[kind])
    model = family.denoiser_class().from_pretrained(tiny2026(kind), subfolder=family.denoiser_folder)
    repeated = [b for m in model.children() if isinstance(m, torch.nn.ModuleList) for b in m]
    assert repeated and {type(b).__name__ for b in repeated} == set(family.shard_blocks)


# --------------------------------------------------------------------------- the loss, independently


def _reference_losses(kind, folder, pixels, captions, u, eps, vae_eps, length):
    """Per-sample flow-matching losses as diffusers' LoRA trainer for the family computes them, with the pipeline's
    own components and static helpers, from the same draws (``u``, noise and posterior noise in the family's
    layout); a posterior sample ``mean + std * noise`` where the trainers take the mean."""
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(folder)
    sched, tr, vae = pipe.scheduler, pipe.transformer, pipe.vae
    index = (u * sched.config.num_train_timesteps).long()
    timesteps = sched.timesteps[index]
    view = (-1, *[1] * (eps.dim() - 1))
    sigma = sched.sigmas[index].view(view)
    with torch.no_grad():
        if KINDS[kind] == "qwenimage":
            post = vae.encode(pixels.unsqueeze(2)).latent_dist
            z = post.mean + post.std * vae_eps.unsqueeze(2)  # (N, 16, 1, h, w)
            mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
            x0 = (z - mean) * (1.0 / torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1))
            noise = eps.unsqueeze(2)
            noisy = ((1.0 - sigma.unsqueeze(-1)) * x0 + sigma.unsqueeze(-1) * noise).permute(0, 2, 1, 3, 4)
            n, _, c, h, w = noisy.shape
            embeds, mask = pipe.encode_prompt(captions, max_sequence_length=length)
            pred = tr(hidden_states=pipe._pack_latents(noisy, n, c, h, w), encoder_hidden_states=embeds,
                      encoder_hidden_states_mask=mask, timestep=timesteps / 1000, img_shapes=[(1, h // 2, w // 2)] * n,
                      return_dict=False)[0]  # fmt: skip
            pred = pipe._unpack_latents(pred, 8 * h, 8 * w, pipe.vae_scale_factor)
        elif KINDS[kind] == "flux2":
            post = vae.encode(pixels).latent_dist
            x0 = pipe._patchify_latents(post.mean + post.std * vae_eps)
            bn_mean = vae.bn.running_mean.view(1, -1, 1, 1)
            x0 = (x0 - bn_mean) / torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps)
            noise = pipe._patchify_latents(eps)
            noisy = (1.0 - sigma) * x0 + sigma * noise
            ids = pipe._prepare_latent_ids(x0)
            packed = pipe._pack_latents(noisy)
            embeds, text_ids = pipe.encode_prompt(captions, max_sequence_length=length)
            guidance = torch.full((len(x0),), 1.0) if tr.config.guidance_embeds else None  # --flux_guidance's default
            pred = tr(hidden_states=packed, timestep=timesteps / 1000, guidance=guidance, encoder_hidden_states=embeds,
                      txt_ids=text_ids, img_ids=ids, return_dict=False)[0]  # fmt: skip
            pred = pipe._unpack_latents_with_ids(pred[:, : packed.size(1)], ids)
        else:
            post = vae.encode(pixels).latent_dist
            x0 = (post.mean + post.std * vae_eps - vae.config.shift_factor) * vae.config.scaling_factor
            noise = eps
            noisy = (1.0 - sigma) * x0 + sigma * noise
            feats, _ = pipe.encode_prompt(captions, do_classifier_free_guidance=False, max_sequence_length=length)
            out = tr(list(noisy.unsqueeze(2).unbind(0)), (1000 - timesteps) / 1000, feats, return_dict=False)[0]
            pred = -torch.stack(out).squeeze(2)  # Z-Image predicts the negative velocity
    target = noise - x0
    return ((pred.float() - target.float()) ** 2).mean(dim=list(range(1, pred.dim())))


@pytest.mark.parametrize("kind", KINDS)
def test_per_sample_loss_is_the_pipelines_own_computation(kind, tiny2026):
    from sdpo.losses import get_objective
    from sdpo.training.step import pair_draws, preference_forward

    folder = tiny2026(kind)
    cfg, fam = _load(folder, "--weighting_scheme", "logit_normal")
    g = torch.Generator().manual_seed(3)
    captions = ["a red circle", ""]  # "" is the caption-dropout prompt
    batch = {"pixel_values": torch.rand(4, 3, 32, 32, generator=g) * 2 - 1, "captions": captions,
             "sample_seeds": torch.tensor([11, 12])}  # fmt: skip
    terms = preference_forward(batch, fam, cfg, get_objective("diffusion-dpo"), CPU)
    ours = torch.cat([terms.model_w, terms.model_l]).detach()
    u, eps, vae_eps, _, _ = pair_draws(batch["sample_seeds"], fam.latent_shape((3, 32, 32)), fam, CPU)
    expected = _reference_losses(kind, folder, batch["pixel_values"], captions * 2, torch.cat([u, u]),
                                 torch.cat([eps, eps]), vae_eps, fam.sequence_length())  # fmt: skip
    torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-6)
    reference = torch.cat([terms.ref_w, terms.ref_l])
    torch.testing.assert_close(reference, ours, rtol=0, atol=0)  # the frozen reference: the same weights


# --------------------------------------------------------------------------- training


# [klein] trains through the same loop as [dev]; what differs (its text encoder, no guidance embedding) is pinned by
# the loss test above, so the slower runs take one FLUX.2 each.
@pytest.mark.parametrize("kind", ["qwenimage", "flux2", "zimage"])
def test_dpo_with_sdpo_trains_three_steps_and_resumes_bit_identically(kind, tiny2026, tiny_pairs, tmp_path, run_train):
    folder = tiny2026(kind)
    flags = [*SDPO, "--weighting_scheme", "logit_normal"]
    straight = run_train(*flow_flags(folder, tiny_pairs, tmp_path / "a", *flags, "--max_train_steps", "3"))
    run_train(*flow_flags(folder, tiny_pairs, tmp_path / "b", *flags, "--max_train_steps", "2"))
    resumed = run_train(*flow_flags(folder, tiny_pairs, tmp_path / "b", *flags, "--max_train_steps", "3"))
    a, b = torch.load(straight, weights_only=True), torch.load(resumed, weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    init = get_family(KINDS[kind]).denoiser_class().from_pretrained(folder, subfolder="transformer").state_dict()
    assert any(not torch.equal(v, init[k]) for k, v in a.items())
    rows = [json.loads(ln) for ln in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(math.isfinite(v) for r in rows for v in r.values())
    assert all(0.0 <= r["avg_lose_l_scale"] <= 1.0 for r in rows)


def test_the_other_flow_objectives_and_safeguard_modes_train(tiny2026, tiny_pairs, tmp_path, run_train):
    """The objectives and safeguard modes a flow family runs, one step each on the fastest of the three (they act on
    the per-sample losses pinned above, the same for every family; KTO's single images take their own path through
    the family): each moves the weights, logs finite scalars, and the loser's scale is the mode's."""
    folder = tiny2026("zimage")
    init = get_family("zimage").denoiser_class().from_pretrained(folder, subfolder="transformer").state_dict()
    runs = [(m, SDPO[2:]) for m in ("dmpo", "mapo", "dpop")] + [("sft", []), ("kto", ["--positive_ratio", "0.8"])]
    runs += [("diffusion-dpo", ["--use_winner_preserving", "--winner_preserving_mode", "param"]),
             ("diffusion-dpo", ["--use_winner_preserving", "--winner_preserving_mode", "fixed",
                                "--winner_preserving_lambda", "0.3"])]  # fmt: skip
    for i, (method, extra) in enumerate(runs):
        out = tmp_path / f"r{i}"
        weights = run_train(*flow_flags(folder, tiny_pairs, out, "--train_method", method, *extra))
        sd = torch.load(weights, weights_only=True)
        assert any(not torch.equal(v, init[k]) for k, v in sd.items()), (method, extra)
        (logged,) = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
        assert all(math.isfinite(v) for v in logged.values()), (method, extra, logged)
        scale = logged.get("avg_lose_l_scale", 1.0)
        assert scale == pytest.approx(0.3) if "fixed" in extra else (0.0 <= scale <= 1.0), (method, extra, logged)


@pytest.mark.parametrize("kind", ["qwenimage", "flux2-klein", "zimage"])
def test_lora_run_writes_adapters_the_pipeline_loads(kind, tiny2026, tiny_pairs, tmp_path, run_train):
    """One LoRA step with gradient checkpointing and in-training validation; the saved adapters, loaded by the
    pipeline's ``load_lora_weights``, predict what the merged weights (``sdpo.lora merge``) predict."""
    from diffusers import DiffusionPipeline

    from sdpo.lora import adapters as lora

    folder, out = tiny2026(kind), tmp_path / "lora"
    run_train(*flow_flags(folder, tiny_pairs, out, *SDPO, "--lora_rank", "4", "--lora_alpha", "8",
                          "--lora_target_modules", "attn", "ff", "--gradient_checkpointing", "--validation_prompts",
                          "papv2:1", "--validation_steps", "1", "--validation_num_inference_steps", "2"))  # fmt: skip
    assert (out / "validation" / "step-000001.json").is_file()
    pipe = DiffusionPipeline.from_pretrained(folder)
    pipe.load_lora_weights(out)
    assert pipe.transformer.peft_config
    cfg, fam = _load(folder, needs_reference=False)
    merged = lora.merge(type(fam), cfg.model, out)
    g = torch.Generator().manual_seed(0)
    shape = fam.latent_shape((3, 32, 32))
    noisy, time = torch.randn(2, *shape, generator=g), torch.cat([fam.draw_time(g, CPU) for _ in range(2)])
    _, _, t = fam.add_noise(noisy, noisy, time)
    cond = fam.encode_prompt(["a red circle", "a blue square"])
    with torch.no_grad():
        loaded, fused, base = (fam.predict(m, noisy, t, cond) for m in (pipe.transformer, merged, fam.denoiser))
    assert (loaded - base).abs().max() > 0  # the adapters act
    torch.testing.assert_close(loaded, fused, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["qwenimage", "flux2"])
def test_fp32_cache_trains_like_pixels(kind, tiny2026, tiny_pairs, tmp_path, run_train):
    """Qwen-Image's posterior loses its frame axis, FLUX.2's latents are normalised by batch-norm statistics read
    from the VAE's weights when the cache means no VAE is loaded: both give the uncached run."""
    from sdpo.cache.precompute import parse_args as precompute_args
    from sdpo.cache.precompute import precompute

    folder = tiny2026(kind)
    flags = flow_flags(folder, tiny_pairs, tmp_path / "unused", *SDPO)
    reset_accelerate()
    try:
        cache = precompute(precompute_args([*flags, "--out", str(tmp_path / "cache"), "--encode_batch_size", "1"]))
    finally:
        reset_accelerate()
    plain = run_train(*flow_flags(folder, tiny_pairs, tmp_path / "plain", *SDPO))
    cached = run_train(*flow_flags(folder, tiny_pairs, tmp_path / "cached", *SDPO, "--precomputed", cache))
    a, b = torch.load(plain, weights_only=True), torch.load(cached, weights_only=True)
    for k in a:
        assert (a[k] - b[k]).abs().max() <= 1e-6 * a[k].abs().max(), k


# --------------------------------------------------------------------------- generation


@pytest.mark.parametrize("kind", KINDS)
def test_generation_is_batch_invariant(kind, tiny2026, tmp_path):
    from eval.generate import main

    folder, family = tiny2026(kind), get_family(KINDS[kind])
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps([{"prompt": p} for p in ("a red circle", "a blue square", "", "a red circle")]))
    base = ["--weights_path", str(folder), "--pretrain_path", str(folder), "--test_json", str(prompts),
            "--height", "32", "--width", "32", "--steps", "2"]  # fmt: skip
    for b in (1, 4):
        main([*base, "--batch_size", str(b), "--output_path", str(tmp_path / f"b{b}")])
    name = f"p_seed0_32x32_2s_{family.sampling_guidance}cfg"
    one, four = sorted((tmp_path / "b1" / name).glob("*.png")), sorted((tmp_path / "b4" / name).glob("*.png"))
    assert [p.name for p in one] == [p.name for p in four] and len(one) == 4
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(one, four))
    assert one[0].read_bytes() != one[1].read_bytes()  # the prompt matters
    meta = json.loads((tmp_path / "b1" / f"{name}.json").read_text())[0]["metadata"]
    assert (meta["model_family"], meta["guidance"]) == (family.name, family.sampling_guidance)


def test_a_step_distilled_klein_samples_without_guidance(tiny2026, tmp_path):
    """``is_distilled`` in a [klein] folder's model_index.json reaches the pipeline evaluation builds."""
    import shutil

    folder = shutil.copytree(tiny2026("flux2-klein"), tmp_path / "klein-distilled")
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "is_distilled": True}))
    family = get_family("flux2")
    for path, distilled in ((tiny2026("flux2-klein"), False), (folder, True)):
        comp = family.load_sampling_components(str(path), None, CPU, torch.float32)
        pipe = family.sampling_pipeline(comp)
        pipe._guidance_scale = family.sampling_guidance
        assert pipe.config.is_distilled is distilled and pipe.do_classifier_free_guidance is not distilled


# --------------------------------------------------------------------------- recipes


@pytest.mark.parametrize("family, model", [("qwenimage", "Qwen/Qwen-Image"), ("flux2", "black-forest-labs/FLUX.2-dev"),
                                           ("zimage", "Tongyi-MAI/Z-Image")])  # fmt: skip
def test_launch_values_carry_appendix_b_over_with_fsdp(family, model):
    """What common.sh gets from ``python -m sdpo.config.launch``: the paper's FLUX.1 numbers, FSDP over every GPU
    (bench/memory_plan.py: HSDP 2x8 does not fit Qwen-Image or FLUX.2 [dev]), the family's hub model."""
    from sdpo.config.launch import launch_values

    v = launch_values(family, None, lora=False, method=None)
    assert (v["MODEL_DEFAULT"], v["LR"], v["SCALE_LR"], v["GLOBAL_BATCH_DEFAULT"], v["PER_GPU_BATCH_DEFAULT"]) == (
        model, "1e-5", 0, 512, 1)  # fmt: skip
    assert v["SHARDING_DEFAULT"] == "fsdp" and "--gradient_checkpointing" in v["TRAIN_FLAGS"]
    assert launch_values(family, None, lora=True, method=None)["SHARDING_DEFAULT"] == "none"  # LoRA: plain DDP


def test_klein_recipe_launches_the_klein_base_model():
    from sdpo.config import build_parser

    env = {**os.environ, "NUM_GPUS": "8", "NUM_NODES": "2", "NODE_RANK": "0", "MASTER_ADDR": "node0",
           "PYTHON": sys.executable}  # fmt: skip
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "train" / "flux2_klein_diffusion_dpo.sh"), "--dry-run"],
                          env=env, capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    cmd = shlex.split(proc.stdout.strip().splitlines()[-1])
    cfg = build_parser().parse_args(cmd[next(i for i, a in enumerate(cmd) if a.endswith("train.py")) + 1 :])
    assert (cfg.model_family, cfg.pretrained_model_name_or_path, cfg.sharding) == (
        "flux2", "black-forest-labs/FLUX.2-klein-base-4B", "fsdp")  # fmt: skip
    assert (cfg.train_method, cfg.beta_dpo, cfg.winner_preserving_mu, cfg.use_winner_preserving) == (
        "diffusion-dpo", 1000.0, 0.99, True)  # fmt: skip
    assert cfg.learning_rate == 1e-5 and not cfg.scale_lr and cfg.resolution == 1024 and cfg.gradient_checkpointing
    assert (cfg.train_batch_size, cfg.gradient_accumulation_steps) == (1, 32)  # 16 GPUs x 1 x 32 = 512


def test_eval_script_takes_the_familys_own_protocol_values(tmp_path):
    """scripts/eval/test_zimage.sh names no size, guidance or base model: joint_test.sh asks the family (dry run)."""
    from sdpo.errors import UserError
    from sdpo.families.eval_defaults import eval_defaults

    ckpt = tmp_path / "checkpoint-2000"
    ckpt.mkdir()
    (ckpt / "transformer.pth").write_bytes(b"")
    (tmp_path / "fake.py").write_text("")
    env = {**os.environ, "PYTHON": sys.executable, "SETS": "papv2", "SCORE_PY": str(tmp_path / "fake.py"),
           "SUMMARY_PY": str(tmp_path / "fake.py")}  # fmt: skip
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "eval" / "test_zimage.sh"), "--dry-run",
                           str(ckpt / "transformer.pth")], env=env, capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (gen,) = [ln for ln in proc.stdout.splitlines() if ln.startswith("+ ") and "eval/generate.py" in ln]
    assert "--model_family zimage" in gen and "--pretrain_path Tongyi-MAI/Z-Image" in gen
    assert "--height 1024 --width 1024 --steps 50 --cfg 5.0 --seed 0" in gen
    assert f"--json_path {ckpt}/papv2_seed0_1024x1024_50s_5.0cfg.json" in proc.stdout
    assert sorted(p.name for p in ckpt.iterdir()) == ["transformer.pth"]  # a dry run writes nothing
    with pytest.raises(UserError, match=r"^KIND=wan is a video family: evaluate it with eval/video_generate\.py"):
        eval_defaults("wan")
