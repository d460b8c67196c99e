"""``zoo report`` (``tools/report.py``): tables from a study's or a benchmark's results file, and the README tables
generated from them.

    zoo report RESULTS.json                      # every table of the results, as markdown
    zoo report RESULTS.json --table comparisons  # one table
    zoo report RESULTS.json --format csv         # the long-form CSV (as results.csv)
    zoo report --update configs/vida/README.md   # rewrite the marked tables of markdown files
    zoo report --check README.md configs/*/README.md   # exit 1 when a marked table is out of date

A markdown file marks a generated table with ``<!-- results:PATH:TABLE -->`` ... ``<!-- /results -->`` (PATH
relative to the markdown file or the repository root); see :mod:`zoo.studies.report`.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from zoo.cli._common import fail
from zoo.errors import USER_ERRORS

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Command line: print tables of a results file, or update / check the marked tables of markdown files."""
    from zoo.studies.report import (benchmark_csv, check_markdown, load_results, render_table, table_names,
                                    update_markdown)

    parser = argparse.ArgumentParser(description="Markdown tables from a study's results.json; README tables between "
                                                 "<!-- results:PATH:TABLE --> markers.")
    parser.add_argument("results", nargs="?", help="a results.json written by a study's summarise stage, or a "
                                                   "benchmark's (tools/benchmark.py NAME --json PATH)")
    parser.add_argument("--table", help="print only this table (default: all)")
    parser.add_argument("--format", choices=("markdown", "csv"), default="markdown", help="output format")
    parser.add_argument("--update", nargs="+", metavar="MARKDOWN", help="rewrite the marked tables of these files")
    parser.add_argument("--check", nargs="+", metavar="MARKDOWN",
                        help="exit 1 when a marked table of these files differs from its results file")
    args = parser.parse_args(argv)
    if sum(x is not None for x in (args.results, args.update, args.check)) != 1:
        parser.error("give a RESULTS file, or --update FILES, or --check FILES")
    try:
        if args.update:
            for path in args.update:
                print(f"{path}: {'updated' if update_markdown(path) else 'up to date'}")
            return 0
        if args.check:
            problems = [p for path in args.check for p in check_markdown(path)]
            print("\n".join(problems) if problems else f"{len(args.check)} file(s): every marked table is up to date")
            return 1 if problems else 0
        results = load_results(args.results)
        if args.format == "csv":
            from zoo.studies.summarise import results_csv

            print(benchmark_csv(results) if results.get("kind") == "benchmark" else results_csv(results), end="")
            return 0
        names = [args.table] if args.table else table_names(results)
        print("\n".join(f"### {name}\n\n{render_table(results, name, Path(args.results).as_posix())}" if len(names) > 1
                        else render_table(results, name, Path(args.results).as_posix()) for name in names), end="")
    except USER_ERRORS as exc:
        return fail(exc)
    return 0

