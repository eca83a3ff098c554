"""``python -m sdpo.tiny``: write a tiny model folder or a tiny pair dataset (see ``sdpo.tiny``)."""

from __future__ import annotations

import argparse

import numpy as np

import sdpo.tiny as tiny
from sdpo.tiny.images import build_tiny_pairs
from sdpo.tiny.models import KINDS, build_tiny_model


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m sdpo.tiny", description=tiny.__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    m = sub.add_parser("model", help="write a tiny diffusers pipeline folder")
    m.add_argument("--kind", choices=KINDS, default="sd15")
    m.add_argument("--out", required=True)
    m.add_argument("--seed", type=int, default=0)
    d = sub.add_parser("pairs", help="write a tiny Pick-a-Pic-format parquet dataset")
    d.add_argument("--out", required=True)
    d.add_argument("--n", type=int, default=None, help="pairs (default 32, --video 16)")
    d.add_argument("--size", type=int, default=None, help="pixels (default 64, --video 32)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--video", action="store_true", help="moving-shape clips: the winner moves as the caption says")
    d.add_argument("--frames", type=int, default=9, help="--video: frames per clip")
    d.add_argument("--format", default="parquet", choices=["parquet", "videodpo", "videoalign"], help="--video index")
    a = p.parse_args(argv)
    np.random.seed(a.seed)
    if a.what == "model":
        print(build_tiny_model(a.kind, a.out, a.seed))
    elif a.video:
        from sdpo.tiny.video import build_tiny_video_pairs

        print(build_tiny_video_pairs(a.out, a.n or 16, a.frames, a.size or 32, a.seed, a.format))
    else:
        print(build_tiny_pairs(a.out, a.n or 32, a.size or 64, a.seed))


if __name__ == "__main__":
    main()
