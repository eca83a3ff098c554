"""What verified checkpoints cost: a checkpoint written with its manifest (every file's size and XXH3-128 hash,
``sdpo.checkpoint.manifest``) against the same checkpoint without, and the check on resume against the load.

One process, the real writer (``sdpo.checkpoint.store.save``: accelerate's state, ``unet.pth``,
``training_state.json``, then the manifest) on a prepared model and AdamW with its moments filled, the two
variants interleaved round by round so that drift and other load hit both alike.  The model is the SD1.5
UNet layout at half width (about 215 M parameters, a 3.4 GB checkpoint: model file, unet.pth, AdamW's two
moments): mid-size, and what a shared 24 GB CPU box can hold; ``--real-arch`` builds the published SD1.5 UNet
(860 M, a 13.8 GB checkpoint) where memory allows.

    python bench/checkpoint_hashing.py                  # half-width SD1.5 UNet, 3 rounds
    python bench/checkpoint_hashing.py --real-arch      # the SD1.5 UNet itself
    python bench/checkpoint_hashing.py --quick          # seconds: the tiny stand-in, 2 rounds

The folder is a temporary one under ``--dir`` (default: the system's temporary folder); the hash reads files
just written, mostly from the page cache, as a real checkpoint's would.  Each write starts after ``os.sync()``
(untimed), so that neither variant pays for flushing the other's files; the time the manifest takes inside the
write is reported on its own too (the difference of two medians of a shared disk is noisier than that).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from bench.model_configs import SD15_UNET, SD15_UNET_QUICK  # noqa: E402
from bench.quick import parse  # noqa: E402

SD15_UNET_HALF = dict(SD15_UNET, block_out_channels=(160, 320, 640, 640))  # the mid-size stand-in


def build(config: dict):
    """The UNet, prepared by accelerate with AdamW whose moments exist (as after the first step)."""
    from accelerate import Accelerator
    from diffusers import UNet2DConditionModel
    from diffusers.optimization import get_scheduler

    torch.manual_seed(0)
    model = UNet2DConditionModel(**config)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    opt.zero_grad(set_to_none=True)
    acc = Accelerator(cpu=True)
    model, opt, sched = acc.prepare(model, opt, get_scheduler("constant", opt))
    return acc, model, opt


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--real-arch", action="store_true", help="the published SD1.5 UNet (860 M parameters)")
    p.add_argument("--rounds", type=int, default=3, help="checkpoints written per variant")
    p.add_argument("--dir", default=None, help="where to write (default: the system's temporary folder)")
    args = parse(p, argv, rounds=2)
    from sdpo.checkpoint import manifest
    from sdpo.checkpoint import store as checkpoint
    from sdpo.diskspace import human

    config, name = (
        (SD15_UNET_QUICK, "SD1.5 UNet layout, --quick stand-in")
        if args.quick
        else (SD15_UNET, "SD1.5 UNet") if args.real_arch else (SD15_UNET_HALF, "SD1.5 UNet layout at half width")
    )  # fmt: skip
    acc, model, opt = build(config)
    weights = checkpoint.FullWeights("unet")
    params = sum(p.numel() for p in model.parameters())
    real_records, real_write = manifest.records, manifest.write
    times: dict[str, list[float]] = {"without": [], "with": [], "hashing": []}

    def timed_records(folder, names):  # the manifest's own cost, inside the write
        start = time.perf_counter()
        found = real_records(folder, names)
        times["hashing"].append(time.perf_counter() - start)
        return found

    with tempfile.TemporaryDirectory(dir=args.dir) as root:
        out = Path(root)
        shutil.rmtree(checkpoint.save(acc, model, out, 0, {"epoch": 0}, None, weights, optimizer=opt))  # warm-up
        step, last = 0, None
        for _ in range(args.rounds):
            for variant in ("without", "with"):
                step += 1
                if variant == "without":  # the same writer, the manifest left out
                    manifest.records, manifest.write = (lambda folder, names: {}), (lambda folder, files: None)
                else:
                    manifest.records = timed_records
                os.sync()  # each write starts with nothing left to flush from the one before it
                start = time.perf_counter()
                folder = checkpoint.save(acc, model, out, step, {"epoch": 0}, None, weights, optimizer=opt)
                times[variant].append(time.perf_counter() - start)
                manifest.records, manifest.write = real_records, real_write
                if variant == "without":
                    shutil.rmtree(folder)  # one checkpoint on disk at a time (and the next save's size check)
                else:
                    if last is not None:
                        shutil.rmtree(last)
                    last = folder
        size = manifest.total_bytes(last)
        files = len(manifest.read(last))
        start = time.perf_counter()
        manifest.records(last, manifest.listing(last))
        hashing = time.perf_counter() - start
        start = time.perf_counter()
        assert checkpoint.verify(last) is None
        verify = time.perf_counter() - start
        start = time.perf_counter()
        weights.load_checkpoint(acc, last)
        load = time.perf_counter() - start
    a, b = statistics.median(times["without"]), statistics.median(times["with"])
    print(f"{name}: {params / 1e6:.1f} M parameters; checkpoint {human(size)} in {files} files")
    print(f"checkpoint write without manifest: {a:.3f} s (median of {args.rounds})")
    print(f"checkpoint write with manifest:    {b:.3f} s (median of {args.rounds})")
    print(f"with / without: {b / a:.3f}x ({b - a:+.3f} s per checkpoint)")
    h = statistics.median(times["hashing"])
    print(f"hashing inside the write: {h:.3f} s, {h / b:.1%} of the write (median of {args.rounds})")
    print(f"hashing alone: {hashing:.3f} s for {human(size)} ({size / 1e9 / hashing:.2f} GB/s)")
    print(f"resume: verify {verify:.3f} s, load {load:.3f} s; verify / load: {verify / load:.3f}x")


if __name__ == "__main__":
    main()
