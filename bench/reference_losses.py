"""What precomputed reference losses save (``python -m sdpo.precompute --reference_losses``, then
``train.py --precomputed``): step time and peak memory of three arms, and what a sweep costs with them.

The arms run the real training step (``sdpo.training.step.preference_forward`` + Diffusion-DPO + the SDPO
safeguard + backward + gradient clipping + the optimizer step) on one model and the same pairs, interleaved
step by step in one process so that drift and other load hit all three alike:

* uncached: pixels and captions; the step encodes them (VAE, text encoder) and runs the reference forward;
* latent cache: the posterior's mean and std and the text encoding, as the cache stores them; the step runs
  the reference forward;
* latent + reference-loss cache: the same, plus ``L_ref_w``, ``L_ref_l`` precomputed by
  ``sdpo.training.step.reference_pair_losses`` (what the precompute runs); no reference model exists.  The
  bench checks these equal the reference losses the step computes, bit for bit.

Model: the real SD1.5 layout (UNet block types, attention, CLIP-L, the SD VAE) with random weights; ``--arch mid``
(default) narrows the UNet to 0.4x width (142 M parameters, fits a CPU), ``--arch sd15`` is SD1.5's UNet itself.
Memory of an arm = what it keeps (policy, optimizer state, the reference copy if loaded, the VAE and text
encoder if loaded: parameter bytes) + the most its step allocates above that (on CUDA from the allocator's
statistics; on a CPU counted at the dispatcher, ``bench/live_memory.py``), in rounds after the timed ones.

The sweep arithmetic uses these per-pair times and the precompute passes' own (the VAE and text encode of
every pair's variants once; the reference forward of every pair the runs read) for the paper's Table 1 grid:
Diffusion-DPO, DSPO and DMPO, each with and without SDPO, 2000 steps of 2048 pairs on Pick-a-Pic v2.

    python bench/reference_losses.py                          # CPU: mid-size SD1.5 layout, 128 and 256 px
    python bench/reference_losses.py --arch sd15 --resolutions 512 --steps 10 --device cuda
    python bench/reference_losses.py --quick                  # seconds: the --quick stand-in configs, 32 px
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
from bench.cache_speedup import PICKAPIC_PAIRS, PICKAPIC_PROMPTS, flop_breakdown, text_encoder, vae  # noqa: E402
from bench.cache_speedup import families as cache_families  # noqa: E402
from bench.quick import parse  # noqa: E402

GB = 1e9
ARMS = ("uncached", "latent cache", "latent + ref losses")
# The paper's Table 1 sweep: three objectives x with/without SDPO; DSPO reads the reference's prediction, so its
# two runs keep the reference in the step (sdpo.losses.reference_use).
GRID = {"diffusion-dpo": 2, "dmpo": 2, "dspo": 2}
STEPS, GLOBAL_BATCH = 2000, 2048  # the paper's SD1.5 runs


def arch_row(args) -> dict:
    """The SD1.5 row of ``bench/cache_speedup.py``'s families (VAE, CLIP-L), its UNet per ``--arch``."""
    row = dict(cache_families(args.quick)["sd15"])
    if not args.quick:
        row["denoiser"] = mc.SD15_UNET_MID if args.arch == "mid" else mc.SD15_UNET
    return row


