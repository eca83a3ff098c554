"""LoRA with the other run options: the latent/text cache, in-training validation and Diffusion-KTO."""

from __future__ import annotations

import numpy as np
from conftest import flow_flags, tiny_flags
from test_cache import precompute
from test_validation import _meta, _tiles, _train

from sdpo.lora import adapters as lora
from sdpo.training.metrics import read_jsonl


def test_cached_flux_lora_run_validates_through_the_adapted_module(tiny_flux, tiny_pairs, tmp_path):
    """Step 0's validation images of a LoRA run are the base model's (B = 0), a full run's step 0 too;
    after a step the adapters act on what validation draws."""
    extra = ["--resolution", "32", "--train_batch_size", "1", "--max_train_steps", "1", "--learning_rate", "5e-2",
             "--validation_prompts", "papv2:2", "--validation_steps", "1", "--validation_num_inference_steps", "2"]  # fmt: skip
    cache = precompute(*flow_flags(tiny_flux, tiny_pairs, tmp_path / "unused", *extra), "--out", tmp_path / "cache")
    out, full = tmp_path / "lora", tmp_path / "full"
    final = _train(flow_flags(tiny_flux, tiny_pairs, out, *extra, "--precomputed", cache, "--lora_rank", "4"))
    _train(flow_flags(tiny_flux, tiny_pairs, full, *extra, "--precomputed", cache))
    assert final == out / lora.LORA_WEIGHTS and not (out / "transformer.pth").exists()
    assert [r["step"] for r in read_jsonl(out) if "train_loss" in r] == [1]
    assert _meta(out, 0)["prompts"] == _meta(full, 0)["prompts"]
    for a, b in zip(_tiles(out, 0), _tiles(full, 0)):
        assert np.array_equal(a, b)  # the LoRA run starts at the base model
    moved = max(np.abs(a.astype(int) - b.astype(int)).max() for a, b in zip(_tiles(out, 1), _tiles(out, 0)))
    assert moved > 8  # and validation sees the trained adapters


def test_kto_runs_on_adapters_with_the_base_as_its_reference(tiny_sd15, tiny_pairs, tmp_path, run_train):
    from safetensors.torch import load_file

    out = tmp_path / "kto"
    final = run_train(*tiny_flags(tiny_sd15, tiny_pairs, out, "--train_method", "kto", "--lora_rank", "4",
                                  "--max_train_steps", "2", "--learning_rate", "1e-2"))  # fmt: skip
    ups = [v for k, v in load_file(final).items() if ".lora.up." in k]
    assert ups and max(v.abs().max().item() for v in ups) > 0  # B left zero: the KTO gradient reached the adapters
    logs = [r for r in read_jsonl(out) if "train_loss" in r]
    assert len(logs) == 2 and all(np.isfinite(r["train_loss"]) for r in logs)
    # step 1: the adapters start at zero effect, so the policy is its own reference exactly
    assert logs[0]["model_mse_unaccumulated"] == logs[0]["ref_mse_unaccumulated"]
    assert logs[1]["model_mse_unaccumulated"] != logs[1]["ref_mse_unaccumulated"]
