"""GPU memory of an SDPO LoRA run, computed without a GPU: the README's "SDPO on one 24 GB GPU" recipe (SDXL).

    python bench/lora_memory.py                                  # SDXL, rank 8 on attn, 1024 px, 1 pair per step
    python bench/lora_memory.py --measure 128 192 256            # ... with the step's peak measured and extrapolated
    python bench/lora_memory.py --quick                          # both on the --quick stand-ins, measured at 32, 48 px

Three parts, each printed:

* kept weights: the real SDXL configs built on the meta device and counted (UNet, both text encoders, VAE),
  at 2 bytes per parameter (bf16: frozen base and frozen encoders alike);
* adapters: their count for ``--rank`` / ``--targets`` (peft on the meta UNet); fp32 weights and AdamW's two
  fp32 moments are kept between steps (12 bytes each); their fp32 gradients live during the step and are
  part of the step peak below;
* the step peak above what is kept (activations under gradient checkpointing, gradients, temporaries):
  measured, with ``--measure``, on this machine's CPU for the real training step
  (``sdpo.training.step.preference_forward`` with Diffusion-DPO and the SDPO safeguard, the reference forward with
  adapters off, backward, clip, AdamW) of the real configs in bf16 under autocast, by counting live tensor
  storage at the dispatcher (``bench/live_memory.py``).  A CPU step at 1024 px would take too long on a
  small machine, so it runs at a few small resolutions; under gradient checkpointing and a memory-efficient
  attention kernel every activation grows with the pixel count, so a straight line ``a + b * pixels``
  is fitted and extrapolated (the fit's worst residual is printed).

Not counted: the CUDA context and cuBLAS/cuDNN workspaces (about 0.5-1 GB) and allocator fragmentation.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.lora_vs_full import ARCHS, QUICK_ARCHS, _text_encoder, build  # noqa: E402
from bench.quick import parse  # noqa: E402

GB = 1e9


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def parameter_counts(rank: int, targets: list[str] | None, quick: bool = False) -> dict[str, int]:
    """The real SDXL parts (or their ``--quick`` stand-ins) on the meta device, and the adapters peft adds for
    ``rank`` / ``targets``."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from sdpo.families import get_family
    from sdpo.lora import adapters as lora

    unet_cfg, (clip_l, clip_g), vae_cfg = (QUICK_ARCHS if quick else ARCHS)["sdxl"]
    with torch.device("meta"):
        unet = UNet2DConditionModel(**unet_cfg)
        out = {
            "UNet": count(unet),
            "text encoder (CLIP ViT-L)": count(_text_encoder(CLIPTextModel, clip_l)),
            "text encoder 2 (OpenCLIP bigG)": count(_text_encoder(CLIPTextModelWithProjection, clip_g)),
            "VAE": count(AutoencoderKL(**vae_cfg)),
        }
        cfg = SimpleNamespace(lora_rank=rank, lora_alpha=None, lora_dropout=0.0, lora_target_modules=targets)
        unet.requires_grad_(False)
        unet.add_adapter(lora.lora_config(cfg, get_family("sdxl"), unet))
    out["LoRA adapters"] = sum(p.numel() for n, p in unet.named_parameters() if ".lora_" in n)
    return out


def measure_step_peak(resolution: int, args) -> float:
    """Bytes a LoRA training step allocates above what it keeps (2nd step: the optimizer state exists)."""
    from bench.live_memory import LiveBytes
    from sdpo.losses import get_objective
    from sdpo.training.step import preference_forward

    ns = SimpleNamespace(arch="sdxl", resolution=resolution, rank=args.rank, targets=args.targets,
                         gradient_checkpointing=True, only="lora", quick=args.quick)  # fmt: skip
    cfg, runs, _ = build(ns, torch.device("cpu"), torch.bfloat16)
    fam = runs["lora"]
    dpo = get_objective("diffusion-dpo")
    params = [p for p in fam.denoiser.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-6)
    g = torch.Generator().manual_seed(0)
    batch = {"pixel_values": torch.rand(2, 3, resolution, resolution, generator=g) * 2 - 1,
             "captions": ["a red circle on a blue square"], "sample_seeds": torch.tensor([1000])}  # fmt: skip
    tracker = LiveBytes()
    with tracker:
        for i in range(2):
            if i == 1:
                tracker.reset_peak()
                start = tracker.live
            with torch.autocast("cpu", dtype=torch.bfloat16):
                terms = preference_forward(batch, fam, cfg, dpo, torch.device("cpu"))
                loss = dpo.loss(terms, cfg.objective.params).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            del terms, loss
    return float(tracker.peak - start)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--targets", nargs="+", default=None, help="--lora_target_modules (default: the attn preset)")
    p.add_argument("--resolution", type=int, default=1024)
    p.add_argument("--measure", type=int, nargs="*", default=[], help="resolutions to measure the step peak at (CPU)")
    p.add_argument("--threads", type=int, default=None)
    args = parse(p, argv, measure=[32, 48])
    if args.threads:
        torch.set_num_threads(args.threads)

    counts = parameter_counts(args.rank, args.targets, args.quick)
    n_lora = counts.pop("LoRA adapters")
    configs = "--quick stand-ins" if args.quick else "real configs"
    print(f"SDXL parameter counts ({configs}, meta device); LoRA rank {args.rank} on {args.targets or 'attn'}:")
    for name, n in counts.items():
        print(f"  {name:<32} {n / 1e6:9.1f} M   bf16 {2 * n / GB:6.2f} GB")
    frozen = 2 * sum(counts.values())
    kept = frozen + 12 * n_lora
    print(f"  {'LoRA adapters':<32} {n_lora / 1e6:9.2f} M   fp32 weights + AdamW moments {12 * n_lora / GB:.3f} GB "
          f"(+ fp32 gradients {4 * n_lora / GB:.3f} GB during the step)")  # fmt: skip
    print(f"kept between steps: {kept / GB:.2f} GB")
    if not args.measure:
        return
    pixels, peaks = [], []
    for res in args.measure:
        t0 = time.perf_counter()
        peaks.append(measure_step_peak(res, args))
        pixels.append(res * res)
        print(f"  step peak above that at {res} px: {peaks[-1] / GB:.3f} GB ({time.perf_counter() - t0:.0f} s)")
    x, y = torch.tensor(pixels, dtype=torch.float64), torch.tensor(peaks, dtype=torch.float64)
    slope, icpt = torch.linalg.lstsq(torch.stack([x, torch.ones_like(x)], 1), y[:, None]).solution.flatten().tolist()
    worst = max(abs(icpt + slope * px - pk) / pk for px, pk in zip(pixels, peaks))
    fitted = icpt + slope * args.resolution**2
    scaled = peaks[-1] * args.resolution**2 / pixels[-1]  # the largest measurement, grown with the pixel count
    step = max(fitted, scaled)
    print(f"fit: {icpt / GB:.3f} GB + {slope * 1e6 / GB:.3f} GB per megapixel (worst residual {100 * worst:.1f}%); "
          f"at {args.resolution} px: {fitted / GB:.2f} GB; {args.measure[-1]} px scaled by the pixel count: "
          f"{scaled / GB:.2f} GB; taken: the larger, {step / GB:.2f} GB")  # fmt: skip
    print(
        f"total at {args.resolution} px, 1 pair per step: {kept / GB:.2f} + {step / GB:.2f} = "
        f"{(kept + step) / GB:.2f} GB ({(kept + step) / 2**30:.2f} GiB) before the CUDA context and fragmentation"
    )


if __name__ == "__main__":
    main()