def build(args, resolution: int, device, row: dict):
    """(cfg, the family with its reference, the same without one), SD1.5's parts per ``row``."""
    from diffusers import UNet2DConditionModel

    from sdpo.config import parse_args
    from sdpo.families import get_family
    from sdpo.families.base import freeze
    from sdpo.tiny import build_tiny_model

    model = build_tiny_model("sd15", Path(tempfile.mkdtemp(prefix="sdpo-bench-")) / "m")
    cfg = parse_args(["--pretrained_model_name_or_path", str(model), "--resolution", str(resolution),
                      "--use_winner_preserving", "--winner_preserving_mu", "0.9", "--no-gradient_checkpointing"])  # fmt: skip
    fam = get_family("sd15").load(cfg.model, device, torch.float32, needs_reference=False)
    torch.manual_seed(0)
    fam.vae = vae(row["channels"], row["vae"]).requires_grad_(False).eval().to(device)
    fam.vae.register_to_config(scaling_factor=0.18215)
    fam.text_encoders = [text_encoder(k, c).requires_grad_(False).eval().to(device) for k, c in row["encoders"]]
    fam.denoiser = UNet2DConditionModel(**row["denoiser"]).to(device).train()
    # The real SD1.5 UNet on a CPU: its reference shares the policy's weights (the same forward under no_grad;
    # no dropout), 3.4 GB less, and is counted by arithmetic like every kept part.  Otherwise a frozen copy.
    shared = args.arch == "sd15" and device.type == "cpu" and not args.quick
    fam.reference = fam.denoiser if shared else freeze(copy.deepcopy(fam.denoiser), device, torch.float32)
    bare = copy.copy(fam)
    bare.reference, bare.vae, bare.text_encoders = None, None, []  # what train.py loads with both caches
    return cfg, fam, bare, shared


def nbytes(modules) -> int:
    return sum(p.numel() * p.element_size() for m in modules for p in m.parameters())


def measure(args, resolution: int, device, row: dict) -> dict:
    """Median seconds per step, memory per arm, and the precompute passes' seconds per pair."""
    from sdpo.losses import get_objective
    from sdpo.training.step import preference_forward, reference_pair_losses

    cfg, fam, bare, shared = build(args, resolution, device, row)
    dpo = get_objective("diffusion-dpo")
    params = [p for p in fam.denoiser.parameters() if p.requires_grad]
    sgd = shared  # the real SD1.5 UNet on a CPU: SGD (no state), or AdamW's 6.9 GB would not fit beside it
    opt = torch.optim.SGD(params, lr=1e-8) if sgd else torch.optim.AdamW(params, lr=1e-8)
    g = torch.Generator().manual_seed(0)
    b = args.batch
    pixels = torch.rand(2 * b, 3, resolution, resolution, generator=g) * 2 - 1
    captions = [f"a photo of a red circle number {i}" for i in range(b)]
    seeds = torch.arange(b) + 1000
    with torch.no_grad():
        mean, std = fam.encode_posterior(pixels.to(device))
        text = fam.encode_prompt(captions)
    plain = {"pixel_values": pixels, "captions": captions, "sample_seeds": seeds}
    cached = {"latent_mean": mean.cpu(), "latent_std": std.cpu(), "text": text, "sample_seeds": seeds}
    precomputed = {**cached, "ref_losses": reference_pair_losses(cached, fam, cfg, device).cpu()}
    in_step = preference_forward(cached, fam, cfg, dpo, device)
    exact = torch.equal(torch.stack([in_step.ref_w, in_step.ref_l], dim=1).cpu(), precomputed["ref_losses"])
    arms = {"uncached": (fam, plain), "latent cache": (fam, cached), "latent + ref losses": (bare, precomputed)}

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def step(arm: str) -> float:
        family, batch = arms[arm]
        sync()
        t0 = time.perf_counter()
        terms = preference_forward(batch, family, cfg, dpo, device)
        dpo.loss(terms, cfg.objective.params).loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        return time.perf_counter() - t0

    # The precompute passes, per pair: the latent pass encodes 2 images x 2 flips (and its share of the unique
    # captions), the reference pass runs reference_pair_losses.  Timed in the same rotation as the steps.
    flips = torch.cat([pixels, pixels.flip(-1)]).to(device)

    def no_grad(fn):
        def run() -> float:
            sync()
            t0 = time.perf_counter()
            with torch.no_grad():
                fn()
            sync()
            return time.perf_counter() - t0

        return run

    jobs = {arm: (lambda arm=arm: step(arm)) for arm in ARMS}
    jobs["VAE pass"] = no_grad(lambda: fam.encode_posterior(flips))
    jobs["text pass"] = no_grad(lambda: fam.encode_prompt(captions))
    jobs["reference pass"] = no_grad(lambda: reference_pair_losses(cached, fam, cfg, device))
    names = list(jobs)
    times = {k: [] for k in names}
    for r in range(args.warmup + args.steps):
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate which goes first
            t = jobs[name]()
            if r >= args.warmup:
                times[name].append(t)
    transient = {a: step_peak(jobs[a], device) for a in ARMS}
    median = {k: statistics.median(v) for k, v in times.items()}
    lat_pass = (median["VAE pass"] + median["text pass"] * PICKAPIC_PROMPTS / PICKAPIC_PAIRS) / b
    ref_pass = median["reference pass"] / b
    state = [v for s in opt.state.values() for v in s.values() if torch.is_tensor(v)]
    policy = nbytes([fam.denoiser]) + sum(t.numel() * t.element_size() for t in state)
    reference = nbytes([fam.denoiser])  # a frozen copy in the weight dtype (fp32 here)
    encoders = nbytes([fam.vae, *fam.text_encoders])
    kept = {"uncached": policy + reference + encoders, "latent cache": policy + reference,
            "latent + ref losses": policy}  # fmt: skip
    return {
        "time": {a: median[a] for a in ARMS},
        "kept": kept,
        "transient": transient,
        "reference": reference,
        "exact": exact,
        "lat_pass": lat_pass,
        "ref_pass": ref_pass,
        "steps": len(times["uncached"]),
        "batch": b,
        "sgd": sgd,
        "shared": shared,
    }


