"""Cost of the SDPO safeguard's lambda sources against plain Diffusion-DPO (the paper's Table 4 columns).

One process, one model, the real training step (``sdpo.training.step.preference_forward`` + the
Diffusion-DPO objective + backward + grad clip + AdamW step), with the configurations interleaved
step by step so that drift (thermal, other load) hits all of them alike.  Prints the median step
time and the peak memory of each, as ratios to plain Diffusion-DPO.

    python bench/safeguard_overhead.py                       # CPU-sized UNet, 128 px
    python bench/safeguard_overhead.py --real-arch sd15      # SD1.5's UNet config, random weights (GPU)
    python bench/safeguard_overhead.py --lora_rank 8         # LoRA: lambda's gradients over the adapters only
    python bench/safeguard_overhead.py --quick               # seconds: 32 px, 1 pair, 1 step (any of the above)

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` (weights, optimizer state and activations,
as in the paper), from the timed steps.  On CPU, in separate rounds after the timed ones: the
process's peak resident set (VmHWM, reset before every step via ``/proc/self/clear_refs``) minus the
resident set before any model was built, with glibc told to return large blocks to the system at
once so that the resident set follows live tensors.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from bench.model_configs import SD15_UNET, SD15_UNET_QUICK, TEXT_QUICK  # noqa: E402
from bench.quick import parse  # noqa: E402

# Paper, Table 4 (one A100, bf16): Diffusion-DPO 183 s / 57.0 GB, +SDPO 184 s / 57.1 GB, param 314 s / 63.3 GB.
PAPER = {"output": (184 / 183, 57.1 / 57.0), "param": (314 / 183, 63.3 / 57.0)}
MODES = ("dpo", "fixed", "output", "param")
SAFEGUARD_FLAGS = {
    "dpo": [],
    "fixed": ["--use_winner_preserving", "--winner_preserving_mode", "fixed", "--winner_preserving_lambda", "0.5"],
    "output": ["--use_winner_preserving", "--winner_preserving_mode", "output"],
    "param": ["--use_winner_preserving", "--winner_preserving_mode", "param"],
}

SMALL_UNET = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64, 128),
    layers_per_block=2,
    norm_num_groups=16,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    attention_head_dim=8,
    cross_attention_dim=32,
)


def _rss_kb(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


class CpuPeak:
    """Peak resident set of this process around one step, above a baseline taken before models exist."""

    def __init__(self):
        self.ok = Path("/proc/self/clear_refs").exists()
        self.base = _rss_kb("VmRSS") if self.ok else 0
        self.libc = None

    def track_live_memory(self) -> None:
        """From now on glibc serves large blocks straight from mmap and returns them on free, so the
        resident set follows live tensors.  Slows allocation down: only for the memory rounds."""
        try:
            self.libc = ctypes.CDLL("libc.so.6")
            self.libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD
            self.libc.mallopt(-1, 64 * 1024)  # M_TRIM_THRESHOLD
        except OSError:
            self.libc = None

    def reset(self) -> None:
        if self.libc is not None:
            self.libc.malloc_trim(0)
        if self.ok:
            Path("/proc/self/clear_refs").write_text("5")

    def peak_bytes(self) -> float:
        return (_rss_kb("VmHWM") - self.base) * 1024.0 if self.ok else float("nan")


def build(args, device):
    """(one training config per mode, the components): the tiny SD1.5 model with its UNet replaced."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    from sdpo.config import parse_args
    from sdpo.families import load_family
    from sdpo.tiny import build_tiny_model, text_config

    tmp = tempfile.mkdtemp(prefix="sdpo-bench-")
    model = build_tiny_model("sd15", Path(tmp) / "m")
    common = ["--pretrained_model_name_or_path", str(model), "--resolution", str(args.resolution),
              "--gradient_checkpointing" if args.gradient_checkpointing else "--no-gradient_checkpointing"]  # fmt: skip
    if args.lora_rank:
        common += ["--lora_rank", str(args.lora_rank)]
    mu = ["--winner_preserving_mu", str(args.mu)]
    cfgs = {m: parse_args(common + SAFEGUARD_FLAGS[m] + (mu if m != "dpo" else [])) for m in MODES}
    cfg = cfgs["dpo"]
    comps = load_family(cfg.model, device, torch.float32, needs_reference=True)
    unet_cfg = dict(SD15_UNET_QUICK if args.quick else SD15_UNET) if args.real_arch == "sd15" else dict(SMALL_UNET)
    if args.real_arch == "sd15":  # SD1.5's text width (the tiny encoder's 2 layers and vocabulary)
        width = dict(hidden_size=TEXT_QUICK, intermediate_size=64, num_attention_heads=2) if args.quick else \
            dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12)  # fmt: skip
        text_cfg = text_config()  # its keyword arguments are fixed: widen the config it returns
        text_cfg.update(width)
        text = CLIPTextModel(text_cfg)
        comps.text_encoders = [text.requires_grad_(False).eval().to(device)]
    torch.manual_seed(0)
    comps.denoiser = UNet2DConditionModel(**unet_cfg).to(device).train()
    if args.gradient_checkpointing:
        comps.denoiser.enable_gradient_checkpointing()
    if args.lora_rank:  # adapters on a frozen base; the reference is that base with the adapters off
        from sdpo.lora import adapters as lora

        lora.add_adapters(comps.denoiser, lora.lora_config(cfg.model, type(comps), comps.denoiser), torch.float32, 0)
        comps.denoiser.to(device).train()
        comps.reference = lora.AdaptersOff(comps)
    else:
        comps.reference = copy.deepcopy(comps.denoiser).requires_grad_(False).eval()
    return cfgs, comps


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--real-arch", choices=["sd15"], default=None, help="SD1.5's UNet config (random weights)")
    p.add_argument("--resolution", type=int, default=None, help="pixels (default 128, or 512 with --real-arch)")
    p.add_argument("--batch", type=int, default=2, help="pairs per step")
    p.add_argument("--steps", type=int, default=9, help="timed steps per configuration")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--mu", type=float, default=0.9)
    p.add_argument("--gradient_checkpointing", action="store_true")
    p.add_argument("--lora_rank", type=int, default=None, help="train LoRA adapters of this rank (attn preset)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (1 is steadiest on a shared machine)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parse(p, argv, resolution=32, batch=1, steps=1, warmup=1)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.resolution = args.resolution or (512 if args.real_arch else 128)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    cpu_peak = None if cuda else CpuPeak()

    from sdpo.losses import get_objective
    from sdpo.training.step import preference_forward

    cfgs, comps = build(args, device)
    dpo = get_objective("diffusion-dpo")
    params = [q for q in comps.denoiser.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-8)
    g = torch.Generator().manual_seed(0)
    batch = {
        "pixel_values": torch.rand(2 * args.batch, 3, args.resolution, args.resolution, generator=g) * 2 - 1,
        "captions": [f"a red circle number {i}" for i in range(args.batch)],
        "sample_seeds": torch.arange(args.batch) + 1000,
    }

    def step(mode: str) -> tuple[float, float]:
        c = cfgs[mode]
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            cpu_peak.reset()
        t0 = time.perf_counter()
        terms = preference_forward(batch, comps, c, dpo, device)
        dpo.loss(terms, c.objective.params).loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        del terms
        if cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
        mem = torch.cuda.max_memory_allocated() if cuda else cpu_peak.peak_bytes()
        return elapsed, float(mem)

    # Timing rounds, then memory rounds (on CPU the memory probe slows allocation, so it runs apart).
    times = {m: [] for m in MODES}
    mems = {m: [] for m in MODES}
    for r in range(args.warmup + args.steps):
        order = MODES[r % len(MODES) :] + MODES[: r % len(MODES)]  # rotate: no mode always runs first
        for m in order:
            t, mem = step(m)
            if r >= args.warmup:
                times[m].append(t)
                mems[m].append(mem)
    if not cuda:
        cpu_peak.track_live_memory()
        mems = {m: [step(m)[1] for _ in range(1 if args.quick else 2)] for m in MODES}

    n_params = sum(q.numel() for q in params)
    where = torch.cuda.get_device_name(device) if cuda else f"CPU ({torch.get_num_threads()} threads)"
    arch = "SD1.5 UNet config" if args.real_arch else "small UNet"
    arch += " (--quick stand-in)" if args.quick and args.real_arch else ""
    print(
        f"{arch} ({n_params / 1e6:.1f} M params), {args.batch} pairs at {args.resolution} px, mu {args.mu}, "
        f"{args.steps} interleaved steps each after {args.warmup} warm-up, {where}"
        + (", gradient checkpointing" if args.gradient_checkpointing else "")
        + (f", LoRA rank {args.lora_rank} (params = the adapters)" if args.lora_rank else "")
    )
    base_t, base_m = statistics.median(times["dpo"]), max(mems["dpo"])
    print(
        f"{'mode':<8} {'median s/step':>14} {'time ratio':>11} {'peak MiB':>10} {'mem ratio':>10}   paper (time, mem)"
    )
    for m in MODES:
        t, mem = statistics.median(times[m]), max(mems[m])
        ref = PAPER.get(m)
        paper = f"{ref[0]:.3f}, {ref[1]:.3f}" if ref else ("1.000, 1.000" if m != "dpo" else "")
        print(f"{m:<8} {t:>14.4f} {t / base_t:>11.3f} {mem / 2**20:>10.1f} {mem / base_m:>10.3f}   {paper}")


if __name__ == "__main__":
    main()
