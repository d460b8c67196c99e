"""The summarise stage of a study: read every cell's ``metrics.json`` and write ``results.json`` + ``results.csv``.

In a pipeline config, a stage with ``summarise:`` instead of ``config:``::

    - name: summary
      summarise:
        stages: [train]                 # matrix stages to summarise (default: every earlier matrix stage)
        metrics:                        # metric names in the cells' metrics.json "final" (dotted for nested)
          top1: higher                  # direction: higher or lower is better
          loss: {direction: lower, digits: 3, scale: 1.0, label: "val loss"}   # table formatting
        compare: [[adamw, sgd]]         # [method, baseline]: paired differences over the seeds both ran
        confidence: 0.95                # of every interval
        bootstrap: {resamples: 10000, seed: 0}   # paired bootstrap over examples, where cells wrote per-example arrays
        allow_missing: false            # true: summarise the finished cells and list the missing ones
        tables:                         # named tables for tools/report.py (besides 'variants' and 'comparisons')
          main: {kind: variants, rows: [sgd, adamw], metrics: [top1], labels: {sgd: "SGD (baseline)"}}

Variants are named ``<stage>/<variant>`` in results; in ``compare``, ``rows`` and ``labels`` a variant's own name
(or a stage name, for a stage without variants) is enough when it is unambiguous.

Per variant and metric the results hold ``n``, ``mean``, ``std`` (ddof=1), the Student-t interval over seeds and the
per-seed values; per comparison and metric the paired differences over shared seeds with their t interval and how
many seeds the method beats the baseline on; both get a percentile bootstrap over examples when every cell involved
wrote per-example arrays (:mod:`zoo.studies.per_example`). ``results.csv`` holds the same numbers in long form.
The bootstrap draws ``resamples × N`` indices per variant and comparison and metric (10 000 × 150 000 examples took
17 s on one CPU thread); lower ``bootstrap.resamples`` for a quick look.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from zoo.errors import ConfigError, DataError, ZooError
from zoo.studies.matrix import DEFAULT_VARIANT, Cell, Matrix
from zoo.studies.per_example import EXAMPLE_ID, load_per_example
from zoo.studies.stats import bootstrap_mean, describe, paired_difference

__all__ = ["MetricSpec", "TableSpec", "SummariseSpec", "StudyIncomplete", "summarise_cells", "results_csv",
           "write_results", "RESULTS_FILE", "RESULTS_CSV", "CSV_COLUMNS"]

RESULTS_FILE = "results.json"
RESULTS_CSV = "results.csv"
RESULTS_FORMAT = 1
CSV_COLUMNS = ("kind", "variant", "baseline", "metric", "direction", "n", "mean", "std", "ci_low", "ci_high",
               "bootstrap_low", "bootstrap_high", "n_examples", "seeds_better", "seeds_worse", "seeds_tied")
_TABLE_KINDS = ("variants", "comparisons")
_DIRECTIONS = {"higher": True, "max": True, "lower": False, "min": False}


class StudyIncomplete(ZooError, RuntimeError):
    """The summary needs cells that have not finished (the message lists them and the command that runs them)."""


@dataclass
class MetricSpec:
    """A metric of the summary: its ``name`` in ``metrics.json`` (dotted for nested keys), whether higher is better,
    and how tables print it (``value * scale`` with ``digits`` decimals, headed ``label``)."""

    name: str
    higher_is_better: bool
    digits: int = 2
    scale: float = 1.0
    label: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """Plain data for ``results.json``."""
        return {"direction": "higher" if self.higher_is_better else "lower", "digits": self.digits,
                "scale": self.scale, "label": self.label or self.name}


@dataclass
class TableSpec:
    """A named table: ``kind`` (``variants``: one row per variant; ``comparisons``: one row per comparison and
    metric), the ``rows`` to show in order (variant names, or ``method/baseline`` pairs as ``[method, baseline]``;
    ``None``: all), the ``metrics`` (``None``: all) and display ``labels`` for variants."""

    kind: str
    rows: list[Any] | None = None
    metrics: list[str] | None = None
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class SummariseSpec:
    """The ``summarise:`` section of a pipeline stage (see the module docstring)."""

    metrics: list[MetricSpec]
    stages: list[str] | None = None
    compare: list[tuple[str, str]] = field(default_factory=list)
    confidence: float = 0.95
    bootstrap_resamples: int = 10_000
    bootstrap_seed: int = 0
    allow_missing: bool = False
    tables: dict[str, TableSpec] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, value: Any, where: str) -> "SummariseSpec":
        """Parse and validate a ``summarise:`` mapping; ``ConfigError`` naming ``where`` and the key on bad input."""
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: 'summarise' must be a mapping with at least 'metrics'")
        known = {"stages", "metrics", "compare", "confidence", "bootstrap", "allow_missing", "tables"}
        unknown = set(value) - known
        if unknown:
            raise ConfigError(f"{where}: summarise: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
        stages = value.get("stages")
        if isinstance(stages, str):
            stages = [stages]
        if stages is not None and (not isinstance(stages, list) or not all(isinstance(s, str) for s in stages)):
            raise ConfigError(f"{where}: summarise.stages must be a list of stage names")
        confidence = float(value.get("confidence", 0.95))
        if not 0.0 < confidence < 1.0:
            raise ConfigError(f"{where}: summarise.confidence must be in (0, 1), e.g. 0.95; got {confidence}")
        boot = value.get("bootstrap") or {}
        if not isinstance(boot, Mapping) or set(boot) - {"resamples", "seed"}:
            raise ConfigError(f"{where}: summarise.bootstrap takes {{resamples, seed}}; got {boot!r}")
        resamples = int(boot.get("resamples", 10_000))
        if resamples < 100:
            raise ConfigError(f"{where}: summarise.bootstrap.resamples must be >= 100 (10000 is usual); "
                              f"got {resamples}")
        compare = value.get("compare") or []
        if not isinstance(compare, list) or not all(
                isinstance(p, list) and len(p) == 2 and all(isinstance(n, str) for n in p) for p in compare):
            raise ConfigError(f"{where}: summarise.compare must be a list of [method, baseline] pairs of variant "
                              f"names, e.g. compare: [[adamw, sgd]]; got {compare!r}")
        tables = value.get("tables") or {}
        if not isinstance(tables, Mapping):
            raise ConfigError(f"{where}: summarise.tables must map a table name to {{kind, rows, metrics, labels}}")
        spec = cls(metrics=_metric_specs(value.get("metrics"), where), stages=stages,
                   compare=[(m, b) for m, b in compare], confidence=confidence, bootstrap_resamples=resamples,
                   bootstrap_seed=int(boot.get("seed", 0)), allow_missing=bool(value.get("allow_missing", False)),
                   tables={str(k): _table_spec(v, f"{where}: summarise.tables.{k}") for k, v in tables.items()})
        names = [m.name for m in spec.metrics]
        for name, table in spec.tables.items():
            if name in _TABLE_KINDS:
                raise ConfigError(f"{where}: summarise.tables.{name}: '{name}' is a built-in table; "
                                  "choose another name")
            bad = [m for m in table.metrics or [] if m not in names]
            if bad:
                raise ConfigError(f"{where}: summarise.tables.{name}.metrics names {bad}, not among the summary's "
                                  f"metrics {names}")
        return spec


def _metric_specs(value: Any, where: str) -> list[MetricSpec]:
    if not isinstance(value, Mapping) or not value:
        raise ConfigError(f"{where}: summarise.metrics must map each metric to its direction, e.g. "
                          "metrics: {top1: higher, loss: lower}")
    out = []
    for name, spec in value.items():
        entry = {"direction": spec} if isinstance(spec, str) else spec
        if not isinstance(entry, Mapping) or set(entry) - {"direction", "digits", "scale", "label"}:
            raise ConfigError(f"{where}: summarise.metrics.{name} must be 'higher'/'lower' or "
                              f"{{direction, digits, scale, label}}; got {spec!r}")
        direction = str(entry.get("direction", "")).lower()
        if direction not in _DIRECTIONS:
            raise ConfigError(f"{where}: summarise.metrics.{name}: direction must be 'higher' or 'lower' (which is "
                              f"better); got {entry.get('direction')!r}")
        digits = entry.get("digits", 2)
        if not isinstance(digits, int) or isinstance(digits, bool) or not 0 <= digits <= 10:
            raise ConfigError(f"{where}: summarise.metrics.{name}.digits must be an integer in [0, 10]; got {digits!r}")
        out.append(MetricSpec(str(name), _DIRECTIONS[direction], digits, float(entry.get("scale", 1.0)),
                              entry.get("label")))
    return out


def _table_spec(value: Any, where: str) -> TableSpec:
    if not isinstance(value, Mapping) or set(value) - {"kind", "rows", "metrics", "labels"}:
        raise ConfigError(f"{where} must be a mapping {{kind, rows, metrics, labels}}; got {value!r}")
    kind = value.get("kind", "variants")
    if kind not in _TABLE_KINDS:
        raise ConfigError(f"{where}.kind must be one of {list(_TABLE_KINDS)}; got {kind!r}")
    labels = value.get("labels") or {}
    if not isinstance(labels, Mapping):
        raise ConfigError(f"{where}.labels must map variant names to display names")
    rows = value.get("rows")
    if rows is not None and not isinstance(rows, list):
        raise ConfigError(f"{where}.rows must be a list")
    metrics = value.get("metrics")
    if metrics is not None and not isinstance(metrics, list):
        raise ConfigError(f"{where}.metrics must be a list of metric names")
    return TableSpec(kind, rows, metrics, {str(k): str(v) for k, v in labels.items()})


# ---------------------------------------------------------------------------------------------------- reading cells


def _lookup(final: Mapping[str, Any], dotted: str) -> Any:
    node: Any = final
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _read_cell(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "metrics.json"
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc}); run the cell again with --overwrite") from None
    return summary if summary.get("complete") else None


class _Variants:
    """The summarised variants (``stage/variant`` keys), their display names, and name resolution."""

    def __init__(self, stages: Sequence[tuple[str, Matrix]]):
        self.keys = [f"{stage}/{variant}" for stage, matrix in stages for variant in matrix.variants]
        self.matrices = dict(stages)
        names = [k.split("/", 1)[1] for k in self.keys]
        self.labels = {}
        for key, name in zip(self.keys, names):
            stage = key.split("/", 1)[0]
            if names.count(name) == 1 and name != DEFAULT_VARIANT:
                self.labels[key] = name
            elif name == DEFAULT_VARIANT and len(self.matrices[stage].variants) == 1:
                self.labels[key] = stage
            else:
                self.labels[key] = key

    def resolve(self, name: str, where: str) -> str:
        """The ``stage/variant`` key that ``name`` (a key, a label or an unambiguous variant name) stands for."""
        if name in self.keys:
            return name
        hits = [k for k in self.keys if self.labels[k] == name or k.split("/", 1)[1] == name
                or (k.split("/", 1)[0] == name and len(self.matrices[name].variants) == 1)]
        if len(hits) == 1:
            return hits[0]
        if not hits:
            raise ConfigError(f"{where}: '{name}' is not a summarised variant; variants: {', '.join(self.keys)}")
        raise ConfigError(f"{where}: '{name}' is ambiguous ({', '.join(hits)}); write <stage>/<variant>")


def summarise_cells(spec: SummariseSpec, stages: Sequence[tuple[str, Matrix]], root: str | os.PathLike, *,
                    where: str = "summarise", rerun_hint: str = "") -> dict[str, Any]:
    """The results of a study: read the cells of ``stages`` (``(name, matrix)`` of each summarised matrix stage)
    under the study directory ``root`` and compute the statistics ``spec`` asks for. Returns the ``results.json``
    tree (see the module docstring).

    Raises :class:`StudyIncomplete` listing unfinished cells (unless ``spec.allow_missing``), ``ConfigError`` for a
    metric missing from a finished cell or a comparison naming no variant, ``ValueError`` for per-example arrays
    that do not match their metric or each other.
    """
    root = Path(root)
    variants = _Variants(stages)
    cells: dict[str, dict[str, Any]] = {}
    per_example: dict[str, dict[str, np.ndarray]] = {}
    missing: list[str] = []
    for stage, matrix in stages:
        for cell in matrix.cells(stage):
            summary = _read_cell(cell.run_dir(root))
            if summary is None:
                missing.append(cell.id)
                continue
            cells[cell.id] = _cell_record(cell, summary, spec, root)
            per_example[cell.id] = load_per_example(cell.run_dir(root), summary)
    if missing and not spec.allow_missing:
        raise StudyIncomplete(f"{where}: {len(missing)} cell(s) have not finished: {', '.join(missing[:10])}"
                              f"{' ...' if len(missing) > 10 else ''}. Run them first{rerun_hint}, or set "
                              "summarise.allow_missing: true to summarise the finished ones")
    for metric in spec.metrics:
        _check_means(cells, per_example, metric.name)
    results: dict[str, Any] = {
        "format": RESULTS_FORMAT, "confidence": spec.confidence,
        "metrics": {m.name: m.as_dict() for m in spec.metrics},
        "bootstrap": {"resamples": spec.bootstrap_resamples, "seed": spec.bootstrap_seed},
        "variants": {}, "comparisons": [], "missing_cells": missing, "cells": cells,
    }
    seed_values: dict[str, dict[str, dict[int, float]]] = {}
    for stage, matrix in stages:
        for variant in matrix.variants:
            key = f"{stage}/{variant}"
            ids = [Cell(stage, variant, s).id for s in matrix.seeds if Cell(stage, variant, s).id in cells]
            seed_values[key] = {m.name: {cells[i]["seed"]: cells[i]["metrics"][m.name] for i in ids}
                                for m in spec.metrics}
            times = [cells[i]["train_time_s"] for i in ids if cells[i].get("train_time_s") is not None]
            entry: dict[str, Any] = {"stage": stage, "variant": variant, "label": variants.labels[key],
                                     "seeds": [cells[i]["seed"] for i in ids],
                                     "train_time_s": float(np.mean(times)) if times else None, "metrics": {}}
            for metric in spec.metrics:
                values = seed_values[key][metric.name]
                stats = describe(list(values.values()), spec.confidence)
                stats["values"] = list(values.values())
                arrays = _per_example_stack(per_example, ids, metric.name, key)
                stats["bootstrap"] = None if arrays is None else bootstrap_mean(
                    arrays.mean(axis=0), spec.confidence, resamples=spec.bootstrap_resamples, seed=spec.bootstrap_seed)
                entry["metrics"][metric.name] = stats
            results["variants"][key] = entry
    for method_name, baseline_name in spec.compare:
        method = variants.resolve(method_name, f"{where}: compare")
        baseline = variants.resolve(baseline_name, f"{where}: compare")
        for metric in spec.metrics:
            row = paired_difference(seed_values[method][metric.name], seed_values[baseline][metric.name],
                                    higher_is_better=metric.higher_is_better, confidence=spec.confidence)
            row = {"method": method, "baseline": baseline, "metric": metric.name, **row,
                   "bootstrap": _paired_bootstrap(per_example, method, baseline, row["seeds"], metric.name, spec)}
            results["comparisons"].append(row)
    results["tables"] = _tables(spec, variants, where)
    return results


def _cell_record(cell: Cell, summary: Mapping[str, Any], spec: SummariseSpec, root: Path) -> dict[str, Any]:
    final = summary.get("final", {})
    values = {}
    for metric in spec.metrics:
        value = _lookup(final, metric.name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            present = ", ".join(k for k, v in final.items() if isinstance(v, (int, float))) or "none"
            raise ConfigError(f"{cell.run_dir(root) / 'metrics.json'}: no numeric metric '{metric.name}' in 'final' "
                              f"(numeric metrics there: {present}); fix summarise.metrics")
        if not math.isfinite(value):
            raise DataError(f"{cell.run_dir(root) / 'metrics.json'}: '{metric.name}' is {value} (did the run "
                            "diverge?); a mean over seeds needs finite values: fix the run (e.g. a lower lr) and run "
                            "the cell again with --cell ... --overwrite")
        values[metric.name] = float(value)
    return {"stage": cell.stage, "variant": cell.variant, "seed": cell.seed, "metrics": values,
            "train_time_s": summary.get("train_time_s")}


def _per_example_stack(per_example: Mapping[str, Mapping[str, np.ndarray]], ids: Sequence[str], metric: str,
                       variant: str) -> np.ndarray | None:
    """``(S, N)`` per-example values of ``metric`` over the cells ``ids``; ``None`` when no cell has them."""
    have = [i for i in ids if metric in per_example.get(i, {})]
    if not have:
        return None
    if len(have) != len(ids):
        raise DataError(f"variant {variant}: per-example '{metric}' exists for {have} but not for "
                         f"{sorted(set(ids) - set(have))}; every cell of a variant must write it (or none)")
    _check_aligned(per_example, ids, metric)
    return np.stack([np.asarray(per_example[i][metric], dtype=np.float64) for i in ids])


def _check_aligned(per_example: Mapping[str, Mapping[str, np.ndarray]], ids: Sequence[str], metric: str) -> None:
    first = ids[0]
    for other in ids[1:]:
        a, b = per_example[first], per_example[other]
        if a[metric].shape != b[metric].shape:
            raise DataError(f"per-example '{metric}': {first} has {a[metric].shape[0]} examples, {other} "
                             f"{b[metric].shape[0]}; paired statistics need the same evaluation examples")
        if EXAMPLE_ID in a and EXAMPLE_ID in b and not np.array_equal(a[EXAMPLE_ID], b[EXAMPLE_ID]):
            raise DataError(f"per-example '{metric}': {first} and {other} scored different examples (or in another "
                             f"order): their '{EXAMPLE_ID}' arrays differ")


def _check_means(cells: Mapping[str, Any], per_example: Mapping[str, Mapping[str, np.ndarray]], metric: str) -> None:
    for cell_id, arrays in per_example.items():
        if metric in arrays and cell_id in cells:
            mean, value = float(np.mean(arrays[metric])), cells[cell_id]["metrics"][metric]
            if abs(mean - value) > 1e-4 * max(1.0, abs(value)):
                raise DataError(f"cell {cell_id}: the per-example '{metric}' values average to {mean:.6g}, but "
                                 f"metrics.json says {value:.6g}; a per-example array must average to its metric")


def _paired_bootstrap(per_example: Mapping[str, Mapping[str, np.ndarray]], method: str, baseline: str,
                      seeds: Sequence[int], metric: str, spec: SummariseSpec) -> dict[str, Any] | None:
    ids_m = [f"{method}/seed{s}" for s in seeds]
    ids_b = [f"{baseline}/seed{s}" for s in seeds]
    if not seeds or not all(metric in per_example.get(i, {}) for i in ids_m + ids_b):
        return None
    _check_aligned(per_example, ids_m + ids_b, metric)
    diff = np.stack([per_example[m][metric] - per_example[b][metric] for m, b in zip(ids_m, ids_b)]).astype(np.float64)
    return bootstrap_mean(diff.mean(axis=0), spec.confidence, resamples=spec.bootstrap_resamples,
                          seed=spec.bootstrap_seed)


def _tables(spec: SummariseSpec, variants: _Variants, where: str) -> dict[str, Any]:
    tables: dict[str, Any] = {
        "variants": {"kind": "variants", "rows": list(variants.keys), "metrics": [m.name for m in spec.metrics],
                     "labels": dict(variants.labels)},
        "comparisons": {"kind": "comparisons", "rows": [[variants.resolve(m, where), variants.resolve(b, where)]
                                                        for m, b in spec.compare],
                        "metrics": [m.name for m in spec.metrics], "labels": dict(variants.labels)},
    }
    compared = {tuple(r) for r in tables["comparisons"]["rows"]}
    for name, table in spec.tables.items():
        at = f"{where}: tables.{name}"
        labels = dict(variants.labels)
        labels.update({variants.resolve(k, f"{at}.labels"): v for k, v in table.labels.items()})
        if table.kind == "variants":
            rows = [variants.resolve(str(r), f"{at}.rows") for r in table.rows] if table.rows else list(variants.keys)
        else:
            rows = ([[variants.resolve(str(m), f"{at}.rows"), variants.resolve(str(b), f"{at}.rows")]
                     for m, b in (_pair(r, at) for r in table.rows)] if table.rows else
                    [list(r) for r in tables["comparisons"]["rows"]])
            absent = [r for r in rows if tuple(r) not in compared]
            if absent:
                raise ConfigError(f"{at}.rows: {absent} are not in summarise.compare; add them there")
        tables[name] = {"kind": table.kind, "rows": rows,
                        "metrics": table.metrics or [m.name for m in spec.metrics], "labels": labels}
    return tables


def _pair(row: Any, where: str) -> tuple[str, str]:
    if not isinstance(row, list) or len(row) != 2:
        raise ConfigError(f"{where}.rows: a comparisons table lists [method, baseline] pairs; got {row!r}")
    return str(row[0]), str(row[1])


# ---------------------------------------------------------------------------------------------------- writing


def _csv_rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = []
    metrics = results["metrics"]
    for key, entry in results["variants"].items():
        for name, stats in entry["metrics"].items():
            boot = stats.get("bootstrap") or {}
            rows.append({"kind": "variant", "variant": key, "metric": name, "direction": metrics[name]["direction"],
                         **{k: stats[k] for k in ("n", "mean", "std", "ci_low", "ci_high")},
                         "bootstrap_low": boot.get("ci_low"), "bootstrap_high": boot.get("ci_high"),
                         "n_examples": boot.get("n_examples")})
    for row in results["comparisons"]:
        boot = row.get("bootstrap") or {}
        rows.append({"kind": "comparison", "variant": row["method"], "baseline": row["baseline"],
                     "metric": row["metric"], "direction": metrics[row["metric"]]["direction"],
                     **{k: row[k] for k in ("n", "mean", "std", "ci_low", "ci_high", "seeds_better", "seeds_worse",
                                            "seeds_tied")},
                     "bootstrap_low": boot.get("ci_low"), "bootstrap_high": boot.get("ci_high"),
                     "n_examples": boot.get("n_examples")})
    return rows


def results_csv(results: Mapping[str, Any]) -> str:
    """The long-form CSV text of a results tree: columns :data:`CSV_COLUMNS`, one row per variant and metric
    (``kind=variant``) and one per comparison and metric (``kind=comparison``, ``variant`` = the method; ``mean``
    etc. of the differences); empty cells for undefined values."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in _csv_rows(results):
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in CSV_COLUMNS})
    return buffer.getvalue()


def write_results(results: Mapping[str, Any], out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``out_dir/results.json`` and ``out_dir/results.csv`` (:func:`results_csv`), each atomically; returns
    both paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = (out_dir / RESULTS_FILE, out_dir / RESULTS_CSV)
    for path, text in zip(paths, (json.dumps(results, indent=2) + "\n", results_csv(results))):
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return paths
