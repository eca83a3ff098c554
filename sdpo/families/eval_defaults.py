"""What a family is evaluated at by default, for scripts/eval/joint_test.sh: one line
``<size> <guidance> <base model>`` (the family's ``default_resolution``, ``sampling_guidance`` and
``default_model``), so a family added after the script needs no branch of its own there.

    python -m sdpo.families.eval_defaults qwenimage    # -> 1024 4.0 Qwen/Qwen-Image
"""

from __future__ import annotations

import argparse

from sdpo.errors import UserError, cli_main
from sdpo.families import FAMILIES, get_family


def eval_defaults(name: str) -> str:
    """The line for family ``name``; a video family has no image protocol here (eval/video_generate.py)."""
    family = get_family(name)
    if family.video:
        raise UserError(f"KIND={name} is a video family: evaluate it with eval/video_generate.py, not joint_test.sh")
    return f"{family.default_resolution} {family.sampling_guidance} {family.default_model}"


@cli_main
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m sdpo.families.eval_defaults", description=__doc__.split("\n\n")[0])
    p.add_argument("family", help=f"one of {', '.join(FAMILIES)}")
    print(eval_defaults(p.parse_args(argv).family))


if __name__ == "__main__":
    main()
