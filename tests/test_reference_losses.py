"""Precomputed reference losses (``python -m sdpo.precompute --reference_losses`` -> ``train.py --precomputed``):
the run creates no reference denoiser and its weights are bit-identical to computing the reference in the step
(same micro-batches, fp32; resume and an epoch boundary included); a set made for other draws or weights is
refused; objectives that need more than ``L_ref`` refuse; the precompute resumes and shards over processes."""

from __future__ import annotations

import json
import os
import shutil
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
# sd15: batch 4, 6 steps over 21 pairs (5 micro-batches per epoch): the run crosses into epoch 1, and resuming
# from checkpoint-4 redoes that crossing.
SD15_EXTRA = ["--resolution", "32", "--train_batch_size", "4", "--max_train_steps", "6", "--checkpointing_steps", "4",
              "--use_winner_preserving", "--winner_preserving_mu", "0.5"]  # fmt: skip
FLUX_EXTRA = ["--max_train_steps", "3", "--checkpointing_steps", "2", "--use_winner_preserving", "--winner_preserving_mu",
              "0.5"]  # fmt: skip


def precompute(*argv) -> Path:
    """``python -m sdpo.precompute`` in-process (latents, then the reference losses when asked)."""
    from sdpo.cache.precompute import build, parse_args

    reset_accelerate()
    try:
        return build(parse_args([str(a) for a in argv]))
    finally:
        reset_accelerate()


@pytest.fixture(scope="module")
def sd15_cache(tiny_sd15, tiny_pairs, tmp_path_factory):
    """The latent cache and the reference losses of the SD1.5 runs below (made once)."""
    out = tmp_path_factory.mktemp("refcache") / "cache"
    return precompute(*tiny_flags(tiny_sd15, tiny_pairs, out.parent / "unused", *SD15_EXTRA), "--out", out,
                      "--reference_losses", "--reference_shard_size", "8")  # fmt: skip


@pytest.fixture
def denoisers_made(monkeypatch) -> list:
    """One entry per denoiser ``ModelFamily.load_denoiser`` creates (the policy, a reference copy); families that
    override it call it through ``super()``."""
    import sdpo.families.base as base

    made, real = [], base.ModelFamily.load_denoiser
    monkeypatch.setattr(base.ModelFamily, "load_denoiser", lambda fam: made.append(type(fam).name) or real(fam))
    return made


def assert_bit_identical(a: Path, b: Path, weights: str) -> None:
    la, lb = read_jsonl(a), read_jsonl(b)
    assert la == lb and la  # every logged scalar, ref_mse_unaccumulated included, to the last bit
    from safetensors.torch import load_file

    load = load_file if weights.endswith(".safetensors") else lambda p: torch.load(p, weights_only=True)
    wa, wb = (load(p / weights) for p in (a, b))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("family", ["sd15", "flux"])
