"""``python -m sdpo.plot``: curves of logged scalars and validation strips (``sdpo.plot.curves``)."""

from sdpo.plot.curves import main

if __name__ == "__main__":
    main()
