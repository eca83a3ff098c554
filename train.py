"""Preference-tune Stable Diffusion 1.5 / SDXL with Diffusion-DPO, DSPO or DMPO, optionally
protected by the SDPO safeguard.  Launch with ``accelerate launch train.py ...`` (or plain
``python train.py ...`` on one device); ``--help`` lists every flag."""

from sdpo.config import parse_args
from sdpo.errors import cli_main
from sdpo.training.loop import train


@cli_main
def main() -> None:
    train(parse_args())


if __name__ == "__main__":
    main()
