"""Markdown tables generated from a study's ``results.json``, and the README blocks that hold them.

A markdown file holds a generated table between two markers::

    <!-- results:configs/vida/results.json:variants -->
    (table written by tools/report.py --update; never edit by hand)
    <!-- /results -->

The path is relative to the markdown file's folder, or else to the repository root; the last part names a table of
the results file (``variants``, ``comparisons`` or one declared in the study's ``summarise.tables``). A benchmark's
results file (``tools/benchmark.py NAME --json PATH``, ``"kind": "benchmark"``) is rendered the same way, one table
per measured configuration, with the command, machine and load that produced it in the caption.
:func:`update_markdown` rewrites every block from its results file; :func:`check_markdown` lists the blocks whose
text differs from what their results file generates (a test runs it over every ``*.md`` of the repository).

Reference: mmdetection keeps one README per algorithm folder with its results table; here the table is generated.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from zoo.errors import ConfigError

__all__ = ["load_results", "render_table", "benchmark_csv", "table_names", "Block", "find_blocks", "render_markdown", "update_markdown",
           "check_markdown", "marked_markdown_files"]

_START = re.compile(r"<!--\s*results:(?P<path>[^\s:]+):(?P<table>[A-Za-z0-9_.-]+)\s*-->")
_END = re.compile(r"<!--\s*/results\s*-->")
_SKIP_DIRS = {".git", ".venv", "venv", "node_modules", "runs", "build", "dist", "__pycache__", ".pytest_cache"}
_ARROW = {"higher": "↑", "lower": "↓"}


def load_results(path: str | os.PathLike) -> dict[str, Any]:
    """The results tree of a ``results.json`` (``FileNotFoundError`` naming the path when it is missing)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results file not found: {path} (a study's summarise stage writes it: "
                                "<output>/<summary stage>/results.json)")
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    if isinstance(results, dict) and results.get("kind") == "benchmark" and "tables" in results:
        return results
    if not isinstance(results, dict) or "variants" not in results or "tables" not in results:
        raise ConfigError(f"{path}: not a study results file (no 'variants'/'tables') nor a benchmark's (no 'kind': "
                          "'benchmark'); a pipeline's summarise stage writes the first, `tools/benchmark.py NAME "
                          "--json PATH` the second")
    return results


def table_names(results: Mapping[str, Any]) -> list[str]:
    """The tables a results file defines (``variants``, ``comparisons``, then the study's own)."""
    return list(results["tables"])


def _number(value: float | None, metric: Mapping[str, Any]) -> str:
    if value is None:
        return "–"
    return f"{value * float(metric.get('scale', 1.0)):.{int(metric.get('digits', 2))}f}"


def _spread(value: float | None, metric: Mapping[str, Any]) -> str:
    """A std or difference scale: like :func:`_number`, but with the absolute value of ``scale``."""
    return _number(value, {**metric, "scale": abs(float(metric.get("scale", 1.0)))})


def _interval(low: float | None, high: float | None, metric: Mapping[str, Any]) -> str:
    if low is None or high is None:
        return "–"
    a, b = sorted((low * float(metric.get("scale", 1.0)), high * float(metric.get("scale", 1.0))))
    digits = int(metric.get("digits", 2))
    return f"[{a:.{digits}f}, {b:.{digits}f}]"


def _escape(text: str) -> str:
    return str(text).replace("|", "\\|")


