"""Per-example metric arrays beside a run's ``metrics.json``, for the paired bootstrap of a study's summary.

A run (a study cell) may write ``per_example.npz`` into its run directory: one ``(N,)`` array per metric, named as
the metric in ``metrics.json``'s ``final`` section, whose mean is that metric (e.g. ``top1``: 100 for a correctly
classified example, 0 otherwise), and optionally ``example_id`` ``(N,)`` (any dtype) naming the examples in order,
so that the summary can check that two runs scored the same examples in the same order. ``metrics.json`` may name
another file in its top-level key ``per_example`` (a path relative to the run directory).

Reference: the format is ours (numpy's ``.npz``); the summary pairs examples by position, as a paired bootstrap
over a fixed evaluation set needs.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

__all__ = ["PER_EXAMPLE_FILE", "EXAMPLE_ID", "save_per_example", "load_per_example"]

PER_EXAMPLE_FILE = "per_example.npz"
EXAMPLE_ID = "example_id"


def save_per_example(run_dir: str | os.PathLike, arrays: Mapping[str, Any], *, example_id: Any = None) -> Path:
    """Write ``run_dir/per_example.npz`` atomically: ``arrays`` maps a metric name to its ``(N,)`` per-example values
    (tensors or arrays; saved as float64), ``example_id`` an optional ``(N,)`` array of example names or indices.

    Raises ``ValueError`` when an array is not 1-D or the lengths differ (the message names the array).
    """
    run_dir = Path(run_dir)
    out: dict[str, np.ndarray] = {}
    for name, value in arrays.items():
        if name == EXAMPLE_ID:
            raise ValueError(f"save_per_example: '{EXAMPLE_ID}' is reserved; pass it as example_id=")
        out[name] = _as_numpy(value).astype(np.float64)
    if example_id is not None:
        out[EXAMPLE_ID] = _as_numpy(example_id)
    lengths = {name: a.shape for name, a in out.items()}
    if any(len(shape) != 1 for shape in lengths.values()) or len({s[0] for s in lengths.values()}) > 1:
        raise ValueError("save_per_example: every array must be 1-D with one value per example (N,); "
                         f"got shapes {lengths}")
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / PER_EXAMPLE_FILE
    tmp = run_dir / f".{PER_EXAMPLE_FILE}.{os.getpid()}.tmp.npz"
    np.savez(tmp, **out)
    os.replace(tmp, path)
    return path


def _as_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def load_per_example(run_dir: str | os.PathLike, summary: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
    """The per-example arrays of the run in ``run_dir`` (``{}`` when it wrote none). ``summary``: its ``metrics.json``
    (read when not given), whose ``per_example`` key may name the file. A named file that is missing is an error."""
    run_dir = Path(run_dir)
    if summary is None:
        metrics_file = run_dir / "metrics.json"
        summary = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    named = summary.get("per_example")
    path = run_dir / (named if isinstance(named, str) else PER_EXAMPLE_FILE)
    if not path.is_file():
        if named:
            raise FileNotFoundError(f"{run_dir / 'metrics.json'} names the per-example file {named!r}, but {path} "
                                    "does not exist")
        return {}
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}
