"""Pipelines: named stages run in order, each a normal run whose directory sits under the pipeline's; a stage may
expand over a matrix of seeds × variants (a study), and a summarise stage turns the cells into statistics.

A pipeline config holds ``pipeline:`` — a list of stages — and optionally ``seeds:`` (the default seeds of every
stage, see below)::

    pipeline:
      - name: train
        config: modelnet10_small.yaml              # path relative to this file, or a packaged config name
      - name: refine
        config: modelnet10_small_refine.yaml
        overrides:                                   # dotted keys; a list of "key=value" strings works too
          model.checkpoint_path: ${stage:train}/last.pt

``${stage:NAME}`` is the run directory of an earlier stage (it must have finished). ``tools/train.py
PIPELINE.yaml`` runs every stage into ``<output>/<stage name>/``; finished stages are skipped, so running the
command again continues where it stopped (an interrupted stage needs ``--resume``, as any run). ``--stage
NAME`` runs that stage only. The pipeline directory gets ``pipeline.yaml`` (the stages as run) and
``metrics.json`` (each stage's final metrics).

**Command-line overrides.** ``STAGE:key=value`` applies to stage ``STAGE`` only (every cell of a matrix stage);
a plain ``key=value`` applies to every stage that runs a config, so its key must exist in each of their configs::

    zoo train configs/bignas/mnist_pipeline.yaml search:search.rounds=1 trainer.epochs=1

(``search.rounds`` exists only in the ``search`` stage's config; ``trainer.epochs`` in both.) Every override is
checked against the stages' config classes before anything runs: a plain key that some stage lacks is an error
naming the stages whose configs have it (write it as ``STAGE:key=value``); a key no stage has, or a ``STAGE:``
prefix that names no stage that runs a config, is an error naming the stages (see :func:`route_overrides`).

**Studies.** A stage with ``seeds: [0, 1, 2]`` (and optionally ``variants: {name: overrides, ...}``) runs one cell
per variant and seed into ``<output>/<stage>/<variant>/seed<k>/`` (variant ``default`` when there are none), each
a normal resumable run with the stage's overrides, the variant's, the command line's and ``seed=<k>``. A top-level
``seeds:`` applies to every stage that does not set its own (``seeds: null`` keeps a stage a single run).
``${stage:NAME}`` from a cell names the cell of ``NAME`` with the same variant (or its only one) and seed;
``${stage:NAME/VARIANT}`` another variant, ``${stage:NAME/VARIANT/seed<k>}`` one cell (see
:mod:`zoo.studies.matrix`). A stage with ``summarise:`` instead of ``config:`` writes ``results.json`` and
``results.csv`` from the cells' metrics (see :mod:`zoo.studies.summarise`); it runs every time the pipeline does.

``--cell STAGE/VARIANT/seed<k>`` runs one cell (earlier stages must have finished); ``--jobs N`` runs the cells of a
stage N at a time as processes (:mod:`zoo.studies.runner`); ``--list-cells`` prints one command per cell, for a
cluster scheduler (a SLURM array: one array task per line, one array job per stage) or ``torchrun``.
"""
from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import yaml

from zoo.config import stage_scope
from zoo.engine.rundir import read_summary
from zoo.engine.stage_overrides import route_overrides, split_stage_override
from zoo.errors import ConfigError
from zoo.studies.matrix import (Cell, Matrix, explain_reference, find_references, parse_cell_id, parse_matrix,
                                reference_dirs)
from zoo.studies.summarise import RESULTS_FILE, SummariseSpec, summarise_cells, write_results

__all__ = ["Stage", "Step", "is_pipeline", "load_pipeline", "plan_stage", "list_cells", "cell_commands", "run_pipeline",
           "summary_lines", "split_stage_override", "route_overrides"]

_logger = logging.getLogger("zoo")

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_RUN_KEYS = {"name", "config", "overrides", "seeds", "variants"}
_SUMMARY_KEYS = {"name", "summarise"}


@dataclass
class Stage:
    """One stage: its ``name``, the ``config`` file it runs and the ``overrides`` (``key=value`` strings); a matrix
    stage also has its ``matrix`` (seeds × variants); a summarise stage has ``summarise`` and no config."""

    name: str
    config: Path | None
    overrides: list[str] = field(default_factory=list)
    matrix: Matrix | None = None
    summarise: SummariseSpec | None = None


