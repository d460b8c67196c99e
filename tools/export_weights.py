#!/usr/bin/env python3
"""Turn a run's checkpoint into a shippable weights file: ``zoo export-weights`` (see its --help).

    python tools/export_weights.py runs/x/best.pt --name MODEL_NAME
    python tools/export_weights.py runs/t2i/unet/pipeline --pipeline --name tiny_t2i_mnist

A shim: the code is in the package (the wheel has no tools/).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout used without pip install -e .

from zoo.cli.export_weights import export_pipeline, main  # noqa: E402,F401

if __name__ == "__main__":
    sys.exit(main())
