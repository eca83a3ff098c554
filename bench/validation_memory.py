"""The training step's memory peak with in-training validation on and off (``sdpo/validation.py``).

Runs the real ``train.py`` loop twice on a small SD1.5-format model, in two fresh processes with the
same flags except ``--validation_prompts`` (validating at step 0 and every ``--every`` steps, scoring with
all five reward models), and measures every optimizer step on its own: the forward, backward and AdamW
step of ``micro_step`` + ``finish_step``, not the validations between them.  Checkpoints are written only
at the end, outside the measured steps.

* CUDA: ``torch.cuda.max_memory_allocated`` over the step (peak reset before it), and what is allocated
  when it starts.  Reward models wait on the CPU between validations, so both should be unchanged.
* CPU: the process's peak resident set over the step (VmHWM, reset via ``/proc/self/clear_refs``, glibc
  told to return large blocks at once so the resident set follows live tensors), and the resident set
  when it starts.  On a CPU the "accelerator" is the host: the reward models' weights are resident between
  validations, so the step starts higher by their size; what the step itself adds must not change.

    python bench/validation_memory.py                     # CPU: 128 px, channels 32/64, 14 steps
    python bench/validation_memory.py --resolution 256 --every 3
    python bench/validation_memory.py --quick             # 32 px, 3 steps, 1 prompt x 2 sampler steps: seconds
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.quick import parse  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
MIB = 1024.0 * 1024.0


def _kb(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


class StepMemory:
    """Per optimizer step: memory when it starts and its peak (device bytes on CUDA, resident bytes on CPU)."""

    def __init__(self, cuda: bool):
        import torch

        self.torch, self.cuda, self.rows = torch, cuda, []
        if not cuda:
            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD: large blocks from mmap, returned on free
            libc.mallopt(-1, 64 * 1024)  # M_TRIM_THRESHOLD
            self.libc = libc

    def start(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()
            self.at_start = self.torch.cuda.memory_allocated()
        else:
            self.libc.malloc_trim(0)
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
            self.at_start = _kb("VmRSS") * 1024

    def stop(self, step: int) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()
            peak = self.torch.cuda.max_memory_allocated()
        else:
            peak = _kb("VmHWM") * 1024
        self.rows.append({"step": step, "start": self.at_start, "peak": peak})


def child(args) -> None:
    """One training run with the step hooks in place; writes the per-step rows as JSON."""
    import torch

    import sdpo.training.loop as training
    from sdpo.config import parse_args

    torch.set_num_threads(args.threads)
    mem = StepMemory(torch.cuda.is_available())
    micro, finish = training.micro_step, training.finish_step

    window_open = [False]  # the first micro-step of an accumulation window starts the measurement

    def micro_step(run, batch):
        if not window_open[0]:
            mem.start()
            window_open[0] = True
        return micro(run, batch)

    def finish_step(run, ok, logs, **kw):  # kw: the loop's stop signal
        finish(run, ok, logs, **kw)
        mem.stop(run.step)
        window_open[0] = False

    training.micro_step, training.finish_step = micro_step, finish_step
    training.train(parse_args(args.flags))
    Path(args.child).write_text(json.dumps(mem.rows))


def build_inputs(work: Path, args) -> list[str]:
    from sdpo.tiny import build_tiny_model, build_tiny_pairs
    from sdpo.tiny.rewards import build_tiny_reward_root

    model = build_tiny_model("sd15", work / "model", block_out_channels=tuple(args.channels))
    pairs = build_tiny_pairs(work / "pairs", n=4 * args.batch * args.steps, size=args.resolution)
    prompts = [f"a {c} {s}" for c in ("red", "blue", "green") for s in ("circle", "square")][: args.prompts]
    (work / "prompts.txt").write_text("\n".join(prompts))
    return [str(build_tiny_reward_root(work / "rewards")), str(model), str(pairs)]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--resolution", type=int, default=128)
    p.add_argument("--channels", type=int, nargs=2, default=[32, 64], help="UNet block_out_channels")
    p.add_argument("--batch", type=int, default=2, help="pairs per step")
    p.add_argument("--steps", type=int, default=14, help="optimizer steps per run")
    p.add_argument("--every", type=int, default=4, help="--validation_steps")
    p.add_argument("--prompts", type=int, default=4, help="validation prompts (at most 6)")
    p.add_argument("--sampler_steps", type=int, default=20, help="--validation_num_inference_steps")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (1 is steadiest on a shared machine)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--flags", nargs=argparse.REMAINDER, default=None, help=argparse.SUPPRESS)
    args = parse(p, argv, resolution=32, channels=[16, 32], batch=1, steps=3, every=2, prompts=1, sampler_steps=2)
    if args.child:
        return child(args)

    with tempfile.TemporaryDirectory(prefix="sdpo-valmem-") as tmp:
        work = Path(tmp)
        rewards, model, pairs = build_inputs(work, args)
        common = ["--pretrained_model_name_or_path", model, "--dataset_name", pairs, "--resolution", str(args.resolution),
                  "--train_batch_size", str(args.batch), "--max_train_steps", str(args.steps),
                  "--checkpointing_steps", str(10 * args.steps), "--learning_rate", "1e-5", "--lr_warmup_steps", "0",
                  "--report_to", "none", "--mixed_precision", "no", "--no-gradient_checkpointing"]  # fmt: skip
        validation = ["--validation_prompts", str(work / "prompts.txt"), "--validation_steps", str(args.every),
                      "--validation_metrics", "all", "--validation_model_root", rewards,
                      "--validation_num_inference_steps", str(args.sampler_steps)]  # fmt: skip
        results = {}
        for name, extra in (("off", []), ("on", validation)):
            out = work / f"{name}.json"
            flags = [*common, "--output_dir", str(work / name), *extra]
            cmd = [sys.executable, __file__, "--threads", str(args.threads), "--child", str(out), "--flags", *flags]
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            if proc.returncode:
                sys.exit(f"{name} run failed:\n{proc.stderr[-3000:]}")
            # Step 1 creates the optimizer state and warms up kernels; the last one writes the final checkpoint.
            results[name] = json.loads(out.read_text())[1:-1]
    report(results, args)


def report(results: dict, args) -> None:
    import torch

    unit = "device (max_memory_allocated)" if torch.cuda.is_available() else "host (resident set)"
    print(f"{args.steps} steps at {args.resolution} px, batch {args.batch}, UNet channels {args.channels}; "
          f"validation every {args.every} steps ({args.prompts} prompt(s) x {args.sampler_steps} sampler steps, "
          f"5 reward models); memory: {unit}")  # fmt: skip
    print(f"{'':28}{'validation off':>16}{'validation on':>16}{'on / off':>10}")
    rows = {}
    for name, steps in results.items():
        rows[name] = {
            "peak of the step (max)": max(r["peak"] for r in steps),
            "added by the step (max)": max(r["peak"] - r["start"] for r in steps),
            "added by the step (median)": statistics.median(r["peak"] - r["start"] for r in steps),
            "at the step's start (max)": max(r["start"] for r in steps),
        }
    for key in rows["off"]:
        off, on = rows["off"][key], rows["on"][key]
        print(f"{key:<28}{off / MIB:>12.1f} MiB{on / MIB:>12.1f} MiB{on / off:>10.3f}")
    steps = [r["step"] for r in results["off"]]
    print(
        f"steps {steps[0]}..{steps[-1]} measured in each run; with validation on, validations ran at step 0 and "
        f"after steps {', '.join(str(s) for s in range(args.every, args.steps, args.every))}"
    )


if __name__ == "__main__":
    main()
