"""``--quick``, the flag every bench has: its real code path at tiny sizes, in seconds on a CPU.

A quick run builds the ``*_QUICK`` stand-ins of ``bench/model_configs.py`` (the published configs with a
few layers and channels) where the full run builds the published ones, takes fewer steps and smaller
images, and prints the same lines; its numbers say nothing about the real models.  It is how the test
suite keeps every bench running (``tests/test_benches.py``).
"""

from __future__ import annotations

import argparse

HELP = "tiny sizes and few steps: runs the same code in seconds, to check the bench works (numbers not meaningful)"


def parse(parser: argparse.ArgumentParser, argv: list[str] | None, **quick) -> argparse.Namespace:
    """``parser``'s arguments with ``--quick`` added; with ``--quick``, ``quick`` replaces the defaults, so
    that flags given explicitly still win (``--quick --device cuda``)."""
    parser.add_argument("--quick", action="store_true", help=HELP)
    args = parser.parse_args(argv)
    if args.quick and quick:
        parser.set_defaults(**quick)
        args = parser.parse_args(argv)
    return args
