"""Pipelines: named stages run in order, each a normal run whose directory sits under the pipeline's.

A pipeline config holds only ``pipeline:`` — a list of stages::

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
NAME`` runs that stage only. Command-line overrides apply to every stage run. The pipeline directory gets
``pipeline.yaml`` (the stages as run) and ``metrics.json`` (each stage's final metrics).
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
from zoo.errors import ConfigError

__all__ = ["Stage", "is_pipeline", "load_pipeline", "run_pipeline"]

_logger = logging.getLogger("zoo")

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


@dataclass
class Stage:
    """One stage: its ``name``, the ``config`` file it runs and the ``overrides`` (``key=value`` strings)."""

    name: str
    config: Path
    overrides: list[str] = field(default_factory=list)


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


def load_pipeline(path: str | os.PathLike, raw: Mapping[str, Any]) -> list[Stage]:
    """The stages of the pipeline config ``path`` (``raw``: its unresolved tree); validated."""
    from zoo.resources import find_config

    path = Path(path)
    extra = set(raw) - {"pipeline"}
    if extra:
        raise ConfigError(f"{path}: a pipeline config holds only 'pipeline' (a list of stages); also found "
                          f"{sorted(extra)}. Put run settings into the stages' configs or overrides")
    entries = raw["pipeline"]
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{path}: 'pipeline' must be a non-empty list of stages ({{name, config, overrides}})")
    stages: list[Stage] = []
    for i, entry in enumerate(entries):
        where = f"{path}: pipeline[{i}]"
        if not isinstance(entry, Mapping) or "name" not in entry or "config" not in entry:
            raise ConfigError(f"{where} must be a mapping with 'name' and 'config' (and optional 'overrides')")
        unknown = set(entry) - {"name", "config", "overrides"}
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; a stage has name, config, overrides")
        name = str(entry["name"])
        if not _NAME.fullmatch(name) or name in {s.name for s in stages}:
            raise ConfigError(f"{where}: stage name '{name}' must be unique and a plain identifier")
        config = Path(entry["config"])
        candidate = config if config.is_absolute() else path.parent / config
        config = candidate if candidate.is_file() else find_config(str(entry["config"]))
        stages.append(Stage(name, config.resolve(), _overrides_list(entry.get("overrides"), where)))
    return stages


def _finished(run_dir: Path) -> dict[str, Any] | None:
    summary = read_summary(run_dir)
    return summary if summary is not None and summary.get("complete") else None


def run_pipeline(
    path: str | os.PathLike,
    raw: Mapping[str, Any],
    output_dir: str | os.PathLike,
    run_stage: Callable[[Stage, Path, list[str]], dict[str, Any]],
    *,
    overrides: Sequence[str] = (),
    only: str | None = None,
) -> dict[str, Any]:
    """Run the stages of pipeline ``path`` in order into ``output_dir/<stage>``; returns ``{stage: summary}``.

    ``run_stage(stage, run_dir, overrides)`` runs one stage (``tools/train.py``'s single-run function); it is
    called inside a scope where ``${stage:NAME}`` resolves to earlier stages' directories. Finished stages
    (``metrics.json`` with ``complete``) are skipped. ``only``: run just that stage (earlier ones must be done).
    """
    stages = load_pipeline(path, raw)
    names = [s.name for s in stages]
    if only is not None and only not in names:
        raise ConfigError(f"--stage {only}: the pipeline {path} has stages {', '.join(names)}")
    root = Path(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    (root / "pipeline.yaml").write_text(yaml.safe_dump(
        {"pipeline": [{"name": s.name, "config": str(s.config), "overrides": s.overrides} for s in stages],
         "command_overrides": list(overrides)}, sort_keys=False))
    dirs: dict[str, Path] = {}
    results: dict[str, Any] = {}
    for stage in stages:
        run_dir = (root / stage.name).resolve()
        done = _finished(run_dir)
        if only is not None and stage.name != only:
            if names.index(stage.name) < names.index(only) and done is None:
                raise ConfigError(f"--stage {only}: the earlier stage '{stage.name}' has not finished ({run_dir}); "
                                  "run the pipeline without --stage first")
            if done is not None:
                results[stage.name] = done
            dirs[stage.name] = run_dir
            continue
        if done is not None:
            _logger.info("pipeline %s: stage '%s' is finished (%s); skipping it", Path(path).name, stage.name, run_dir)
            results[stage.name] = done
        else:
            _logger.info("pipeline %s: running stage '%s' (%d/%d) into %s", Path(path).name, stage.name,
                         names.index(stage.name) + 1, len(stages), run_dir)
            with stage_scope(dirs):
                results[stage.name] = run_stage(stage, run_dir, [*stage.overrides, *overrides])
        dirs[stage.name] = run_dir
    summary = {"stages": {k: v.get("final", v) for k, v in results.items()},
               "complete": all(_finished(root / s.name) is not None for s in stages)}
    tmp = root / "metrics.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2, default=float))
    os.replace(tmp, root / "metrics.json")
    return summary
