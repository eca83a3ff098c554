"""What precomputed latents and text (``sdpo.cache.precompute`` / ``train.py --precomputed``) save.

1. FLOPs of one Diffusion-DPO pair per component (VAE encode of 2 images, text encode of 1 caption,
   policy forward+backward and reference forward on the stacked 2 images), counted with
   ``torch.utils.flop_counter.FlopCounterMode`` on the meta device with the real configs of SD1.5,
   SDXL and FLUX.1-dev: the cache removes the first two, which bounds the speed-up.
2. Step time, cached vs uncached, interleaved in one process (so drift and other load hit both arms
   alike): the real training step (``sdpo.training.step.preference_forward`` + Diffusion-DPO + SDPO
   safeguard + backward + clipping + optimizer step) on SD1.5's real architecture (random weights:
   UNet2DConditionModel, AutoencoderKL and CLIP text model with SD1.5's configs) and on the tiny model.
   The cached arm gets the posterior's mean and std and the text encoding of the same pixels and
   caption, as the cache stores them; everything each step draws is the same in both arms.
3. Memory no longer held: parameter bytes of the VAE and text encoders per family.
4. Cache size per pair and for Pick-a-Pic v2 per family, from the shapes.

    python bench/cache_speedup.py                       # all four; CPU: SD1.5 at 256 px, 3 steps per arm
    python bench/cache_speedup.py --resolution 512 --steps 10 --device cuda
    python bench/cache_speedup.py --skip-real           # FLOPs, memory, sizes and the tiny model only
    python bench/cache_speedup.py --quick               # all four on the --quick stand-in configs: seconds
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from bench import model_configs as mc  # noqa: E402
from bench.quick import parse  # noqa: E402

# Pick-a-Pic v2 train split after dropping ties (Diffusion-DPO paper, Wallace et al. 2024).
PICKAPIC_PAIRS, PICKAPIC_PROMPTS = 851_293, 58_960


def families(quick: bool = False) -> dict[str, dict]:
    """Per family: resolution, VAE latent channels and config, denoiser config, text encoders, tokens per
    encoder and conditioning elements per caption; from the published configs, or ``--quick``'s stand-ins."""
    if quick:
        clip_l, clip_g, t5, vae_cfg = mc.CLIP_L_QUICK, mc.CLIP_G_QUICK, mc.T5_XXL_QUICK, mc.SD_VAE_QUICK
        sd15, sdxl, sd3, flux = mc.SD15_UNET_QUICK, mc.SDXL_UNET_QUICK, mc.SD35_LARGE_QUICK, mc.FLUX_DEV_QUICK
    else:
        clip_l, clip_g, t5, vae_cfg = mc.CLIP_L, mc.CLIP_G, mc.T5_XXL, mc.SD_VAE
        sd15, sdxl, sd3, flux = mc.SD15_UNET, mc.SDXL_UNET, mc.SD35_LARGE, mc.FLUX_DEV
    # conditioning elements per caption: the denoiser's text states (and pooled embeddings)
    l_dim, g_dim, t5_dim = clip_l["hidden_size"], clip_g["hidden_size"], t5["d_model"]
    text = {
        "sd15": 77 * l_dim,
        "sdxl": 77 * (l_dim + g_dim) + clip_g["projection_dim"],
        "sd3": (77 + 256) * t5_dim + clip_l["projection_dim"] + clip_g["projection_dim"],
        "flux": 512 * t5_dim + l_dim,
    }
    rows = {  # family: (resolution, VAE latent channels, denoiser, text encoders, tokens per encoder)
        "sd15": (512, 4, sd15, [("clip", clip_l)], [77]),
        "sdxl": (1024, 4, sdxl, [("clip", clip_l), ("clipp", clip_g)], [77, 77]),
        "sd3": (1024, 16, sd3, [("clipp", clip_l), ("clipp", clip_g), ("t5", t5)], [77, 77, 256]),
        "flux": (1024, 16, flux, [("clip", clip_l), ("t5", t5)], [77, 512]),
    }
    keys = ("res", "channels", "denoiser", "encoders", "tokens")
    return {name: dict(zip(keys, row), vae=vae_cfg, text=text[name]) for name, row in rows.items()}


