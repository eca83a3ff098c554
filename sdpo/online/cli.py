"""The command line of the round driver: ``python -m sdpo.online --help`` lists the driver's flags."""

from __future__ import annotations

import sys

from sdpo.errors import cli_main


@cli_main
def main(argv: list[str] | None = None):
    from sdpo.online.rounds import run_online

    return run_online(list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
