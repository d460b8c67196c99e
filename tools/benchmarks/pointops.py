"""Point-cloud ops: furthest point sampling and KNN (zoo.ops.pointcloud) against the usual naive PyTorch code.

Shapes: B=32 clouds of N=1024 points -> M=256 centers, and N=8192 -> M=512; KNN finds K=16 neighbours of the M
centers among the N points. Baselines (what model code bases typically run when pointnet2_ops / KNN_CUDA are
not installed):

* ``naive_loop`` FPS: the widely copied PyTorch ``farthest_point_sample`` (Pointnet_Pointnet2_pytorch): per step
  ``torch.sum((xyz - centroid) ** 2, -1)`` on a fresh ``(B, N, 3)`` temporary (start index 0 here).
* ``dense_nxn`` FPS: precompute the full ``(B, N, N)`` distance matrix (``torch.cdist``), then the greedy loop
  reads rows of it (N=1024 only: at N=8192 it needs 8.6 GB).
* ``knn_point`` KNN: PointMamba / PoinTramba ``knn_point``: the full ``(B, M, N)`` ``square_distance``
  (``|a|^2 + |b|^2 - 2ab`` matmul form) and ``topk``.

``zoo_cpu`` is the fast PyTorch path (planar FPS with reused buffers; chunked KNN: BLAS-form candidates re-ranked
with exact distances, deterministic ties), ``zoo_triton`` the Triton FPS kernel (GPU only). ``same_idx`` /
``same_set``: agreement with the naive result (``dense_nxn`` uses cdist's matmul form, whose rounding changes
some choices). Times are medians; peak memory is the extra RSS / CUDA memory of one call.

    python tools/benchmark.py pointops [--quick] [--device cpu|cuda|all] [--threads 1]
"""

from __future__ import annotations

import argparse

import torch

from benchmarks._common import Row, peak_memory, print_table, time_fn, write_json

CONFIGS = [(32, 1024, 256, 16), (32, 8192, 512, 16)]  # (B, N, M, K)


# ----------------------------------------------------------------------------------------------------- baselines
def fps_naive_loop(xyz: torch.Tensor, npoint: int) -> torch.Tensor:
    """Pointnet_Pointnet2_pytorch ``farthest_point_sample`` with start index 0: (B, N, 3) -> (B, npoint)."""
    B, N, _ = xyz.shape
    centroids = torch.zeros(B, npoint, dtype=torch.long, device=xyz.device)
    distance = torch.ones(B, N, device=xyz.device) * 1e10
    farthest = torch.zeros(B, dtype=torch.long, device=xyz.device)
    batch_indices = torch.arange(B, dtype=torch.long, device=xyz.device)
    for i in range(npoint):
        centroids[:, i] = farthest
        centroid = xyz[batch_indices, farthest, :].view(B, 1, 3)
        dist = torch.sum((xyz - centroid) ** 2, -1)
        mask = dist < distance
        distance[mask] = dist[mask]
        farthest = torch.max(distance, -1)[1]
    return centroids


def fps_dense_nxn(xyz: torch.Tensor, npoint: int) -> torch.Tensor:
    """FPS over a precomputed (B, N, N) squared-distance matrix."""
    B, N, _ = xyz.shape
    D = torch.cdist(xyz, xyz) ** 2
    rows = torch.arange(B, device=xyz.device)
    out = torch.zeros(B, npoint, dtype=torch.long, device=xyz.device)
    dist = torch.full((B, N), float("inf"), device=xyz.device)
    cur = torch.zeros(B, dtype=torch.long, device=xyz.device)
    for i in range(npoint):
        out[:, i] = cur
        dist = torch.minimum(dist, D[rows, cur])
        cur = dist.argmax(1)
    return out


def knn_point(nsample: int, xyz: torch.Tensor, new_xyz: torch.Tensor) -> torch.Tensor:
    """PointMamba ``knn_point``: full square_distance + topk (unsorted)."""
    B, N, _ = new_xyz.shape
    M = xyz.shape[1]
    dist = -2 * torch.matmul(new_xyz, xyz.permute(0, 2, 1))
    dist += torch.sum(new_xyz**2, -1).view(B, N, 1)
    dist += torch.sum(xyz**2, -1).view(B, 1, M)
    return torch.topk(dist, nsample, dim=-1, largest=False, sorted=False)[1]


