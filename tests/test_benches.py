"""Every bench runs: each script's ``--quick`` mode once, as a subprocess, checked for the lines it reports.

A bench is only run by hand, so a change in the core or in ``bench/model_configs.py`` can break it unseen
(``cache_speedup.py`` failed on a duplicate ``vocab_size`` for a while).  ``--quick`` runs the bench's own code
on tiny stand-in configs in seconds; this checks it exits 0 and prints each of its ratio / result lines in the
shape the full run prints them.  The numbers are not checked: quick sizes on a shared CPU mean nothing.
Covered elsewhere: ``live_memory.py`` against MemTracker (test_bench_memory.py), ``memory_plan.py``'s
cross-check and real config sizes (test_memory_plan.py).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOT_BENCHES = {"live_memory", "model_configs", "quick", "report_size", "timing"}  # a probe, the configs, the --quick flag,
# the interleaved timer; report_size --quick needs the report's tiny inputs: tests/test_report.py runs it once

R = r"\d+\.\d+"  # a printed number
X = rf"{R}x"  # a printed ratio
CACHE_FLOPS = rf"^(sd15|sdxl|flux) +\d+( +{R} \( *{R}%\)){{4}} +{R} +{X}$"
CACHE_STEP = rf"^(SD1\.5 layout, --quick stand-in\*|tiny sd15 \(sdpo\.tiny\)) +\d+ +\d+ +{R} +{R} +{X}$"
MEMORY_ROW = (
    rf"^\| (DDP|ZeRO-2|FSDP|HSDP 2x8|LoRA r16 \(DDP\)) \| \d+ \| (AdamW|Adafactor) \|( {R} \|){{8}} (yes|no) \|$"
)
MEMORY_PRE_ROW = rf"^\| (DDP|ZeRO-2|FSDP|HSDP 2x8|LoRA r16 \(DDP\)) \| \d+ \| (AdamW|Adafactor) \|( {R} \|){{8}} (yes|no) \| {R} \+ {R} GB \|$"
REF_ARM = rf"^ +32 (uncached|latent cache|latent \+ ref losses) +{R} +{X}( +{R}){{3}}$"
SAFEGUARD_ROW = rf"^(dpo|fixed|output|param) +{R} +{R} +{R} +{R}"
STATE_ROW = rf"^(SDXL UNet \(--quick stand-in\) parameters|fp32|AdamW|Adafactor|bf16) .* +{R}$"
HELDMEM_ROW = rf"^(peak of the run \(steps 2\.\., evals\)|added by a step \(max\)) +{R} MiB +{R} MiB +{R}$"
HELDMEM_EVAL = rf"^added by (the step-0|a later) evaluation.* +- +{R} MiB$"
HELDMEM_BOUND = rf"^quick: run peak raised by -?{R} MiB; bound .*: {R} MiB; within the bound: (yes|no)$"
VALMEM_ROW = rf"^(peak of the step|added by the step|at the step's start) \((max|median)\) +{R} MiB +{R} MiB +{R}$"

# (script, extra flags, [(line regex, how many lines match)])
CASES = [
    ("cache_speedup", [], [(CACHE_FLOPS, 3), (CACHE_STEP, 2), (rf"FLOP bound at 32 px: {X}$", 1),
                           (rf"^(sd15|sdxl|sd3|flux) +{R} B parameters", 4), (r"^(sd15|sdxl|sd3|flux) +\d+ +\d+x", 4)]),
    ("heldout_memory", [], [(HELDMEM_ROW, 2), (HELDMEM_EVAL, 2), (HELDMEM_BOUND, 1)]),
    ("checkpoint_hashing", [], [(r"^SD1\.5 UNet layout, --quick stand-in: \d+\.\d M parameters; checkpoint ", 1),
                                (rf"^checkpoint write with(out)? manifest: +{R} s \(median of 2\)$", 2),
                                (rf"^with / without: {X} \([+-]{R} s per checkpoint\)$", 1),
                                (rf"^hashing inside the write: {R} s, {R}% of the write \(median of 2\)$", 1),
                                (rf"^hashing alone: {R} s for .* \({R} GB/s\)$", 1),
                                (rf"^resume: verify {R} s, load {R} s; verify / load: {X}$", 1)]),
    ("generation_throughput", [], [(r"^tiny sd15, 32x32", 1), (rf"batch 2 / batch 1 throughput ratio: {X}$", 1)]),
    ("generation_throughput", ["--real-arch", "sd15"], [(r"^SD1\.5 layout, --quick stand-in, 32x32", 1),
                                                        (rf"batch 2 / batch 1 throughput ratio: {X}$", 1)]),
    ("lora_memory", [], [(rf"^kept between steps: {R} GB$", 1), (rf"step peak above that at (32|48) px: {R} GB", 2),
                         (rf"^total at 1024 px, 1 pair per step: {R} \+ {R} = {R} GB", 1)]),
    ("lora_vs_full", [], [(rf"^  (full|lora) +trained .* total {R} GiB; median {R} s/step$", 2),
                          (rf"^LoRA / full: peak memory {X} \(target <= 0\.55\), step time {X}", 1)]),
    ("memory_plan", [], [(MEMORY_ROW, 8 * 8), (MEMORY_PRE_ROW, 8 * 8), (r"^### with precomputed reference losses", 8),
                         (rf"^  \d pair\(s\): {R} / {R}$", 8 * 3),
                         (rf"^with a latent/text cache .*(\| LoRA r16 \(DDP\) x1 {R} (yes|no))$", 8)]),
    ("reference_losses", [], [(REF_ARM, 3), (rf"latent \+ ref losses / uncached: time {X} \(FLOP floor {X}; latent "
                                             rf"cache alone {X}, floor {X}\); peak memory {X} uncached", 1),
                              (r"equal the step's bit for bit: yes$", 1),
                              (rf"^ +32 +{R} +{R} \({R}\) +{R} \({R}\) +{X} +{X}$", 1)]),
    ("grpo_round", [], [(rf"^mid-size UNet .*: round {R} s: rollout +{R}%  scoring +{R}%  training +{R}%; \d+ rollouts, "
                         rf"{R} rollouts/s$", 1),
                        (rf"G=2 of one prompt, \d+ steps: one shared call {R} rollouts/s, G separate calls {R} rollouts/s, "
                         rf"ratio {X}$", 1)]),
    ("online_round", [], [(rf"^(tiny sd15 \(32 px\)|mid-size UNet .*): round {R} s: samples +{R}%  scores +{R}%  "
                           rf"pairs +{R}%  train +{R}%  eval +{R}%$", 1),
                          (r"^(tiny|mid-size).*: peak host MB per stage: samples \d+", 1),
                          (rf"K=2 samples of one prompt: one shared call {R} samples/s, K separate calls {R} "
                           rf"samples/s, ratio {X}$", 1)]),
    ("safeguard_overhead", [], [(r"^small UNet", 1), (SAFEGUARD_ROW, 4)]),
    ("safeguard_overhead", ["--real-arch", "sd15", "--lora_rank", "4", "--gradient_checkpointing"],
     [(r"^SD1\.5 UNet config \(--quick stand-in\).*LoRA rank 4", 1), (SAFEGUARD_ROW, 4)]),
    ("scoring_throughput", [], [(rf"^ratio five/one: {X} +\(max score difference", 1)]),
    ("sdxl_state_sizes", [], [(STATE_ROW, 10)]),
    ("validation_memory", [], [(VALMEM_ROW, 4)]),
]  # fmt: skip


def run_bench(script: str, *flags: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}  # fmt: skip
    cmd = [sys.executable, str(ROOT / "bench" / f"{script}.py"), "--quick", *flags]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("script, flags, expected", CASES, ids=[" ".join([s, *f]) for s, f, _ in CASES])
def test_bench_quick_mode_runs_and_reports(script, flags, expected):
    proc = run_bench(script, *flags)
    assert proc.returncode == 0, f"{script} --quick {' '.join(flags)} failed:\n{proc.stderr[-3000:]}"
    lines = proc.stdout.splitlines()
    for pattern, count in expected:
        found = [ln for ln in lines if re.search(pattern, ln)]
        assert len(found) == count, f"{pattern!r}: {len(found)} lines, not {count}, in:\n{proc.stdout}"


def test_every_bench_script_has_a_quick_case():
    scripts = {p.stem for p in (ROOT / "bench").glob("*.py")} - NOT_BENCHES
    assert scripts == {script for script, _, _ in CASES}
