#!/usr/bin/env python3
"""``python tools/benchmark.py NAME [ARGS]``: the same as ``zoo benchmark NAME [ARGS]`` (see zoo/cli/benchmark.py)."""
import sys

from zoo.cli.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