@dataclass
class Step:
    """One run of a stage: the whole stage (``cell`` ``None``) or one cell of a matrix stage; its run directory,
    its overrides (stage, variant, ``seed=<k>``; command-line overrides come on top) and the ``${stage:...}``
    references it may use (for :func:`zoo.config.stage_scope`)."""

    stage: Stage
    cell: Cell | None
    run_dir: Path
    overrides: list[str]
    references: dict[str, Path]

    @property
    def label(self) -> str:
        """The stage name, or the cell id."""
        return self.cell.id if self.cell is not None else self.stage.name


def is_pipeline(raw: Mapping[str, Any]) -> bool:
    """Whether an (unresolved) config tree is a pipeline."""
    return "pipeline" in raw


def _overrides_list(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, Mapping):
        return [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
                if not isinstance(v, str) else f"{k}={v}" for k, v in value.items()]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ConfigError(f"{where}: overrides must be a mapping of dotted keys or a list of 'key=value' strings")


def _summarise_stage(entry: Mapping[str, Any], name: str, where: str, earlier: Sequence[Stage]) -> Stage:
    unknown = set(entry) - _SUMMARY_KEYS
    if unknown:
        raise ConfigError(f"{where}: a summarise stage has only name and summarise; also found {sorted(unknown)}")
    spec = SummariseSpec.from_mapping(entry["summarise"], where)
    matrices = {s.name: s for s in earlier if s.matrix is not None}
    if spec.stages is None:
        if not matrices:
            raise ConfigError(f"{where}: there is no earlier matrix stage to summarise; give a stage 'seeds' "
                              "(and 'variants')")
        spec.stages = list(matrices)
    for stage_name in spec.stages:
        if stage_name not in matrices:
            raise ConfigError(f"{where}: summarise.stages names '{stage_name}', which is not an earlier matrix stage "
                              f"(earlier matrix stages: {', '.join(matrices) or 'none'})")
    return Stage(name, None, summarise=spec)


def _check_references(path: Path, stage: Stage, earlier: Sequence[Stage]) -> None:
    """Every ``${stage:...}`` of the stage (its overrides, its variants', its config file) names a run of an earlier
    stage from each of its cells; else ``ConfigError`` saying which and how to fix it, before anything runs."""
    from zoo.config import load_raw_config

    common = find_references(stage.overrides) | find_references(load_raw_config(stage.config))
    per_variant = {v: find_references(items) for v, items in (stage.matrix.variants.items() if stage.matrix else [])}
    pairs = [(s.name, s.matrix) for s in earlier]
    for cell in (stage.matrix.cells(stage.name) if stage.matrix else [None]):
        known = reference_dirs(pairs, Path("."), cell)
        wanted = common | (per_variant.get(cell.variant, set()) if cell else set())
        for reference in sorted(wanted):
            if reference not in known:
                raise ConfigError(f"{path}: {explain_reference(reference, pairs, cell, stage.name)}")


def load_pipeline(path: str | os.PathLike, raw: Mapping[str, Any]) -> list[Stage]:
    """The stages of the pipeline config ``path`` (``raw``: its unresolved tree); validated, including every
    ``${stage:...}`` reference of every cell."""
    from zoo.resources import find_config

    path = Path(path)
    extra = set(raw) - {"pipeline", "seeds"}
    if extra:
        raise ConfigError(f"{path}: a pipeline config holds only 'pipeline' (a list of stages) and optionally 'seeds'; "
                          f"also found {sorted(extra)}. Put run settings into the stages' configs or overrides")
    entries = raw["pipeline"]
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{path}: 'pipeline' must be a non-empty list of stages ({{name, config, overrides}})")
    default_seeds = raw.get("seeds")
    stages: list[Stage] = []
    for i, entry in enumerate(entries):
        where = f"{path}: pipeline[{i}]"
        if not isinstance(entry, Mapping) or "name" not in entry or not ("config" in entry or "summarise" in entry):
            raise ConfigError(f"{where} must be a mapping with 'name' and 'config' (and optional 'overrides', "
                              "'seeds', 'variants'), or with 'name' and 'summarise'")
        name = str(entry["name"])
        if not _NAME.fullmatch(name) or name in {s.name for s in stages}:
            raise ConfigError(f"{where}: stage name '{name}' must be unique and a plain identifier")
        if "summarise" in entry:
            stages.append(_summarise_stage(entry, name, f"{where} ('{name}')", stages))
            continue
        unknown = set(entry) - _RUN_KEYS
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; a stage has name, config, overrides "
                              "(and seeds, variants for a study)")
        config = Path(entry["config"])
        candidate = config if config.is_absolute() else path.parent / config
        config = candidate if candidate.is_file() else find_config(str(entry["config"]))
        overrides = _overrides_list(entry.get("overrides"), where)
        matrix = parse_matrix(entry.get("seeds", default_seeds), entry.get("variants"), f"{where} ('{name}')",
                              _overrides_list)
        if matrix is not None and any(o.split("=", 1)[0].strip() == "seed" for o in overrides):
            raise ConfigError(f"{where} ('{name}'): the overrides set 'seed', but the stage's seeds set it per cell")
        stage = Stage(name, config.resolve(), overrides, matrix)
        _check_references(path, stage, stages)
        stages.append(stage)
    return stages


