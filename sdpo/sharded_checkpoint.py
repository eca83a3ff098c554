"""Alias kept for the documented command ``python -m sdpo.sharded_checkpoint CHECKPOINT``: the code is
``sdpo.checkpoint.sharded``."""

from sdpo.checkpoint.sharded import main
from sdpo.errors import cli_main

if __name__ == "__main__":
    cli_main(main)()