def step_peak(step, device) -> float:
    """Bytes one step allocates above what existed before it (activations, gradients, temporaries)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        return float(torch.cuda.max_memory_allocated() - before)
    from bench.live_memory import LiveBytes

    with LiveBytes() as probe:
        step()
    return float(probe.peak)


def flop_floors(row: dict, resolution: int) -> tuple[float, float]:
    """FLOP bounds of the two caches' speed-ups: total / (total - encoders), total / policy fwd+bwd."""
    f = flop_breakdown(row, "sd15", resolution)
    total = sum(f.values())
    return total / (total - f["VAE encode"] - f["text encode"]), total / f["policy fwd+bwd"]


def print_arms(args, device, row: dict) -> dict[int, dict]:
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    name = {"mid": "SD1.5 layout at 0.4x width", "sd15": "SD1.5 architecture"}[args.arch]
    if args.quick:
        name = "SD1.5 layout, --quick stand-in"
    n = sum(p.numel() for p in __import__("diffusers").UNet2DConditionModel(**row["denoiser"]).parameters())
    print(f"{name} ({n / 1e6:.1f} M UNet parameters, random weights), {args.batch} pair(s) per step, Diffusion-DPO + "
          f"SDPO, {where}; {args.steps} interleaved steps per arm after {args.warmup} warm-up")  # fmt: skip
    print(f"{'px':>5} {'arm':<22}{'s/step':>9}{'speed-up':>10}{'kept GB':>10}{'step GB':>10}{'total GB':>10}")
    results = {}
    for res in args.resolutions:
        m = measure(args, res, device, row)
        results[res] = m
        base = m["time"]["uncached"]
        for arm in ARMS:
            total = m["kept"][arm] + m["transient"][arm]
            print(f"{res:>5} {arm:<22}{m['time'][arm]:>9.3f}{base / m['time'][arm]:>9.3f}x{m['kept'][arm] / GB:>10.3f}"
                  f"{m['transient'][arm] / GB:>10.3f}{total / GB:>10.3f}")  # fmt: skip
        lat, both = flop_floors(row, res)
        t, k = m["time"], {a: m["kept"][a] + m["transient"][a] for a in ARMS}
        saved = k["latent cache"] - k["latent + ref losses"]
        print(f"{res:>5} latent + ref losses / uncached: time {base / t['latent + ref losses']:.3f}x (FLOP floor "
              f"{both:.3f}x; latent cache alone {base / t['latent cache']:.3f}x, floor {lat:.3f}x); peak memory "
              f"{k['latent + ref losses'] / k['uncached']:.3f}x uncached, {saved / GB:.3f} GB below the latent cache "
              f"(the reference denoiser: {m['reference'] / GB:.3f} GB): {'yes' if saved >= m['reference'] else 'no'}")  # fmt: skip
        print(f"{res:>5} precomputed reference losses equal the step's bit for bit: {'yes' if m['exact'] else 'NO'}")
    notes = []
    if any(m["sgd"] for m in results.values()):
        notes.append("SGD (no optimizer state) to fit a CPU machine's memory; the same update in every arm")
    if any(m["shared"] for m in results.values()):
        notes.append(
            "the reference forward runs on the policy's weights (same compute), its copy counted by arithmetic"
        )
    for note in notes:
        print(f"note: {note}")
    return results


