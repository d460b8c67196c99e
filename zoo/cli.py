"""Command-line entry points behind ``tools/train.py`` and ``tools/eval.py`` (also installed as ``zoo-train``/``zoo-eval``)."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

from zoo.errors import USER_ERRORS

__all__ = ["train_main", "eval_main", "build_recipe", "load_run_config"]

_logger = logging.getLogger("zoo")


def load_run_config(config: str, overrides: Sequence[str] = ()):
    """(recipe class, validated config, merged raw config) from a config file and ``key=value`` overrides."""
    from zoo.config import ConfigError, load_config, validate_config
    from zoo.recipes.base import check_unread_keys, get_recipe

    raw = load_config(config, overrides)
    name = raw.get("recipe")
    if not name:
        raise ConfigError(f"{config}: the config names no recipe; add e.g. 'recipe: classify'")
    try:
        recipe_cls = get_recipe(name)
    except KeyError as exc:
        raise ConfigError(f"{config}: recipe: {exc.args[0]}") from None
    check_unread_keys(recipe_cls, raw)
    return recipe_cls, validate_config(raw, recipe_cls.Config), raw


def build_recipe(config: str, overrides: Sequence[str] = ()):
    """(recipe instance, validated config, merged raw config); the recipe checks its inputs (e.g. model paths)."""
    recipe_cls, cfg, raw = load_run_config(config, overrides)
    return recipe_cls(cfg), cfg, raw


def _fail(exc: BaseException) -> int:
    """Print a user error (one of :data:`zoo.errors.USER_ERRORS`) as one ``error:`` line; ZOO_DEBUG=1 re-raises it."""
    if os.environ.get("ZOO_DEBUG"):
        raise exc
    print(f"error: {exc}", file=sys.stderr)
    return 2


def _command_line(config: str, overrides: Sequence[str], output: Path) -> str:
    """The command that continues this run (printed on Ctrl-C and in the refusal to overwrite)."""
    import shlex

    parts = ["python tools/train.py", shlex.quote(str(config)), *map(shlex.quote, overrides), "--output", shlex.quote(str(output))]
    return " ".join(parts)


def run_training(config: str, overrides: Sequence[str] = (), output: str | os.PathLike | None = None, *,
                 resume: str | None = None, overwrite: bool = False, print_config: bool = False) -> dict | None:
    """One run of ``config`` (a file or packaged config name) with ``overrides``: the function behind
    ``tools/train.py`` and each pipeline stage. Returns the run's summary (``metrics.json``).

    The output directory defaults to the config's ``output_dir``, else ``runs/<config stem>``. A directory that
    already holds a run is refused unless ``resume`` (continue it: the stored config stays in force, see
    :func:`zoo.engine.rundir.reconcile_resume_config`) or ``overwrite``.
    """
    from zoo.config import dump_config, to_container, validate_config
    from zoo.engine.rundir import prepare_run_dir, reconcile_resume_config

    recipe_cls, cfg, raw = load_run_config(config, overrides)
    output_dir = Path(output or cfg.output_dir or Path("runs") / Path(str(config)).stem)
    raw.output_dir = str(output_dir)
    raw = to_container(raw)
    if print_config:
        import yaml

        print(yaml.safe_dump(raw, sort_keys=False))
        return None
    command = _command_line(config, overrides, output_dir)
    prepare_run_dir(output_dir, resume=resume is not None, overwrite=overwrite, command=command,
                    needs_last=not recipe_cls.owns_run())
    changes: dict = {}
    stored = output_dir / "config.yaml"
    if resume is not None and stored.is_file() and (output_dir / "last.pt").is_file():
        raw, changes = reconcile_resume_config(stored, raw)
        cfg = validate_config(raw, recipe_cls.Config)
        if changes:
            _logger.info("resume: settings changed for the rest of the run: %s",
                         ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items()))
    recipe = recipe_cls(cfg)
    if recipe.owns_run():
        from zoo.engine.context import RunContext

        ctx = RunContext(output_dir, resume=resume is not None, seed=cfg.seed, config=raw)
        dump_config(raw, output_dir / "config.yaml")
        metrics = recipe.run(ctx) or {}
        summary = {"final": metrics}
        ctx.write_metrics(summary)
        recipe.report(summary, output_dir)
        return {**summary, "run_dir": str(output_dir)}
    from zoo.engine.trainer import Trainer

    trainer = Trainer(recipe, cfg.trainer, cfg.optim, cfg.schedule, output_dir, seed=cfg.seed, resume=resume,
                      on_start=lambda t: dump_config(raw, output_dir / "config.yaml"),
                      history_note={"overrides": list(overrides), "changes": changes} if resume else None)
    summary = trainer.fit()
    if trainer.is_main:
        recipe.report(summary, output_dir)
    return {**summary, "run_dir": str(output_dir)}


def _close_process_group() -> None:
    """After a finished run under torchrun: wait for every rank, then destroy the process group while the interpreter
    is fully alive (gloo threads torn down at interpreter exit can abort a run that passed)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def train_main(argv: Sequence[str] | None = None) -> int:
    """``train.py CONFIG [key=value ...] [--resume [PATH]] [--overwrite] [--output DIR] [--stage NAME]
    [--cell STAGE/VARIANT/seedK] [--jobs N] [--list-cells]``."""
    from zoo.config import load_raw_config
    from zoo.engine.interrupt import TrainingInterrupted
    from zoo.engine.logging import setup_console_logging
    from zoo.engine.pipeline import cell_commands, is_pipeline, run_pipeline, summary_lines

    parser = argparse.ArgumentParser(description="Train a model (or run a pipeline of stages) from a config file.")
    parser.add_argument("config", help="YAML config or pipeline, or a packaged config name (pointramba/modelnet10_small)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. trainer.epochs=5 optim.lr=3e-4")
    parser.add_argument("--resume", nargs="?", const="auto", default=None,
                        help="continue the run in --output from its last.pt (or from the given file)")
    parser.add_argument("--overwrite", action="store_true", help="delete a run already in --output and start over")
    parser.add_argument("--output", help="run directory (default: output_dir from the config, else runs/<config stem>)")
    parser.add_argument("--stage", help="pipelines: run only this stage (earlier stages must have finished)")
    parser.add_argument("--cell", help="studies: run only this cell, STAGE/VARIANT/seed<k> (earlier stages must have "
                        "finished); with --overwrite only this cell is started over")
    parser.add_argument("--jobs", type=int, default=1, help="studies: run N cells of a stage at once, each a process "
                        "with 1/N of the CPU threads, its output in <output>/<stage>/<variant>/seed<k>.log")
    parser.add_argument("--list-cells", action="store_true", help="studies: print the command of every cell (of "
                        "--stage), one a line (for a SLURM array or torchrun), and run nothing")
    parser.add_argument("--print-config", action="store_true", help="print the merged config and exit")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    setup_console_logging()
    try:
        raw = load_raw_config(args.config)
        if is_pipeline(raw):
            from zoo.engine.rundir import prepare_run_dir
            from zoo.resources import find_config

            path = find_config(args.config)
            output = Path(args.output or Path("runs") / path.stem)
            if args.list_cells:
                print("\n".join(cell_commands(path, raw, args.config, output, args.overrides, only=args.stage)))
                return 0
            if args.overwrite:
                from zoo.studies.matrix import parse_cell_id

                prepare_run_dir(parse_cell_id(args.cell).run_dir(output) if args.cell else output, resume=False,
                                overwrite=True)

            def run_stage(stage, run_dir, overrides):
                return run_training(str(stage.config), overrides, run_dir, resume=args.resume and "auto",
                                    print_config=args.print_config) or {}

            def spawn(cell):  # --jobs: the command that runs one cell in a process of its own
                from zoo.studies.runner import python_entry

                return [*python_entry(), str(path), *args.overrides, "--cell", cell.id, "--output", str(output),
                        *(["--resume"] if args.resume else [])]

            summary = run_pipeline(path, raw, output, run_stage, overrides=args.overrides, only=args.stage,
                                   cell=args.cell, jobs=1 if args.print_config else args.jobs, spawn=spawn)
            if not args.print_config:
                print("\n".join(summary_lines(summary)))
                print(f"pipeline directory: {output}")
            return 0
        for flag, given in (("--stage", args.stage), ("--cell", args.cell), ("--jobs", args.jobs != 1),
                            ("--list-cells", args.list_cells)):
            if given:
                parser.error(f"{flag} is for pipeline configs; {args.config} is a single run")
        summary = run_training(args.config, args.overrides, args.output, resume=args.resume,
                               overwrite=args.overwrite, print_config=args.print_config)
    except TrainingInterrupted as stop:
        print(f"\n{stop}.\nResume with:\n  {_command_line(args.config, args.overrides, Path(args.output or stop.run_dir))} "
              "--resume", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("\nstopped at once; the run's last saved state (if any) is its last.pt: resume with --resume",
              file=sys.stderr)
        return 130
    except USER_ERRORS as exc:
        return _fail(exc)
    _close_process_group()
    if summary is None:
        return 0
    final = ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in summary["final"].items())
    print(f"final: {final}")
    print(f"run directory: {summary['run_dir']}")
    return 0


def eval_main(argv: Sequence[str] | None = None) -> int:
    """``eval.py (--model NAME [--pretrained] | --checkpoint FILE) --config CONFIG [key=value ...]``."""
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
    from zoo.engine.evaluate import evaluate_model

    try:
        recipe, cfg, _ = build_recipe(args.config, args.overrides)
        model = recipe.build_eval_model(args.model, pretrained=args.pretrained, checkpoint_path=args.checkpoint)
        metrics = evaluate_model(recipe, model, output_dir=args.output)
    except USER_ERRORS as exc:
        return _fail(exc)
    except KeyboardInterrupt:
        print("\nevaluation stopped", file=sys.stderr)
        return 130
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}))
    if args.output:
        os.makedirs(args.output, exist_ok=True)
        Path(args.output, "metrics.json").write_text(json.dumps(metrics, indent=2))
    return 0
