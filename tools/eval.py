#!/usr/bin/env python3
"""Evaluate weights on a config's eval split.

``python tools/eval.py --model NAME --pretrained --config CONFIG`` or ``--checkpoint FILE --config CONFIG``.
"""
import sys

from zoo.cli import eval_main

if __name__ == "__main__":
    sys.exit(eval_main())