def print_sweep(results: dict[int, dict]) -> None:
    """The 6-run Table 1 grid: every run from pixels; from the latent cache; from latent + reference-loss caches
    (the DSPO pair keeps the reference in the step), the precompute passes included."""
    pairs_read = STEPS * GLOBAL_BATCH  # positions one run reads (4.81 epochs of Pick-a-Pic v2)
    runs = sum(GRID.values())
    losses_runs = sum(n for method, n in GRID.items() if method != "dspo")
    print(f"\nSweep arithmetic: Table 1's grid ({runs} runs: {', '.join(GRID)} x with/without SDPO; the {runs - losses_runs} "
          f"dspo runs keep the reference in the step), each {STEPS} steps x {GLOBAL_BATCH} pairs = {pairs_read / 1e6:.3f} M "
          f"pairs read ({pairs_read / PICKAPIC_PAIRS:.2f} epochs of {PICKAPIC_PAIRS:,} pairs); the latent pass encodes "
          "every pair once, the reference pass every pair read once; per-pair seconds as measured above; in units of "
          "one uncached run")  # fmt: skip
    print(
        f"{'px':>5}{'no cache':>10}{'latent (pass)':>16}{'latent + ref (passes)':>24}{'vs none':>10}{'vs latent':>11}"
    )
    for res, m in results.items():
        t = {a: m["time"][a] / m["batch"] for a in ARMS}  # seconds per pair
        unit = pairs_read * t["uncached"]
        lat_pass = PICKAPIC_PAIRS * m["lat_pass"] / unit
        ref_pass = pairs_read * m["ref_pass"] / unit
        run = {a: pairs_read * t[a] / unit for a in ARMS}
        none = runs * run["uncached"]
        latent = lat_pass + runs * run["latent cache"]
        both = (
            lat_pass + ref_pass + losses_runs * run["latent + ref losses"] + (runs - losses_runs) * run["latent cache"]
        )
        print(f"{res:>5}{none:>10.2f}{latent:>9.2f} ({lat_pass:.2f}){both:>15.2f} ({lat_pass + ref_pass:.2f})"
              f"{none / both:>9.3f}x{latent / both:>10.3f}x")  # fmt: skip
        saves = run["latent cache"] - run["latent + ref losses"]
        print(f"{res:>5} one run alone: latent cache {lat_pass + run['latent cache']:.2f}, latent + ref losses "
              f"{lat_pass + ref_pass + run['latent + ref losses']:.2f} (its reference pass costs {ref_pass:.2f}, "
              f"it saves {saves:.2f} in the run)")  # fmt: skip


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--arch", choices=["mid", "sd15"], default="mid", help="UNet: SD1.5's layout at 0.4x width, or SD1.5's"
    )
    p.add_argument("--resolutions", type=int, nargs="+", default=[128, 256])
    p.add_argument("--batch", type=int, default=1, help="pairs per step")
    p.add_argument("--steps", type=int, default=3, help="timed steps per arm")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (1 is steadiest on a shared machine)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parse(p, argv, resolutions=[32], steps=1)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        print("--quick: the stand-in configs of bench/model_configs.py, not the real ones; numbers not meaningful")
    device = torch.device(args.device)
    row = arch_row(args)
    print_sweep(print_arms(args, device, row))


if __name__ == "__main__":
    main()
