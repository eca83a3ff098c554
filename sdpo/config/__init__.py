"""The run's configuration: flags (``flags``) -> resolved once (``resolve``) -> frozen sections (``sections``).

    cfg = parse_args(argv)          # a RunConfig: cfg.model, cfg.data, cfg.objective, cfg.optim, ...

``launch`` answers the launch scripts (``scripts/train/common.sh``) from the same families and parser.
"""

from __future__ import annotations

from sdpo.config.flags import build_parser
from sdpo.config.resolve import resolve
from sdpo.config.sections import RunConfig


def parse_args(argv: list[str] | None = None) -> RunConfig:
    """train.py's flags, checked and resolved (one ``UserError`` line per problem)."""
    return resolve(build_parser().parse_args(argv))


__all__ = ["RunConfig", "build_parser", "parse_args", "resolve"]
