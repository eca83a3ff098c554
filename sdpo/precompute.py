"""Alias kept for the documented command ``python -m sdpo.precompute``: the code is ``sdpo.cache.precompute``."""

from sdpo.cache.precompute import main

if __name__ == "__main__":
    main()
