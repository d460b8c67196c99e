#!/usr/bin/env python3
"""``python tools/benchmark.py NAME [ARGS]``: the same as ``zoo benchmark NAME [ARGS]`` (see zoo/benchmarks)."""
import sys

from zoo.benchmarks import main

if __name__ == "__main__":
    sys.exit(main())
