"""The matrix of a study stage: seeds × named variants, its cells, where each cell runs and how cells refer to the
cells of earlier stages.

A matrix stage runs one cell per (variant, seed) into ``<output>/<stage>/<variant>/seed<k>/`` — a normal run
directory (config.yaml, last.pt, metrics.json) — with the variant's overrides and ``seed=<k>``. A cell is named by
its id ``<stage>/<variant>/seed<k>`` (``tools/train.py STUDY --cell train/adamw/seed1``).

``${stage:NAME}`` inside a cell refers to a cell of the earlier stage ``NAME``: the one with the same variant (or
the only variant, when ``NAME`` has one) and the same seed. ``${stage:NAME/VARIANT}`` picks another variant with the
same seed, ``${stage:NAME/VARIANT/seed<k>}`` one cell exactly (this form also works from a stage that is not a
matrix). A reference that does not name one cell is an error before anything runs.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from zoo.errors import ConfigError

__all__ = ["Cell", "Matrix", "DEFAULT_VARIANT", "parse_matrix", "parse_cell_id", "reference_dirs", "find_references",
           "explain_reference"]

#: the variant name of a matrix stage that lists seeds but no variants
DEFAULT_VARIANT = "default"
_VARIANT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")
_CELL_ID = re.compile(r"(?P<stage>[^/\s]+)/(?P<variant>[^/\s]+)/seed(?P<seed>-?\d+)")
_REFERENCE = re.compile(r"\$\{stage:([^}]*)\}")


@dataclass(frozen=True, order=True)
class Cell:
    """One run of a matrix stage: ``stage`` name, ``variant`` name and ``seed``."""

    stage: str
    variant: str
    seed: int

    @property
    def id(self) -> str:
        """``<stage>/<variant>/seed<k>``: what ``--cell`` takes and the cell's path below the study directory."""
        return f"{self.stage}/{self.variant}/seed{self.seed}"

    def run_dir(self, root: str | Path) -> Path:
        """The cell's run directory, ``root/<stage>/<variant>/seed<k>``."""
        return Path(root) / self.stage / self.variant / f"seed{self.seed}"

    def log_file(self, root: str | Path) -> Path:
        """Where ``--jobs`` writes the cell's console output: ``root/<stage>/<variant>/seed<k>.log`` (beside, not
        inside, the run directory, so that ``--overwrite`` of the cell does not delete its own log)."""
        return Path(root) / self.stage / self.variant / f"seed{self.seed}.log"


@dataclass
class Matrix:
    """Seeds × variants of one stage. ``variants`` maps a name to its overrides (``key=value`` strings), in the
    order of the config."""

    seeds: tuple[int, ...]
    variants: dict[str, list[str]] = field(default_factory=lambda: {DEFAULT_VARIANT: []})

    def cells(self, stage: str) -> list[Cell]:
        """Every cell of ``stage``, seed-major (all variants of the first seed first, so that a study stopped half
        way has complete comparisons for its first seeds)."""
        return [Cell(stage, variant, seed) for seed in self.seeds for variant in self.variants]

    def overrides(self, cell: Cell) -> list[str]:
        """The cell's overrides on top of the stage's: the variant's, then ``seed=<k>``."""
        return [*self.variants[cell.variant], f"seed={cell.seed}"]

    def as_dict(self) -> dict[str, Any]:
        """``{seeds, variants}`` as plain data (for ``pipeline.yaml``)."""
        return {"seeds": list(self.seeds), "variants": {k: list(v) for k, v in self.variants.items()}}


def _seeds(value: Any, where: str) -> tuple[int, ...]:
    integers = isinstance(value, list) and all(isinstance(s, int) and not isinstance(s, bool) for s in value)
    if not value or not integers:
        raise ConfigError(f"{where}: 'seeds' must be a non-empty list of integers, e.g. seeds: [0, 1, 2]; "
                          f"got {value!r}")
    if len(set(value)) != len(value):
        raise ConfigError(f"{where}: 'seeds' lists a seed twice: {value}")
    return tuple(value)


def parse_matrix(seeds: Any, variants: Any, where: str, overrides_list: Any) -> Matrix | None:
    """The :class:`Matrix` of a stage entry from its ``seeds`` and ``variants`` values (``None`` and ``None``: not
    a matrix). ``overrides_list(value, where)`` turns a variant's overrides (mapping or list) into strings.

    Raises ``ConfigError`` naming the stage for: variants without seeds, bad seeds, bad variant names, a variant
    that sets ``seed`` (the matrix sets it per cell).
    """
    if seeds is None and variants is None:
        return None
    if seeds is None:
        raise ConfigError(f"{where}: 'variants' needs 'seeds' (the seeds every variant runs with), "
                          "e.g. seeds: [0, 1, 2]")
    parsed = _seeds(seeds, where)
    if variants is None:
        return Matrix(parsed)
    if not isinstance(variants, Mapping) or not variants:
        raise ConfigError(f"{where}: 'variants' must be a non-empty mapping {{name: overrides}}, "
                          "e.g. variants: {{baseline: {{}}, wide: {{model.width: 64}}}}")
    out: dict[str, list[str]] = {}
    for name, value in variants.items():
        name = str(name)
        if not _VARIANT.fullmatch(name):
            raise ConfigError(f"{where}: variant name '{name}' must be a plain name (letters, digits, _ . + -), "
                              "it becomes a directory")
        items = overrides_list(value, f"{where}: variants.{name}")
        if any(item.split("=", 1)[0].strip() == "seed" for item in items):
            raise ConfigError(f"{where}: variant '{name}' sets 'seed'; the matrix sets seed=<k> for every cell "
                              "from 'seeds'")
        out[name] = items
    return Matrix(parsed, out)


