"""Run the cells of a study stage N at a time on one machine, each in its own process with its share of the CPU
threads (and, where GPUs are visible, one GPU each, round robin), its console output in its own log file.

Each cell is an ordinary ``tools/train.py STUDY --cell ID`` process: this module only starts, watches and waits for
them; it is not a scheduler. For several machines hand the cell commands (``tools/train.py STUDY --list-cells``) to
the cluster's own (a SLURM array, one task per line) or prefix one with ``torchrun`` for a DDP cell.
"""
from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from zoo.errors import ZooError
from zoo.studies.matrix import Cell

__all__ = ["CellFailed", "CellOutcome", "python_entry", "threads_per_cell", "visible_gpus", "run_cells"]

_logger = logging.getLogger("zoo")
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


class CellFailed(ZooError, RuntimeError):
    """One or more cells of a stage exited with an error (the message lists them with their log files)."""


@dataclass
class CellOutcome:
    """How a cell's process ended: ``returncode``, wall time in seconds and its ``log`` file."""

    cell: Cell
    returncode: int
    wall_s: float
    log: Path


def python_entry(argv0: str | None = None) -> list[str]:
    """The command that runs this program's ``train_main`` again: ``[python, script]`` when it was started as a
    script (``tools/train.py``, or a test's wrapper that registers extra models), else ``python -c`` on
    :func:`zoo.cli.train_main`."""
    argv0 = sys.argv[0] if argv0 is None else argv0
    if argv0.endswith(".py") and Path(argv0).is_file():
        return [sys.executable, str(Path(argv0).resolve())]
    return [sys.executable, "-c", "import sys; from zoo.cli import train_main; sys.exit(train_main(sys.argv[1:]))"]


def threads_per_cell(jobs: int, total: int | None = None) -> int:
    """CPU threads for each of ``jobs`` concurrent cells: ``total // jobs`` (at least 1). ``total`` defaults to
    ``$OMP_NUM_THREADS`` when set, else the CPUs this process may use."""
    if total is None:
        env = os.environ.get("OMP_NUM_THREADS", "")
        total = int(env) if env.isdigit() and int(env) > 0 else len(os.sched_getaffinity(0)) \
            if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, total // max(1, jobs))


def visible_gpus() -> list[str]:
    """The GPU ids cells may be spread over: ``$CUDA_VISIBLE_DEVICES`` when set, else ``0..n-1`` for the CUDA
    devices torch sees (none without CUDA)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    except Exception:  # noqa: BLE001 - no usable CUDA means "no GPUs"; the cell itself reports a broken install
        return []


def _cell_env(slot: int, threads: int, gpus: Sequence[str], base: Mapping[str, str]) -> dict[str, str]:
    env = dict(base)
    env.update({name: str(threads) for name in _THREAD_VARS})
    env["PYTHONUNBUFFERED"] = "1"
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
    return env


def run_cells(cells: Sequence[Cell], root: str | os.PathLike, command: Callable[[Cell], list[str]], jobs: int, *,
              env: Mapping[str, str] | None = None, poll_s: float = 0.2) -> list[CellOutcome]:
    """Run ``cells`` as processes ``command(cell)``, at most ``jobs`` at once; returns their outcomes in cell order.

    Each process gets ``OMP_NUM_THREADS`` (and MKL/OpenBLAS) = :func:`threads_per_cell`, one of the visible GPUs (by
    its slot), and writes stdout+stderr to ``cell.log_file(root)``. A failing cell does not stop the others (they
    are independent); the caller decides what failures mean. Ctrl-C (or SIGTERM of this process) is passed to the
    running cells (each in a session of its own, so that it gets exactly one SIGINT), which save their state as any
    interrupted run; then ``KeyboardInterrupt`` is raised.
    """
    jobs = max(1, int(jobs))
    base = dict(os.environ if env is None else env)
    threads = threads_per_cell(jobs)
    gpus = visible_gpus()
    _logger.info("running %d cells, %d at a time, %d thread(s) each%s", len(cells), jobs, threads,
                 f", GPUs {', '.join(gpus)} round robin" if gpus else "")
    pending = list(enumerate(cells))
    running: dict[int, tuple[int, Cell, subprocess.Popen, float, Path, object]] = {}
    outcomes: dict[int, CellOutcome] = {}
    free_slots = list(range(jobs))
    on_main_thread = threading.current_thread() is threading.main_thread()
    # while cells run, Ctrl-C and SIGTERM (a scheduler's time limit, kill) stop them, whatever handler the process
    # had installed before (a handler that only sets a flag would leave the cells running)
    previous_int = signal.signal(signal.SIGINT, _raise_interrupt) if on_main_thread else None
    previous_term = signal.signal(signal.SIGTERM, _raise_interrupt) if on_main_thread else None
    try:
        while pending or running:
            while pending and free_slots:
                index, cell = pending.pop(0)
                slot = free_slots.pop(0)
                log = cell.log_file(root)
                log.parent.mkdir(parents=True, exist_ok=True)
                handle = open(log, "w")
                argv = command(cell)
                handle.write("$ " + shlex.join(argv) + "\n")
                handle.flush()
                proc = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
                                        env=_cell_env(slot, threads, gpus, base))
                running[index] = (slot, cell, proc, time.monotonic(), log, handle)
                _logger.info("cell %s started (log: %s)", cell.id, log)
            for index, (slot, cell, proc, started, log, handle) in list(running.items()):
                if proc.poll() is None:
                    continue
                handle.close()
                outcomes[index] = CellOutcome(cell, proc.returncode, time.monotonic() - started, log)
                free_slots.append(slot)
                del running[index]
                state = "finished" if proc.returncode == 0 else f"FAILED (exit {proc.returncode}); see {log}"
                _logger.info("cell %s %s in %.1f s", cell.id, state, outcomes[index].wall_s)
            if running:
                time.sleep(poll_s)
    except KeyboardInterrupt:
        for _slot, cell, proc, _started, _log, handle in running.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for _slot, cell, proc, _started, _log, handle in running.values():
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
            handle.close()
        raise
    finally:
        if on_main_thread:
            signal.signal(signal.SIGINT, previous_int if previous_int is not None else signal.default_int_handler)
            signal.signal(signal.SIGTERM, previous_term if previous_term is not None else signal.SIG_DFL)
    return [outcomes[i] for i in sorted(outcomes)]


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt

