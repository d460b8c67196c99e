"""Run directories that are never lost: a new run refuses to start over a finished or interrupted one, and a resumed
run keeps the config that is actually in force.

* :func:`prepare_run_dir` — before a run: refuse a directory that holds a run unless ``--resume`` (continue it) or
  ``--overwrite`` (delete it) is given; refuse ``--resume`` when there is nothing to resume.
* :func:`reconcile_resume_config` — on ``--resume``: the config stored in the run directory is the one in force.
  Settings that may change on resume (how long to train, how often to evaluate or save, where the data lives,
  evaluation options) are applied on top of it and recorded; any other difference (lr, model, batch size, seed,
  ...) is an error, because ``last.pt`` would silently keep the old value.
"""
from __future__ import annotations

import fnmatch
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

import yaml

from zoo.errors import ConfigError

__all__ = ["RunExistsError", "describe_run", "read_summary", "read_final", "prepare_run_dir", "reconcile_resume_config",
           "RESUMABLE_KEYS", "flatten"]

_logger = logging.getLogger("zoo")

RUN_MARKERS = ("last.pt", "best.pt", "metrics.json")
#: config keys (fnmatch patterns over dotted paths) that may differ when a run is resumed
RESUMABLE_KEYS = (
    "output_dir", "trainer.epochs", "trainer.max_steps", "trainer.eval_every", "trainer.save_every",
    "trainer.eval_every_steps", "trainer.save_every_steps", "trainer.log_every", "trainer.progress",
    "trainer.tensorboard", "trainer.cpu", "data.root", "data.num_workers", "data.eval_batch_size", "eval.*",
    "sample.*",
)


class RunExistsError(FileExistsError):
    """The output directory already holds a run and neither ``--resume`` nor ``--overwrite`` was given."""


def describe_run(run_dir: str | Path) -> str | None:
    """One line on the run in ``run_dir`` (finished with which metrics, or interrupted where), ``None`` if none."""
    run_dir = Path(run_dir)
    if not any((run_dir / m).exists() for m in RUN_MARKERS):
        return None
    metrics_path = run_dir / "metrics.json"
    if metrics_path.is_file():
        try:
            summary = json.loads(metrics_path.read_text())
        except json.JSONDecodeError:
            summary = {}
        final = summary.get("final", {})
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in list(final.items())[:3])
        steps = f"{summary.get('epochs', '?')} epochs, {summary.get('steps', '?')} steps"
        return f"a finished run ({steps}{'; ' + shown if shown else ''})"
    return "an unfinished run (last.pt, no metrics.json: interrupted or still running)"


def _looks_like_run_dir(run_dir: Path) -> bool:
    return (run_dir / "config.yaml").is_file() or any((run_dir / m).exists() for m in RUN_MARKERS) or \
        (run_dir / "pipeline.yaml").is_file()


def prepare_run_dir(run_dir: str | Path, *, resume: bool, overwrite: bool, command: str = "",
                    needs_last: bool = True) -> None:
    """Check (and with ``overwrite`` empty) ``run_dir`` before a run starts; see the module docstring.

    Raises:
        RunExistsError: the directory holds a run and neither flag was given (the message says both).
        FileNotFoundError: ``resume`` but there is no ``last.pt`` to continue from while the folder holds a run.
        ValueError: both flags, or ``overwrite`` of a folder that does not look like a run directory.

    ``needs_last=False`` for runs that resume without ``last.pt`` (recipes that drive their own run).
    """
    run_dir = Path(run_dir)
    if resume and overwrite:
        raise ValueError("--resume and --overwrite contradict each other: give one")
    if not run_dir.exists():
        return
    state = describe_run(run_dir)
    if resume:
        if needs_last and not (run_dir / "last.pt").is_file() and state is not None:
            raise FileNotFoundError(f"{run_dir} holds {state} but no last.pt to resume from; "
                                    "use --overwrite to start it again or choose another --output")
        return
    if state is None and not (run_dir / "pipeline.yaml").is_file():
        return  # empty, or only what a run that failed to start left behind: nothing is lost
    if not overwrite:
        raise RunExistsError(
            f"{run_dir} already holds {state or 'a pipeline run'}. Continue it with --resume, start it over with "
            f"--overwrite (deletes its files), or give another --output." + (f"\n  {command} --resume" if command else ""))
    if not _looks_like_run_dir(run_dir):
        raise ValueError(f"--overwrite: {run_dir} does not look like a run directory (no config.yaml, last.pt, "
                         "metrics.json or pipeline.yaml); refusing to delete it")
    _logger.warning("--overwrite: deleting %s (%s)", run_dir, state or "a pipeline run")
    shutil.rmtree(run_dir)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}} -> {"a.b": 1}`` (lists are leaves)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def _set(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value


def _delete(tree: dict, dotted: str) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.get(p, {})
    node.pop(parts[-1], None)


def reconcile_resume_config(stored_path: str | Path, requested: Mapping[str, Any]) -> tuple[dict, dict[str, list]]:
    """The config in force for a resumed run and the changes applied: ``(config, {key: [old, new]})``.

    ``stored_path`` is the run's ``config.yaml``; ``requested`` the config merged from the command line now.
    Raises ``ValueError`` listing the differences that a resume cannot apply.
    """
    stored = yaml.safe_load(Path(stored_path).read_text()) or {}
    old, new = flatten(stored), flatten(dict(requested))
    changes = {k: [old.get(k), new.get(k)] for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}
    refused = {k: v for k, v in changes.items() if not any(fnmatch.fnmatchcase(k, p) for p in RESUMABLE_KEYS)}
    if refused:
        lines = "\n".join(f"  {k}: the run has {v[0]!r}, now {v[1]!r}" for k, v in refused.items())
        raise ConfigError(
            f"--resume with settings that differ from the run's config ({stored_path}), which last.pt was made "
            f"with:\n{lines}\nA resumed run keeps them (its optimiser and model state come from last.pt). Resume "
            f"without these changes, or start a new run from the checkpoint (e.g. model.checkpoint_path=.../last.pt "
            f"with another --output). Changeable on resume: {', '.join(RESUMABLE_KEYS)}")
    config = json.loads(json.dumps(stored))  # deep copy
    for key, (_, value) in changes.items():
        if key in new:
            _set(config, key, value)
        else:
            _delete(config, key)
    return config, changes


def read_summary(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The ``metrics.json`` of a run directory, or ``None`` when there is none (or it is unreadable)."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        _logger.warning("%s is not valid JSON; treating the run as unfinished", path)
        return None


def read_final(run_dir: str | os.PathLike, what: str) -> dict[str, Any]:
    """The final metrics (``metrics.json``'s ``final``) of the finished run ``run_dir`` that a later stage reads;
    a ``ConfigError`` naming ``what`` (the config key that points there) when the run is missing or unfinished."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        raise ConfigError(f"{what}: {path} does not exist (run that cell first)")
    summary = json.loads(path.read_text())
    if not summary.get("complete", True):
        raise ConfigError(f"{what}: {path} belongs to an unfinished run")
    return summary.get("final", {})
