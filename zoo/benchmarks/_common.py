"""Shared measuring helpers for benchmarks: median wall time, peak memory, a ratio table, and the checks that rows
compute the same result before they are timed.

Every figure is measured in the same run as its baseline; tables print ratios against the baseline row. A row
whose result disagrees with its reference is not timed: :func:`check_close` / :func:`check_true` raise
:class:`BenchmarkCheckError` naming the benchmark, the row and the disagreement.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from zoo.profiling import (memory_in_use, peak_memory, peak_memory_in_use, reset_peak_memory,  # noqa: F401
                           sync, time_fn)

__all__ = ["sync", "time_fn", "peak_memory", "Row", "print_table", "BenchmarkResults", "describe_machine",
           "BenchmarkCheckError", "check_close", "check_true", "rel_error"]


class BenchmarkCheckError(AssertionError):
    """A benchmark row does not compute what its reference computes, so timing it would compare unlike things."""


def check_true(ok: bool, bench: str, row: str, what: str) -> None:
    """Raise :class:`BenchmarkCheckError` ``"<bench>: row '<row>' <what>; not timing it"`` unless ``ok``."""
    if not ok:
        raise BenchmarkCheckError(f"{bench}: row {row!r} {what}; not timing it (the rows must compute the same "
                                  f"result before their speed is compared)")


def rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``max|actual - expected| / max|expected|`` in float64 (inf on a shape mismatch or a non-finite value)."""
    if actual.shape != expected.shape:
        return float("inf")
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    err = ((a - e).abs().max() / e.abs().max().clamp_min(1e-30)).item() if e.numel() else 0.0
    return err if err == err else float("inf")  # NaN -> inf


def check_close(bench: str, row: str, name: str, actual: torch.Tensor, expected: torch.Tensor, tol: float,
                against: str = "reference") -> None:
    """Check ``actual`` against ``expected`` elementwise, with an error relative to ``max|expected|`` <= ``tol``."""
    err = rel_error(actual, expected)
    shapes = "" if actual.shape == expected.shape else f" (shape {tuple(actual.shape)} vs {tuple(expected.shape)})"
    check_true(err <= tol, bench, row, f"disagrees with {against!r} on {name}: max error {err:.2e} relative to "
                                       f"max|{against}| exceeds {tol:.0e}{shapes}")


class Row(dict):
    """One measured configuration: ``name`` plus numeric columns (e.g. ``time_ms``, ``peak_mb``)."""

    def __init__(self, name: str, **values: Any):
        super().__init__(name=name, **values)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def print_table(title: str, rows: Sequence[Row], baseline: str, ratios: dict[str, str] | None = None) -> list[dict]:
    """Print ``rows`` as a table with ratio columns against the row named ``baseline``.

    ``ratios`` maps a column to how its ratio reads: ``"speedup"`` (baseline / value, higher is better) or
    ``"fraction"`` (value / baseline, lower is better). Default: ``time_ms`` -> speedup, ``peak_mb`` -> fraction.
    Returns the rows with the ratio columns added.
    """
    ratios = ratios or {"time_ms": "speedup", "peak_mb": "fraction"}
    base = next((r for r in rows if r["name"] == baseline), None)
    if base is None:
        raise ValueError(f"baseline row '{baseline}' not among {[r['name'] for r in rows]}")
    out = []
    for r in rows:
        r = dict(r)
        for col, kind in ratios.items():
            b, v = base.get(col), r.get(col)
            if b and v:
                label = f"{col}_x" if kind == "speedup" else f"{col}_frac"
                r[label] = b / v if kind == "speedup" else v / b
        out.append(r)
    cols = list(dict.fromkeys(k for r in out for k in r))
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in out)) for c in cols}
    print(f"\n{title}  (ratios vs '{baseline}', measured in this run)")
    print("  ".join(c.ljust(widths[c]) for c in cols))
    for r in out:
        print("  ".join(_fmt(r.get(c)).ljust(widths[c]) for c in cols))
    return out


def describe_machine() -> str:
    """One line naming torch, threads and the device, printed above every benchmark."""
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, {dev}"


class BenchmarkResults:
    """The tables one benchmark run measured, printed as they are measured and written (``--json PATH``) as a
    results file that ``tools/report.py`` renders into README tables (``<!-- results:PATH:KEY -->`` markers).

    The file: ``{"kind": "benchmark", "benchmark", "command", "machine", "load_average", "created", "details",
    "tables": {KEY: {"kind": "benchmark", "title", "baseline", "columns": {column: label}, "rows": [...]}}}``; a row
    holds its measured columns (``*_ms``, ``*_mb``, ...) and their ratios against the baseline row (``*_x``: baseline
    / value, ``*_frac``: value / baseline), all measured in the same run.
    """

    def __init__(self, benchmark: str, args: Any = None):
        self.benchmark = benchmark
        self.command = getattr(args, "command_line", None)
        self.path = getattr(args, "json", None)
        self.machine = describe_machine()
        self.load_average = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
        self.tables: dict[str, dict[str, Any]] = {}

    def add(self, key: str, title: str, rows: Sequence[Row], baseline: str, ratios: dict[str, str] | None = None,
            columns: dict[str, str] | None = None) -> list[dict]:
        """Print ``rows`` (:func:`print_table`) and keep them as table ``key``; ``columns`` maps the columns a README
        shows, in order, to their labels (default: every measured column under its own name). Returns the rows with
        their ratio columns."""
        if key in self.tables:
            raise ValueError(f"{self.benchmark}: table key {key!r} used twice")
        out = print_table(title, rows, baseline, ratios)
        shown = columns or {c: c for c in dict.fromkeys(k for r in out for k in r)
                            if c != "name" and not c.endswith(("_x", "_frac"))}
        self.tables[key] = {"kind": "benchmark", "title": title, "baseline": baseline, "columns": dict(shown),
                            "rows": out}
        return out

    def write(self, **details: Any) -> None:
        """Write the results file to the run's ``--json`` path (nothing without one); ``details`` are the run's
        settings worth keeping beside the tables (shapes, model names, thresholds, per-run records)."""
        if not self.path:
            return
        payload = {"kind": "benchmark", "benchmark": self.benchmark, "command": self.command, "machine": self.machine,
                   "load_average": self.load_average, "created": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                   "details": details, "tables": self.tables}
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        Path(self.path).write_text(json.dumps(payload, indent=2, default=str) + "\n")