def _variants_table(results: Mapping[str, Any], table: Mapping[str, Any]) -> list[str]:
    metrics = results["metrics"]
    timed = all(results["variants"][key].get("train_time_s") is not None for key in table["rows"])
    head = ["variant", "seeds"] + [f"{metrics[m]['label']} {_ARROW[metrics[m]['direction']]}" for m in table["metrics"]]
    head += ["train time / seed"] if timed else []
    lines = ["| " + " | ".join(map(_escape, head)) + " |", "|" + "---|" * len(head)]
    for key in table["rows"]:
        entry = results["variants"][key]
        cells = [table["labels"].get(key, key), str(len(entry["seeds"]))]
        for name in table["metrics"]:
            stats, spec = entry["metrics"][name], metrics[name]
            text = _number(stats["mean"], spec)
            if stats["std"] is not None:
                text += f" ± {_spread(stats['std'], spec)} {_interval(stats['ci_low'], stats['ci_high'], spec)}"
            cells.append(text)
        if timed:
            cells.append(_duration(entry["train_time_s"]))
        lines.append("| " + " | ".join(map(_escape, cells)) + " |")
    return lines


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _comparisons_table(results: Mapping[str, Any], table: Mapping[str, Any]) -> list[str]:
    metrics = results["metrics"]
    level = f"{100 * float(results['confidence']):g} %"
    head = ["method", "baseline", "metric", "Δ mean ± std", f"{level} CI (seeds)", f"{level} CI (examples)",
            "method better"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    by_key = {(r["method"], r["baseline"], r["metric"]): r for r in results["comparisons"]}
    for method, baseline in table["rows"]:
        for name in table["metrics"]:
            row, spec = by_key[(method, baseline, name)], metrics[name]
            boot = row.get("bootstrap")
            delta = _number(row["mean"], spec)
            if row["mean"] is not None and row["mean"] >= 0:
                delta = "+" + delta
            if row["std"] is not None:
                delta += f" ± {_spread(row['std'], spec)}"
            cells = [table["labels"].get(method, method), table["labels"].get(baseline, baseline),
                     f"{spec['label']} {_ARROW[spec['direction']]}", delta,
                     _interval(row["ci_low"], row["ci_high"], spec),
                     _interval(boot["ci_low"], boot["ci_high"], spec) if boot else "–",
                     f"{row['seeds_better']}/{row['n']} seeds"]
            lines.append("| " + " | ".join(map(_escape, cells)) + " |")
    return lines


def _benchmark_value(column: str, value: Any) -> str:
    """One measured value with its unit, read off the column name (``*_ms``, ``*_s``, ``*_mb``, ``*_sps``)."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if not isinstance(value, (int, float)):
        return _escape(str(value))
    if column.endswith("_ms"):
        return f"{value / 1000:.3g} s" if value >= 1000 else f"{value:.3g} ms"
    if column.endswith("_s"):
        return f"{value:.3g} s"
    if column.endswith("_mb"):
        return f"{value:.0f} MB" if value >= 100 else f"{value:.3g} MB"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.3g}"


def _benchmark_table(table: Mapping[str, Any]) -> list[str]:
    """A benchmark's table: one row per measured configuration, each shown column followed by its ratio against
    the baseline row where the benchmark computed one (``(3.2×)``)."""
    columns = table["columns"]
    lines = ["| " + " | ".join(["row", *map(_escape, columns.values())]) + " |", "|" + "---|" * (len(columns) + 1)]
    for row in table["rows"]:
        cells = [f"`{row['name']}`" + (" (baseline)" if row["name"] == table["baseline"] else "")]
        for column in columns:
            text = _benchmark_value(column, row.get(column))
            ratio = row.get(f"{column}_x", row.get(f"{column}_frac"))
            if ratio is not None and row["name"] != table["baseline"]:
                text += f" ({ratio:.0f}×)" if ratio >= 10 else f" ({ratio:.2g}×)"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _benchmark_caption(results: Mapping[str, Any], table: Mapping[str, Any]) -> str:
    columns = table["columns"]
    kinds: dict[str, list[str]] = {"baseline / row": [], "row / baseline": []}
    for column, label in columns.items():
        if any(f"{column}_x" in r for r in table["rows"]):
            kinds["baseline / row"].append(label)
        elif any(f"{column}_frac" in r for r in table["rows"]):
            kinds["row / baseline"].append(label)
    caption = table["title"]
    ratios = "; ".join(f"{how} for {', '.join(labels)}" for how, labels in kinds.items() if labels)
    if ratios:
        caption += f"; (n×) against the baseline row, measured in the same run: {ratios}"
    if results.get("command"):
        caption += f"; `{results['command']}`"
    caption += f"; {results.get('machine', '?')}"
    if results.get("load_average") is not None:
        caption += f", 1-min load average {results['load_average']:g} at the start"
    if results.get("created"):
        caption += f", written {results['created']}"
    return caption


def benchmark_csv(results: Mapping[str, Any]) -> str:
    """A benchmark results file in long form: ``table,row,column,value`` (ratio columns included), one line each."""
    import csv
    import io

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["table", "row", "column", "value"])
    for key, table in results["tables"].items():
        for row in table["rows"]:
            writer.writerows([key, row["name"], column, value] for column, value in row.items() if column != "name")
    return out.getvalue()


def render_table(results: Mapping[str, Any], name: str = "variants", source: str | None = None) -> str:
    """The markdown of table ``name`` of ``results`` (a ``results.json`` tree), with a one-line caption saying what
    the numbers are (and, given ``source``, which file and table generated it). Ends with a newline."""
    tables = results["tables"]
    if name not in tables:
        raise ConfigError(f"no table '{name}' in the results{f' {source}' if source else ''}; tables: "
                          f"{', '.join(tables)}")
    table = tables[name]
    origin = f"generated by `tools/report.py` from `{source}` (table `{name}`): " if source else ""
    if table["kind"] == "benchmark":
        return "\n".join(_benchmark_table(table)) + f"\n\n<sub>{origin}{_benchmark_caption(results, table)}.</sub>\n"
    level = f"{100 * float(results['confidence']):g} %"
    if table["kind"] == "variants":
        lines = _variants_table(results, table)
        caption = (f"mean ± std over seeds (ddof=1) [{level} Student-t interval]; ↑/↓: higher/lower is better")
    else:
        lines = _comparisons_table(results, table)
        caption = (f"paired differences method − baseline over the seeds both ran, {level} Student-t interval "
                   "over seeds")
        if any(r.get("bootstrap") for r in results["comparisons"]):
            caption += (f"; percentile bootstrap over evaluation examples where the cells saved per-example scores "
                        f"({results['bootstrap']['resamples']} resamples, seed {results['bootstrap']['seed']})")
        else:
            caption += "; no bootstrap over examples (the cells saved no per-example scores)"
    missing = results.get("missing_cells") or []
    if missing:
        caption += f"; {len(missing)} cell(s) missing: {', '.join(missing)}"
    return "\n".join(lines) + f"\n\n<sub>{origin}{caption}.</sub>\n"


# ---------------------------------------------------------------------------------------------------- README blocks


@dataclass
class Block:
    """A marked block of a markdown file: the results ``path`` and ``table`` it names, the character span of its
    body (between the two markers) and the 1-based ``line`` of its opening marker."""

    path: str
    table: str
    body_start: int
    body_end: int
    line: int


def _fenced_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of fenced code blocks (``` or ~~~), where markers are examples, not blocks."""
    spans, pos, opened = [], 0, None
    for line in text.splitlines(keepends=True):
        if line.lstrip().startswith(("```", "~~~")):
            if opened is None:
                opened = pos
            else:
                spans.append((opened, pos + len(line)))
                opened = None
        pos += len(line)
    if opened is not None:
        spans.append((opened, len(text)))
    return spans


def find_blocks(text: str, where: str = "<markdown>") -> list[Block]:
    """The marked blocks of markdown ``text`` (markers inside fenced code blocks are ignored); ``ConfigError``
    naming ``where`` and the line for a marker that is not closed, or a closing marker without an opening one."""
    fences = _fenced_spans(text)

    def outside(match: re.Match) -> bool:
        return not any(a <= match.start() < b for a, b in fences)

    markers = sorted([m for m in _START.finditer(text) if outside(m)] + [m for m in _END.finditer(text) if outside(m)],
                     key=lambda m: m.start())
    blocks: list[Block] = []
    opening: re.Match | None = None
    for match in markers:
        line = text.count("\n", 0, match.start()) + 1
        if match.re is _START:
            if opening is not None:
                raise ConfigError(f"{where}:{text.count(chr(10), 0, opening.start()) + 1}: '{opening.group(0)}' is "
                                  "not closed by '<!-- /results -->' before the next table marker")
            opening = match
        elif opening is None:
            raise ConfigError(f"{where}:{line}: '<!-- /results -->' without an opening '<!-- results:PATH:TABLE -->'")
        else:
            blocks.append(Block(opening["path"], opening["table"], opening.end(), match.start(),
                                text.count("\n", 0, opening.start()) + 1))
            opening = None
    if opening is not None:
        raise ConfigError(f"{where}:{text.count(chr(10), 0, opening.start()) + 1}: '{opening.group(0)}' is not "
                          "closed by '<!-- /results -->'")
    return blocks


def _repo_root(start: Path) -> Path | None:
    for folder in [start, *start.parents]:
        if (folder / ".git").exists() or (folder / "pyproject.toml").is_file():
            return folder
    return None


def _results_path(markdown: Path, written: str) -> Path:
    candidates = [markdown.parent / written]
    root = _repo_root(markdown.parent.resolve())
    if root is not None:
        candidates.append(root / written)
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"{markdown}: the results file '{written}' of a marked table was not found (tried "
                            f"{', '.join(str(p) for p in candidates)}); the path is relative to the markdown file "
                            "or the repository root")


