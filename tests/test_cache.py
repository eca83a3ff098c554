"""Precomputed latents and text (``sdpo.cache.precompute`` -> ``train.py --precomputed``): the cached run is
the uncached computation, the cache survives a crash, and a cache made for something else is refused.

Exactness needs the encoders to see the same batches in both runs: CPU kernels round a row slightly
differently by batch size and position (about 3e-7 on the tiny CLIP), so these runs train with batch 1
and precompute with ``--encode_batch_size 1``; then the runs agree bit for bit.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import flow_flags, reset_accelerate, tiny_flags

from sdpo.errors import UserError
from sdpo.training.metrics import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
SHARDS = ["--shard_size", "8", "--text_shard_size", "4", "--encode_batch_size", "1"]


def precompute(*argv):
    from sdpo.cache.precompute import parse_args, precompute

    reset_accelerate()
    try:
        return precompute(parse_args([str(a) for a in argv]))
    finally:
        reset_accelerate()


def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def assert_same_run(a: Path, b: Path, weights: str) -> None:
    la, lb = read_jsonl(a), read_jsonl(b)
    assert [r["step"] for r in la] == [r["step"] for r in lb] and la
    for ra, rb in zip(la, lb):
        for k, v in ra.items():
            assert rb[k] == pytest.approx(v, rel=1e-6, abs=1e-12), (k, ra, rb)
    wa, wb = (torch.load(p / weights, weights_only=True) for p in (a, b))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert (wa[k] - wb[k]).abs().max() <= 1e-6 * wa[k].abs().max(), k


@pytest.mark.parametrize("family", ["sd15", "flux"])
def test_fp32_cache_trains_exactly_like_no_cache(family, tiny_sd15, tiny_flux, tiny_pairs, tmp_path, run_train):
    model, make, weights = {
        "sd15": (tiny_sd15, tiny_flags, "unet.pth"),
        "flux": (tiny_flux, flow_flags, "transformer.pth"),
    }[family]
    extra = ["--resolution", "32", "--train_batch_size", "1", "--max_train_steps", "3", "--checkpointing_steps", "2",
             "--use_winner_preserving", "--winner_preserving_mu", "0.5"]  # fmt: skip
    cache = precompute(*make(model, tiny_pairs, tmp_path / "unused", *extra), "--out", tmp_path / "cache", *SHARDS)
    run_train(*make(model, tiny_pairs, tmp_path / "plain", *extra))
    import sdpo.families.base as base

    loaded = []
    real_load_encoders = base.ModelFamily.load_encoders
    base.ModelFamily.load_encoders = lambda self: loaded.append(1) or real_load_encoders(self)
    try:
        out = tmp_path / "cached"
        run_train(*make(model, tiny_pairs, out, *extra, "--precomputed", cache))
    finally:
        base.ModelFamily.load_encoders = real_load_encoders
    assert loaded == []  # neither the VAE nor a text encoder was loaded
    assert_same_run(tmp_path / "plain", out, weights)
    if family == "sd15":  # resuming a cached run is bit-identical too: lose step 3, redo it from checkpoint-2
        finished = torch.load(out / weights, weights_only=True)
        shutil.rmtree(out / "checkpoint-3")
        (out / weights).unlink()
        run_train(*make(model, tiny_pairs, out, *extra, "--precomputed", cache))
        resumed = torch.load(out / weights, weights_only=True)
        assert all(torch.equal(finished[k], resumed[k]) for k in finished)
        assert [r["step"] for r in read_jsonl(out)] == [1, 2, 3]


@pytest.mark.parametrize("family", ["sd15", "sdxl", "sd3"])
def test_cached_samples_are_the_encoded_uncached_samples(family, tiny_sd15, tiny_sdxl, tiny_sd3, tiny_pairs,
                                                         tmp_path):  # fmt: skip
    """Every (epoch, index): the cached variant is the VAE posterior of the pixels the uncached path
    draws (flips: independent for sd15, joint for the others), the text that of its caption or ''."""
    from sdpo.cache import store as cache
    from sdpo.config import parse_args
    from sdpo.data import pairs as data
    from sdpo.families import get_family

    model = {"sd15": tiny_sd15, "sdxl": tiny_sdxl, "sd3": tiny_sd3}[family]
    flags = ["--pretrained_model_name_or_path", model, "--dataset_name", tiny_pairs, "--resolution", "32",
             "--max_train_samples", "8", "--proportion_empty_prompts", "0.3"]  # fmt: skip
    out = precompute(*flags, "--out", tmp_path / "cache", "--shard_size", "3", "--cache_dtype", "bf16")
    cfg = parse_args([str(a) for a in flags])
    fam = get_family(cfg.model.model_family).load(cfg.model, torch.device("cpu"), torch.float32, needs_reference=False)
    transform = data.PairTransform(cfg.data)
    plain = data.PairDataset(data.clean_pairs(data.load_pairs(cfg.data), cfg.data), transform)
    cached = cache.CachedPairs(cache.open_cache(parse_args([str(a) for a in flags] + ["--precomputed", str(out)]),
                                                "no"), transform)  # fmt: skip
    assert len(cached) == len(plain) == 8
    seen = set()
    for key in [(e, i) for e in range(2) for i in range(8)]:
        a, b = plain[key], cached[key]
        mean, std = fam.encode_posterior(a["pixel_values"])
        assert b["latent_mean"].dtype == torch.bfloat16  # bf16: the fp32 posterior, rounded (relative 2^-8)
        torch.testing.assert_close(b["latent_mean"].float(), mean, rtol=2**-8, atol=1e-5)
        torch.testing.assert_close(b["latent_std"].float(), std, rtol=2**-8, atol=1e-7)
        text = fam.encode_prompt([a["caption"]])
        assert b["text"].keys() == text.keys()
        for k in text:
            torch.testing.assert_close(b["text"][k].float(), text[k][0], rtol=2**-8, atol=1e-5)
        seen.add((data.flip_draws(a["sample_seed"], True, transform.joint), a["caption"] == ""))
    flips = {f for f, _ in seen}
    assert {(False, False), (True, True)} <= flips  # both variants were read
    assert any(w != lo for w, lo in flips) == (family == "sd15")  # sd15 flips winner and loser independently
    assert {d for _, d in seen} == {False, True}  # both kept and dropped captions were checked


def _env() -> dict[str, str]:
    """One thread per process everywhere in this test: thread count may change float rounding."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "RANK", "WORLD_SIZE", "LOCAL_"))}
    return {**env, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def test_killed_precompute_resumes_to_the_files_of_an_uninterrupted_two_process_run(tiny_sd15, tiny_pairs, tmp_path,
                                                                                     run_train):  # fmt: skip
    flags = ["--pretrained_model_name_or_path", tiny_sd15, "--dataset_name", tiny_pairs, "--resolution", "32", *SHARDS]
    flags = [str(a) for a in flags]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    two = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--nnodes", "1", "--master_addr",
           "127.0.0.1", "--master_port", str(port), "-m", "sdpo.cache.precompute", *flags, "--out", str(whole)]  # fmt: skip
    proc = subprocess.run(two, env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "dealt over 2 process(es)" in proc.stderr, proc.stderr[-3000:]
    crash = {**_env(), "SDPO_CRASH_AT": "precompute:latents/latents-00001.safetensors"}
    proc = subprocess.run([sys.executable, "-m", "sdpo.cache.precompute", *flags, "--out", str(killed)], env=crash,
                          cwd=ROOT, capture_output=True, timeout=300)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "index.json").exists() and (killed / "latents" / "latents-00000.safetensors").is_file()
    assert list(killed.glob("latents/.latents-00001.safetensors.tmp-*"))  # the shard it died writing
    with pytest.raises(UserError, match="not a finished cache .*rerun python -m sdpo.precompute"):
        run_train(*tiny_flags(tiny_sd15, tiny_pairs, tmp_path / "o", "--resolution", "32", "--precomputed", killed))
    first = (killed / "latents" / "latents-00000.safetensors").stat().st_ino
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        precompute(*flags, "--out", killed)
    finally:
        torch.set_num_threads(threads)
    assert (killed / "latents" / "latents-00000.safetensors").stat().st_ino == first  # finished shards are kept
    assert files_of(killed) == files_of(whole)  # the rest recomputed to the same bytes; no temporary file left
    index = json.loads((whole / "index.json").read_text())
    assert (
        index["layout"]["pairs"] == 21
        and [f["path"] for f in index["files"]][-1] == "latents/latents-00002.safetensors"
    )


