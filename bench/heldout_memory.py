"""Memory of in-training held-out evaluation (``--heldout_pairs``, ``sdpo/training/heldout.py``) against training's.

The claim to check: evaluating the held-out pairs does not raise the run's memory peak by more than one
micro-batch's activations without gradients.  For each model size, the real ``train.py`` loop runs twice in two
fresh processes with the same flags except ``--heldout_pairs split:N`` (evaluated at step 0, every ``--every``
steps and at the end, ``--heldout_batch_size`` = the micro-batch), and measures on its own:

* every optimizer step (forward, backward, optimizer step of ``micro_step`` + ``finish_step``);
* every held-out evaluation (``HeldOutMonitor.evaluate``: step 0 also runs the reference once);
* after the last step of the run without evaluation, one micro-batch's policy forward under ``torch.no_grad``
  alone (the same batch size, same code: ``preference_forward`` without a reference): the bound.

Printed per size: the run's peak (the maximum over steps and evaluations) with and without evaluation, what a
step adds above its start, what an evaluation adds above its start, and the bound.  CUDA:
``torch.cuda.max_memory_allocated`` with the peak reset before each measured span; CPU: the resident set's high
water mark (reset through ``/proc/self/clear_refs``, glibc told to return large blocks at once), as
``bench/validation_memory.py`` measures.

    python bench/heldout_memory.py               # tiny (64 px, UNet 32/64) and mid (256 px, UNet 64/128), CPU
    python bench/heldout_memory.py --sizes mid --steps 8
    python bench/heldout_memory.py --quick       # 32 px, 3 steps: seconds
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.quick import parse  # noqa: E402
from bench.validation_memory import MIB, StepMemory  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SIZES = {"tiny": (64, (32, 64)), "mid": (256, (64, 128)), "quick": (32, (16, 32))}  # resolution, UNet channels


def child(args) -> None:
    """One training run with the measuring hooks in place; writes the measured spans as JSON."""
    import torch

    import sdpo.training.heldout as heldout
    import sdpo.training.loop as training
    from sdpo.config import parse_args

    torch.set_num_threads(args.threads)
    mem = StepMemory(torch.cuda.is_available())
    spans = {"step": [], "eval": [], "bound": []}
    micro, finish, evaluate = training.micro_step, training.finish_step, heldout.HeldOutMonitor.evaluate
    state = {"open": False, "batch": None}

    def micro_step(run, batch):
        if not state["open"]:
            mem.start()
            state["open"] = True
        state["batch"] = batch
        return micro(run, batch)

    def finish_step(run, ok, logs, **kw):  # kw: the loop's stop signal
        finish(run, ok, logs, **kw)
        mem.stop(run.step)
        spans["step"].append(mem.rows.pop())
        state["open"] = False
        if run.step == run.cfg.optim.max_train_steps and run.heldout is None:
            spans["bound"].append(no_grad_forward(run, state["batch"], mem))

    def measured_evaluate(self, run, log_values=True):
        mem.start()
        out = evaluate(self, run, log_values)
        mem.stop(run.step)
        spans["eval"].append(mem.rows.pop())
        return out

    training.micro_step, training.finish_step = micro_step, finish_step
    heldout.HeldOutMonitor.evaluate = measured_evaluate
    training.train(parse_args(args.flags))
    Path(args.child).write_text(json.dumps(spans))


def no_grad_forward(run, batch: dict, mem: StepMemory) -> dict:
    """One micro-batch's policy forward without gradients, measured alone: what an evaluation batch costs."""
    import torch

    from sdpo.training.heldout import _Models, batch_terms, eval_config

    acc = run.accelerator
    models = _Models(run.family, acc.unwrap_model(run.family.denoiser), None)
    mem.start()
    with torch.no_grad(), acc.autocast():
        terms = batch_terms(batch, models, eval_config(run.cfg), acc.device, True)
    del terms
    mem.stop(run.step)
    return mem.rows.pop()


