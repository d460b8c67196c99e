#!/usr/bin/env python3
"""Tables from a study's results file; update / check README tables: ``zoo report`` (see its --help).

    python tools/report.py RESULTS.json [--table NAME] [--format csv]
    python tools/report.py --update configs/vida/README.md
    python tools/report.py --check README.md configs/*/README.md

A shim: the code is in the package (the wheel has no tools/).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout used without pip install -e .

from zoo.cli.report import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
