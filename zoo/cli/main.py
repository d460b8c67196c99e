"""``zoo SUBCOMMAND ...``: the one command of the zoo (console script ``zoo``, and ``python -m zoo``)."""
from __future__ import annotations

import importlib
import sys
from typing import Callable, Sequence

__all__ = ["COMMANDS", "main", "usage"]

#: subcommand -> ("module:function" taking argv and returning the exit status, one-line summary)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("zoo.cli.train:train_main", "train a model, or run a pipeline / study of runs, from a config"),
    "eval": ("zoo.cli.evaluate:eval_main", "evaluate weights (--pretrained or --checkpoint) on a config's eval split"),
    "sample": ("zoo.diffusion.sampling:sample_main", "render prompts with and without an adapter into one PNG "
               "(diffusion)"),
    "export": ("zoo.cli.export:main", "export a BigNAS supernet child as a standalone model (and ONNX)"),
    "export-weights": ("zoo.cli.export_weights:main", "turn a run's checkpoint into a shippable weights file"),
    "manifest": ("zoo.manifest:main", "write (--check: verify) checkpoints/manifest.yaml from the pretrained cfgs"),
    "prepare-data": ("zoo.cli.prepare_data:main", "build the data layouts of the shipped numbers from the official "
                     "downloads"),
    "make-corrupted": ("zoo.cli.make_corrupted:main", "write a -C version of an image dataset (CIFAR-10-C layout)"),
    "benchmark": ("zoo.benchmarks:main", "speed / memory benchmarks as ratios against a baseline of the same run"),
    "report": ("zoo.cli.report:main", "tables from a study's results.json; update / check the README tables"),
    "list": ("zoo.cli.inventory:list_main", "list models, pretrained weights, configs, recipes, adapters, "
             "tta, datasets"),
    "config": ("zoo.cli.inventory:config_main", "config show NAME: a config's merged keys, or every key of a recipe "
               "with its default and doc"),
}


def _program() -> str:
    """How the user started us: ``python -m zoo`` or ``zoo``."""
    return "python -m zoo" if sys.argv and sys.argv[0].endswith("__main__.py") else "zoo"


def usage(prog: str = "zoo") -> str:
    """The help text: every subcommand with its summary."""
    from zoo.version import __version__

    width = max(map(len, COMMANDS))
    lines = [f"usage: {prog} COMMAND [ARGS ...]    (zoo {__version__})", "",
             "A PyTorch model zoo. Commands (each has --help):"]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", f"Examples:  {prog} list configs   {prog} config show classify   "
                  f"{prog} train pointnet/synthetic_shapes trainer.epochs=1"]
    return "\n".join(lines)


def _load(target: str) -> Callable[[Sequence[str]], int]:
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``zoo COMMAND ARGS``; returns the subcommand's exit status (2 for an unknown command)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = _program()
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage(prog), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from zoo.version import __version__

        print(f"zoo {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        from zoo._registry_base import close_matches

        hint = close_matches(name, COMMANDS, n=3)
        print(f"error: unknown command '{name}'." + (f" Did you mean: {', '.join(hint)}?" if hint else "")
              + f" Commands: {', '.join(COMMANDS)} ({prog} --help)", file=sys.stderr)
        return 2
    saved = sys.argv
    sys.argv = [f"{prog} {name}", *rest]  # argparse's prog: usage and printed hints say "zoo train", not "train.py"
    try:
        return _load(COMMANDS[name][0])(rest)
    except BrokenPipeError:  # output piped into `head` and the pipe closed: not an error of ours
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        sys.argv = saved
