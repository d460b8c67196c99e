"""Tiled vs whole-image restoration inference: time, throughput and peak memory (``zoo.restoration.tiling.tiled_forward``).

Rows (same model, same random image of ``--size`` x ``--size``, no gradients):

* ``whole`` -- ``model(x)`` on the whole image (random weights with non-zero residual scales, or ``--checkpoint``);
* ``tile<T>`` -- :func:`tiled_forward` with tiles of ``T`` pixels (``--tiles``) and ``--overlap`` shared pixels.

Columns: ``time_ms`` (median), ``mpix_s`` (megapixels per second), ``peak_mb`` (peak RSS above the RSS before the
call, measured in a fresh process per row on CPU; max allocated on CUDA) and ``max_diff`` (largest absolute difference from ``whole``: NAFNet's channel
attention pools the whole image, so its tiles see other statistics and the difference is not zero; local models
give zero).

Checks before timing: tiling an identity model returns the input (every pixel covered exactly once), and tiling a
purely local model (four 3x3 convs, receptive-field radius 4 <= overlap / 2) equals its whole-image output.

    python tools/benchmark.py restore                                     # nafnet_tiny, 512 x 512
    python tools/benchmark.py restore --model nafnet_width32 --size 1024 --tiles 256 512
    python tools/benchmark.py restore --device cuda --model nafnet_width64 --size 2048 --tiles 256 512
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

from zoo.benchmarks._common import BenchmarkResults, Row, check_close, peak_memory, sync, time_fn

BENCH = "restore"
EXACT_TOL = 1e-5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="nafnet_tiny", help="a registered image-to-image model")
    parser.add_argument("--size", type=int, default=512, help="side of the square test image")
    parser.add_argument("--tiles", type=int, nargs="+", default=[128, 256], help="tile sizes")
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--checkpoint", default=None, help="weights to load (e.g. an official NAFNet .pth)")


def _checks(device: str) -> None:
    from zoo.restoration.tiling import tiled_forward

    x = torch.rand(1, 3, 75, 61, device=device)
    check_close(BENCH, "tiled", "identity model", tiled_forward(nn.Identity(), x, 32, 12), x, 0.0, "input")
    torch.manual_seed(0)
    local = nn.Sequential(*[m for _ in range(4) for m in (nn.Conv2d(3, 3, 3, padding=1), nn.Tanh())]).to(device).eval()
    with torch.no_grad():
        whole = local(x)
    check_close(BENCH, "tiled", "a local model (radius 4)", tiled_forward(local, x, 32, 8), whole,
                EXACT_TOL, "whole")


def _build(args: argparse.Namespace) -> tuple[nn.Module, torch.Tensor]:
    import zoo

    torch.manual_seed(0)
    model = zoo.create_model(args.model, checkpoint_path=args.checkpoint).to(args.device).eval()
    if args.checkpoint is None:  # trained-like residual branches (NAFNet's zero beta/gamma make every block identity)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n.endswith(("beta", "gamma")):
                    p.normal_(std=0.5)
    return model, torch.rand(1, 3, args.size, args.size, device=args.device)


def _child_peak(args: argparse.Namespace, tile: int) -> int | None:
    """CPU peak RSS of one call in a fresh process (glibc's mmap threshold pinned at 64 KiB so freed tensors leave
    the RSS at once; in one process the rows would reuse each other's freed memory and show no peak)."""
    code = ("import sys, json, argparse; sys.path.insert(0, sys.argv[1]); "
            "from zoo.benchmarks import restore as r; a = argparse.Namespace(**json.loads(sys.argv[2])); "
            "print(r._peak_here(a, int(sys.argv[3])))")
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": str(args.threads or 1)}
    keys = ("model", "size", "overlap", "device", "checkpoint", "threads")
    payload = json.dumps({k: getattr(args, k) for k in keys})
    proc = subprocess.run([sys.executable, "-c", code, str(Path(__file__).resolve().parents[2]), payload, str(tile)],
                          capture_output=True, text=True, env=env, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"restore benchmark: the memory child for tile={tile} failed:\n{proc.stderr[-2000:]}")
    out = proc.stdout.strip().splitlines()[-1]
    return None if out == "None" else int(out)


def _peak_here(args: argparse.Namespace, tile: int) -> int | None:
    from zoo.restoration.tiling import tiled_forward

    if args.threads:
        torch.set_num_threads(args.threads)
    model, x = _build(args)

    def fn():
        with torch.no_grad():
            tiled_forward(model, x, tile, args.overlap)

    fn()  # warm-up: one-time allocations are not the row's
    return peak_memory(fn, args.device)


def run(args: argparse.Namespace) -> int:
    from zoo.restoration.tiling import tiled_forward

    if args.threads:
        torch.set_num_threads(args.threads)
    dev = args.device
    _checks(dev)
    model, x = _build(args)
    with torch.no_grad():
        whole = model(x)
    rows = []
    variants = [("whole", 0)] + [(f"tile{t}", t) for t in args.tiles if t < args.size]
    for name, tile in variants:
        def fn(tile=tile):
            with torch.no_grad():
                out = tiled_forward(model, x, tile, args.overlap)
            sync(dev)
            return out

        out = fn()
        diff = float((out - whole).abs().max())
        t = time_fn(fn, warmup=0, repeat=args.repeat, device=dev)
        peak = peak_memory(fn, dev) if dev == "cuda" else _child_peak(args, tile)
        rows.append(Row(name, tile=tile or args.size, time_ms=t * 1e3, mpix_s=args.size ** 2 / 1e6 / t,
                        peak_mb=None if peak is None else peak / 2 ** 20, max_diff=diff))
    print(f"{args.model}, {args.size} x {args.size}, overlap {args.overlap}, device {dev}")
    results = BenchmarkResults(BENCH, args)
    results.add("tiles", "restore: tiled vs whole-image inference", rows, "whole")
    results.write(model=args.model, size=args.size, overlap=args.overlap)
    return 0
