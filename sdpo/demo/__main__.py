"""``python -m sdpo.demo``: the offline demo of the paper's training dynamics (``sdpo.demo.dynamics``)."""

from sdpo.demo.dynamics import main

if __name__ == "__main__":
    main()