def vae(latent_channels: int, config: dict = mc.SD_VAE):
    from diffusers import AutoencoderKL

    return AutoencoderKL(**config, latent_channels=latent_channels, use_quant_conv=latent_channels == 4,
                         use_post_quant_conv=latent_channels == 4)  # fmt: skip


def text_encoder(kind: str, config: dict):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    if kind == "t5":
        return T5EncoderModel(T5Config(**config))
    cls = CLIPTextModel if kind == "clip" else CLIPTextModelWithProjection
    return cls(CLIPTextConfig(**config))


# ----------------------------------------------------------------------------- 1. FLOPs


def flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def flop_breakdown(fam: dict, name: str, res: int | None = None) -> dict[str, float]:
    """TFLOP per component of one pair of family ``name`` (a row of ``families()``) at ``res`` (default: the
    family's resolution), on the meta device."""
    res = res or fam["res"]
    encoders, tokens, d = fam["encoders"], fam["tokens"], fam["denoiser"]
    lat = res // 8
    with torch.device("meta"):
        v = vae(fam["channels"], fam["vae"])
        texts = [text_encoder(k, c) for k, c in encoders]
        if name == "flux":
            from diffusers import FluxTransformer2DModel

            denoiser = FluxTransformer2DModel(**d)
            seq, txt = (lat // 2) ** 2, tokens[-1]
            kw = dict(hidden_states=torch.randn(2, seq, d["in_channels"]), timestep=torch.ones(2),
                      guidance=torch.ones(2), pooled_projections=torch.randn(2, d["pooled_projection_dim"]),
                      encoder_hidden_states=torch.randn(2, txt, d["joint_attention_dim"]),
                      txt_ids=torch.zeros(txt, 3), img_ids=torch.zeros(seq, 3), return_dict=False)  # fmt: skip
        else:
            from diffusers import UNet2DConditionModel

            denoiser = UNet2DConditionModel(**d)
            kw = dict(sample=torch.randn(2, 4, lat, lat), timestep=torch.ones(2), return_dict=False,
                      encoder_hidden_states=torch.randn(2, 77, d["cross_attention_dim"]))  # fmt: skip
            if name == "sdxl":
                pooled = d["projection_class_embeddings_input_dim"] - 6 * d["addition_time_embed_dim"]
                kw["added_cond_kwargs"] = {"text_embeds": torch.randn(2, pooled), "time_ids": torch.randn(2, 6)}
        pixels = torch.randn(2, 3, res, res)

        def policy():
            denoiser(**kw)[0].sum().backward()

        def reference():
            with torch.no_grad():
                denoiser(**kw)

        with torch.no_grad():
            out = {
                "VAE encode": flops(lambda: v.encode(pixels)),
                "text encode": sum(
                    flops(lambda e=e, n=n: e(torch.zeros(1, n, dtype=torch.long))) for e, n in zip(texts, tokens)
                ),  # fmt: skip
            }
        out["policy fwd+bwd"] = flops(policy)
        out["reference fwd"] = flops(reference)
    return {k: x / 1e12 for k, x in out.items()}


def print_flops(fams: dict, names) -> None:
    print("\n1. FLOPs of one Diffusion-DPO pair (2 images, 1 caption), TFLOP and share of the step; meta device,")
    print("   real configs, torch.utils.flop_counter (no gradient checkpointing)")
    cols = ("VAE encode", "text encode", "policy fwd+bwd", "reference fwd")
    print(f"{'family':<7}{'px':>6}" + "".join(f"{c:>22}" for c in cols) + f"{'total':>9}{'bound':>8}")
    for name in names:
        f = flop_breakdown(fams[name], name)
        total = sum(f.values())
        cells = "".join(f"{f[c]:>12.3f} ({100 * f[c] / total:5.1f}%)" for c in cols)
        bound = total / (total - f["VAE encode"] - f["text encode"])
        print(f"{name:<7}{fams[name]['res']:>6}{cells}{total:>9.2f}{bound:>7.3f}x")


# ----------------------------------------------------------------------------- 2. step time


def build_family(real: bool, resolution: int, device, arch: dict):
    """The tiny sd15 model loaded as training loads it; with ``real``, its VAE, text encoder and denoiser
    replaced by ``arch``'s (a row of ``families()``: SD1.5's architectures, or their ``--quick`` stand-ins)."""
    from diffusers import UNet2DConditionModel

    from sdpo.config import parse_args
    from sdpo.families import get_family
    from sdpo.tiny import build_tiny_model

    model = build_tiny_model("sd15", Path(tempfile.mkdtemp(prefix="sdpo-bench-")) / "m")
    cfg = parse_args(["--pretrained_model_name_or_path", str(model), "--resolution", str(resolution),
                      "--use_winner_preserving", "--winner_preserving_mu", "0.9", "--no-gradient_checkpointing"])  # fmt: skip
    fam = get_family("sd15").load(cfg.model, device, torch.float32, needs_reference=True)
    if real:  # SD1.5's architectures, random weights; the tokenizer stays the tiny byte-level one
        torch.manual_seed(0)
        fam.vae = vae(arch["channels"], arch["vae"]).requires_grad_(False).eval().to(device)
        fam.vae.register_to_config(scaling_factor=0.18215)
        fam.text_encoders = [text_encoder(k, c).requires_grad_(False).eval().to(device) for k, c in arch["encoders"]]
        fam.denoiser = UNet2DConditionModel(**arch["denoiser"]).to(device).train()
        # On a CPU the reference shares the policy's weights (the same forward, run under no_grad; the
        # UNet has no dropout): 3.4 GB less, so the run fits a small machine.  Elsewhere: a frozen copy.
        shared = device.type == "cpu"
        fam.reference = fam.denoiser if shared else copy.deepcopy(fam.denoiser).requires_grad_(False).eval()
    return cfg, fam


def time_steps(real: bool, args, device, arch: dict) -> tuple[float, float, int, str]:
    """Median seconds per step (uncached, cached) of interleaved steps."""
    from sdpo.losses import get_objective
    from sdpo.training.step import preference_forward

    res = args.resolution if real else 64
    cfg, fam = build_family(real, res, device, arch)
    dpo = get_objective("diffusion-dpo")
    params = [p for p in fam.denoiser.parameters() if p.requires_grad]
    # Real architecture on a CPU: SGD keeps no state (AdamW's 6.9 GB would not fit beside two UNets); its
    # update is the same in both arms.  The tiny model: AdamW, as training.
    opt = torch.optim.SGD(params, lr=1e-8) if real else torch.optim.AdamW(params, lr=1e-8)
    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(2 * args.batch, 3, res, res, generator=g) * 2 - 1
    captions = [f"a photo of a red circle number {i}" for i in range(args.batch)]
    seeds = torch.arange(args.batch) + 1000
    mean, std = fam.encode_posterior(pixels.to(device))  # what the cache stores for these pixels
    plain = {"pixel_values": pixels, "captions": captions, "sample_seeds": seeds}
    cached = {"latent_mean": mean.cpu(), "latent_std": std.cpu(), "text": fam.encode_prompt(captions),
              "sample_seeds": seeds}  # fmt: skip

    def step(batch) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        terms = preference_forward(batch, fam, cfg, dpo, device)
        dpo.loss(terms, cfg.objective.params).loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    steps = args.steps if real else args.tiny_steps
    times = {"plain": [], "cached": []}
    for r in range(args.warmup + steps):
        for arm in ("plain", "cached") if r % 2 == 0 else ("cached", "plain"):
            t = step(plain if arm == "plain" else cached)
            if r >= args.warmup:
                times[arm].append(t)
    return statistics.median(times["plain"]), statistics.median(times["cached"]), res, f"{len(times['plain'])}"


def print_times(args, device, fams: dict) -> None:
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"\n2. Step time, uncached vs cached, interleaved ({args.batch} pair(s) per step, {where})")
    print(f"{'model':<34}{'px':>5}{'steps':>7}{'uncached s':>12}{'cached s':>10}{'speed-up':>10}")
    arms = ([] if args.skip_real else [True]) + [False]
    for real in arms:
        plain, cached, res, n = time_steps(real, args, device, fams["sd15"])
        name = ("SD1.5 layout, --quick stand-in" if args.quick else "SD1.5 architecture (random weights)") if real \
            else "tiny sd15 (sdpo.tiny)"  # fmt: skip
        if real and device.type == "cpu":
            name += "*"
        print(f"{name:<34}{res:>5}{n:>7}{plain:>12.3f}{cached:>10.3f}{plain / cached:>9.3f}x")
        if real:
            f = flop_breakdown(fams["sd15"], "sd15", res)
            total = sum(f.values())
            print(f"{'':<34}FLOP bound at {res} px: {total / (total - f['VAE encode'] - f['text encode']):.3f}x")
    if not args.skip_real and device.type == "cpu":
        print("* SGD (no optimizer state) and a reference sharing the policy's weights, to fit a CPU machine's memory")