def _cli(main, argv, monkeypatch, capsys) -> str:
    monkeypatch.setattr(sys, "argv", ["prog", *map(str, argv)])
    reset_accelerate()
    with pytest.raises(SystemExit) as exc:
        main()
    reset_accelerate()
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err
    (line,) = err.strip().splitlines()[-1:]
    assert line.startswith("error: ") and sum(ln.startswith("error") for ln in err.splitlines()) == 1
    return line


def test_a_cache_made_for_something_else_is_refused(tiny_sd15, tiny_pairs, tmp_path, monkeypatch, capsys):
    import train
    from sdpo.cache.precompute import main as precompute_main
    from sdpo.tiny import build_tiny_model

    cache = precompute("--pretrained_model_name_or_path", tiny_sd15, "--dataset_name", tiny_pairs, "--resolution",
                       "32", "--out", tmp_path / "cache", "--no_hflip")  # fmt: skip
    other = build_tiny_model("sd15", tmp_path / "other", seed=1)  # same architecture, other weights
    base = ["--dataset_name", tiny_pairs, "--output_dir", tmp_path / "o", "--report_to", "none", "--precomputed", cache]
    cases = [
        (["--pretrained_model_name_or_path", tiny_sd15, "--resolution", "64", "--no_hflip"], "made for resolution 32"),
        (["--pretrained_model_name_or_path", other, "--resolution", "32", "--no_hflip"], "made for vae"),
        (["--pretrained_model_name_or_path", tiny_sd15, "--resolution", "32"], "made with --no_hflip"),
        (["--pretrained_model_name_or_path", tiny_sd15, "--resolution", "32", "--no_hflip", "--max_train_samples", "4"],
         "made for data.max_train_samples None"),
        (["--pretrained_model_name_or_path", tiny_sd15, "--resolution", "32", "--random_crop"],
         "--random_crop cannot be combined with --precomputed"),
    ]  # fmt: skip
    for flags, expected in cases:
        line = _cli(train.main, [*flags, *base], monkeypatch, capsys)
        assert expected in line, line
    assert not (tmp_path / "o" / "unet.pth").exists()
    line = _cli(precompute_main, ["--pretrained_model_name_or_path", tiny_sd15, "--dataset_name", tiny_pairs,
                                  "--random_crop", "--out", tmp_path / "rc"], monkeypatch, capsys)  # fmt: skip
    assert "--random_crop cannot be cached" in line and not (tmp_path / "rc").exists()
    line = _cli(precompute_main, ["--pretrained_model_name_or_path", tiny_sd15, "--dataset_name", tiny_pairs,
                                  "--resolution", "64", "--out", cache], monkeypatch, capsys)  # fmt: skip
    assert "holds a cache begun for identity.resolution 32" in line
    before = {p: p.stat().st_ino for p in cache.rglob("*") if p.is_file()}
    precompute("--pretrained_model_name_or_path", tiny_sd15, "--dataset_name", tiny_pairs, "--resolution", "32",
               "--out", cache, "--no_hflip")  # fmt: skip
    assert {p: p.stat().st_ino for p in cache.rglob("*") if p.is_file()} == before  # finished: nothing redone