def render_markdown(path: str | os.PathLike) -> str:
    """The text of markdown file ``path`` with every marked block regenerated from its results file."""
    path = Path(path)
    text = path.read_text()
    out, pos = [], 0
    for block in find_blocks(text, str(path)):
        results = load_results(_results_path(path, block.path))
        out += [text[pos:block.body_start], "\n", render_table(results, block.table, block.path)]
        pos = block.body_end
    out.append(text[pos:])
    return "".join(out)


def update_markdown(path: str | os.PathLike) -> bool:
    """Rewrite the marked blocks of markdown file ``path`` from their results files; whether anything changed."""
    path = Path(path)
    new = render_markdown(path)
    if new == path.read_text():
        return False
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(new)
    os.replace(tmp, path)
    return True


def check_markdown(path: str | os.PathLike) -> list[str]:
    """One message per marked block of ``path`` whose text differs from what its results file generates (names the
    file, line, results file and the command that fixes it); ``[]`` when all match."""
    path = Path(path)
    text = path.read_text()
    blocks = find_blocks(text, str(path))
    expected_text = render_markdown(path)
    expected = find_blocks(expected_text, str(path))
    problems = []
    for have, want in zip(blocks, expected):
        if text[have.body_start:have.body_end] != expected_text[want.body_start:want.body_end]:
            problems.append(f"{path}:{have.line}: the table '{have.table}' differs from what {have.path} generates; "
                            f"regenerate it with: python tools/report.py --update {path}")
    return problems


def marked_markdown_files(root: str | os.PathLike, skip: Sequence[str] = tuple(_SKIP_DIRS)) -> list[Path]:
    """Every ``*.md`` below ``root`` that holds a results marker (folders in ``skip`` and hidden folders left out)."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in skip and not d.startswith("."))
        for name in sorted(files):
            if name.endswith(".md"):
                path = Path(folder) / name
                try:
                    text = path.read_text()
                except (OSError, UnicodeDecodeError):
                    continue
                if _START.search(text) or _END.search(text):
                    found.append(path)
    return found
