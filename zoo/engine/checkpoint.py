"""Atomic checkpoint files and RNG state capture for exact resume."""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["atomic_save", "read_checkpoint", "capture_rng_state", "restore_rng_state"]


_WRITE_FAILURES = ("unexpected pos", "file write failed", "No space left", "PytorchStreamWriter failed")


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temp file in the same folder, then rename: a crash never leaves a partial file at ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        # torch reports a full disk as "unexpected pos ..." / "file write failed": say what happened and what survived
        if not isinstance(exc, OSError) and not any(s in str(exc) for s in _WRITE_FAILURES):
            raise
        kept = f"; the previous {path.name} is intact" if path.exists() else ""
        raise OSError(f"could not write {path} ({exc}). Is the disk full? Free space in {path.parent} "
                      f"and resume the run{kept}") from exc
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def read_checkpoint(path: str | os.PathLike, what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` with errors that name the file and the real cause (missing,
    truncated or corrupt, unsafe pickle): see :func:`zoo.files.read_torch_file`."""
    from zoo.files import read_torch_file

    return read_torch_file(path, what=what)


def capture_rng_state() -> dict[str, Any]:
    """RNG states of python, numpy, torch CPU and CUDA as tensors/primitives (loadable with ``weights_only=True``)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "python": list(py_state[1]),
        "python_gauss": py_state[2],
        "python_version": py_state[0],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    random.setstate((state["python_version"], tuple(int(v) for v in state["python"]), state["python_gauss"]))
    npst = state["numpy"]
    np.random.set_state(("MT19937", npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"], npst["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
