"""``zoo train`` (``tools/train.py``, ``zoo-train``): one run, or a pipeline / study of runs, from a config."""
from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Callable, Sequence

from zoo.cli._common import fail, is_main_process, launcher
from zoo.cli._runs import Suggestions
from zoo.config import load_run_config  # re-exported: zoo.cli.load_run_config
from zoo.errors import USER_ERRORS

__all__ = ["train_main", "run_training", "build_recipe", "load_run_config"]

_logger = logging.getLogger("zoo")

SCRIPT = "train.py"


def build_recipe(config: str, overrides: Sequence[str] = ()):
    """(recipe instance, validated config, merged raw config); the recipe checks its inputs (e.g. model paths)."""
    recipe_cls, cfg, raw = load_run_config(config, overrides)
    return recipe_cls(cfg), cfg, raw


def _command_line(config: str, overrides: Sequence[str], output: Path, command: str = f"python tools/{SCRIPT}") -> str:
    """The command that runs this config into ``output`` (printed on Ctrl-C and in the refusal to overwrite)."""
    parts = [command, shlex.quote(str(config)), *map(shlex.quote, overrides), "--output", shlex.quote(str(output))]
    return " ".join(parts)


def run_training(config: str, overrides: Sequence[str] = (), output: str | os.PathLike | None = None, *,
                 resume: str | None = None, overwrite: bool = False, print_config: bool = False,
                 command: str = f"python tools/{SCRIPT}", suggest: Callable[[Path], Suggestions] | None = None
                 ) -> dict | None:
    """One run of ``config`` (a file or packaged config name) with ``overrides``: the function behind
    ``zoo train`` and each pipeline stage. Returns the run's summary (``metrics.json``).

    The output directory defaults to the config's ``output_dir``, else ``runs/<config stem>``. A directory that
    already holds a run is refused unless ``resume`` (continue it: the stored config stays in force, see
    :func:`zoo.engine.rundir.reconcile_resume_config`) or ``overwrite``; the refusal suggests only commands that
    work (``command``: how this tool is run, for those hints; ``suggest(run_dir)``: other commands, e.g. a
    pipeline's for one of its stages). A run that fails before it did any work leaves no directory behind
    (:class:`zoo.cli._runs.RunDirGuard`).
    """
    from zoo.cli._runs import RunDirGuard, check_overwrite, free_folder, refusal_message
    from zoo.config import to_container
    from zoo.engine.rundir import RunExistsError, describe_run, prepare_run_dir

    recipe_cls, cfg, raw = load_run_config(config, overrides)
    output_dir = Path(output or cfg.output_dir or Path("runs") / Path(str(config)).stem)
    raw.output_dir = str(output_dir)
    raw = to_container(raw)
    if print_config:
        import yaml

        print(yaml.safe_dump(raw, sort_keys=False))
        return None
    if overwrite:
        check_overwrite(output_dir, raw)
    needs_last = not recipe_cls.owns_run()
    try:
        prepare_run_dir(output_dir, resume=resume is not None, overwrite=overwrite,
                        command=_command_line(config, overrides, output_dir, command), needs_last=needs_last)
    except RunExistsError:
        state = describe_run(output_dir) or "a pipeline run"
        rerun = _command_line(config, overrides, output_dir, command)
        hints = suggest(output_dir) if suggest is not None else Suggestions(
            f"{rerun} --resume", f"{rerun} --overwrite",
            _command_line(config, overrides, free_folder(output_dir), command))
        raise RunExistsError(refusal_message(output_dir, state, raw, hints, needs_last=needs_last)) from None
    with RunDirGuard(output_dir, main=is_main_process()):
        return _run(recipe_cls, cfg, raw, output_dir, overrides, resume)


def _run(recipe_cls, cfg, raw: dict, output_dir: Path, overrides: Sequence[str], resume: str | None) -> dict:
    """The run itself, in a checked ``output_dir``: reconcile a resumed config, then the Trainer (or the recipe's
    own run for a study recipe); returns the summary with ``run_dir``."""
    from zoo.config import dump_config, validate_config
    from zoo.engine.rundir import reconcile_resume_config

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


