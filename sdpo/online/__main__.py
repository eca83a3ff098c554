"""``python -m sdpo.online``: iterative on-policy preference training (``sdpo.online.rounds``)."""

from sdpo.online.cli import main

if __name__ == "__main__":
    main()
