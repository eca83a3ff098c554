"""Where one online round's time and memory go, and what sharing a prompt across its K samples buys.

    python bench/online_round.py            # the tiny model and a mid-size SD1.5-layout UNet, CPU or GPU
    python bench/online_round.py --quick    # seconds (stand-in sizes; the numbers mean nothing)

1. One round of ``python -m sdpo.online`` (samples, scores, pairs, train, held-out eval), run by the driver
   itself, for the tiny test model and for a mid-size model (the tiny pipeline with its UNet replaced by the
   SD1.5 layout at a fifth of its width, ~35 M parameters, 128 px); the settings keep IPO's proportions (K = 2
   samples of a prompt at the protocol's 50 sampler steps, 20 epochs over the round's pairs).  Printed: each
   stage's share of the round's wall time and its peak memory (GPU: allocator peak; CPU: the process's peak
   resident set, which includes the ~1 GB the imported libraries hold).  Rewards are the weight-free tiny
   ones here, so the scoring share is a lower bound: a real reward model (PickScore's ViT-H) costs more.
2. Generation throughput, K samples of one prompt: one call with the prompt encoded once and the K samples
   in one denoiser batch (what the driver does), against K separate calls of the evaluation sampler (each
   encoding the prompt and the empty negative, one sample per denoiser call); interleaved and repeated, the
   medians and their ratio printed.
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

import torch  # noqa: E402
from diffusers import UNet2DConditionModel  # noqa: E402

from bench import model_configs as mc  # noqa: E402
from bench.quick import parse  # noqa: E402
from bench.timing import interleaved  # noqa: E402
from sdpo.tiny import build_tiny_model  # noqa: E402
from sdpo.tiny.images import COLOURS, SHAPES  # noqa: E402

STAGES = ("samples", "scores", "pairs", "train", "eval")


def mid_model(out: Path, quick: bool) -> Path:
    """The tiny SD1.5 pipeline with the SD1.5 UNet layout at a fifth of its width (``--quick``: the stand-in)."""
    from sdpo.tiny.text import TEXT_DIM

    folder = build_tiny_model("sd15", out)
    config = dict(mc.SD15_UNET_QUICK if quick else mc.SD15_UNET, cross_attention_dim=TEXT_DIM, sample_size=16)
    if not quick:
        config.update(block_out_channels=(64, 128, 256, 256), attention_head_dim=8)
    torch.manual_seed(0)
    UNet2DConditionModel(**config).save_pretrained(folder / "unet")
    return folder


def round_flags(model: Path, out: Path, prompts: Path, heldout: Path, a, size: int) -> list[str]:
    return [
        "--out", str(out), "--rounds", "1", "--prompts", str(prompts), "--samples_per_prompt", str(a.k),
        "--epochs_per_round", str(a.epochs), "--sample_steps", str(a.steps), "--reward", "tiny_colour",
        "--heldout_prompts", str(heldout), "--heldout_reward", "tiny_picture",
        "--pretrained_model_name_or_path", str(model), "--resolution", str(size), "--train_batch_size", "2",
        "--learning_rate", "1e-5", "--lr_warmup_steps", "0", "--report_to", "none", "--beta_dpo", "5000",
        "--checkpointing_steps", "100000", "--mixed_precision", "no", "--no-gradient_checkpointing",
    ]  # fmt: skip


def one_round(model: Path, tmp: Path, a, size: int) -> dict:
    from accelerate.state import AcceleratorState, GradientState, PartialState

    from sdpo.online.rounds import run_online

    scenes = [f"a {c} {s}" for c in sorted(COLOURS) for s in SHAPES]
    prompts, heldout = tmp / "prompts.txt", tmp / "heldout.txt"
    prompts.write_text("\n".join(scenes[: a.prompts]) + "\n")
    heldout.write_text("\n".join(f"one {p[2:]}" for p in scenes[: a.heldout]) + "\n")
    out = tmp / "run"
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()
    run_online(round_flags(model, out, prompts, heldout, a, size))
    return json.loads((out / "round-001" / "stages.json").read_text())


def report_round(what: str, stages: dict) -> None:
    total = sum(stages[s]["seconds"] for s in STAGES)
    parts = "  ".join(f"{s} {100 * stages[s]['seconds'] / total:5.1f}%" for s in STAGES)
    print(f"{what}: round {total:.1f} s: {parts}")
    peaks = "  ".join(f"{s} {stages[s]['peak']['host_mb']:.0f}" for s in STAGES)
    print(f"{what}: peak host MB per stage: {peaks}")
    if all("host_start_mb" in stages[s]["peak"] for s in STAGES):
        added = "  ".join(f"{s} {stages[s]['peak']['host_mb'] - stages[s]['peak']['host_start_mb']:+.0f}" for s in STAGES)
        print(f"{what}: peak host MB over each stage's start: {added}")
    if "device_mb" in stages["train"]["peak"]:
        dev = "  ".join(f"{s} {stages[s]['peak']['device_mb']:.0f}" for s in STAGES)
        print(f"{what}: peak device MB per stage: {dev}")


def throughput(model: Path, a, size: int, device: torch.device) -> tuple[float, float]:
    """Samples/s (median over repeats) of one shared call vs K separate calls, K = ``a.k``."""
    from sdpo.families import get_family
    from sdpo.sampling.images import generate_images, resolve_dtype

    comp = get_family("sd15").load_sampling_components(str(model), None, device, resolve_dtype("auto", device),
                                                       vae_path=str(model))  # fmt: skip
    prompt, seeds = "a red circle", list(range(a.k))

    def shared():
        generate_images(comp, [prompt] * a.k, size, size, a.steps, 7.5, seeds, rows_per_call=a.k)

    def separate():
        for s in seeds:
            generate_images(comp, [prompt], size, size, a.steps, 7.5, [s])

    times = interleaved({"shared": shared, "separate": separate}, a.repeats, device)
    return a.k / statistics.median(times["shared"]), a.k / statistics.median(times["separate"])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--k", type=int, default=2, help="samples per prompt (IPO: a pair, 2)")
    ap.add_argument("--prompts", type=int, default=8, help="training prompts in the round")
    ap.add_argument("--heldout", type=int, default=4, help="held-out prompts")
    ap.add_argument("--steps", type=int, default=50, help="sampler steps (the protocol's 50)")
    ap.add_argument("--epochs", type=int, default=20, help="epochs over the round's pairs (IPO: 20)")
    ap.add_argument("--mid_size", type=int, default=128, help="the mid-size model's image size")
    ap.add_argument("--throughput_k", type=int, default=4, help="K for the throughput comparison")
    ap.add_argument("--throughput_steps", type=int, default=None,
                    help="sampler steps in the throughput comparison (default --steps; the ratio is per step)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    a = parse(ap, argv, k=2, prompts=2, heldout=1, steps=2, epochs=1, mid_size=32, throughput_k=2, throughput_steps=2, repeats=1)
    if a.threads:
        torch.set_num_threads(a.threads)
    accel = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
    device = torch.device(accel or "cpu")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"device {device}, {torch.get_num_threads()} threads, load average {load:.1f}; K {a.k}, {a.prompts} prompts, "
          f"{a.steps} sampler steps, {a.epochs} epochs per round")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if not a.quick:  # (--quick: the mid-size stand-in only; it runs the same code)
            tiny = build_tiny_model("sd15", tmp / "tiny")
            (tmp / "r1").mkdir()
            report_round("tiny sd15 (32 px)", one_round(tiny, tmp / "r1", a, 32))
        mid = mid_model(tmp / "mid", a.quick)
        n = sum(p.numel() for p in UNet2DConditionModel.from_pretrained(mid / "unet").parameters())
        what = f"mid-size UNet ({n / 1e6:.1f} M, {a.mid_size} px)"
        (tmp / "r2").mkdir()
        report_round(what, one_round(mid, tmp / "r2", a, a.mid_size))
        ka = argparse.Namespace(**{**vars(a), "k": a.throughput_k, "steps": a.throughput_steps or a.steps})
        shared, separate = throughput(mid, ka, a.mid_size, device)
    print(f"generation, {what}, {ka.steps} steps, K={ka.k} samples of one prompt: one shared call {shared:.2f} samples/s, "
          f"K separate calls {separate:.2f} samples/s, ratio {shared / separate:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