def _parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Train a model (or run a pipeline of stages) from a config file.",
        epilog="Pipelines: STAGE:key=value applies an override to one stage only (e.g. search:search.rounds=1); a "
               "plain key=value must fit every stage's config.")
    parser.add_argument("config", help="YAML config or pipeline, or a packaged config name (pointramba/modelnet10_small;"
                        " zoo list configs)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. trainer.epochs=5 optim.lr=3e-4; in a "
                        "pipeline STAGE:key=value for one stage")
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
    return parser


def train_main(argv: Sequence[str] | None = None) -> int:
    """``zoo train CONFIG [key=value | STAGE:key=value ...] [--resume [PATH]] [--overwrite] [--output DIR]
    [--stage NAME] [--cell STAGE/VARIANT/seedK] [--jobs N] [--list-cells] [--print-config]``; returns the exit
    status (0 done, 2 a user error printed as one ``error:`` line, 130 interrupted)."""
    from zoo.config import load_raw_config
    from zoo.engine.interrupt import TrainingInterrupted
    from zoo.engine.logging import setup_console_logging
    from zoo.engine.pipeline import cell_commands, is_pipeline, run_pipeline, summary_lines

    parser = _parser()
    args = parser.parse_intermixed_args(argv)  # overrides may follow options
    if args.resume not in (None, "auto") and "=" in args.resume and not Path(args.resume).exists():
        args.overrides.append(args.resume)  # `--resume trainer.epochs=40`: an override, not the checkpoint's path
        args.resume = "auto"
    command = launcher(parser.prog, SCRIPT)
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
                print("\n".join(cell_commands(path, raw, args.config, output, args.overrides, only=args.stage,
                                              launcher=command)))
                return 0
            if args.overwrite:
                from zoo.studies.matrix import parse_cell_id

                prepare_run_dir(parse_cell_id(args.cell).run_dir(output) if args.cell else output, resume=False,
                                overwrite=True)

            def stage_hints(run_dir: Path) -> Suggestions:  # a stage's refusal suggests pipeline commands
                from zoo.cli._runs import free_folder

                again = _command_line(args.config, args.overrides, output, command)
                cell = run_dir.resolve().relative_to(output.resolve()).as_posix()
                only = f" --cell {args.cell}" if args.cell else f" --stage {args.stage}" if args.stage else ""
                overwrite = f"{again} --cell {cell} --overwrite" if "/" in cell else None  # a study cell alone
                return Suggestions(f"{again}{only} --resume", overwrite,
                                   _command_line(args.config, args.overrides, free_folder(output), command))

            def run_stage(stage, run_dir, overrides):
                return run_training(str(stage.config), overrides, run_dir, resume=args.resume and "auto",
                                    print_config=args.print_config, command=command, suggest=stage_hints) or {}

            def spawn(cell):  # --jobs: the command that runs one cell in a process of its own
                from zoo.studies.runner import python_entry

                return [*python_entry(), str(path), *args.overrides, "--cell", cell.id, "--output", str(output),
                        *(["--resume"] if args.resume else [])]

            summary = run_pipeline(path, raw, output, run_stage, overrides=args.overrides, only=args.stage,
                                   cell=args.cell, jobs=1 if args.print_config else args.jobs, spawn=spawn)
            _close_process_group()
            if not args.print_config and is_main_process():
                print("\n".join(summary_lines(summary)))
                print(f"pipeline directory: {output}")
            return 0
        for flag, given in (("--stage", args.stage), ("--cell", args.cell), ("--jobs", args.jobs != 1),
                            ("--list-cells", args.list_cells)):
            if given:
                parser.error(f"{flag} is for pipeline configs; {args.config} is a single run")
        summary = run_training(args.config, args.overrides, args.output, resume=args.resume,
                               overwrite=args.overwrite, print_config=args.print_config, command=command)
    except TrainingInterrupted as stop:
        if is_main_process():
            print(f"\n{stop}.\nResume with:\n  "
                  f"{_command_line(args.config, args.overrides, Path(args.output or stop.run_dir), command)} --resume",
                  file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("\nstopped at once; the run's last saved state (if any) is its last.pt: resume with --resume",
              file=sys.stderr)
        return 130
    except USER_ERRORS as exc:
        return fail(exc)
    _close_process_group()
    if summary is None or not is_main_process():
        return 0
    final = ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in summary["final"].items())
    print(f"final: {final}")
    print(f"run directory: {summary['run_dir']}")
    return 0
