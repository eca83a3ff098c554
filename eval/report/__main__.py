"""``python -m eval.report``."""

from eval.report.cli import main

if __name__ == "__main__":
    main()
