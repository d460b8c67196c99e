"""Run logs: a CSV file of per-epoch metrics, optional TensorBoard scalars, and console lines."""
from __future__ import annotations

import csv
import logging
import os
import sys
from pathlib import Path
from typing import Mapping

__all__ = ["RunLogger", "setup_console_logging", "progress_enabled"]

_logger = logging.getLogger("zoo")


class _CurrentStderr(logging.StreamHandler):
    """A handler that writes to whatever ``sys.stderr`` is at the time of the record (not the stream it was made
    with: a redirected or replaced stderr -- pytest's capture, a notebook -- gets the records, and a closed old one
    is never written to)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; the property always follows sys.stderr
        pass


def setup_console_logging(level: int = logging.INFO) -> None:
    """Send ``zoo`` log records to (the current) stderr once (idempotent)."""
    if not any(getattr(h, "_zoo", False) for h in _logger.handlers):
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        handler._zoo = True  # type: ignore[attr-defined]
        _logger.addHandler(handler)
    _logger.setLevel(level)


def progress_enabled(setting: bool | None, is_main_process: bool) -> bool:
    """Whether to draw tqdm bars: explicit ``setting`` wins; by default only on the main process and a TTY."""
    if not is_main_process:
        return False
    if setting is not None:
        return setting
    return sys.stderr.isatty() and os.environ.get("CI") is None


class RunLogger:
    """Appends one row per call to ``<run_dir>/metrics.csv`` and mirrors scalars to TensorBoard.

    The CSV header grows when new metric names appear (the file is rewritten with the union of columns), so
    rows are never silently dropped. Only the main process writes.
    """

    def __init__(self, run_dir: str | os.PathLike, enabled: bool = True, tensorboard: bool = True):
        self.path = Path(run_dir) / "metrics.csv"
        self.enabled = enabled
        self._writer = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(str(Path(run_dir) / "tb"))
            except ImportError:  # tensorboard is a dependency, but a stripped install should still train
                _logger.warning("tensorboard is not installed; logging to metrics.csv only")

    def _read(self) -> tuple[list[str], list[dict]]:
        if not self.path.exists():
            return [], []
        with open(self.path, newline="") as f:
            reader = csv.DictReader(f)
            return list(reader.fieldnames or []), list(reader)

    def _rewrite(self, fields: list[str], rows: list[dict]) -> None:
        """Write metrics.csv anew (header ``fields``, then ``rows``) through a temporary file."""
        tmp = self.path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.path)

    def log(self, row: Mapping[str, float | int | str], step: int) -> None:
        """Record ``row`` (e.g. epoch, lr, losses, eval metrics) at global optimiser step ``step``."""
        if not self.enabled:
            return
        fields, rows = self._read()
        new = [k for k in row if k not in fields]
        if new or not fields:
            self._rewrite(fields + new, rows + [dict(row)])
        else:
            with open(self.path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=fields).writerow(dict(row))
        if self._writer is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and key not in ("epoch", "step"):
                    self._writer.add_scalar(key, value, step)
            self._writer.flush()

    def truncate_after(self, step: int, purge_tensorboard: bool = True) -> None:
        """Drop the metrics.csv rows logged after optimiser step ``step`` (a resumed run continues from the
        checkpoint's step: rows of the lost part would otherwise repeat) and make TensorBoard purge its events
        after ``step`` too."""
        if not self.enabled:
            return
        fields, rows = self._read()
        kept = [r for r in rows if not r.get("step") or float(r["step"]) <= step]
        if len(kept) != len(rows):
            self._rewrite(fields, kept)
            _logger.info("metrics.csv: dropped %d row(s) logged after step %d (not in the checkpoint)", len(rows) - len(kept), step)
        if purge_tensorboard and self._writer is not None and step > 0:
            from torch.utils.tensorboard import SummaryWriter

            log_dir = self._writer.log_dir
            self._writer.close()
            self._writer = SummaryWriter(log_dir, purge_step=step + 1)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
