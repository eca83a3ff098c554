"""``python -m eval.geneval IMAGE_FOLDER ...``: see :mod:`eval.geneval.evaluate`."""

from eval.geneval.evaluate import main

if __name__ == "__main__":
    main()
