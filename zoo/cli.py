"""Command-line entry points behind ``tools/train.py`` and ``tools/eval.py`` (also installed as ``zoo-train``/``zoo-eval``)."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

__all__ = ["train_main", "eval_main", "build_recipe", "load_run_config"]

_logger = logging.getLogger("zoo")


def load_run_config(config: str, overrides: Sequence[str] = ()):
    """(recipe class, validated config, merged raw config) from a config file and ``key=value`` overrides."""
    from zoo.config import ConfigError, load_config, validate_config
    from zoo.recipes.base import get_recipe

    raw = load_config(config, overrides)
    name = raw.get("recipe")
    if not name:
        raise ConfigError(f"{config}: the config names no recipe; add e.g. 'recipe: classify'")
    recipe_cls = get_recipe(name)
    return recipe_cls, validate_config(raw, recipe_cls.Config), raw


def build_recipe(config: str, overrides: Sequence[str] = ()):
    """(recipe instance, validated config, merged raw config); the recipe checks its inputs (e.g. model paths)."""
    recipe_cls, cfg, raw = load_run_config(config, overrides)
    return recipe_cls(cfg), cfg, raw


def _fail(exc: BaseException) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return 2


def train_main(argv: Sequence[str] | None = None) -> int:
    """``train.py CONFIG [key=value ...] [--resume auto|PATH] [--output DIR]``."""
    from zoo.config import ConfigError, dump_config
    from zoo.engine.logging import setup_console_logging

    parser = argparse.ArgumentParser(description="Train a model from a config file.")
    parser.add_argument("config", help="YAML config, e.g. configs/pointnet/synthetic_shapes.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. trainer.epochs=5 optim.lr=3e-4")
    parser.add_argument("--resume", nargs="?", const="auto", default=None,
                        help="'auto' (default when given without value): continue from OUTPUT/last.pt if present; or a path")
    parser.add_argument("--output", help="run directory (default: output_dir from the config, else runs/<config stem>)")
    parser.add_argument("--print-config", action="store_true", help="print the merged config and exit")
    args = parser.parse_args(argv)
    setup_console_logging()
    try:
        recipe, cfg, raw = build_recipe(args.config, args.overrides)
    except (ConfigError, FileNotFoundError, KeyError) as exc:
        return _fail(exc)
    output_dir = Path(args.output or cfg.output_dir or Path("runs") / Path(args.config).stem)
    raw.output_dir = str(output_dir)
    if args.print_config:
        import yaml

        from zoo.config import to_container

        print(yaml.safe_dump(to_container(raw), sort_keys=False))
        return 0
    from zoo.engine.trainer import Trainer

    trainer = Trainer(recipe, cfg.trainer, cfg.optim, cfg.schedule, output_dir, seed=cfg.seed, resume=args.resume)
    if trainer.is_main:
        dump_config(raw, output_dir / "config.yaml")
    summary = trainer.fit()
    if trainer.is_main:
        final = ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in summary["final"].items())
        print(f"final: {final}")
        print(f"run directory: {output_dir}")
    return 0


def eval_main(argv: Sequence[str] | None = None) -> int:
    """``eval.py (--model NAME [--pretrained] | --checkpoint FILE) --config CONFIG [key=value ...]``."""
    from zoo.config import ConfigError
    from zoo.engine.logging import setup_console_logging

    parser = argparse.ArgumentParser(description="Evaluate a model on the eval split named by a config.")
    parser.add_argument("--config", required=True, help="config whose data/eval sections define the benchmark")
    parser.add_argument("--model", help="registered model name (default: the config's model.name)")
    parser.add_argument("--pretrained", action="store_true", help="load the model's shipped weights")
    parser.add_argument("--checkpoint", help="weights file: a run's best.pt/last.pt, a .safetensors, or an official checkpoint")
    parser.add_argument("--output", help="folder for metrics.json, confusion matrix (default: none written)")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. data.root=/data/modelnet10")
    args = parser.parse_args(argv)
    setup_console_logging()
    if not (args.pretrained or args.checkpoint):
        parser.error("give --pretrained or --checkpoint FILE (evaluating random weights is rarely what you want)")
    try:
        recipe, cfg, _ = build_recipe(args.config, args.overrides)
    except (ConfigError, FileNotFoundError, KeyError) as exc:
        return _fail(exc)
    from zoo.engine.evaluate import evaluate_model

    try:
        model = recipe.build_eval_model(args.model, pretrained=args.pretrained, checkpoint_path=args.checkpoint)
    except (FileNotFoundError, KeyError, TypeError, RuntimeError) as exc:  # NotImplementedError is a RuntimeError
        return _fail(exc)
    metrics = evaluate_model(recipe, model, output_dir=args.output)
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}))
    if args.output:
        os.makedirs(args.output, exist_ok=True)
        Path(args.output, "metrics.json").write_text(json.dumps(metrics, indent=2))
    return 0
