"""PoinTramba training and inference throughput (samples/s) and peak memory, our scan vs the reference scan, for the
classifiers and the part-segmentation models (``pointramba_partseg*``).

For each model variant, one table: rows are selective-scan backends (``ref`` = the plain-PyTorch reference,
the baseline; ``cpu`` = our chunked CPU path; on CUDA ``triton``), all on the same random batch of point
clouds. ``train_sps`` times forward + backward + AdamW step in training mode (with PoinTramba's auxiliary
losses), ``infer_sps`` an eval-mode forward; ``peak_mb`` is the extra memory of one training step. Segmentation
variants take ``--seg-points`` points (official 2048) and a random object category per cloud, and their loss is the
per-point cross-entropy over 50 parts (the segment recipe's).

Before any row is timed, every backend runs the same weights on the same input and must agree with ``ref``:
eval logits, training loss (cross-entropy + auxiliary losses) and every parameter gradient (error relative to the
reference's largest magnitude <= 1e-4; 1e-3 for gradients). A disagreeing backend stops the benchmark.

    python tools/benchmark.py pointramba [--variants pointramba_small pointramba pointramba_partseg_small
        pointramba_partseg] [--batch 32] [--seg-batch 16] [--threads 1]
"""
from __future__ import annotations

import argparse
import os

import torch
import torch.nn.functional as F

from zoo.benchmarks._common import BenchmarkResults, Row, check_close, peak_memory, time_fn

_BENCH = "pointramba"
_TOL = {"eval logits": 1e-4, "training loss": 1e-4, "gradients": 1e-3}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--variants", nargs="+",
                        default=["pointramba_small", "pointramba", "pointramba_partseg_small", "pointramba_partseg"])
    parser.add_argument("--batch", type=int, default=32, help="clouds per batch (the full model uses min(batch, --full-batch) on CPU)")
    parser.add_argument("--full-batch", type=int, default=4, help="batch for the full-size model on the CPU")
    parser.add_argument("--points", type=int, default=1024)
    parser.add_argument("--seg-points", type=int, default=2048, help="points per cloud of the segmentation variants")
    parser.add_argument("--seg-batch", type=int, default=16, help="clouds per batch of the segmentation variants "
                        "(the official 16; the full model uses min(seg-batch, --full-batch) on CPU)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def _setup(name: str, backend: str, batch: int, points: int, device: str, threads: int | None):
    """Model (seed 0), input and labels for one backend, in this (fresh) process."""
    if threads:
        torch.set_num_threads(threads)
    os.environ["ZOO_KERNEL"] = f"scan:{backend}"  # only the scan: FPS / KNN keep their fast paths in every row
    import zoo

    torch.manual_seed(0)
    if _is_seg(name):
        model = zoo.create_model(name).to(device)
        x = torch.randn(batch, points, 3, device=device)
        category = torch.arange(batch, device=device) % model.num_categories
        y = torch.randint(0, model.num_classes, (batch, points), device=device)
        return model, (x, category), y
    model = zoo.create_model(name, num_classes=10).to(device)
    x = torch.randn(batch, points, 3, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    return model, (x,), y


def _is_seg(name: str) -> bool:
    return "partseg" in name


def _train_loss(model: torch.nn.Module, x: tuple, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy (per point for segmentation) plus the auxiliary losses of that training-mode forward (as the
    classify / segment recipes)."""
    from zoo.models._contract import pop_auxiliary_losses

    model.train()
    logits = model(*x)
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    return ce + sum(pop_auxiliary_losses(model).values())


def _outputs(name: str, backend: str, batch: int, points: int, device: str, threads: int | None = None):
    """``(eval logits, training loss, all parameter gradients flattened)`` on CPU tensors, for the check."""
    model, x, y = _setup(name, backend, batch, points, device, threads)
    model.eval()
    with torch.no_grad():
        logits = model(*x)
    torch.manual_seed(1)  # same dropout / drop-path masks for every backend
    loss = _train_loss(model, x, y)
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return logits.cpu(), loss.detach().cpu(), grads.cpu()


def _check_backends(pool_ctx, name: str, backends: list[str], batch: int, points: int,
                    args: argparse.Namespace) -> None:
    """Every backend must compute what ``ref`` computes (same weights, same input) before anything is timed."""
    results = {}
    for backend in backends:
        with pool_ctx.Pool(1) as pool:
            results[backend] = pool.apply(_outputs, (name, backend, batch, points, args.device, args.threads))
    ref = results["ref"]
    for backend in backends:
        for what, got, want in zip(_TOL, results[backend], ref):
            check_close(f"{_BENCH} ({name})", backend, what, got, want, _TOL[what], against="ref")


def _measure(name: str, backend: str, batch: int, points: int, device: str, repeat: int, threads: int | None = None) -> Row:
    """One row, meant to run in a fresh process (so no memory freed by another row hides this one's peak)."""
    model, x, y = _setup(name, backend, batch, points, device, threads)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def train_step():
        _train_loss(model, x, y).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def infer():
        model.eval()
        model(*x)

    train_s = time_fn(train_step, warmup=1, repeat=repeat, device=device)
    infer_s = time_fn(infer, warmup=1, repeat=repeat, device=device)
    peak = peak_memory(train_step, device)
    return Row(backend, batch=batch, train_sps=batch / train_s, infer_sps=batch / infer_s, time_ms=1000 * train_s,
               peak_mb=None if peak is None else peak / 2**20)


def run(args: argparse.Namespace) -> None:
    import multiprocessing as mp

    backends = ["ref", "cpu"] if args.device == "cpu" else ["ref", "triton"]
    ctx = mp.get_context("spawn")
    results = BenchmarkResults("pointramba", args)
    for name in args.variants:
        full = name in ("pointramba", "pointramba_partseg")
        batch = args.seg_batch if _is_seg(name) else args.batch
        batch = batch if (args.device != "cpu" or not full) else min(batch, args.full_batch)
        points = args.seg_points if _is_seg(name) else args.points
        _check_backends(ctx, name, backends, batch, points, args)
        rows = []
        for backend in backends:
            with ctx.Pool(1) as pool:
                rows.append(Row(**pool.apply(_measure, (name, backend, batch, points, args.device, args.repeat, args.threads))))
        results.add(name, f"{name}: {batch} x {points} points, {args.device}, "
                          f"{args.threads or torch.get_num_threads()} threads", rows, baseline="ref",
                    ratios={"time_ms": "speedup", "peak_mb": "fraction"},
                    columns={"batch": "batch", "train_sps": "train samples/s", "infer_sps": "infer samples/s",
                             "time_ms": "train step", "peak_mb": "train peak memory"})
    results.write(variants=args.variants, points=args.points, seg_points=args.seg_points, repeat=args.repeat,
                  threads=args.threads)
