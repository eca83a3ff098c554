"""Sharded training on CPU (FSDP2 / HSDP over gloo) against one process; crash, elastic resume, export.

Tiny FLUX (the family the sharding is for), 32 px, Diffusion-DPO without the safeguard (its lambda is
per micro-batch, so 2 x batch 1 and 1 x batch 2 differ by design: see test_distributed.py), AdamW
with epsilon 1 so the first steps compare gradients, not signs.  Multi-process runs are few: each
torchrun start costs seconds on two cores.
"""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import reset_accelerate
from dist_helpers import COMMON, ROOT, env, load, max_diff, read_trace, step_indices, torchrun

from sdpo.errors import UserError
from sdpo.training.metrics import read_jsonl


def _rel(a: dict, b: dict) -> float:
    """Largest weight difference relative to the largest weight."""
    return max_diff(a, b) / max(v.abs().max().item() for v in a.values())


def _initial(model: Path) -> dict:
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel.from_pretrained(model, subfolder="transformer").state_dict()


def _train_in_process(args: list, trace: Path) -> None:
    from sdpo.config import parse_args
    from sdpo.training.loop import train

    reset_accelerate()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SDPO_RANK_TRACE_DIR", str(trace))
        try:
            train(parse_args([str(a) for a in args]))
        finally:
            reset_accelerate()


def _run(cmd: list, trace: Path | None = None, ok: bool = True, **extra) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=env(trace, **extra), cwd=ROOT, capture_output=True, text=True, timeout=600)
    if ok:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def runs(tiny_flux, tiny_pairs, tmp_path_factory):
    """One process x batch 2 (DDP code path) and 2 processes x batch 1 under FSDP, 2 steps each; both evaluate 3
    held-out pairs at every step (one pair per forward)."""
    from sdpo.tiny import build_tiny_pairs

    root = tmp_path_factory.mktemp("sharding")
    held = build_tiny_pairs(root / "heldout", n=3, size=32, seed=9)
    base = ["--pretrained_model_name_or_path", tiny_flux, "--dataset_name", tiny_pairs, "--resolution", "32",
            "--beta_dpo", "500", "--max_train_steps", "2", "--checkpointing_steps", "1", *COMMON,
            "--heldout_pairs", held, "--heldout_batch_size", "1"]  # fmt: skip
    _train_in_process([*base, "--train_batch_size", "2", "--no-gradient_checkpointing", "--output_dir",
                       root / "single"], root / "single_trace")  # fmt: skip
    fsdp = [*base, "--train_batch_size", "1", "--sharding", "fsdp", "--gradient_checkpointing"]
    _run(torchrun(2, *fsdp, "--output_dir", root / "fsdp"), root / "fsdp_trace")
    return root, base, fsdp