def plan_stage(stage: Stage, earlier: Sequence[Stage], root: str | os.PathLike) -> list[Step]:
    """The runs of ``stage`` (one, or one per cell) under the pipeline directory ``root``, given the ``earlier``
    stages (for ``${stage:...}``). Summarise stages have none."""
    if stage.summarise is not None:
        return []
    root = Path(root).resolve()
    pairs = [(s.name, s.matrix) for s in earlier]
    if stage.matrix is None:
        return [Step(stage, None, root / stage.name, list(stage.overrides), reference_dirs(pairs, root))]
    return [Step(stage, cell, cell.run_dir(root), [*stage.overrides, *stage.matrix.overrides(cell)],
                 reference_dirs(pairs, root, cell)) for cell in stage.matrix.cells(stage.name)]


def list_cells(path: str | os.PathLike, raw: Mapping[str, Any], only: str | None = None) -> list[Cell]:
    """Every cell of the matrix stages of pipeline ``path`` in run order (``only``: of that stage)."""
    stages = load_pipeline(path, raw)
    if only is not None and only not in [s.name for s in stages]:
        raise ConfigError(f"--stage {only}: the pipeline {path} has stages {', '.join(s.name for s in stages)}")
    return [c for s in stages if s.matrix is not None and only in (None, s.name) for c in s.matrix.cells(s.name)]


def cell_commands(path: str | os.PathLike, raw: Mapping[str, Any], shown: str, output: str | os.PathLike,
                  overrides: Sequence[str] = (), only: str | None = None,
                  launcher: str = "python tools/train.py") -> list[str]:
    """One shell command per cell (``LAUNCHER SHOWN OVERRIDES --cell ID --output OUTPUT``), in run order: what
    ``--list-cells`` prints for a cluster scheduler. ``shown``: the config as the user wrote it; ``launcher``: how
    the user runs the training command (``zoo train`` or ``python tools/train.py``). The overrides are checked
    (:func:`route_overrides`) first."""
    import shlex

    route_overrides(load_pipeline(path, raw), overrides, path)
    cells = list_cells(path, raw, only)
    if not cells:
        raise ConfigError(f"--list-cells: {path} has no matrix stage{f' called {only}' if only else ''} (a stage with "
                          "'seeds', and optionally 'variants'); run it as any pipeline")
    tail = " ".join(shlex.quote(o) for o in overrides)
    return [f"{launcher} {shlex.quote(str(shown))}{' ' + tail if tail else ''} --cell {c.id} "
            f"--output {shlex.quote(str(output))}" for c in cells]


def _finished(run_dir: Path) -> dict[str, Any] | None:
    summary = read_summary(run_dir)
    return summary if summary is not None and summary.get("complete") else None


def _atomic_write(path: Path, text: str) -> None:
    # a unique temporary name: several cells of one study (--jobs, a SLURM array) update the same files
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _describe_stages(stages: Sequence[Stage]) -> list[dict[str, Any]]:
    out = []
    for s in stages:
        if s.summarise is not None:
            out.append({"name": s.name, "summarise": {"stages": s.summarise.stages,
                                                      "metrics": [m.name for m in s.summarise.metrics],
                                                      "compare": [list(p) for p in s.summarise.compare]}})
            continue
        entry: dict[str, Any] = {"name": s.name, "config": str(s.config), "overrides": s.overrides}
        if s.matrix is not None:
            entry.update(s.matrix.as_dict())
        out.append(entry)
    return out


