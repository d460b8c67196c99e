"""``python -m zoo COMMAND ...``: the ``zoo`` command (see :mod:`zoo.cli.main`)."""
import sys

from zoo.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