def test_precomputed_reference_losses_train_bit_identically(family, tiny_sd15, tiny_flux, tiny_pairs, sd15_cache,
                                                            tmp_path, run_train, denoisers_made, caplog):  # fmt: skip
    model, make, extra, weights = {
        "sd15": (tiny_sd15, tiny_flags, SD15_EXTRA, "unet.pth"),
        "flux": (tiny_flux, flow_flags, FLUX_EXTRA, "transformer.pth"),
    }[family]
    cache = (
        sd15_cache
        if family == "sd15"
        else precompute(
            *make(model, tiny_pairs, tmp_path / "unused", *extra), "--out", tmp_path / "cache", "--reference_losses"
        )
    )
    in_step = tmp_path / "in_step"
    run_train(*make(model, tiny_pairs, in_step, *extra, "--precomputed", cache, "--no-precomputed_reference"))
    denoisers_made.clear()
    out = tmp_path / "precomputed"
    with caplog.at_level("INFO", logger="sdpo.cache.reference"):
        run_train(*make(model, tiny_pairs, out, *extra, "--precomputed", cache))
    assert denoisers_made == [family]  # the policy only: no reference denoiser was created
    assert any("the reference denoiser is not loaded" in r.getMessage() for r in caplog.records)
    assert_bit_identical(in_step, out, weights)
    assert "ref_mse_unaccumulated" in read_jsonl(out)[0]
    # Resume: lose the last checkpoint and the final weights, redo the tail from the one before.
    last = max(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    shutil.rmtree(out / f"checkpoint-{last}")
    (out / weights).unlink()
    run_train(*make(model, tiny_pairs, out, *extra, "--precomputed", cache))
    assert_bit_identical(in_step, out, weights)


def test_lora_run_with_precomputed_reference_is_bit_identical(tiny_sd15, tiny_pairs, sd15_cache, tmp_path, run_train):
    """LoRA's reference is the base with its adapters off: the losses precomputed from the base stand in for it."""
    extra = [*SD15_EXTRA, "--max_train_steps", "3", "--lora_rank", "4", "--precomputed", sd15_cache]
    run_train(*tiny_flags(tiny_sd15, tiny_pairs, tmp_path / "a", *extra, "--no-precomputed_reference"))
    run_train(*tiny_flags(tiny_sd15, tiny_pairs, tmp_path / "b", *extra))
    assert_bit_identical(tmp_path / "a", tmp_path / "b", "pytorch_lora_weights.safetensors")


def _cli(main, argv, monkeypatch, capsys) -> str:
    monkeypatch.setattr(sys, "argv", ["prog", *map(str, argv)])
    reset_accelerate()
    with pytest.raises(SystemExit) as exc:
        main()
    reset_accelerate()
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err, err[-2000:]
    (line,) = err.strip().splitlines()[-1:]
    assert line.startswith("error: ") and sum(ln.startswith("error") for ln in err.splitlines()) == 1
    return line


def test_reference_losses_made_for_something_else_are_refused(tiny_sd15, tiny_pairs, sd15_cache, tmp_path,
                                                              monkeypatch, capsys):  # fmt: skip
    import train
    from sdpo.cache.precompute import main as precompute_main
    from sdpo.tiny import build_tiny_model

    other = build_tiny_model("sd15", tmp_path / "other", seed=1)
    flags = tiny_flags(tiny_sd15, tiny_pairs, tmp_path / "o", *SD15_EXTRA)
    cases = [
        (["--seed", "1"], "made for draws.seed 0 but this run has 1"),
        (["--proportion_empty_prompts", "0.5"], "made for draws.proportion_empty_prompts 0.2 but this run has 0.5"),
        (["--noise_offset", "0.1"], "made for draws.noise_offset 0.0 but this run has 0.1"),
        (["--unet_init", other / "unet"], "made for reference.unet_init None"),
        (["--max_train_steps", "15"], "reads positions up to 20 of epoch 1, its reference losses cover 1 whole epoch(s)"
                                      " and 4 positions of epoch 1; extend them"),
        (["--train_method", "dspo", "--precomputed_reference"], "--train_method dspo uses the reference's prediction"),
        (["--train_method", "mapo", "--precomputed_reference"], "--train_method mapo uses no reference model"),
    ]  # fmt: skip
    for extra, expected in cases:
        line = _cli(train.main, [*flags, "--precomputed", sd15_cache, *extra], monkeypatch, capsys)
        assert expected in line, line
        assert "--no-precomputed_reference" in line or "--precomputed_reference:" in line
    line = _cli(train.main, [*flags, "--precomputed_reference"], monkeypatch, capsys)
    assert "--precomputed_reference only acts with --precomputed" in line
    assert not (tmp_path / "o").exists()  # nothing was written
    for method, expected in [("dspo", "uses the reference's prediction itself (pred_w - ref_pred_w)"),
                             ("mapo", "uses no reference model"), ("sft", "uses no reference model"),
                             ("kto", "trains on single labelled images")]:  # fmt: skip
        plain = tiny_flags(tiny_sd15, tiny_pairs, tmp_path / "o", "--resolution", "32")  # kto: no safeguard flags
        line = _cli(precompute_main, [*plain, "--train_method", method, "--out", tmp_path / "c", "--reference_losses"],
                    monkeypatch, capsys)  # fmt: skip
        assert f"--reference_losses: --train_method {method} {expected}" in line, line
    line = _cli(precompute_main, [*flags, "--out", tmp_path / "c", "--epochs", "2"], monkeypatch, capsys)
    assert "--epochs only act with --reference_losses" in line and not (tmp_path / "c").exists()


def test_a_longer_run_extends_the_set_and_a_dspo_run_keeps_its_reference(tiny_sd15, tiny_pairs, sd15_cache, tmp_path,
                                                                         run_train, denoisers_made):  # fmt: skip
    from sdpo.cache import reference as ref

    cache = tmp_path / "cache"
    shutil.copytree(sd15_cache, cache)
    (folder,) = ref.reference_sets(cache)
    kept = {p.name: p.stat().st_ino for p in (folder / "epoch-00000").iterdir()}
    precompute(*tiny_flags(tiny_sd15, tiny_pairs, tmp_path / "u", *SD15_EXTRA, "--max_train_steps", "15"), "--out",
               cache, "--reference_losses", "--reference_shard_size", "8")  # fmt: skip
    assert ref.reference_sets(cache) == [folder]  # the same draws: the same set, extended
    index = json.loads((folder / "index.json").read_text())
    assert index["coverage"] == [21, 21, 20]  # 60 positions: 20 per epoch, the first two epochs whole (tail too)
    assert {p.name: p.stat().st_ino for p in (folder / "epoch-00000").iterdir()} == kept  # finished files kept
    denoisers_made.clear()  # dspo reads the reference's prediction: it loads its reference though the cache has losses
    run_train(*tiny_flags(tiny_sd15, tiny_pairs, tmp_path / "dspo", *SD15_EXTRA, "--max_train_steps", "1",
                          "--train_method", "dspo", "--beta_dpo", "0.001", "--precomputed", cache))  # fmt: skip
    assert denoisers_made == ["sd15", "sd15"] and (tmp_path / "dspo" / "unet.pth").is_file()


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "RANK", "WORLD_SIZE", "LOCAL_"))}
    return {**env, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def test_interrupted_reference_precompute_resumes_to_the_files_of_a_two_process_run(tiny_sd15, tiny_pairs, sd15_cache,
                                                                                    tmp_path):  # fmt: skip
    """Two processes share the files out; a run cut short (a file missing, a temporary one left, no index: what a
    kill leaves, as tests/test_cache.py shows with a real SIGKILL through the same crash point) is finished by a
    rerun that keeps the finished files and ends with the two-process run's bytes."""

    def files(root: Path) -> dict[str, bytes]:
        return {
            str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "reference").rglob("*")) if p.is_file()
        }

    run_flags = [str(a) for a in tiny_flags(tiny_sd15, tiny_pairs, tmp_path / "u", *SD15_EXTRA)]
    flags = [*run_flags, "--reference_losses", "--epochs", "2", "--reference_shard_size", "6"]
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    for c in (whole, resumed):  # the latent cache only: the reference losses are made below
        shutil.copytree(sd15_cache, c, ignore=shutil.ignore_patterns("reference"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    two = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--nnodes", "1", "--master_addr",
           "127.0.0.1", "--master_port", str(port), "-m", "sdpo.precompute", *flags, "--out", str(whole)]  # fmt: skip
    proc = subprocess.run(two, env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "dealt over 2 process(es)" in proc.stderr, proc.stderr[-3000:]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocesses: the thread count may change rounding
    try:
        precompute(*flags, "--out", resumed)
        (folder,) = (resumed / "reference").iterdir()
        (folder / "index.json").unlink()
        (folder / "epoch-00001" / "losses-00001.safetensors").unlink()
        (folder / "epoch-00001" / ".losses-00001.safetensors.tmp-999").write_bytes(b"half")
        first = (folder / "epoch-00000" / "losses-00000.safetensors").stat().st_ino
        with pytest.raises(UserError, match="reference losses for this run are unfinished"):
            run_cli_setup(run_flags, resumed)
        precompute(*flags, "--out", resumed)
    finally:
        torch.set_num_threads(threads)
    assert (folder / "epoch-00000" / "losses-00000.safetensors").stat().st_ino == first  # finished files kept
    assert files(resumed) == files(whole)  # the rest recomputed to the same bytes; no temporary file left
    index = json.loads((folder / "index.json").read_text())
    assert index["coverage"] == [21, 21] and len(index["files"]) == 6  # files of 8 pairs (6 rounded up to batches)


def run_cli_setup(flags: list[str], cache: Path) -> None:
    """Training's start-up with these flags on ``cache`` (up to its refusal)."""
    from sdpo.config import parse_args
    from sdpo.training.setup import setup

    reset_accelerate()
    try:
        setup(parse_args([*flags, "--precomputed", str(cache)]))
    finally:
        reset_accelerate()


def test_positions_needed_follow_the_sampler():
    """What the set must cover is what ``ShardedPairSampler`` hands out, counted by running it."""
    from sdpo.cache.reference import positions_needed
    from sdpo.data.pairs import ShardedPairSampler, epoch_order

    for n, b, w, micro, epoch, start in [(21, 2, 1, 12, 0, 0), (21, 2, 2, 13, 0, 0), (10, 3, 1, 7, 1, 3),
                                         (8, 4, 2, 1, 0, 0)]:  # fmt: skip
        seen: dict[int, int] = {}
        left, e, s = micro, epoch, start
        while left:
            for rank in range(w):  # every process's batches of this epoch, in order
                sampler = ShardedPairSampler(n, b, rank, w, seed=0)
                sampler.set_epoch(e, start_sample=s)
                for k, keys in enumerate(sampler):
                    if k >= left:
                        break
                    order = epoch_order(n, 0, e)
                    seen[e] = max(seen.get(e, 0), max(order.index(i) for _, i in keys) + 1)
            left -= min(left, len(sampler))
            e, s = e + 1, 0
        assert positions_needed(n, b, w, micro, epoch, start) == seen, (n, b, w, micro)


def test_objectives_that_use_only_losses_never_read_the_reference_prediction():
    """``reference_use``: every objective declared ``losses`` computes its loss with ``ref_pred`` absent, and its
    value depends on the reference only through ``ref_w``/``ref_l``; dspo, declared ``prediction``, needs it."""
    from sdpo.losses import LOSSES, PreferenceTerms, reference_use

    g = torch.Generator().manual_seed(0)
    pred, target, latents, noisy = (torch.randn(4, 4, 8, 8, generator=g) for _ in range(4))
    losses = ((pred - target) ** 2).mean(dim=(1, 2, 3))
    schedule = torch.linspace(0.999, 0.01, 1000)
    uses = {name: reference_use(obj) for name, obj in LOSSES.items()}
    assert uses == {"diffusion-dpo": "losses", "dspo": "prediction", "dmpo": "losses", "sft": "none", "mapo": "none",
                    "dpop": "losses", "dpo-cm": "losses", "sipo": "losses", "kto": "losses"}  # fmt: skip
    for name, obj in LOSSES.items():
        if uses[name] != "losses":
            continue
        pairs = obj.USES_LOSER
        ref = losses * 1.1
        terms = PreferenceTerms(model_pred=pred if pairs else pred[:2], target=target if pairs else target[:2],
                                timesteps=torch.tensor([10, 500] * (2 if pairs else 1)),
                                model_w=losses[:2], model_l=losses[2:] if pairs else None, ref_w=ref[:2],
                                ref_l=ref[2:] if pairs else None, latents=latents, noisy_latents=noisy,
                                alphas_cumprod=schedule, num_train_timesteps=1000,
                                sample_seeds=torch.tensor([1, 2]), labels=None if pairs else torch.tensor([1, 0]))  # fmt: skip
        value = obj.loss(terms, obj.Params()).loss
        assert torch.isfinite(value), name
    with pytest.raises((TypeError, AttributeError)):  # dspo: ref_pred is required
        LOSSES["dspo"].loss(PreferenceTerms(model_pred=pred, target=target, timesteps=torch.zeros(4), model_w=losses[:2],
                                            model_l=losses[2:], ref_w=losses[:2], ref_l=losses[2:]),
                            LOSSES["dspo"].Params())  # fmt: skip
