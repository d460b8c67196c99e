"""Predicted latency of a static BigNAS child from a per-part table measured on this machine (cached in JSON)."""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import torch
from torch import nn

__all__ = ["LatencyTable"]


class LatencyTable:
    """Measured latency of network parts on this machine, cached in a JSON file.

    A child's latency is predicted as the sum over its top-level parts (stem, each block, head conv, pool +
    classifier) of their measured time at their input shape; each part is timed once (median of ``repeats`` runs
    after 3 warm-up runs, current thread count) and stored under ``sha1(repr(module) + input shape)``, so children
    that share a block configuration share its entry.

    Args:
        path: the JSON file (read if it exists, written after each new measurement); ``None``: in memory only.
        repeats: timed runs per part. batch_size: the batch of the timed input ``(batch_size, C, r, r)``.

    Reference: BigNAS / OFA-style latency lookup tables (OFA ``LatencyEstimator``): per-block timings summed.
    """

    def __init__(self, path: str | os.PathLike | None, repeats: int = 20, batch_size: int = 1):
        self.path = Path(path) if path else None
        self.repeats, self.batch_size = int(repeats), int(batch_size)
        self.table: dict[str, float] = {}
        if self.path is not None and self.path.is_file():
            self.table = json.loads(self.path.read_text())
        self.measured = 0

    @staticmethod
    def _parts(child: nn.Module) -> list[nn.Module]:
        parts = [child.stem, *[b for stage in child.stages for b in stage], child.conv_head]
        return parts + [nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), child.head.fc)]

    def _time(self, module: nn.Module, x: torch.Tensor) -> float:
        with torch.no_grad():
            for _ in range(3):
                module(x)
            times = []
            for _ in range(self.repeats):
                t = time.perf_counter()
                module(x)
                times.append(time.perf_counter() - t)
        times.sort()
        return 1e3 * times[len(times) // 2]

    @torch.no_grad()
    def predict(self, child: nn.Module, resolution: int) -> float:
        """Predicted latency (ms, batch ``batch_size``) of a static child (:class:`zoo.models.bignas.BigNASChild`)
        at ``resolution``; parts not in the table yet are timed and the table saved."""
        child = child.eval()
        x = torch.zeros(self.batch_size, child.in_chans, resolution, resolution)
        total, new = 0.0, False
        for part in self._parts(child):
            key = hashlib.sha1(f"{part!r}|{tuple(x.shape)}".encode()).hexdigest()[:16]
            if key not in self.table:
                self.table[key] = self._time(part, x)
                self.measured += 1
                new = True
            total += self.table[key]
            x = part(x)
        if new:
            self.save()
        return total

    def save(self) -> None:
        """Write the table (atomically: a temporary file renamed over it)."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.table, indent=1))
        os.replace(tmp, self.path)
