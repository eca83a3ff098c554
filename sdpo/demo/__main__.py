"""``python -m sdpo.demo``: the offline demo of the paper's training dynamics (``sdpo.demo.dynamics``);
``python -m sdpo.demo online``: iterative on-policy training over rounds (``sdpo.demo.online``)."""

import sys

if __name__ == "__main__":
    if sys.argv[1:2] == ["online"]:
        from sdpo.demo.online import main

        main(sys.argv[2:])
    else:
        from sdpo.demo.dynamics import main

        main()
