#!/usr/bin/env python3
"""Write a -C version of an image dataset in the CIFAR-10-C layout: ``zoo make-corrupted``.

    python tools/make_corrupted.py --dataset mnist --split "test[8000:]" --out data/mnist_c --severities 5

A shim: the code is in the package (the wheel has no tools/).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout used without pip install -e .

from zoo.cli.make_corrupted import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