# ----------------------------------------------------------------------------- 3. memory, 4. sizes


def print_memory(fams: dict, names) -> None:
    print("\n3. Parameters not loaded with a cache: the VAE and the text encoders (GB at 4 / 2 bytes per parameter)")
    for name in names:
        fam = fams[name]
        with torch.device("meta"):
            n = sum(p.numel() for p in vae(fam["channels"], fam["vae"]).parameters())
            n += sum(p.numel() for k, c in fam["encoders"] for p in text_encoder(k, c).parameters())
        print(f"{name:<7}{n / 1e9:7.2f} B parameters: {4 * n / 1e9:6.2f} GB fp32, {2 * n / 1e9:6.2f} GB bf16")


def print_sizes(fams: dict, names) -> None:
    from sdpo.cache.store import estimate_bytes

    print("\n4. Cache size (2 flips, mean+std, winner+loser; text per unique caption): per pair, and for "
          f"Pick-a-Pic v2 ({PICKAPIC_PAIRS:,} pairs, {PICKAPIC_PROMPTS:,} prompts)")  # fmt: skip
    print(f"{'family':<7}{'px':>6}{'latent':>14}{'per pair fp32':>15}{'text/caption':>14}"
          f"{'Pick-a-Pic fp32':>17}{'bf16':>10}")  # fmt: skip
    for name in names:
        res, channels, text = fams[name]["res"], fams[name]["channels"], fams[name]["text"]
        shape = (channels, res // 8, res // 8)
        row = []
        for itemsize in (4, 2):
            b = estimate_bytes(PICKAPIC_PAIRS, PICKAPIC_PROMPTS, shape, text, 2, itemsize)
            row.append((b["per_pair"], b["latents"] + b["text"], text * itemsize))
        shape_s = "x".join(map(str, shape))
        print(f"{name:<7}{res:>6}{shape_s:>14}{row[0][0] / 1e6:>12.2f} MB{row[0][2] / 1e6:>11.2f} MB"
              f"{row[0][1] / 1e9:>14.0f} GB{row[1][1] / 1e9:>7.0f} GB")  # fmt: skip


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--resolution", type=int, default=256, help="pixels for the SD1.5-architecture timing")
    p.add_argument("--batch", type=int, default=1, help="pairs per step")
    p.add_argument("--steps", type=int, default=3, help="timed steps per arm, SD1.5 architecture")
    p.add_argument("--tiny-steps", type=int, default=20, help="timed steps per arm, tiny model")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--skip-real", action="store_true", help="no SD1.5-architecture timing")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (1 is steadiest on a shared machine)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parse(p, argv, resolution=32, steps=1, tiny_steps=1)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    fams = families(args.quick)
    if args.quick:
        print("--quick: the stand-in configs of bench/model_configs.py, not the real ones; numbers not meaningful")
    print_flops(fams, ["sd15", "sdxl", "flux"])
    print_memory(fams, ["sd15", "sdxl", "sd3", "flux"])
    print_sizes(fams, ["sd15", "sdxl", "sd3", "flux"])
    print_times(args, device, fams)


if __name__ == "__main__":
    main()
