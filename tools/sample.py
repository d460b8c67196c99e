#!/usr/bin/env python3
"""Render prompts with and without an adapter side by side into one PNG: ``zoo sample`` (see its --help).

    python tools/sample.py --pipeline PATH --adapter runs/style/sara_weights.safetensors \\
        --prompts "Barbie style, a dog" "Barbie style, a house" --output grid.png

A shim: the code is in the package (the wheel has no tools/).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout used without pip install -e .

from zoo.diffusion.sampling import sample_main as main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
