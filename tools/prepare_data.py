#!/usr/bin/env python3
"""Build the data layouts of the shipped numbers from the official downloads: ``zoo prepare-data`` (see its --help).

    python tools/prepare_data.py modelnet10 --src ModelNet10/ --out data/modelnet10
    python tools/prepare_data.py shapenetpart-synthetic --out data/shapenetpart_synthetic

A shim: the code is in the package (the wheel has no tools/).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout used without pip install -e .

from zoo.cli.prepare_data import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
