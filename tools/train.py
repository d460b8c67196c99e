#!/usr/bin/env python3
"""Train a model, or run a pipeline / study, from a config: ``zoo train`` (see ``zoo train --help``).

    python tools/train.py CONFIG [key=value | STAGE:key=value ...] [--resume] [--output DIR]

Multi-process: ``torchrun --nproc_per_node 2 tools/train.py CONFIG`` (gloo on CPU, NCCL on GPU).

A shim: the code is in the package (the wheel has no tools/).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout used without pip install -e .

from zoo.cli.train import train_main as main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