def test_fsdp_two_processes_match_one_process(runs, tiny_flux):
    root, _, _ = runs
    single, fsdp = load(root / "single" / "transformer.pth"), load(root / "fsdp" / "transformer.pth")
    moved = max_diff(single, _initial(tiny_flux))
    assert moved > 1e-3, "the steps did not move the weights: the comparison would be vacuous"
    assert _rel(single, fsdp) < 1e-6, f"FSDP 2 x 1 differs from 1 x 2 by {max_diff(single, fsdp)} (moved {moved})"
    trace, ref = read_trace(root / "fsdp_trace"), read_trace(root / "single_trace")
    for step in (1, 2):  # the same global batches, split over the ranks
        assert step_indices(trace, step) == step_indices(ref, step)
    shards = [load(root / "fsdp_trace" / f"rank{r}_unet.pth") for r in (0, 1)]
    key = "transformer_blocks.0.attn.to_q.weight"
    assert shards[0][key].shape[0] + shards[1][key].shape[0] == single[key].shape[0]  # each rank holds half
    ckpt = root / "fsdp" / "checkpoint-1"
    assert sorted(p.name for p in (ckpt / "model").iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert not (ckpt / "transformer.pth").exists()  # no process gathers the model to checkpoint it


def test_fsdp_heldout_evaluation_matches_one_process(runs):
    """The held-out pairs dealt over the two FSDP processes (each forward a collective: padded to the same count)
    give the numbers one process gives (sdpo/training/heldout.py)."""
    root, _, _ = runs
    rows = {name: [r for r in read_jsonl(root / name) if "heldout/win_diff" in r] for name in ("single", "fsdp")}
    assert [r["step"] for r in rows["fsdp"]] == [r["step"] for r in rows["single"]] == [0, 1, 2]
    for a, b in zip(rows["single"], rows["fsdp"]):  # the weights agree to 1e-6 (relative): so do the losses
        assert b == pytest.approx(a, rel=1e-6, abs=1e-6)
    assert rows["fsdp"][0]["heldout/win_diff"] == 0.0 and rows["fsdp"][2]["heldout/win_diff"] != 0.0


def test_export_loads_strictly_into_the_family_class(runs):
    from diffusers import FluxTransformer2DModel

    from sdpo.checkpoint.sharded import checkpoint_weights, write_export
    from sdpo.checkpoint.weights import load_denoiser_weights, load_unet_state_dict

    root, _, _ = runs
    out = root / "fsdp"
    exported = load(out / "transformer.pth")
    model = FluxTransformer2DModel.from_pretrained(out / "transformer")
    assert max_diff(model.state_dict(), exported) == 0.0
    load_denoiser_weights(model, out / "transformer.pth")  # strict: every key, every shape
    assert max_diff(checkpoint_weights(out / "checkpoint-2"), exported) == 0.0  # the offline converter agrees
    with pytest.raises(UserError, match="a sharded checkpoint .* python -m sdpo.sharded_checkpoint"):
        load_unet_state_dict(out / "checkpoint-2")  # what eval/generate.py says when given one
    # A 12B export is several safetensors files with an index: force that at tiny size, read it back.
    write_export(exported, FluxTransformer2DModel, model.config, root, "split", max_shard_size="20KB")
    assert (root / "split" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    assert len(list((root / "split").glob("*.safetensors"))) > 1
    assert max_diff(load_unet_state_dict(root / "split"), exported) == 0.0
    with pytest.raises(RuntimeError, match="Missing key"):  # an export that does not fit is never written
        write_export({k: v for k, v in exported.items() if "proj_out" not in k}, FluxTransformer2DModel,
                     model.config, root, "broken")  # fmt: skip
    assert not (root / "broken.pth").exists()


def test_hsdp_2x2_matches_one_process(tiny_flux, tiny_pairs, tmp_path):
    base = ["--pretrained_model_name_or_path", tiny_flux, "--dataset_name", tiny_pairs, "--resolution", "32",
            "--beta_dpo", "500", "--max_train_steps", "1", "--no-gradient_checkpointing", *COMMON]  # fmt: skip
    _train_in_process([*base, "--train_batch_size", "4", "--output_dir", tmp_path / "single"], tmp_path / "t1")
    hsdp = [*base, "--train_batch_size", "1", "--sharding", "hsdp", "--dp_replicate", "2"]
    proc = _run(torchrun(4, *hsdp, "--output_dir", tmp_path / "hsdp"), tmp_path / "t4")
    assert "mesh of replicate 2 x shard 2" in proc.stderr
    single, hsdp_w = load(tmp_path / "single" / "transformer.pth"), load(tmp_path / "hsdp" / "transformer.pth")
    assert max_diff(single, _initial(tiny_flux)) > 1e-3
    assert _rel(single, hsdp_w) < 1e-6
    shards = [load(tmp_path / "t4" / f"rank{r}_unet.pth") for r in range(4)]
    key = "transformer_blocks.0.attn.to_q.weight"
    assert torch.equal(shards[0][key], shards[2][key]) and torch.equal(shards[1][key], shards[3][key])  # replicas
    assert not torch.equal(shards[0][key], shards[1][key])  # ... of different shards


def test_sigkill_in_a_sharded_checkpoint_then_resume_is_bit_exact(runs):
    root, _, fsdp = runs
    out = root / "killed"
    cmd = torchrun(2, *fsdp, "--output_dir", out)
    proc = _run(cmd, ok=False, SDPO_CRASH_AT="checkpoint-2")  # rank 0 dies mid-checkpoint; torchrun stops rank 1
    assert proc.returncode != 0
    assert (out / "checkpoint-2.partial" / "model" / ".metadata").is_file() and not (out / "checkpoint-2").exists()
    _run(cmd)  # resumes from checkpoint-1 on the same two processes
    a, b = load(root / "fsdp" / "transformer.pth"), load(out / "transformer.pth")
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed sharded run differs from the uninterrupted one"
    assert [r["step"] for r in read_jsonl(out) if "train_loss" in r] == [1, 2] and not list(out.glob("*.partial"))
    assert [r["step"] for r in read_jsonl(out) if "heldout/win_diff" in r] == [0, 1, 2]  # step 1's kept, 2 redone


def test_a_damaged_shard_is_named_and_the_checkpoint_before_it_taken(runs, tmp_path):
    """The manifest of a sharded checkpoint covers every process's DCP file (each process hashed its share)."""
    from sdpo.checkpoint import manifest
    from sdpo.checkpoint.store import resume_point

    root, _, _ = runs
    for step in (1, 2):
        shutil.copytree(root / "fsdp" / f"checkpoint-{step}", tmp_path / f"checkpoint-{step}")
    names = sorted(manifest.read(tmp_path / "checkpoint-2"))
    assert {"model/__0_0.distcp", "model/__1_0.distcp", "optimizer/__1_0.distcp", "model/.metadata"} <= set(names)
    shard = tmp_path / "checkpoint-2" / "model" / "__1_0.distcp"
    size = shard.stat().st_size
    os.truncate(shard, size - 1)
    found, notes = resume_point(tmp_path, "latest")
    assert found == tmp_path / "checkpoint-1"
    assert notes == [f"{tmp_path / 'checkpoint-2'} is damaged, skipped: model/__1_0.distcp: {size - 1} bytes, the "
                     f"manifest records {size} (truncated or replaced)",
                     "resuming from checkpoint-1, the newest checkpoint that verifies"]  # fmt: skip


def test_resume_two_processes_on_one_keeps_position_and_global_batch(runs):
    root, _, fsdp = runs
    out = root / "two_to_one"
    out.mkdir()
    shutil.copytree(root / "fsdp" / "checkpoint-1", out / "checkpoint-1")
    proc = _run([sys.executable, ROOT / "train.py", *fsdp, "--output_dir", out], root / "t21")
    (line,) = [ln for ln in proc.stderr.splitlines() if "elastic resume" in ln]
    assert "it was 2 processes x batch 1 x accumulation 1, now 1 process x 1 x 2" in line
    assert "same global batch 2, continuing epoch 0 at sample 2" in line
    first, resumed = read_trace(root / "fsdp_trace"), read_trace(root / "t21")
    assert [r["step"] for r in resumed] == [2, 2]  # one process, two micro-batches for step 2
    assert step_indices(resumed, 2) == step_indices(first, 2)  # the same samples, in the same order
    seen = step_indices(first, 1) + step_indices(resumed, 2)
    assert len(seen) == len(set(seen)) == 4  # nothing skipped or repeated
    assert _rel(load(root / "fsdp" / "transformer.pth"), load(out / "transformer.pth")) < 1e-6


def test_resume_one_process_on_two_keeps_position_and_global_batch(runs):
    root, base, _ = runs
    out = root / "one_to_two"
    out.mkdir()
    shutil.copytree(root / "single" / "checkpoint-1", out / "checkpoint-1")  # DDP format: elastic too
    proc = _run(torchrun(2, *base, "--train_batch_size", "1", "--no-gradient_checkpointing", "--output_dir", out),
                root / "t12")  # fmt: skip
    assert "it was 1 process x batch 2 x accumulation 1, now 2 processes x 1 x 1" in proc.stderr
    first, resumed = read_trace(root / "single_trace"), read_trace(root / "t12")
    assert sorted(r["rank"] for r in resumed) == [0, 1] and {r["step"] for r in resumed} == {2}
    assert step_indices(resumed, 2) == step_indices(first, 2)
    assert _rel(load(root / "single" / "transformer.pth"), load(out / "transformer.pth")) < 1e-6


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_tampered_sharded_checkpoint_is_refused_and_never_runs(runs, tiny_flux, tmp_path):
    import torch.distributed as dist
    from diffusers import FluxTransformer2DModel
    from diffusers.optimization import get_scheduler

    from sdpo.checkpoint.sharded import ShardedState, checkpoint_weights
    from sdpo.distributed.sharding import shard_module

    root, _, _ = runs
    ckpt = tmp_path / "checkpoint-1"
    shutil.copytree(root / "fsdp" / "checkpoint-1", ckpt)
    marker = tmp_path / "pwned"
    (ckpt / "model" / ".metadata").write_bytes(pickle.dumps({"x": _Evil(marker)}))
    with pytest.raises(UserError, match="refused to load"):
        checkpoint_weights(ckpt)  # the offline converter
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:  # the resume path, on a one-process mesh
        from torch.distributed.device_mesh import init_device_mesh

        model = FluxTransformer2DModel.from_pretrained(tiny_flux, subfolder="transformer")
        shard_module(model, ("FluxTransformerBlock", "FluxSingleTransformerBlock"), init_device_mesh("cpu", (1,)))
        opt = torch.optim.AdamW(model.parameters())
        state = ShardedState(model, opt, get_scheduler("constant", opt))
        state.load(root / "fsdp" / "checkpoint-1")  # the untouched checkpoint loads
        with pytest.raises(UserError, match="refused to load"):
            state.load(ckpt)
        # The optimizer's hyper-parameters are pickled values inside DCP's files: an object there is refused too.
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        bad = tmp_path / "checkpoint-2"
        shutil.copytree(root / "fsdp" / "checkpoint-1", bad)
        optim = get_optimizer_state_dict(model, opt)
        optim["param_groups"][0]["lr"] = _Evil(marker)
        shutil.rmtree(bad / "optimizer")
        dcp.save(optim, checkpoint_id=str(bad / "optimizer"))
        with pytest.raises(UserError, match="refused to load"):
            state.load(bad)
    finally:
        dist.destroy_process_group()
    assert not marker.exists()


def test_torchrun_without_the_cpu_flag_stops_before_loading(tiny_flux, tiny_pairs, tmp_path):
    out = tmp_path / "out"
    args = ["--pretrained_model_name_or_path", tiny_flux, "--dataset_name", tiny_pairs, "--output_dir", out]
    proc = _run(torchrun(2, *args), ok=False, cpu=False)
    # One line per process (torchrun may stop the second process before it prints), exit status 2, and no
    # traceback from train.py (the one printed is torchrun's own report).
    errors = {ln for ln in proc.stderr.splitlines() if ln.startswith("error:")}
    assert len(errors) == 1, proc.stderr
    (line,) = errors
    assert "launcher started 2 processes (WORLD_SIZE=2) but accelerate runs 1" in line
    assert "ACCELERATE_USE_CPU=true" in line and "accelerate launch" in line
    assert "exitcode  : 2" in proc.stderr and "/sdpo/" not in proc.stderr
    assert not out.exists()
