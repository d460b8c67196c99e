"""Speed and memory benchmarks (``zoo benchmark NAME``, ``python tools/benchmark.py NAME``), printed as ratios
against a baseline measured in the same run.

    zoo benchmark --list
    zoo benchmark scan [--quick] [--device cuda]
    zoo benchmark pointops [--quick]

Each benchmark is a module ``zoo/benchmarks/<name>.py`` with ``add_arguments(parser)`` and ``run(args)``. Every
benchmark checks that its rows compute the same result before timing them; when one does not, the run stops with
``error: <benchmark>: row '<name>' ...`` and exit status 2 (nothing is timed or written for it).
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import shlex
import sys

__all__ = ["discover", "summary", "main"]


def discover() -> dict[str, object]:
    """Benchmark name -> module, for every public module of :mod:`zoo.benchmarks`."""
    return {
        info.name: importlib.import_module(f"zoo.benchmarks.{info.name}")
        for info in pkgutil.iter_modules(__path__)
        if not info.name.startswith("_")
    }


def summary(module: object) -> str:
    """What a benchmark measures: the first paragraph of its module docstring on one line (whole sentences, not the
    docstring's first line, which stops mid-sentence)."""
    doc = (getattr(module, "__doc__", None) or "").strip()
    return " ".join(doc.split("\n\n")[0].split())


def _without_json(argv: list[str]) -> list[str]:
    """``argv`` without ``--json PATH`` / ``--json=PATH``: the command a results file records (where it was written
    is not part of what was measured)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--json":
            skip = True
        elif not arg.startswith("--json="):
            out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    """``zoo benchmark NAME [ARGS]`` / ``--list``; returns the exit status (2: a row computed something else)."""
    from zoo.benchmarks._common import BenchmarkCheckError, describe_machine

    modules = discover()
    parser = argparse.ArgumentParser(prog="zoo benchmark", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    sub = parser.add_subparsers(dest="command")
    for name, module in sorted(modules.items()):
        p = sub.add_parser(name, help=summary(module).replace("%", "%%") or name, description=module.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--json", help="also write the measured tables to this results file (tools/report.py renders "
                                      "it into README tables)")
        module.add_arguments(p)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.command_line = "python tools/benchmark.py " + shlex.join(_without_json(argv))
    if args.list or not args.command:
        import textwrap

        width = max(map(len, modules)) + 2
        for name, module in sorted(modules.items()):
            print(textwrap.fill(summary(module), 120, initial_indent=f"{name:<{width}}", subsequent_indent=" " * width))
        return 0
    print(describe_machine())
    try:
        modules[args.command].run(args)
    except BenchmarkCheckError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
