"""Images/s of eval/generate.py's sampler at batch size 1 vs a larger batch, side by side in one run.

    python bench/generation_throughput.py                       # tiny SD1.5 model, CPU or GPU
    python bench/generation_throughput.py --real-arch sd15      # GPU: the real SD1.5 architecture,
                                                                # random weights, nothing downloaded
    python bench/generation_throughput.py --quick [--real-arch sd15]   # seconds, CPU too (stand-in configs)

Batching is free for the images (they do not depend on the batch size), so this only measures what it
buys in speed. Batch 1 and batch B runs are interleaved over the same prompts and repeated; the
medians and their ratio are printed. Text encoding and VAE decoding are per image in both cases
(see sdpo/sampling/images.py), so the ratio is what batching the UNet gives.  On a CPU the UNet takes one
prompt per call whatever the batch (sdpo/sampling/images.py, "Batch invariance"), so there the ratio is ~1.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")  # as eval/generate.py runs

import argparse  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402

import torch  # noqa: E402

from bench import model_configs as mc  # noqa: E402
from bench.quick import parse  # noqa: E402
from bench.timing import timed  # noqa: E402
from sdpo.families import get_family  # noqa: E402
from sdpo.sampling.images import Components, generate_images, resolve_dtype  # noqa: E402
from sdpo.tiny import build_tiny_model  # noqa: E402


def _real_sd15(device: torch.device, dtype: torch.dtype, tmp: Path, quick: bool = False) -> Components:
    """SD1.5's UNet, text encoder and VAE architectures with random weights (no download), or their
    ``--quick`` stand-ins; the tokenizer is the tiny byte-level one, which only changes which token ids
    are looked up."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**(mc.SD15_UNET_QUICK if quick else mc.SD15_UNET))
    text = CLIPTextModel(CLIPTextConfig(**(mc.CLIP_L_QUICK if quick else mc.CLIP_L)))
    vae = AutoencoderKL(**(mc.SD_VAE_QUICK if quick else mc.SD_VAE), latent_channels=4, sample_size=512)
    sched = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading"
    )
    tok = CLIPTokenizer.from_pretrained(build_tiny_model("sd15", tmp / "tok"), subfolder="tokenizer")
    unet.to(device, dtype).eval()
    text.to(device, dtype).eval()
    vae.to(device).eval()  # fp32 decode, as in the paper's setting
    return Components(get_family("sd15"), unet, vae, sched, [tok], [text])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kind", choices=["sd15", "sdxl"], default="sd15", help="tiny model kind")
    ap.add_argument("--real-arch", choices=["sd15"], default=None, help="real SD1.5 architecture (GPU, or --quick)")
    ap.add_argument("--batch_size", type=int, default=8)
    ap.add_argument("--images", type=int, default=16, help="images per timed run (a multiple of --batch_size)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--size", type=int, default=None, help="default 64 (tiny) or 512 (real architecture)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default=None, help="default: the accelerator if there is one, else cpu")
    ap.add_argument("--dtype", default="auto")
    a = parse(ap, argv, batch_size=2, images=2, steps=2, size=32, repeats=1)

    accel = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
    device = torch.device(a.device or accel or "cpu")
    dtype = resolve_dtype(a.dtype, device)
    real = a.real_arch is not None and (device.type != "cpu" or a.quick)  # --quick: stand-ins fit a CPU
    if a.real_arch and not real:
        print("--real-arch needs an accelerator; measuring the tiny model on the CPU instead")
    size = a.size or (512 if real else 64)
    with tempfile.TemporaryDirectory() as tmp:
        if real:
            comp = _real_sd15(device, dtype, Path(tmp), a.quick)
            what = "SD1.5 layout, --quick stand-in" if a.quick else "SD1.5 architecture (random weights)"
        else:
            folder = build_tiny_model(a.kind, Path(tmp) / a.kind)
            comp = get_family(a.kind).load_sampling_components(str(folder), None, device, dtype, vae_path=str(folder))
            what = f"tiny {a.kind}"
        prompts = [f"prompt number {i}, a photo of a {['cat', 'dog', 'house', 'tree'][i % 4]}" for i in range(a.images)]

        def run(bs: int) -> None:
            for i in range(0, len(prompts), bs):
                generate_images(comp, prompts[i : i + bs], size, size, a.steps, 7.5, 0)

        run(a.batch_size)  # warm-up: allocator, kernels
        run(1)
        times: dict[int, list[float]] = {1: [], a.batch_size: []}
        for _ in range(a.repeats):
            for bs in (1, a.batch_size):
                times[bs].append(timed(lambda bs=bs: run(bs), device))

    rate = {bs: a.images / statistics.median(t) for bs, t in times.items()}
    print(f"{what}, {size}x{size}, {a.steps} steps, {dtype}, {device}, {a.images} images x {a.repeats} repeats")
    for bs, r in rate.items():
        spread = ", ".join(f"{a.images / t:.2f}" for t in times[bs])
        print(f"  batch {bs:>3}: {r:8.2f} images/s (median; runs: {spread})")
    print(f"  batch {a.batch_size} / batch 1 throughput ratio: {rate[a.batch_size] / rate[1]:.2f}x")


if __name__ == "__main__":
    main()
