#!/usr/bin/env python3
"""Evaluate weights on a config's eval split: ``zoo eval`` (see ``zoo eval --help``).

    python tools/eval.py --model NAME --pretrained --config CONFIG
    python tools/eval.py --checkpoint FILE --config CONFIG

A shim: the code is in the package (the wheel has no tools/).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout used without pip install -e .

from zoo.cli.evaluate import eval_main as main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