def _resolve_target(stages: Sequence[Stage], only: str | None, cell: str | None) -> tuple[str | None, Cell | None]:
    names = [s.name for s in stages]
    if only is not None and cell is not None:
        raise ConfigError("give --stage or --cell, not both (a cell id names its stage)")
    if only is not None and only not in names:
        raise ConfigError(f"--stage {only}: the pipeline has stages {', '.join(names)}")
    if cell is None:
        return only, None
    target = parse_cell_id(cell)
    stage = next((s for s in stages if s.name == target.stage), None)
    if stage is None or stage.matrix is None:
        matrices = [s.name for s in stages if s.matrix is not None]
        raise ConfigError(f"--cell {cell}: '{target.stage}' is not a matrix stage of this pipeline (matrix stages: "
                          f"{', '.join(matrices) or 'none'})")
    if target not in stage.matrix.cells(stage.name):
        raise ConfigError(f"--cell {cell}: stage '{stage.name}' has variants {', '.join(stage.matrix.variants)} and "
                          f"seeds {list(stage.matrix.seeds)}")
    return target.stage, target


def run_pipeline(
    path: str | os.PathLike,
    raw: Mapping[str, Any],
    output_dir: str | os.PathLike,
    run_stage: Callable[[Stage, Path, list[str]], dict[str, Any]],
    *,
    overrides: Sequence[str] = (),
    only: str | None = None,
    cell: str | None = None,
    jobs: int = 1,
    spawn: Callable[[Cell], list[str]] | None = None,
) -> dict[str, Any]:
    """Run the stages of pipeline ``path`` in order into ``output_dir/<stage>``; returns ``{"stages": {stage: final
    metrics, or {variant/seed<k>: final metrics} for a matrix stage, or {"results": path} for a summary},
    "complete": bool}`` (also written to ``output_dir/metrics.json``).

    ``run_stage(stage, run_dir, overrides)`` runs one stage or cell in this process (``tools/train.py``'s single-run
    function); it is called inside a scope where ``${stage:...}`` resolves to earlier stages' directories. Finished
    runs (``metrics.json`` with ``complete``) are skipped. ``only``: run just that stage; ``cell``: just that cell
    (earlier stages must be done). ``jobs > 1`` with ``spawn(cell) -> argv`` (the command that runs one cell): the
    pending cells of a matrix stage run that many at a time as processes; a failed cell stops the pipeline after the
    stage's other cells ran (:class:`zoo.studies.runner.CellFailed`).
    """
    stages = load_pipeline(path, raw)
    names = [s.name for s in stages]
    focus, target = _resolve_target(stages, only, cell)
    routed = route_overrides(stages, overrides, path)
    if any(o.split("=", 1)[0].strip() == "seed" for s in stages if s.matrix is not None and focus in (None, s.name)
           for o in routed.get(s.name, ())):
        raise ConfigError("a command-line override sets 'seed', but matrix stages set seed=<k> per cell from their "
                          "'seeds'; drop it (to run more seeds, add them to the stage's 'seeds')")
    root = Path(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    _atomic_write(root / "pipeline.yaml", yaml.safe_dump(
        {"pipeline": _describe_stages(stages), "command_overrides": list(overrides)}, sort_keys=False))
    results: dict[str, Any] = {}
    complete = True
    for index, stage in enumerate(stages):
        earlier = stages[:index]
        if stage.summarise is not None:
            if focus is None or focus == stage.name:
                results[stage.name] = {"results": str(_run_summary(path, stage, earlier, root, overrides))}
            complete = complete and (root / stage.name / RESULTS_FILE).is_file()
            continue
        steps = plan_stage(stage, earlier, root)
        done = {step.label: _finished(step.run_dir) for step in steps}
        if focus is not None and stage.name != focus:
            # a summary checks its own inputs (and may be told to summarise the finished cells only)
            if names.index(stage.name) < names.index(focus) and stages[names.index(focus)].summarise is None:
                unfinished = [label for label, d in done.items() if d is None]
                if unfinished:
                    more = " ..." if len(unfinished) > 5 else ""
                    what = f"stage '{stage.name}'" if stage.matrix is None else \
                        f"stage '{stage.name}' (cells {', '.join(unfinished[:5])}{more})"
                    raise ConfigError(f"--{'cell' if target else 'stage'} {cell or only}: the earlier {what} has not "
                                      f"finished ({root / stage.name}); run the pipeline without --stage/--cell first")
        else:
            selected = [s for s in steps if target is None or s.cell == target]
            for step in selected:
                if done[step.label] is not None:
                    _logger.info("pipeline %s: %s '%s' is finished (%s); skipping it", Path(path).name,
                                 "cell" if step.cell else "stage", step.label, step.run_dir)
            pending = [s for s in selected if done[s.label] is None]
            if pending and jobs > 1 and spawn is not None and stage.matrix is not None and len(pending) > 1:
                # each spawned cell gets the whole command line (STAGE: prefixes included) and routes it itself
                _run_parallel(stage, pending, root, spawn, jobs)
            else:
                for step in pending:
                    _logger.info("pipeline %s: running %s '%s' (stage %d/%d) into %s", Path(path).name,
                                 "cell" if step.cell else "stage", step.label, index + 1, len(stages), step.run_dir)
                    with stage_scope(step.references):
                        run_stage(stage, step.run_dir, _step_overrides(step, routed[stage.name]))
            done = {step.label: _finished(step.run_dir) for step in steps}
        complete = complete and all(d is not None for d in done.values())
        finals = {label: d.get("final", d) for label, d in done.items() if d is not None}
        if stage.matrix is None:
            if stage.name in finals:
                results[stage.name] = finals[stage.name]
        elif finals:
            results[stage.name] = {label.split("/", 1)[1]: final for label, final in finals.items()}
    summary = {"stages": results, "complete": complete}
    _atomic_write(root / "metrics.json", json.dumps(summary, indent=2, default=float))
    return summary


def _step_overrides(step: Step, command: Sequence[str]) -> list[str]:
    """Stage and variant overrides, then the command line's for this stage (``command``: routed by
    :func:`route_overrides`, ``STAGE:`` prefixes removed), then the cell's ``seed=<k>`` (which nothing may change)."""
    if step.cell is None:
        return [*step.overrides, *command]
    return [*step.overrides[:-1], *command, step.overrides[-1]]


def _run_parallel(stage: Stage, pending: Sequence[Step], root: Path, spawn: Callable[[Cell], list[str]],
                  jobs: int) -> None:
    from zoo.studies.runner import CellFailed, run_cells

    outcomes = run_cells([s.cell for s in pending], root, spawn, jobs)
    failed = [o for o in outcomes if o.returncode != 0 or _finished(o.cell.run_dir(root)) is None]
    if failed:
        raise CellFailed(f"stage '{stage.name}': {len(failed)} of {len(outcomes)} cell(s) failed: " + "; ".join(
            f"{o.cell.id} (exit {o.returncode}, log {o.log})" for o in failed) + ". Fix the cause and run the same "
            "command again: finished cells are skipped (an interrupted cell needs --resume)")


def _run_summary(path: str | os.PathLike, stage: Stage, earlier: Sequence[Stage], root: Path,
                 overrides: Sequence[str]) -> Path:
    matrices = {s.name: s.matrix for s in earlier if s.matrix is not None}
    pairs = [(name, matrices[name]) for name in stage.summarise.stages]
    hint = f" (python tools/train.py {path} {' '.join(overrides)} --output {root})".replace("  ", " ")
    results = summarise_cells(stage.summarise, pairs, root, where=f"{path}: stage '{stage.name}'", rerun_hint=hint)
    results = {"study": str(path), "output": str(root), "stages": list(stage.summarise.stages),
               "command_overrides": list(overrides), **results}
    json_path, csv_path = write_results(results, root / stage.name)
    _logger.info("pipeline %s: stage '%s' wrote %s and %s", Path(path).name, stage.name, json_path, csv_path)
    return json_path


def summary_lines(summary: Mapping[str, Any]) -> list[str]:
    """The lines ``tools/train.py`` prints after a pipeline: each stage's (or cell's) numeric final metrics, and
    where a summary wrote its results."""

    def numbers(final: Mapping[str, Any]) -> str:
        return ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in final.items()
                         if isinstance(v, (int, float)) and not isinstance(v, bool))

    lines = []
    for name, value in summary["stages"].items():
        if isinstance(value, Mapping) and set(value) == {"results"}:
            lines.append(f"{name}: results in {value['results']}")
        elif isinstance(value, Mapping) and value and all(isinstance(v, Mapping) for v in value.values()):
            lines += [f"{name}/{cell}: {numbers(final)}" for cell, final in value.items()]
        else:
            lines.append(f"{name}: {numbers(value)}")
    return lines