# ----------------------------------------------------------------------------------------------------- runner
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="N=1024 only, fewer repeats")
    parser.add_argument("--device", default="all", choices=["cpu", "cuda", "all"],
                        help="'all': the CPU, plus CUDA when available")  # fmt: skip
    parser.add_argument("--repeat", type=int, default=3, help="timed calls per row (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def _trim_heap() -> None:
    """Give freed heap pages back to the OS (glibc), so the next RSS peak is not hidden by reused pages."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _measure(name: str, fn, device: str, repeat: int, **extra) -> Row:
    t = time_fn(fn, warmup=1, repeat=repeat, device=device)
    if device == "cpu":
        _trim_heap()
    mem = peak_memory(fn, device)
    return Row(name, time_ms=t * 1e3, peak_mb=None if mem is None else mem / 2**20, **extra)


def _fps_rows(xyz: torch.Tensor, M: int, device: str, repeat: int, monkey_env) -> list[Row]:
    from zoo.ops.pointcloud import furthest_point_sample

    N = xyz.shape[1]
    rows = [_measure("naive_loop", lambda: fps_naive_loop(xyz, M), device, repeat)]
    if N <= 2048:
        rows.append(_measure("dense_nxn", lambda: fps_dense_nxn(xyz, M), device, repeat))
    with monkey_env("cpu"):
        rows.append(_measure("zoo_cpu", lambda: furthest_point_sample(xyz, M), device, repeat))
    if device == "cuda":
        with monkey_env(None):
            rows.append(_measure("zoo_triton", lambda: furthest_point_sample(xyz, M), device, repeat))
    ref = fps_naive_loop(xyz, M)
    for r in rows:  # every implementation must agree (tie-free random input)
        r["same_idx"] = bool(torch.equal(ref, _run_named(r["name"], xyz, M, monkey_env)))
    return rows


def _run_named(name: str, xyz, M, monkey_env):
    from zoo.ops.pointcloud import furthest_point_sample

    if name == "naive_loop":
        return fps_naive_loop(xyz, M)
    if name == "dense_nxn":
        return fps_dense_nxn(xyz, M)
    with monkey_env("cpu" if name == "zoo_cpu" else None):
        return furthest_point_sample(xyz, M)


def _knn_rows(xyz: torch.Tensor, centers: torch.Tensor, K: int, device: str, repeat: int) -> list[Row]:
    from zoo.ops.pointcloud import knn

    rows = [
        _measure("knn_point", lambda: knn_point(K, xyz, centers), device, repeat),
        _measure("zoo_cpu" if device == "cpu" else "zoo_cuda", lambda: knn(xyz, centers, K), device, repeat),
    ]
    theirs = knn_point(K, xyz, centers).sort(-1).values
    ours = knn(xyz, centers, K)[1].sort(-1).values
    rows[1]["same_set"] = float((theirs == ours).all(-1).float().mean())  # fraction of queries with the same K set
    return rows


def run(args: argparse.Namespace) -> list[dict]:
    import contextlib
    import os

    @contextlib.contextmanager
    def kernel_env(value):
        old = os.environ.pop("ZOO_KERNEL", None)
        if value is not None:
            os.environ["ZOO_KERNEL"] = value
        try:
            yield
        finally:
            os.environ.pop("ZOO_KERNEL", None)
            if old is not None:
                os.environ["ZOO_KERNEL"] = old

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"CPU threads: {torch.get_num_threads()}")
    devices = ["cpu"] if args.device == "cpu" else ["cuda"] if args.device == "cuda" else ["cpu"]
    if args.device == "all" and torch.cuda.is_available():
        devices.append("cuda")
    if "cuda" in devices and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    configs = CONFIGS[:1] if args.quick else CONFIGS
    repeat = 1 if args.quick else args.repeat
    results = []
    for device in devices:
        for B, N, M, K in configs:
            g = torch.Generator().manual_seed(0)
            xyz = torch.rand(B, N, 3, generator=g).to(device)
            rows = _fps_rows(xyz, M, device, repeat, kernel_env)
            title = f"FPS {device}: B={B} N={N} -> M={M}"
            results.append({"title": title, "rows": print_table(title, rows, baseline="naive_loop")})
            centers = xyz[torch.arange(B, device=device)[:, None], _run_named("zoo_cpu", xyz, M, kernel_env)]
            rows = _knn_rows(xyz, centers, K, device, repeat)
            title = f"KNN {device}: B={B} N={N} M={M} K={K}"
            results.append({"title": title, "rows": print_table(title, rows, baseline="knn_point")})
    write_json(getattr(args, "json", None), results)
    return results
