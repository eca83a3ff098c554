"""Where one GRPO round's time goes (rollout / scoring / training), and what a group sharing its prompt buys.

    python bench/grpo_round.py            # the tiny model and the mid-size SD1.5-layout UNet, CPU or GPU
    python bench/grpo_round.py --quick    # seconds (stand-in sizes; the numbers mean nothing)

1. One round of ``python -m sdpo.online --algorithm grpo`` run by the driver itself, on the tiny test model and
   on ``bench/online_round.py``'s mid-size model (the SD1.5 UNet layout at a fifth of its width, ~35 M
   parameters, 128 px): G rollouts of each prompt with DDPO's stochastic DDIM (eta 1) and its log-probabilities
   kept, the weight-free tiny colour reward, one inner epoch of Flow-GRPO's clipped update with its KL term
   over every step.  Printed: the round's wall time split into rollout (``samples``), scoring and training,
   and rollouts per second.  The reward is weight-free, so the scoring share is a lower bound.  On a CPU the
   GRPO stages run one thread (``sdpo.online.grpo_settings.exact_threads``), so a CPU's numbers are one core's.
2. Rollout throughput, G rollouts of one prompt: one call with the prompt encoded once and the G samples in one
   denoiser batch, cond and uncond rows in the same forward (what the driver does), against G separate calls
   (each encoding the prompt and the empty negative, one sample per forward); interleaved and repeated,
   medians and their ratio printed (over ``--throughput_steps`` rollout steps: the ratio is per step).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
from dataclasses import replace  # noqa: E402

import torch  # noqa: E402
from diffusers import UNet2DConditionModel  # noqa: E402

from bench.online_round import mid_model  # noqa: E402
from bench.quick import parse  # noqa: E402
from bench.timing import interleaved  # noqa: E402
from sdpo.tiny import build_tiny_model  # noqa: E402
from sdpo.tiny.images import COLOURS, SHAPES  # noqa: E402

STAGES = ("samples", "scores", "train")
NAMES = {"samples": "rollout", "scores": "scoring", "train": "training"}


def round_flags(model: Path, out: Path, prompts: Path, a, size: int) -> list[str]:
    return [
        "--algorithm", "grpo", "--out", str(out), "--rounds", "1", "--prompts", str(prompts),
        "--samples_per_prompt", str(a.group), "--epochs_per_round", "1", "--sample_steps", str(a.steps),
        "--reward", "tiny_colour", "--pretrained_model_name_or_path", str(model), "--resolution", str(size),
        "--train_batch_size", "1", "--learning_rate", "1e-5", "--report_to", "none", "--mixed_precision", "no",
        "--no-gradient_checkpointing",
    ]  # fmt: skip


def one_round(model: Path, tmp: Path, a, size: int) -> dict:
    from accelerate.state import AcceleratorState, GradientState, PartialState

    from sdpo.online.rounds import run_online

    scenes = [f"a {c} {s}" for c in sorted(COLOURS) for s in SHAPES]
    prompts = tmp / "prompts.txt"
    prompts.write_text("\n".join(scenes[: a.prompts]) + "\n")
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()
    run_online(round_flags(model, tmp / "run", prompts, a, size))
    return json.loads((tmp / "run" / "round-001" / "stages.json").read_text())


def report_round(what: str, stages: dict, n: int) -> None:
    total = sum(stages[s]["seconds"] for s in STAGES)
    parts = "  ".join(f"{NAMES[s]} {100 * stages[s]['seconds'] / total:5.1f}%" for s in STAGES)
    rate = n / stages["samples"]["seconds"]
    print(f"{what}: round {total:.1f} s: {parts}; {n} rollouts, {rate:.2f} rollouts/s")


def throughput(model: Path, a, size: int, device: torch.device) -> tuple[float, float]:
    """Rollouts/s (median over repeats) of one shared call vs G separate calls, G = ``a.group``."""
    from sdpo.config import parse_args
    from sdpo.families import get_family
    from sdpo.rl.rollout import rollout
    from sdpo.rl.settings import default_rollout

    cfg = parse_args(["--pretrained_model_name_or_path", str(model), "--resolution", str(size)])
    fam = get_family("sd15").load(cfg.model, device, torch.float32, False)
    shape = tuple(fam.latent_shape((3, size, size)))
    settings = replace(default_rollout("ddpm"), steps=a.throughput_steps, guidance=7.5)
    seeds = list(range(a.group))

    def shared():
        rollout(fam, ["a red circle"], a.group, seeds, settings, shape)

    def separate():
        for s in seeds:
            rollout(fam, ["a red circle"], 1, [s], settings, shape)

    times = interleaved({"shared": shared, "separate": separate}, a.repeats, device)
    return a.group / statistics.median(times["shared"]), a.group / statistics.median(times["separate"])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--group", type=int, default=4, help="rollouts per prompt (Flow-GRPO's configs: 24)")
    ap.add_argument("--prompts", type=int, default=4, help="prompts in the round")
    ap.add_argument("--steps", type=int, default=10, help="rollout steps (Flow-GRPO: 10)")
    ap.add_argument("--mid_size", type=int, default=128, help="the mid-size model's image size")
    ap.add_argument("--throughput_steps", type=int, default=2,
                    help="rollout steps in the throughput comparison (its ratio is per step)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads for the throughput part")
    a = parse(ap, argv, group=2, prompts=2, steps=2, mid_size=32, repeats=1)
    if a.threads:
        torch.set_num_threads(a.threads)
    accel = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
    device = torch.device(accel or "cpu")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"device {device}, {torch.get_num_threads()} threads, load average {load:.1f}; G {a.group}, "
          f"{a.prompts} prompts, {a.steps} rollout steps")  # fmt: skip
    n = a.group * a.prompts
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if not a.quick:  # (--quick: the mid-size stand-in only; it runs the same code)
            tiny = build_tiny_model("sd15", tmp / "tiny")
            (tmp / "r1").mkdir()
            report_round("tiny sd15 (32 px)", one_round(tiny, tmp / "r1", a, 32), n)
        mid = mid_model(tmp / "mid", a.quick)
        params = sum(p.numel() for p in UNet2DConditionModel.from_pretrained(mid / "unet").parameters())
        what = f"mid-size UNet ({params / 1e6:.1f} M, {a.mid_size} px)"
        (tmp / "r2").mkdir()
        report_round(what, one_round(mid, tmp / "r2", a, a.mid_size), n)
        shared, separate = throughput(mid, a, a.mid_size, device)
    print(f"rollouts, {what}, G={a.group} of one prompt, {a.throughput_steps} steps: one shared call {shared:.2f} rollouts/s, "
          f"G separate calls {separate:.2f} rollouts/s, ratio {shared / separate:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
