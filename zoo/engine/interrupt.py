"""Ctrl-C during training: finish the step, save ``last.pt``, say how to resume.

:class:`StopRequest` turns the first SIGINT into a flag that the training loops read after every step; a second
SIGINT raises ``KeyboardInterrupt`` at once (the previous ``last.pt`` stays intact: checkpoints are written
atomically). The loop then raises :class:`TrainingInterrupted`, which ``tools/train.py`` reports with the resume
command and exit code 130.
"""
from __future__ import annotations

import os
import signal
import threading
from types import FrameType
from typing import Any

__all__ = ["StopRequest", "TrainingInterrupted"]


class TrainingInterrupted(Exception):
    """Raised after a stop request once the run's state is saved. ``run_dir``, ``epoch`` and ``step`` say where."""

    def __init__(self, run_dir: Any, epoch: int, step: int, saved: bool = True):
        self.run_dir, self.epoch, self.step, self.saved = run_dir, epoch, step, saved
        where = f"epoch {epoch + 1}, step {step}"
        super().__init__(f"interrupted at {where}; " + (f"state saved to {run_dir}/last.pt" if saved else "not saved"))


class StopRequest:
    """Context manager that catches SIGINT (main thread only; elsewhere it does nothing).

    ``requested`` becomes True on the first Ctrl-C; the handler that was installed before is restored on exit.
    Data-loader worker processes forked while it is installed inherit the handler; there it does nothing (a
    terminal's Ctrl-C reaches the whole process group: only the training process speaks and stops).
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None
        self._installed = False
        self._pid = os.getpid()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._pid:  # a forked data-loader worker: the training process handles the stop
            return
        if self.requested:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.requested = True
        import sys

        print("\nStopping after this step and saving last.pt (Ctrl-C again to stop at once)...", file=sys.stderr,
              flush=True)

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._pid = os.getpid()
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False