def test_bad_rows_are_dropped_with_the_counts_training_logs(tmp_path, caplog):
    from test_reliability import broken_rows

    from sdpo.config import parse_args
    from sdpo.data import pairs as data
    from sdpo.tiny import build_tiny_model, write_pairs

    write_pairs(broken_rows(), tmp_path / "pairs")
    model = build_tiny_model("sd15", tmp_path / "m")
    flags = ["--pretrained_model_name_or_path", model, "--dataset_name", tmp_path / "pairs", "--resolution", "32",
             "--max_bad_fraction", "0.5"]  # fmt: skip
    cfg = parse_args([str(a) for a in flags])
    with caplog.at_level("WARNING", logger="sdpo.data.checks"):
        kept = data.clean_pairs(data.load_pairs(cfg.data), cfg.data)  # what training runs
    training_lines = [r.getMessage() for r in caplog.records if "broken rows" in r.getMessage()]
    caplog.clear()
    with caplog.at_level("WARNING", logger="sdpo.data.checks"):
        out = precompute(*flags, "--out", tmp_path / "cache", "--no_hflip")
    assert [r.getMessage() for r in caplog.records if "broken rows" in r.getMessage()] == training_lines
    assert "skipped 5/20 broken rows" in training_lines[0]
    from safetensors import safe_open
    from safetensors.torch import load_file

    index = json.loads((out / "index.json").read_text())
    shards = [load_file(out / f["path"]) for f in index["files"] if f["path"].startswith("latents/")]
    with safe_open(str(out / "text" / "text-00000.safetensors"), "pt") as f:
        captions = json.loads(f.metadata()["sdpo"])["captions"]
    cached = [captions[i] for s in shards for i in s["caption_id"].tolist()]
    assert index["layout"]["pairs"] == len(kept) == 15 and cached == list(kept["caption"])


def test_bf16_encoders_are_cached_losslessly_in_bf16_by_default(tiny_sd15, tiny_pairs, tmp_path, run_train):
    """--mixed_precision bf16 (the paper's runs): the encoders' outputs are bf16 values, so the default
    (auto) bf16 cache holds exactly what an fp32 cache would, at half the size."""
    from safetensors.torch import load_file

    flags = ["--pretrained_model_name_or_path", tiny_sd15, "--dataset_name", tiny_pairs, "--resolution", "32",
             "--max_train_samples", "6", "--mixed_precision", "bf16"]  # fmt: skip
    wide = precompute(*flags, "--out", tmp_path / "fp32", "--cache_dtype", "fp32")
    auto = precompute(*flags, "--out", tmp_path / "auto")
    assert json.loads((auto / "index.json").read_text())["layout"]["dtype"] == "bf16"
    names = sorted(str(p.relative_to(auto)) for p in auto.rglob("*.safetensors"))
    assert names == sorted(str(p.relative_to(wide)) for p in wide.rglob("*.safetensors")) and len(names) == 3
    for name in names:
        a, b = load_file(wide / name), load_file(auto / name)
        for k, v in a.items():
            if v.is_floating_point():
                assert v.dtype == torch.float32 and b[k].dtype == torch.bfloat16
                assert torch.equal(b[k].float(), v), (name, k)  # nothing was rounded away
            else:
                assert torch.equal(b[k], v)
    out = tmp_path / "run"  # and a bf16 run trains from it
    run_train(*tiny_flags(tiny_sd15, tiny_pairs, out, *flags[4:], "--max_train_steps", "1", "--precomputed", auto))
    (logged,) = read_jsonl(out)
    assert torch.isfinite(torch.tensor(logged["train_loss"])) and (out / "unet.pth").is_file()
