"""SDXL training on a tiny SDXL folder: conditioning vs diffusers' own pipeline, dtypes, VAE paths,
defaults, family mismatches, and one short run per objective with the SDPO safeguard."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sdpo.config import parse_args
from sdpo.errors import UserError
from sdpo.losses import get_objective
from sdpo.tiny import build_tiny_model, build_tiny_pairs

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("sdxl")
    return {
        "sdxl": build_tiny_model("sdxl", root / "sdxl", seed=0),
        "sdxl_other": build_tiny_model("sdxl", root / "sdxl_other", seed=1),  # a different VAE to load
        "sd15": build_tiny_model("sd15", root / "sd15"),
        "pairs": build_tiny_pairs(root / "pairs", n=8),
    }


def encode_prompt(comps, captions, device):
    cond = comps.encode_prompt(captions)
    return cond["encoder_hidden_states"], cond["text_embeds"]


def _args(files, *extra: str) -> list[str]:
    return [
        "--pretrained_model_name_or_path", str(files["sdxl"]), "--sdxl", "--dataset_name", str(files["pairs"]),
        "--resolution", "32", "--report_to", "none", *extra,
    ]  # fmt: skip


def _reset_accelerate() -> None:
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def _components(files, *extra: str, dtype=torch.float32, reference=True):
    from sdpo.families import load_family as load_components

    return load_components(
        parse_args(_args(files, *extra)).model, torch.device("cpu"), dtype, needs_reference=reference
    )


def test_sdxl_defaults_follow_the_reference_runs(files):
    cfg = parse_args(_args(files)[:-4] + ["--report_to", "none"])  # no --resolution
    assert (cfg.model.resolution, cfg.optim.use_adafactor, cfg.model.gradient_checkpointing) == (1024, True, True)
    off = parse_args(_args(files, "--no-use_adafactor", "--no-gradient_checkpointing"))
    assert (off.optim.use_adafactor, off.model.gradient_checkpointing) == (False, False)
    sd15 = parse_args(["--pretrained_model_name_or_path", str(files["sd15"]), "--dataset_name", str(files["pairs"])])
    assert (sd15.model.resolution, sd15.optim.use_adafactor, sd15.model.gradient_checkpointing) == (512, False, False)

    from transformers.optimization import Adafactor

    from sdpo.training.setup import make_optimizer

    opt = make_optimizer(cfg.optim, [torch.nn.Parameter(torch.zeros(3, 3))], num_processes=1)
    assert isinstance(opt, Adafactor)
    group = opt.param_groups[0]
    assert (group["scale_parameter"], group["relative_step"], group["clip_threshold"]) == (False, False, 1.0)


def test_prompt_encoding_matches_the_diffusers_sdxl_pipeline(files):
    """Penultimate states of both encoders concatenated, pooled from encoder 2, time ids [r, r, 0, 0, r, r]:
    compared with StableDiffusionXLPipeline.encode_prompt / _get_add_time_ids on the same folder."""
    from diffusers import StableDiffusionXLPipeline

    from sdpo.families.sdxl import sdxl_time_ids

    comps = _components(files, reference=False)
    captions = ["a red circle", ""]
    hidden, pooled = encode_prompt(comps, captions, torch.device("cpu"))
    pipe = StableDiffusionXLPipeline.from_pretrained(files["sdxl"])
    ref_hidden, _, ref_pooled, _ = pipe.encode_prompt(captions, device="cpu", do_classifier_free_guidance=False)
    torch.testing.assert_close(hidden, ref_hidden)
    torch.testing.assert_close(pooled, ref_pooled)
    proj = pipe.text_encoder_2.config.projection_dim
    ref_ids = pipe._get_add_time_ids((64, 64), (0, 0), (64, 64), torch.float32, text_encoder_projection_dim=proj)
    torch.testing.assert_close(sdxl_time_ids(64, 2, torch.device("cpu"), torch.float32), ref_ids.repeat(2, 1))


def test_empty_prompt_dropout_reaches_both_encoders(files):
    """The caption is blanked in the data transform, before tokenisation, so both encoders see ''."""
    from sdpo.data.pairs import PairTransform, load_pairs

    cfg = parse_args(_args(files, "--proportion_empty_prompts", "0.5"))
    transform, rows = PairTransform(cfg.data), load_pairs(cfg.data)
    captions = [transform(rows[i], 0, i)["caption"] for i in range(len(rows))]
    assert "" in captions and any(captions), captions  # some blanked, some kept
    comps = _components(files, reference=False)
    hidden, pooled = encode_prompt(comps, captions, torch.device("cpu"))
    empty_hidden, empty_pooled = encode_prompt(comps, [""], torch.device("cpu"))
    for i, c in enumerate(captions):
        close = lambda a, b: torch.allclose(a, b, atol=1e-5, rtol=0)  # noqa: E731 (batched vs single matmuls)
        halves = hidden[i].split(hidden.shape[-1] // 2, dim=-1), empty_hidden[0].split(hidden.shape[-1] // 2, dim=-1)
        same = all(close(a, b) for a, b in zip(*halves)) and close(pooled[i], empty_pooled[0])
        assert same == (c == ""), (i, c)


def test_weight_dtypes(files):
    """Frozen parts in the weight dtype; the trained UNet fp32 (it runs under autocast)."""
    comps = _components(files, dtype=torch.bfloat16)
    assert next(comps.unet.parameters()).dtype == torch.float32
    for m in (comps.vae, comps.ref_unet, *comps.text_encoders):
        assert next(m.parameters()).dtype == torch.bfloat16
    # fp16 without the fp16-fix VAE: SDXL's own VAE overflows in fp16, so it stays fp32.
    assert next(_components(files, dtype=torch.float16, reference=False).vae.parameters()).dtype == torch.float32
    vae = str(files["sdxl_other"])
    fixed = _components(files, "--pretrained_vae_model_name_or_path", vae, dtype=torch.float16, reference=False)
    assert next(fixed.vae.parameters()).dtype == torch.float16


@pytest.mark.parametrize("where", ["pipeline folder (has vae/)", "the vae folder itself"])
def test_separate_vae_from_a_local_folder(files, where):
    from diffusers import AutoencoderKL

    folder = files["sdxl_other"] if where.startswith("pipeline") else files["sdxl_other"] / "vae"
    comps = _components(files, "--pretrained_vae_model_name_or_path", str(folder), reference=False)
    expected = AutoencoderKL.from_pretrained(files["sdxl_other"], subfolder="vae").state_dict()
    base = AutoencoderKL.from_pretrained(files["sdxl"], subfolder="vae").state_dict()
    got = comps.vae.state_dict()
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert not all(torch.equal(got[k], base[k]) for k in base)


def test_a_folder_that_is_no_vae_fails_in_one_line(files, tmp_path):
    (tmp_path / "empty").mkdir()  # exists (a missing one is refused earlier, by validate) but holds no VAE
    with pytest.raises(UserError, match=r"could not load AutoencoderKL from .*empty") as e:
        _components(files, "--pretrained_vae_model_name_or_path", str(tmp_path / "empty"), reference=False)
    assert "\n" not in str(e.value)


def test_bf16_unet_without_autocast_runs(files):
    """DeepSpeed casts the trained UNet to bf16 itself and accelerate's autocast is then off:
    the forward pass must feed the UNet inputs in its own dtype."""
    from sdpo.data.pairs import PairTransform, collate, load_pairs
    from sdpo.training.step import preference_forward

    cfg = parse_args(_args(files, "--use_winner_preserving", "--winner_preserving_mu", "0.6"))
    comps = _components(files, dtype=torch.bfloat16)
    comps.unet.to(torch.bfloat16)
    transform, rows = PairTransform(cfg.data), load_pairs(cfg.data)
    batch = collate([transform(rows[i], 0, i) for i in (0, 1)])
    terms = preference_forward(batch, comps, cfg, get_objective("diffusion-dpo"), torch.device("cpu"))
    assert terms.model_pred.dtype == torch.bfloat16 and torch.isfinite(terms.model_w).all()


@pytest.mark.parametrize(
    "method, extra",
    [("diffusion-dpo", ["--beta_dpo", "5000"]), ("dspo", ["--beta_dpo", "5000"]), ("dmpo", ["--dmpo_alpha", "0.01"])],
)
def test_tiny_sdxl_run_with_safeguard(files, tmp_path, method, extra):
    from diffusers import UNet2DConditionModel

    from sdpo.checkpoint.weights import load_unet_weights
    from sdpo.training.loop import train

    out = tmp_path / "out"
    args = _args(files, "--train_method", method, *extra, "--use_winner_preserving", "--winner_preserving_mu", "0.6")
    args += ["--output_dir", str(out), "--max_train_steps", "1", "--train_batch_size", "2", "--lr_warmup_steps", "0"]
    args += ["--learning_rate", "1e-3", "--seed", "1"]
    _reset_accelerate()
    try:
        path = train(parse_args(args))
    finally:
        _reset_accelerate()
    assert path == out / "unet.pth"
    unet = UNet2DConditionModel.from_pretrained(files["sdxl"], subfolder="unet")
    init = {k: v.clone() for k, v in unet.state_dict().items()}
    load_unet_weights(unet, path)  # strict: raises on any missing / unexpected / wrong-shape key
    assert any(not torch.equal(v, init[k]) for k, v in unet.state_dict().items()), "weights did not change"
    (logged,) = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert 0.0 <= logged["avg_lose_l_scale"] <= 1.0  # the safeguard ran (lambda is logged only with it on)
    assert all(torch.isfinite(torch.tensor(v)) for v in logged.values())


@pytest.mark.parametrize(
    "model, flags, expected",
    [
        ("sd15", ["--sdxl"], "is an SD1.5-style folder (no text_encoder_2/) but --sdxl was given; drop --sdxl"),
        (
            "sdxl",
            ["--model_family", "sd15"],
            "is a sdxl model but --model_family sd15 was given; drop the flag or use sdxl",
        ),
    ],
)
def test_family_mismatch_is_one_line(files, model, flags, expected):
    cmd = [sys.executable, str(ROOT / "train.py"), "--pretrained_model_name_or_path", str(files[model]), *flags]
    cmd += ["--dataset_name", str(files["pairs"]), "--report_to", "none"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and expected in proc.stderr, proc.stderr
