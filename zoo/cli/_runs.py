"""Run directories as the command line sees them: a refusal to start over a run that suggests a command that works,
``--overwrite`` that would delete the run's own inputs refused, and no directory left behind by a failed start."""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

__all__ = ["inputs_inside", "free_folder", "Suggestions", "refusal_message", "check_overwrite", "RunDirGuard"]

_logger = logging.getLogger("zoo")

#: what a run writes when it starts, before any work: a folder holding only these is a failed start
START_FILES = ("config.yaml",)
START_FOLDERS = ("tb",)  # TensorBoard's event files, opened at the start


def _leaves(tree: Any, prefix: str = ""):
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            yield from _leaves(value, f"{prefix}{key}.")
    elif isinstance(tree, (list, tuple)):
        for i, value in enumerate(tree):
            yield from _leaves(value, f"{prefix}{i}.")
    else:
        yield prefix[:-1], tree


def inputs_inside(config: Mapping[str, Any], run_dir: str | Path) -> dict[str, str]:
    """``{dotted key: path}`` for every config value that names a file or folder inside ``run_dir`` (e.g.
    ``model.checkpoint_path: runs/x/best.pt`` when ``run_dir`` is ``runs/x``): what ``--overwrite`` would delete
    from under the run. ``output_dir`` itself is not an input."""
    root = Path(run_dir).resolve()
    found = {}
    for key, value in _leaves(config):
        if key == "output_dir" or not isinstance(value, str) or not value or "\n" in value or len(value) > 4096:
            continue
        try:
            path = Path(value).expanduser().resolve()
        except (OSError, RuntimeError, ValueError):
            continue
        if path == root or root in path.parents:
            found[key] = value
    return found


def free_folder(run_dir: str | Path) -> Path:
    """The first of ``<run_dir>_2``, ``<run_dir>_3``, ... that does not exist (a new ``--output`` to suggest)."""
    run_dir = Path(run_dir)
    k = 2
    while (candidate := run_dir.with_name(f"{run_dir.name}_{k}")).exists():
        k += 1
    return candidate


def _resume_problem(run_dir: Path, config: Mapping[str, Any], needs_last: bool) -> str | None:
    """Why ``--resume`` into ``run_dir`` with ``config`` would be refused, or ``None`` when it would work."""
    from zoo.engine.rundir import reconcile_resume_config

    stored = run_dir / "config.yaml"
    if needs_last and not (run_dir / "last.pt").is_file():
        return "it holds no last.pt to resume from"
    if not stored.is_file():
        return "it holds no config.yaml to resume with"
    try:
        reconcile_resume_config(stored, config)
    except ValueError as exc:  # ConfigError: the settings a resume cannot change, one a line
        differences = [line for line in str(exc).splitlines() if line.startswith("  ")]
        shown = "; ".join(line.strip() for line in differences[:3])
        more = f" and {len(differences) - 3} more" if len(differences) > 3 else ""
        return f"it differs in {len(differences)} setting(s) a resume cannot change: {shown}{more}"
    return None


@dataclass(frozen=True)
class Suggestions:
    """The commands a refusal to start over a run may suggest (each printed only when it works): continue the run
    there, start it over (``None``: no such command, e.g. a pipeline stage whose ``--overwrite`` would delete the
    whole pipeline), or write the run to a new folder."""

    resume: str
    overwrite: str | None
    new_folder: str


def refusal_message(run_dir: str | Path, state: str, config: Mapping[str, Any], suggestions: Suggestions, *,
                    needs_last: bool = True) -> str:
    """The message refusing to start a run over ``run_dir`` (which holds ``state``, e.g. "a finished run (...)"),
    with only suggestions that work: ``suggestions.resume`` when the stored run continues with ``config``,
    ``suggestions.overwrite`` when the config reads nothing from inside the folder, and always
    ``suggestions.new_folder``."""
    run_dir = Path(run_dir)
    problem = _resume_problem(run_dir, config, needs_last)
    inside = inputs_inside(config, run_dir)
    head = f"{run_dir} already holds {state}"
    if problem is not None:
        head += f"; this config cannot continue it ({problem})"
    if inside:
        key, value = next(iter(inside.items()))
        head += f"; it holds {value}, which this run reads ({key}), so it is not overwritten either"
    fixes = []
    if problem is None:
        fixes.append(("continue it", suggestions.resume))
    if not inside and suggestions.overwrite:
        fixes.append(("start it over (deletes its files)", suggestions.overwrite))
    fixes.append(("write this run to a new folder", suggestions.new_folder))
    if len(fixes) == 1:
        return f"{head}. Write this run to a new folder:\n  {fixes[0][1]}"
    return f"{head}. Either\n" + "\n".join(f"  {label}:\n    {cmd}" for label, cmd in fixes)


def check_overwrite(run_dir: str | Path, config: Mapping[str, Any]) -> None:
    """Refuse ``--overwrite`` of a folder the run reads its inputs from (``ConfigError`` naming the key)."""
    from zoo.errors import ConfigError

    inside = inputs_inside(config, run_dir)
    existing = {k: v for k, v in inside.items() if Path(v).expanduser().exists()}
    if existing:
        key, value = next(iter(existing.items()))
        raise ConfigError(f"--overwrite would delete {run_dir}, but this run reads {key}={value} from it; write the "
                          f"run to another folder instead: --output {free_folder(run_dir)}")


def _only_start_files(run_dir: Path) -> bool:
    """Whether every file under ``run_dir`` is one a run writes when it starts (:data:`START_FILES` at the top,
    anything under :data:`START_FOLDERS`): nothing of its work (a logged step, a checkpoint, a study's files)."""
    for path in run_dir.rglob("*"):
        if path.is_dir():
            continue
        rel = path.relative_to(run_dir)
        if not (rel.as_posix() in START_FILES or rel.parts[0] in START_FOLDERS):
            return False
    return True


class RunDirGuard:
    """``with RunDirGuard(run_dir, main=...):`` removes ``run_dir`` again when the block raises before the run did
    any work (only :data:`START_FILES` / :data:`START_FOLDERS` inside) and the folder was absent or empty before: a
    run that fails to start (a bad key, unreadable data, a corrupt image in the first batch) leaves no directory
    behind. ``Ctrl-C`` (``KeyboardInterrupt`` and the Trainer's ``TrainingInterrupted``) never removes anything."""

    def __init__(self, run_dir: str | Path, main: bool = True):
        self.run_dir = Path(run_dir)
        self.main = main
        self.fresh = not self.run_dir.exists() or (self.run_dir.is_dir() and not any(self.run_dir.iterdir()))

    def __enter__(self) -> "RunDirGuard":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        from zoo.engine.interrupt import TrainingInterrupted

        if exc_type is None or not self.main or not self.fresh or not self.run_dir.is_dir():
            return
        if issubclass(exc_type, (KeyboardInterrupt, TrainingInterrupted)) or not issubclass(exc_type, Exception):
            return
        if not _only_start_files(self.run_dir):
            return
        shutil.rmtree(self.run_dir, ignore_errors=True)
        _logger.info("the run failed before it started; removed %s", self.run_dir)
