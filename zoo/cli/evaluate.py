"""``zoo eval`` (``tools/eval.py``, ``zoo-eval``): evaluate weights on the eval split a config names."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Sequence

from zoo.cli._common import fail, is_main_process
from zoo.errors import USER_ERRORS

__all__ = ["eval_main"]


def eval_main(argv: Sequence[str] | None = None) -> int:
    """``zoo eval (--model NAME [--pretrained] | --checkpoint FILE) --config CONFIG [key=value ...]``: prints the
    metrics as one JSON line (rank 0) and, with ``--output``, writes ``metrics.json`` there."""
    from zoo.engine.logging import setup_console_logging

    parser = argparse.ArgumentParser(description="Evaluate a model on the eval split named by a config.")
    parser.add_argument("--config", required=True, help="config whose data/eval sections define the benchmark")
    parser.add_argument("--model", help="registered model name (default: the config's model.name)")
    parser.add_argument("--pretrained", action="store_true", help="load the model's shipped weights")
    parser.add_argument("--checkpoint", help="weights file: a run's best.pt/last.pt, a .safetensors, or an official checkpoint")
    parser.add_argument("--output", help="folder for metrics.json, confusion matrix (default: none written)")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. data.root=/data/modelnet10")
    args = parser.parse_intermixed_args(argv)  # overrides may follow options
    setup_console_logging()
    if not (args.pretrained or args.checkpoint):
        parser.error("give --pretrained or --checkpoint FILE (evaluating random weights is rarely what you want)")
    from zoo.engine.evaluate import evaluate_weights

    try:
        metrics = evaluate_weights(args.config, args.overrides, model=args.model, pretrained=args.pretrained,
                                   checkpoint=args.checkpoint, output_dir=args.output)
    except USER_ERRORS as exc:
        return fail(exc)
    except KeyboardInterrupt:
        print("\nevaluation stopped", file=sys.stderr)
        return 130
    if not is_main_process():
        return 0
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}))
    if args.output:
        os.makedirs(args.output, exist_ok=True)
        Path(args.output, "metrics.json").write_text(json.dumps(metrics, indent=2))
    return 0
