#!/usr/bin/env python3
"""Export a child of a trained BigNAS supernet (and ONNX): ``zoo export`` (see ``zoo export --help``).

    python tools/export.py --config CONFIG --checkpoint LAST_PT --arch max --output DIR [--onnx]
    python tools/export.py --child DIR --onnx

A shim: the code is in the package (the wheel has no tools/).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout used without pip install -e .

from zoo.cli.export import ONNX_ATOL, export_from_supernet, export_onnx, main, parse_arch  # noqa: E402,F401

if __name__ == "__main__":
    sys.exit(main())
