"""Scoring one manifest with all five reward models in one pass vs five separate passes (the reference layout).

The reference implementation has one script per reward model, so a manifest's images are decoded
five times and each script loops over them on its own. ``eval/score.py`` decodes each image once
and runs every model on the same batch. Both variants here load the same five tiny reward models
(weights loading is timed in both) and score the same manifest, one after the other in this run:

    python bench/scoring_throughput.py [--n 64] [--size 512] [--batch_size 16] [--device cpu]
    python bench/scoring_throughput.py --quick      # 4 images of 64 px, batch 2: seconds

Tiny backbones make the models cheap, so the ratio mostly measures the shared image decoding and
per-pass overhead; with the real ViT-H/ViT-L models on a GPU the forward passes dominate and the
ratio moves towards 1, while the decoding saved stays the same in absolute terms.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from bench.quick import parse  # noqa: E402
from eval.score import open_manifest, score_images  # noqa: E402
from sdpo.rewards import METRICS, RewardConfig, load_scorer  # noqa: E402
from sdpo.tiny.rewards import build_tiny_reward_root, write_tiny_manifest  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=64, help="images in the manifest")
    ap.add_argument("--size", type=int, default=512, help="image side (SD1.5 generates 512x512)")
    ap.add_argument("--batch_size", type=int, default=16)
    ap.add_argument("--device", default=None)
    args = parse(ap, argv, n=4, size=64, batch_size=2)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = RewardConfig.make(build_tiny_reward_root(Path(tmp) / "rewards"))
        m = open_manifest(write_tiny_manifest(tmp, "bench", [f"prompt {i % 7}" for i in range(args.n)], args.size))
        for name in METRICS:  # warm-up outside the timings: first imports, kernels, file cache
            load_scorer(name, args.device, cfg).score(*_first(m))

        t0 = time.perf_counter()
        scorers = {name: load_scorer(name, args.device, cfg) for name in METRICS}
        one = score_images(m.images, m.prompts, scorers, args.batch_size, progress=False)
        t_one = time.perf_counter() - t0

        t0 = time.perf_counter()
        five = {}
        for name in METRICS:
            scorer = {name: load_scorer(name, args.device, cfg)}
            five.update(score_images(m.images, m.prompts, scorer, args.batch_size, progress=False))
        t_five = time.perf_counter() - t0

    diff = max(abs(a - b) for k in METRICS for a, b in zip(one[k], five[k]))
    print(
        f"{args.n} images {args.size}x{args.size}, batch {args.batch_size}, 5 tiny reward models, device {args.device or 'default'}"
    )
    print(f"one pass (all five metrics per batch): {t_one:7.2f} s  ({args.n / t_one:6.1f} img/s)")
    print(f"five passes (one metric each):         {t_five:7.2f} s  ({args.n / t_five:6.1f} img/s)")
    print(f"ratio five/one: {t_five / t_one:.2f}x   (max score difference {diff:.1e})")


def _first(m):
    from PIL import Image

    return [Image.open(m.images[0]).convert("RGB")], m.prompts[:1]


if __name__ == "__main__":
    main()
