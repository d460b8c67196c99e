"""Measuring a callable: median wall time (:func:`time_fn`) and the peak memory of one call (:func:`peak_memory`:
CUDA's allocator statistics, or the process's peak resident set size through /proc on the CPU).

A leaf module (torch only), so that the benchmarks (:mod:`zoo.benchmarks`) and the measured study stages
(:mod:`zoo.diffusion.memory`) share one way of measuring.
"""
from __future__ import annotations

import gc
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch

__all__ = ["sync", "time_fn", "memory_in_use", "reset_peak_memory", "peak_memory_in_use", "peak_memory"]


def sync(device: str | torch.device | None) -> None:
    """Wait for queued CUDA work when ``device`` is a CUDA device (no-op on CPU)."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn: Callable[[], Any], *, warmup: int = 1, repeat: int = 5, device: str | torch.device | None = None) -> float:
    """Median seconds of ``repeat`` calls of ``fn()`` after ``warmup`` untimed calls (CUDA-synchronised)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _read_status(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def memory_in_use(device: str | torch.device = "cpu") -> int | None:
    """Bytes in use now: CUDA allocated memory, or the process's resident set size (``None`` without /proc)."""
    dev = torch.device(device)
    return torch.cuda.memory_allocated(dev) if dev.type == "cuda" else _read_status("VmRSS")


def reset_peak_memory(device: str | torch.device = "cpu") -> bool:
    """Start a new peak window for :func:`peak_memory_in_use` (CUDA peak stats, or VmHWM through
    /proc/self/clear_refs on Linux); False where the OS offers no resettable peak."""
    gc.collect()
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        return True
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_memory_in_use(device: str | torch.device = "cpu") -> int | None:
    """Most bytes in use since :func:`reset_peak_memory`: CUDA max allocated, or peak RSS (VmHWM)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        return torch.cuda.max_memory_allocated(dev)
    return _read_status("VmHWM")


def peak_memory(fn: Callable[[], Any], device: str | torch.device = "cpu") -> int | None:
    """Extra bytes at the peak of one call of ``fn()`` above the memory in use before it.

    CUDA: ``torch.cuda.max_memory_allocated`` after resetting the peak. CPU: peak resident set size (VmHWM,
    reset through /proc/self/clear_refs) minus the RSS before the call; ``None`` where the OS gives no such
    counter. Allocations of ``fn``'s inputs made before the call are not counted.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.empty_cache()
    if not reset_peak_memory(dev):
        return None
    base = memory_in_use(dev)
    fn()
    peak = peak_memory_in_use(dev)
    if base is None or peak is None:
        return None
    return max(0, peak - base)
