"""Alias kept for the documented command ``python -m eval.rewards.tiny DIR``: the code is ``sdpo.tiny.rewards``."""

from sdpo.tiny.rewards import main

if __name__ == "__main__":
    main()