def run_size(work: Path, name: str, args) -> dict:
    from sdpo.tiny import build_tiny_model, build_tiny_pairs

    resolution, channels = SIZES[name]
    model = build_tiny_model("sd15", work / f"model-{name}", block_out_channels=channels)
    pairs = build_tiny_pairs(work / f"pairs-{name}", n=4 * args.batch * args.steps + 2 * args.heldout, size=resolution)
    common = ["--pretrained_model_name_or_path", str(model), "--dataset_name", str(pairs), "--resolution",
              str(resolution), "--train_batch_size", str(args.batch), "--max_train_steps", str(args.steps),
              "--checkpointing_steps", str(10 * args.steps), "--learning_rate", "1e-5", "--lr_warmup_steps", "0",
              "--report_to", "none", "--mixed_precision", "no", "--no-gradient_checkpointing"]  # fmt: skip
    held = ["--heldout_pairs", f"split:{args.heldout}", "--heldout_steps", str(args.every)]
    results = {}
    for mode, extra in (("off", []), ("on", held)):
        out = work / f"{name}-{mode}.json"
        flags = [*common, "--output_dir", str(work / f"{name}-{mode}"), *extra]
        cmd = [sys.executable, __file__, "--threads", str(args.threads), "--child", str(out), "--flags", *flags]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        if proc.returncode:
            sys.exit(f"{name} {mode} run failed:\n{proc.stderr[-3000:]}")
        results[mode] = json.loads(out.read_text())
    return results


def report(name: str, results: dict, args) -> None:
    import torch

    resolution, channels = SIZES[name]
    unit = "device (max_memory_allocated)" if torch.cuda.is_available() else "host (resident set)"
    off, on = results["off"], results["on"]
    # Step 1 creates the optimizer state and warms up kernels: the peaks compare steps 2.. of both runs
    steps_off, steps_on = off["step"][1:], on["step"][1:]
    peak_off = max(r["peak"] for r in steps_off)
    peak_on = max(r["peak"] for r in steps_on + on["eval"])
    added = lambda rows: max(r["peak"] - r["start"] for r in rows)  # noqa: E731
    bound = added(off["bound"])
    print(f"{name}: {resolution} px, UNet channels {list(channels)}, batch {args.batch} pair(s), {args.steps} steps, "
          f"{args.heldout} held-out pairs every {args.every} steps ({len(on['eval'])} evaluations); memory: {unit}")  # fmt: skip
    print(f"{'':36}{'held-out off':>14}{'held-out on':>14}{'on / off':>10}")
    print(f"{'peak of the run (steps 2.., evals)':<36}{peak_off / MIB:>10.1f} MiB{peak_on / MIB:>10.1f} MiB"
          f"{peak_on / peak_off:>10.3f}")  # fmt: skip
    print(f"{'added by a step (max)':<36}{added(steps_off) / MIB:>10.1f} MiB{added(steps_on) / MIB:>10.1f} MiB"
          f"{added(steps_on) / added(steps_off):>10.3f}")  # fmt: skip
    first, later = on["eval"][:1], on["eval"][1:]  # step 0 also runs the reference once (and reads the data first)
    print(f"{'added by the step-0 evaluation':<36}{'-':>14}{added(first) / MIB:>10.1f} MiB")
    print(f"{'added by a later evaluation (max)':<36}{'-':>14}{added(later) / MIB:>10.1f} MiB")
    print(f"{name}: run peak raised by {(peak_on - peak_off) / MIB:.1f} MiB; bound (one micro-batch's no-grad "
          f"forward, measured alone): {bound / MIB:.1f} MiB; within the bound: {'yes' if peak_on - peak_off <= bound else 'no'}")  # fmt: skip


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", default=["tiny", "mid"], choices=sorted(SIZES))
    p.add_argument("--batch", type=int, default=2, help="pairs per micro-batch (and per held-out forward)")
    p.add_argument("--steps", type=int, default=8, help="optimizer steps per run")
    p.add_argument("--every", type=int, default=2, help="--heldout_steps")
    p.add_argument("--heldout", type=int, default=8, help="held-out pairs (split:N)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (1 is steadiest on a shared machine)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--flags", nargs=argparse.REMAINDER, default=None, help=argparse.SUPPRESS)
    args = parse(p, argv, sizes=["quick"], batch=1, steps=3, every=2, heldout=2)
    if args.child:
        return child(args)
    with tempfile.TemporaryDirectory(prefix="sdpo-heldmem-") as tmp:
        for name in args.sizes:
            report(name, run_size(Path(tmp), name, args), args)


if __name__ == "__main__":
    main()
