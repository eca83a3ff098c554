"""LoRA (``--lora_rank``) against the full fine-tune with its frozen reference copy: peak memory and step time.

One process, one initial denoiser: the full fine-tune trains an fp32 copy beside a frozen reference copy in
the weight dtype; the LoRA run trains adapters on a copy frozen in the weight dtype whose reference is the
same module with the adapters off (``sdpo.lora.adapters``).  Both share the text encoders and the VAE and run the real
training step (``sdpo.training.step.preference_forward`` + Diffusion-DPO with the SDPO safeguard + backward + grad
clip + AdamW step), interleaved step by step so that drift hits both alike.  Prints the parameter counts,
each run's memory and the median step time, and the LoRA / full ratios.

    python bench/lora_vs_full.py                                   # CPU: a mid-size SD1.5-layout UNet, 128 px
    python bench/lora_vs_full.py --arch sd15 --resolution 512      # SD1.5's real configs (random weights), GPU
    python bench/lora_vs_full.py --arch sdxl --resolution 1024 --gradient_checkpointing --only lora   # 24 GB recipe
    python bench/lora_vs_full.py --quick [--arch sdxl]             # seconds: the arch's --quick stand-ins, 32 px

Memory of a run = the bytes of everything it keeps (its denoiser, its reference copy if any, its optimizer
state, and the shared text encoders and VAE, counted in both) + the peak its step allocates above what was
allocated before the step (activations, gradients, temporaries): on CUDA from ``torch.cuda`` allocator
statistics, on CPU from the process's peak resident set (VmHWM, reset before each step), with glibc told to
return freed blocks at once (``bench/safeguard_overhead.py``'s method), in separate rounds after the timed ones.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench import model_configs as mc  # noqa: E402
from bench.quick import parse  # noqa: E402
from bench.safeguard_overhead import CpuPeak, _rss_kb  # noqa: E402

GiB = 2**30
MID_UNET = mc.SD15_UNET_MID  # SD1.5's layout at 0.4x width: 142 M
SD_VAE = dict(mc.SD_VAE, latent_channels=4, sample_size=1024)
# --arch: (denoiser, text encoders (the second one with projection), VAE); and their --quick stand-ins
ARCHS = {
    "mid": (MID_UNET, [mc.CLIP_L], SD_VAE),
    "sd15": (mc.SD15_UNET, [mc.CLIP_L], SD_VAE),
    "sdxl": (mc.SDXL_UNET, [mc.CLIP_L, mc.CLIP_G], SD_VAE),
}
QUICK_ARCHS = {
    "mid": (mc.SD15_UNET_QUICK, [mc.CLIP_L_QUICK], dict(mc.SD_VAE_QUICK, latent_channels=4)),
    "sd15": (mc.SD15_UNET_QUICK, [mc.CLIP_L_QUICK], dict(mc.SD_VAE_QUICK, latent_channels=4)),
    "sdxl": (mc.SDXL_UNET_QUICK, [mc.CLIP_L_QUICK, mc.CLIP_G_QUICK], dict(mc.SD_VAE_QUICK, latent_channels=4)),
}


def _text_encoder(cls, spec: dict):
    from transformers import CLIPTextConfig

    return cls(CLIPTextConfig(**spec))


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    """Build modules directly in ``dtype`` (an SDXL UNet in fp32 is 10 GB before any cast)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def build(args, device: torch.device, weight_dtype: torch.dtype):
    """(cfg, the two runs as families, the initial denoiser's parameter count), on ``device``; ``args.quick``
    builds the arch's stand-ins."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from sdpo.config import parse_args
    from sdpo.families import get_family
    from sdpo.families.base import freeze
    from sdpo.lora import adapters as lora
    from sdpo.tiny import build_tiny_model

    kind = "sdxl" if args.arch == "sdxl" else "sd15"
    folder = build_tiny_model(kind, Path(tempfile.mkdtemp(prefix="sdpo-bench-")) / kind)
    flags = ["--pretrained_model_name_or_path", str(folder), "--resolution", str(args.resolution),
             "--use_winner_preserving", "--winner_preserving_mu", "0.6", "--lora_rank", str(args.rank),
             "--gradient_checkpointing" if args.gradient_checkpointing else "--no-gradient_checkpointing"]  # fmt: skip
    cfg = parse_args(flags + (["--lora_target_modules", *args.targets] if args.targets else []))
    unet_cfg, text_cfgs, vae_cfg = (QUICK_ARCHS if args.quick else ARCHS)[args.arch]
    family = get_family(kind)
    shared = family(cfg.model, device, weight_dtype)
    shared.scheduler = shared.load_scheduler()
    shared.load_text_encoders()
    torch.manual_seed(0)
    with default_dtype(weight_dtype):
        classes = (CLIPTextModel, CLIPTextModelWithProjection)
        te = [_text_encoder(cls, spec) for cls, spec in zip(classes, text_cfgs)]
        scaling = 0.13025 if args.arch == "sdxl" else 0.18215
        shared.vae = AutoencoderKL(**vae_cfg, scaling_factor=scaling)
    shared.text_encoders = te
    for m in (shared.vae, *shared.text_encoders):
        freeze(m, device, weight_dtype)

    # A LoRA-only run never needs the fp32 copy: build the UNet in the weight dtype at once.
    with torch.device(device), default_dtype(weight_dtype if args.only == "lora" else torch.float32):
        init = UNet2DConditionModel(**unet_cfg)  # random init where it runs (fast on a GPU)
    n_params = sum(p.numel() for p in init.parameters())

    def clone_family():
        fam = copy.copy(shared)
        fam.tokenizers, fam.text_encoders = shared.tokenizers, shared.text_encoders
        return fam

    runs = {}
    if args.only in (None, "full"):
        full = clone_family()
        full.denoiser = copy.deepcopy(init).float().train()
        full.reference = freeze(copy.deepcopy(init), device, weight_dtype)
        runs["full"] = full
    if args.only in (None, "lora"):
        low = clone_family()
        low.denoiser = init if args.only == "lora" else copy.deepcopy(init)
        lora.add_adapters(low.denoiser, lora.lora_config(cfg.model, family, low.denoiser), weight_dtype, cfg.model.seed)
        low.denoiser.to(device).train()
        low.reference = lora.AdaptersOff(low)
        runs["lora"] = low
    del init
    for fam in runs.values():
        if args.gradient_checkpointing:
            fam.denoiser.enable_gradient_checkpointing()
    return cfg, runs, n_params


def nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def kept_bytes(fam, opt) -> dict[str, int]:
    """What a run keeps between steps, by part."""
    ref = fam.reference if isinstance(fam.reference, torch.nn.Module) else None
    state = [v for s in opt.state.values() for v in s.values() if torch.is_tensor(v)]
    return {
        "denoiser": nbytes(fam.denoiser.parameters()) + nbytes(fam.denoiser.buffers()),
        "reference copy": nbytes(ref.parameters()) if ref is not None else 0,
        "optimizer state": nbytes(state),
        "text encoders + VAE (shared)": nbytes(p for m in (fam.vae, *fam.text_encoders) for p in m.parameters()),
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", choices=["mid", "sd15", "sdxl"], default="mid", help="denoiser config (random weights)")
    p.add_argument("--resolution", type=int, default=128)
    p.add_argument("--batch", type=int, default=1, help="pairs per step")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--targets", nargs="+", default=None, help="--lora_target_modules (default: the attn preset)")
    p.add_argument("--steps", type=int, default=6, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--gradient_checkpointing", action="store_true")
    p.add_argument("--only", choices=["full", "lora"], default=None, help="measure one run (e.g. when both do not fit)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parse(p, argv, resolution=32, steps=1, warmup=1)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    weight_dtype = torch.bfloat16 if cuda else torch.float32  # CPU: fp32 everywhere (bf16 matmuls are slow there)
    cpu_peak = None if cuda else CpuPeak()

    from sdpo.lora import adapters as lora
    from sdpo.losses import get_objective
    from sdpo.training.step import preference_forward

    cfg, runs, n_params = build(args, device, weight_dtype)
    dpo = get_objective("diffusion-dpo")
    params = {k: [q for q in f.denoiser.parameters() if q.requires_grad] for k, f in runs.items()}
    opts = {k: torch.optim.AdamW(v, lr=1e-6) for k, v in params.items()}
    g = torch.Generator().manual_seed(0)
    batch = {
        "pixel_values": torch.rand(2 * args.batch, 3, args.resolution, args.resolution, generator=g) * 2 - 1,
        "captions": [f"a red circle number {i}" for i in range(args.batch)],
        "sample_seeds": torch.arange(args.batch) + 1000,
    }

    def step(name: str) -> tuple[float, float]:
        """(seconds, bytes allocated by the step above what was there before it)."""
        fam, opt = runs[name], opts[name]
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        else:
            cpu_peak.reset()
            before = _rss_kb("VmRSS") * 1024
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            terms = preference_forward(batch, fam, cfg, dpo, device)
            loss = dpo.loss(terms, cfg.objective.params).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params[name], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        del terms, loss
        if cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated() if cuda else _rss_kb("VmHWM") * 1024
        return elapsed, float(peak - before)

    names = list(runs)
    times = {k: [] for k in names}
    transient = {k: [] for k in names}
    for r in range(args.warmup + args.steps):
        for name in names[r % len(names) :] + names[: r % len(names)]:  # alternate which runs first
            t, mem = step(name)
            if r >= args.warmup:
                times[name].append(t)
                transient[name].append(mem)
    if not cuda:  # the memory probe slows allocation down: its own rounds
        cpu_peak.track_live_memory()
        transient = {k: [step(k)[1] for _ in range(2)] for k in names}

    where = torch.cuda.get_device_name(device) if cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(f"{args.arch} UNet config{' (--quick stand-in)' if args.quick else ''}, {args.batch} pair(s) at {args.resolution} px, weight dtype "
          f"{str(weight_dtype).removeprefix('torch.')}{', gradient checkpointing' if args.gradient_checkpointing else ''}"
          f", LoRA rank {args.rank} on {cfg.model.lora_target_modules or 'attn'}, Diffusion-DPO + SDPO, AdamW, {where}; "
          f"{args.steps} interleaved steps each after {args.warmup} warm-up")  # fmt: skip
    print(f"denoiser parameters: {n_params / 1e6:.1f} M")
    total = {}
    for name in names:
        trained, _ = lora.parameter_counts(runs[name].denoiser)
        ref = runs[name].reference
        copy_params = sum(q.numel() for q in ref.parameters()) if isinstance(ref, torch.nn.Module) else 0
        kept = kept_bytes(runs[name], opts[name])
        peak = max(transient[name])
        total[name] = sum(kept.values()) + peak
        print(f"  {name:<5} trained {trained / 1e6:9.2f} M, reference copy {copy_params / 1e6:9.1f} M; memory "
              + ", ".join(f"{k} {v / GiB:.3f}" for k, v in kept.items())
              + f", step peak above that {peak / GiB:.3f}; total {total[name] / GiB:.3f} GiB; "
              f"median {statistics.median(times[name]):.3f} s/step")  # fmt: skip
    if len(names) == 2:
        mem_ratio = total["lora"] / total["full"]
        time_ratio = statistics.median(times["lora"]) / statistics.median(times["full"])
        print(
            f"LoRA / full: peak memory {mem_ratio:.3f}x (target <= 0.55), step time {time_ratio:.3f}x (target <= 1.0)"
        )


if __name__ == "__main__":
    main()