def parse_cell_id(text: str) -> Cell:
    """``"train/adamw/seed1"`` -> ``Cell("train", "adamw", 1)``; ``ConfigError`` for another form."""
    match = _CELL_ID.fullmatch(text.strip().strip("/"))
    if not match:
        raise ConfigError(f"--cell {text!r}: a cell id is <stage>/<variant>/seed<k>, e.g. train/default/seed0 "
                          "(tools/train.py STUDY --list-cells prints them)")
    return Cell(match["stage"], match["variant"], int(match["seed"]))


def find_references(tree: Any) -> set[str]:
    """Every ``NAME`` of ``${stage:NAME}`` in the strings of ``tree`` (nested dicts / lists / strings)."""
    found: set[str] = set()
    if isinstance(tree, str):
        found.update(m.strip() for m in _REFERENCE.findall(tree))
    elif isinstance(tree, Mapping):
        for value in tree.values():
            found |= find_references(value)
    elif isinstance(tree, (list, tuple)):
        for value in tree:
            found |= find_references(value)
    return found


def reference_dirs(earlier: Iterable[tuple[str, Matrix | None]], root: str | Path,
                   cell: Cell | None = None) -> dict[str, Path]:
    """What ``${stage:...}`` may name from ``cell`` (``None``: a stage that is not a matrix), given the ``earlier``
    stages as ``(name, matrix or None)``: the ``{reference: run directory}`` map for :func:`zoo.config.stage_scope`.

    A plain stage is ``NAME``; every cell of a matrix stage is ``NAME/VARIANT/seed<k>``; from a cell, also
    ``NAME/VARIANT`` (same seed) and ``NAME`` (same variant, or the only one; same seed) where those cells exist.
    """
    root = Path(root)
    dirs: dict[str, Path] = {}
    for name, matrix in earlier:
        if matrix is None:
            dirs[name] = root / name
            continue
        for other in matrix.cells(name):
            dirs[other.id] = other.run_dir(root)
        if cell is None or cell.seed not in matrix.seeds:
            continue
        for variant in matrix.variants:
            dirs[f"{name}/{variant}"] = Cell(name, variant, cell.seed).run_dir(root)
        variant = cell.variant if cell.variant in matrix.variants else (
            next(iter(matrix.variants)) if len(matrix.variants) == 1 else None)
        if variant is not None:
            dirs[name] = Cell(name, variant, cell.seed).run_dir(root)
    return dirs


def explain_reference(reference: str, earlier: Sequence[tuple[str, Matrix | None]], cell: Cell | None,
                      stage: str) -> str:
    """Why ``${stage:reference}`` names no run from ``cell`` of ``stage`` (``cell`` ``None``: a plain stage) and how
    to fix it: one sentence for the error message."""
    who = f"cell {cell.id}" if cell is not None else f"stage '{stage}'"
    matrices = dict(earlier)
    head = reference.split("/", 1)[0]
    if head not in matrices:
        return (f"{who} refers to ${{stage:{reference}}}, but no earlier stage is called '{head}' "
                f"(earlier stages: {', '.join(matrices) or 'none'})")
    matrix = matrices[head]
    if matrix is None:
        return f"{who} refers to ${{stage:{reference}}}, but '{head}' is not a matrix stage: write ${{stage:{head}}}"
    example = matrix.cells(head)[0].id
    if cell is None:
        return (f"{who} refers to ${{stage:{reference}}}, but '{head}' is a matrix stage (one run per variant and "
                f"seed): name one cell, e.g. ${{stage:{example}}}, or give '{stage}' seeds/variants too")
    if cell.seed not in matrix.seeds:
        return (f"{who} refers to ${{stage:{reference}}}, but '{head}' has no seed {cell.seed} (its seeds: "
                f"{list(matrix.seeds)}); give both stages the same seeds or name one cell, e.g. ${{stage:{example}}}")
    return (f"{who} refers to ${{stage:{reference}}}, but '{head}' has no variant '{cell.variant}' and more than one "
            f"variant ({', '.join(matrix.variants)}): name one, e.g. ${{stage:{head}/{next(iter(matrix.variants))}}}")
