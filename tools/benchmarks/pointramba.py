"""PoinTramba training and inference throughput (samples/s) and peak memory, our scan vs the reference scan.

For each model variant, one table: rows are selective-scan backends (``ref`` = the plain-PyTorch reference,
the baseline; ``cpu`` = our chunked CPU path; on CUDA ``triton``), all on the same random batch of point
clouds. ``train_sps`` times forward + backward + AdamW step in training mode (with PoinTramba's auxiliary
losses), ``infer_sps`` an eval-mode forward; ``peak_mb`` is the extra memory of one training step.

    python tools/benchmark.py pointramba [--variants pointramba_small pointramba] [--batch 32] [--threads 1]
"""
from __future__ import annotations

import argparse
import os

import torch
import torch.nn.functional as F

from benchmarks._common import Row, peak_memory, print_table, time_fn, write_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--variants", nargs="+", default=["pointramba_small", "pointramba"])
    parser.add_argument("--batch", type=int, default=32, help="clouds per batch (the full model uses min(batch, --full-batch) on CPU)")
    parser.add_argument("--full-batch", type=int, default=4, help="batch for the full-size model on the CPU")
    parser.add_argument("--points", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def _measure(name: str, backend: str, batch: int, points: int, device: str, repeat: int, threads: int | None = None) -> Row:
    """One row, meant to run in a fresh process (so no memory freed by another row hides this one's peak)."""
    if threads:
        torch.set_num_threads(threads)
    os.environ["ZOO_KERNEL"] = backend
    import zoo

    torch.manual_seed(0)
    model = zoo.create_model(name, num_classes=10).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, points, 3, device=device)
    y = torch.randint(0, 10, (batch,), device=device)

    def train_step():
        model.train()
        out = model(x)
        loss = F.cross_entropy(out["logits"], y) + sum(out["losses"].values())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def infer():
        model.eval()
        model(x)

    train_s = time_fn(train_step, warmup=1, repeat=repeat, device=device)
    infer_s = time_fn(infer, warmup=1, repeat=repeat, device=device)
    peak = peak_memory(train_step, device)
    return Row(backend, batch=batch, train_sps=batch / train_s, infer_sps=batch / infer_s, time_ms=1000 * train_s,
               peak_mb=None if peak is None else peak / 2**20)


def run(args: argparse.Namespace) -> None:
    import multiprocessing as mp

    backends = ["ref", "cpu"] if args.device == "cpu" else ["ref", "triton"]
    ctx = mp.get_context("spawn")
    results = {}
    for name in args.variants:
        batch = args.batch if (args.device != "cpu" or name != "pointramba") else min(args.batch, args.full_batch)
        rows = []
        for backend in backends:
            with ctx.Pool(1) as pool:
                rows.append(Row(**pool.apply(_measure, (name, backend, batch, args.points, args.device, args.repeat, args.threads))))
        results[name] = print_table(
            f"{name}: {batch} x {args.points} points, {args.device}, {args.threads or torch.get_num_threads()} threads",
            rows, baseline="ref", ratios={"time_ms": "speedup", "peak_mb": "fraction"},
        )
    write_json(args.json, results)
