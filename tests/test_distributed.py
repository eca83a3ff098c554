"""A real two-process data-parallel run on CPU (torch.distributed, gloo), against one process.

``torchrun --nproc_per_node 2`` starts two ``train.py`` processes; ``ACCELERATE_USE_CPU=true``
makes accelerate pick its multi-CPU mode (gloo), exactly as ``accelerate launch --cpu`` does on
a CPU cluster.  (``accelerate launch --cpu --num_processes 2`` on one machine starts a single
process, so torchrun is the launcher here.)  Each rank writes what it trained on and its final
weights through the opt-in ``SDPO_RANK_TRACE_DIR`` hook (``sdpo/rank_trace.py``).

The run is Diffusion-DPO *without* the SDPO safeguard: the reference implementation computes the
output-space lambda over one micro-batch, so with the safeguard on, 2 processes x batch 1 see two
per-pair lambdas where 1 process x batch 2 sees one lambda over both pairs; they differ by design.

AdamW with ``--adam_epsilon 1`` makes the first update ``lr * g / (|g| + 1)``, close to an SGD
step, so the comparison really tests the averaged gradient (with the default tiny epsilon the
first Adam step is ``lr * sign(g)`` and would hide gradient differences).  Gradient clipping
stays on at 1.0: it acts on the all-reduced gradient, so it must match too.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from dist_helpers import COMMON, ROOT, env, load, max_diff, read_trace, torchrun

from sdpo.tiny import build_tiny_model, build_tiny_pairs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    model, pairs = build_tiny_model("sd15", root / "model"), build_tiny_pairs(root / "pairs", n=16)
    base = ["--pretrained_model_name_or_path", str(model), "--dataset_name", str(pairs), "--resolution", "64", *COMMON]
    ddp = torchrun(2, *base, "--train_batch_size", "1", "--max_train_steps", "2", "--checkpointing_steps", "1",
                   "--output_dir", root / "ddp")  # fmt: skip
    single = [
        sys.executable, str(ROOT / "train.py"), *base, "--train_batch_size", "2", "--max_train_steps", "1",
        "--output_dir", str(root / "single"),
    ]  # fmt: skip
    for name, cmd in (("ddp", ddp), ("single", single)):
        proc = subprocess.run(cmd, env=env(root / f"{name}_trace"), cwd=root, capture_output=True, text=True)
        assert proc.returncode == 0, f"{name} run failed:\n{proc.stderr[-3000:]}"
    return root, model


def test_both_processes_ran_and_end_with_identical_weights(runs):
    root, _ = runs
    trace = read_trace(root / "ddp_trace")
    assert sorted({r["rank"] for r in trace}) == [0, 1]
    rank0, rank1 = load(root / "ddp_trace" / "rank0_unet.pth"), load(root / "ddp_trace" / "rank1_unet.pth")
    assert max_diff(rank0, rank1) == 0.0  # DDP all-reduces gradients: replicas must stay bit-identical
    assert max_diff(rank0, load(root / "ddp" / "unet.pth")) == 0.0


def test_data_is_sharded_not_duplicated(runs):
    root, _ = runs
    ddp, single = read_trace(root / "ddp_trace"), read_trace(root / "single_trace")
    for step in (1, 2):
        per_rank = {r["rank"]: r["indices"] for r in ddp if r["step"] == step}
        assert len(per_rank[0]) == len(per_rank[1]) == 1
        assert not set(per_rank[0]) & set(per_rank[1]), f"step {step}: both ranks trained on {per_rank}"
    (step1,) = [r["indices"] for r in single if r["step"] == 1]
    ddp_step1 = [r["indices"][0] for r in sorted(ddp, key=lambda r: r["rank"]) if r["step"] == 1]
    assert ddp_step1 == step1  # rank r takes slice r of the same global batch


def test_first_step_matches_single_process_batch_two(runs):
    root, model = runs
    from diffusers import UNet2DConditionModel

    init = UNet2DConditionModel.from_pretrained(model, subfolder="unet").state_dict()
    ddp_step1 = load(root / "ddp" / "checkpoint-1" / "unet.pth")
    single = load(root / "single" / "unet.pth")
    moved = max_diff(single, init)
    assert moved > 1e-5, "the step did not move the weights: the comparison below would be vacuous"
    diff = max_diff(ddp_step1, single)
    assert diff < 1e-6 + 1e-3 * moved, f"2 procs x batch 1 differs from 1 proc x batch 2 by {diff} (step {moved})"


def test_lora_under_ddp_matches_one_process(runs):
    """LoRA behind DDP: the adapters-off reference, the adapter-only files and the save hook see through the
    wrapper; 2 processes x batch 1 take the first step of 1 process x batch 2."""
    from safetensors.torch import load_file

    root, model = runs
    pairs = root / "pairs"
    base = ["--pretrained_model_name_or_path", str(model), "--dataset_name", str(pairs), *COMMON, "--lora_rank", "4",
            "--max_train_steps", "1"]  # fmt: skip
    ddp = torchrun(2, *base, "--train_batch_size", "1", "--output_dir", root / "lora_ddp")
    single = [sys.executable, str(ROOT / "train.py"), *base, "--train_batch_size", "2", "--output_dir",
              str(root / "lora_single")]  # fmt: skip
    for name, cmd in (("lora_ddp", ddp), ("lora_single", single)):
        proc = subprocess.run(cmd, env=env(root / f"{name}_trace"), cwd=root, capture_output=True, text=True)
        assert proc.returncode == 0, f"{name} run failed:\n{proc.stderr[-3000:]}"
    rank0, rank1 = (load(root / "lora_ddp_trace" / f"rank{r}_unet.pth") for r in (0, 1))
    assert max_diff(rank0, rank1) == 0.0
    assert sorted(p.name for p in (root / "lora_ddp" / "checkpoint-1").iterdir() if "model" in p.name) == []
    a, b = (load_file(root / d / "pytorch_lora_weights.safetensors") for d in ("lora_ddp", "lora_single"))
    moved = max(v.abs().max().item() for k, v in b.items() if ".lora.up." in k)  # B starts at zero
    assert moved > 1e-5
    assert max_diff(a, b) < 1e-6 + 1e-3 * moved


def test_accumulation_flag_wins_over_accelerates_environment(monkeypatch, tmp_path):
    """`accelerate launch` exports ACCELERATE_GRADIENT_ACCUMULATION_STEPS from a DeepSpeed config;
    it must not replace --gradient_accumulation_steps (the launch scripts' global-batch arithmetic)."""
    from accelerate.state import AcceleratorState, GradientState

    from sdpo.config import parse_args
    from sdpo.training.setup import make_accelerator

    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "1")
    cfg = parse_args(["--pretrained_model_name_or_path", "org/model", "--model_family", "sd15",
                      "--gradient_accumulation_steps", "4", "--report_to", "none", "--output_dir", str(tmp_path)])  # fmt: skip
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    try:
        assert make_accelerator(cfg).gradient_accumulation_steps == 4
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
