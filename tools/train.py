#!/usr/bin/env python3
"""Train a model from a config: ``python tools/train.py CONFIG [key=value ...] [--resume auto] [--output DIR]``.

Multi-process: ``torchrun --nproc_per_node 2 tools/train.py CONFIG`` (gloo on CPU, NCCL on GPU).
"""
import sys

from zoo.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
