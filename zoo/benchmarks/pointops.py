"""Point-cloud ops: furthest point sampling, KNN and PointNet++ feature propagation (zoo.ops.pointcloud) against the
usual naive PyTorch code.

Shapes: B=32 clouds of N=1024 points -> M=256 centers, and N=8192 -> M=512; KNN finds K=16 neighbours of the M
centers among the N points. Baselines (what model code bases typically run when pointnet2_ops / KNN_CUDA are
not installed):

* ``naive_loop`` FPS: the widely copied PyTorch ``farthest_point_sample`` (Pointnet_Pointnet2_pytorch): per step
  ``torch.sum((xyz - centroid) ** 2, -1)`` on a fresh ``(B, N, 3)`` temporary (start index 0 here).
* ``dense_nxn`` FPS: precompute the full ``(B, N, N)`` distance matrix (``torch.cdist``), then the greedy loop
  reads rows of it (N=1024 only: at N=8192 it needs 8.6 GB).
* ``knn_point`` KNN: PointMamba / PoinTramba ``knn_point``: the full ``(B, M, N)`` ``square_distance``
  (``|a|^2 + |b|^2 - 2ab`` matmul form) and ``topk``.

* ``pointnet2_py`` feature propagation (PoinTramba part segmentation's ``PointNetFeaturePropagation``
  interpolation): full ``(B, N, S)`` matmul-form ``square_distance``, a full sort, ``index_points`` into a
  ``(B, N, 3, C)`` block, weights ``1 / (d^2 + 1e-8)``. Shapes: N=2048 points from S=256 tokens (2 x 128 centres),
  C=384 (quick) / 1152 (the official 3 x 384) channels; forward + backward (gradient w.r.t. the features).
  ``zoo_ref`` / ``zoo_cpu`` / ``zoo_triton``: ``three_nn`` + ``interpolation_weights`` + ``three_interpolate``
  with that backend (``zoo_triton``: GPU only).

``zoo_cpu`` is the fast PyTorch path (planar FPS with reused buffers; chunked KNN: BLAS-form candidates re-ranked
with exact distances, deterministic ties), ``zoo_triton`` the Triton FPS kernel (GPU only). ``same_idx`` /
``same_set``: agreement with the naive result (``dense_nxn`` uses cdist's matmul form, whose rounding changes
some choices). Times are medians; peak memory is the extra RSS / CUDA memory of one call.

Before any row is timed its result is checked (a :class:`BenchmarkCheckError` stops the benchmark otherwise):
the zoo FPS rows must return exactly ``naive_loop``'s indices; every FPS row must be a greedy furthest-point
sequence (each chosen point's exact distance to the points chosen before it is the largest, up to the rounding of
a matmul-form distance, ``FPS_RTOL``); every KNN row must return K distinct neighbours whose exact squared
distances are the K smallest (up to ``KNN_ATOL``, so rounding ties of the matmul form pass) -- the same neighbour
sets; every feature-propagation row must give the ``pointnet2_py`` values and feature gradients (error relative to
their largest magnitude <= ``FP_RTOL``).

    python tools/benchmark.py pointops [--quick] [--device cpu|cuda|all] [--threads 1]
"""

from __future__ import annotations

import argparse
import contextlib

import torch

from zoo.benchmarks._common import BenchmarkResults, Row, check_true, peak_memory, time_fn

CONFIGS = [(32, 1024, 256, 16), (32, 8192, 512, 16)]  # (B, N, M, K)
FPS_RTOL = 1e-4  # a chosen point may be this much (relative) closer than the furthest one (matmul-form rounding)
FP_CONFIGS = [(4, 2048, 256, 384), (16, 2048, 256, 1152)]  # (B, N, S, C) feature propagation
FP_RTOL = 1e-3  # the baseline's matmul-form squared distances (~1e-3 for near tokens) are off by ~1e-7: weights ~1e-4
KNN_ATOL = 1e-5  # squared-distance slack for neighbour sets (coordinates in [0, 1): matmul-form rounding ~1e-6)


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


def fp_pointnet2_py(xyz1: torch.Tensor, xyz2: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
    """The official part-segmentation interpolation: ``(B, N, 3), (B, S, 3), (B, S, C) -> (B, N, C)``."""
    B, N, _ = xyz1.shape
    S = xyz2.shape[1]
    dist = -2 * torch.matmul(xyz1, xyz2.permute(0, 2, 1))
    dist += torch.sum(xyz1**2, -1).view(B, N, 1)
    dist += torch.sum(xyz2**2, -1).view(B, 1, S)
    dists, idx = dist.sort(dim=-1)
    dists, idx = dists[:, :, :3], idx[:, :, :3]
    recip = 1.0 / (dists + 1e-8)
    weight = recip / recip.sum(dim=2, keepdim=True)
    picked = feats[torch.arange(B, device=feats.device)[:, None, None], idx]  # index_points: (B, N, 3, C)
    return torch.sum(picked * weight.view(B, N, 3, 1), dim=2)


def fp_zoo(xyz1: torch.Tensor, xyz2: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
    """``zoo.ops.pointcloud``: three_nn + interpolation_weights (squared, as the official model) + three_interpolate."""
    from zoo.ops.pointcloud import interpolation_weights, three_interpolate, three_nn

    dist, idx = three_nn(xyz1, xyz2)
    return three_interpolate(feats, idx, interpolation_weights(dist))


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


# ----------------------------------------------------------------------------------------------------- checks
def _sqdist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact squared distances ``(..., 3), (..., 3) -> (...)`` summed as ``dx*dx + dy*dy + dz*dz`` (float32)."""
    d = a.float() - b.float()
    return d[..., 0] * d[..., 0] + d[..., 1] * d[..., 1] + d[..., 2] * d[..., 2]


def fps_greedy_error(xyz: torch.Tensor, idx: torch.Tensor) -> float:
    """How far ``idx (B, M)`` is from a greedy FPS of ``xyz (B, N, 3)``: the largest, over clouds and steps, of
    ``(max_p d(p) - d(idx_j)) / max_p d(p)`` with ``d`` the exact squared distance to ``idx[:, :j]`` (0 = greedy)."""
    B, N, _ = xyz.shape
    rows = torch.arange(B, device=xyz.device)
    mind = torch.full((B, N), float("inf"), device=xyz.device)
    worst = torch.zeros((), device=xyz.device)
    for j in range(idx.shape[1]):
        if j:
            best = mind.max(1).values
            worst = torch.maximum(worst, ((best - mind[rows, idx[:, j]]) / best.clamp_min(1e-30)).max())
        mind = torch.minimum(mind, _sqdist(xyz, xyz[rows, idx[:, j]][:, None]))
    return float(worst)


def knn_error(xyz: torch.Tensor, centers: torch.Tensor, idx: torch.Tensor, chunk: int = 64) -> float:
    """How far ``idx (B, M, K)`` is from the K nearest neighbours of ``centers (B, M, 3)`` among ``xyz (B, N, 3)``:
    the largest gap between the sorted exact squared distances of the given neighbours and the K smallest ones
    (inf when a query repeats a neighbour). Processed in chunks of queries (memory ``chunk x N``)."""
    K = idx.shape[-1]
    if bool((idx.sort(-1).values.diff(dim=-1) == 0).any()):
        return float("inf")
    worst = 0.0
    for b in range(xyz.shape[0]):
        for s in range(0, centers.shape[1], chunk):
            d = _sqdist(centers[b, s:s + chunk, None], xyz[b, None])  # (chunk, N)
            best = d.topk(K, dim=-1, largest=False).values.sort(-1).values
            got = d.gather(1, idx[b, s:s + chunk]).sort(-1).values
            worst = max(worst, float((got - best).abs().max()))
    return worst


def _check_fps(results: dict[str, torch.Tensor], xyz: torch.Tensor) -> None:
    ref = results["naive_loop"]
    for name, idx in results.items():
        check_true(idx.shape == ref.shape and idx.dtype == torch.long, "pointops", name,
                   f"returns {tuple(idx.shape)} {idx.dtype} indices, naive_loop {tuple(ref.shape)} {ref.dtype}")
        if name.startswith("zoo"):
            diff = int((idx != ref).any(1).sum())
            check_true(diff == 0, "pointops", name, f"returns other FPS indices than 'naive_loop' in {diff} of "
                                                   f"{ref.shape[0]} clouds")
        err = fps_greedy_error(xyz, idx)
        check_true(err <= FPS_RTOL, "pointops", name, f"is not a furthest point sampling: a chosen point is "
                                                      f"{err:.2e} (relative) closer than the furthest one "
                                                      f"(allowed {FPS_RTOL:.0e})")


def _check_knn(results: dict[str, torch.Tensor], xyz: torch.Tensor, centers: torch.Tensor, K: int) -> None:
    for name, idx in results.items():
        check_true(idx.shape == (*centers.shape[:2], K), "pointops", name,
                   f"returns neighbour indices of shape {tuple(idx.shape)}, expected {(*centers.shape[:2], K)}")
        err = knn_error(xyz, centers, idx)
        check_true(err <= KNN_ATOL, "pointops", name, f"returns other neighbour sets than the exact K={K} nearest: "
                                                      f"squared distances off by {err:.2e} (allowed {KNN_ATOL:.0e})")


# ----------------------------------------------------------------------------------------------------- rows
def _fps_rows(xyz: torch.Tensor, M: int, device: str, repeat: int, monkey_env) -> list[Row]:
    N = xyz.shape[1]
    names = ["naive_loop"] + (["dense_nxn"] if N <= 2048 else []) + ["zoo_cpu"] + \
        (["zoo_triton"] if device == "cuda" else [])
    results = {name: _run_named(name, xyz, M, monkey_env) for name in names}
    _check_fps(results, xyz)  # every implementation must agree (tie-free random input) before it is timed
    rows = []
    for name in names:
        env = monkey_env("cpu" if name == "zoo_cpu" else None) if name.startswith("zoo") else contextlib.nullcontext()
        with env:  # ZOO_KERNEL set once around the timed calls
            rows.append(_measure(name, lambda: _run_named(name, xyz, M), device, repeat))
        rows[-1]["same_idx"] = bool(torch.equal(results["naive_loop"], results[name]))
    return rows


def _run_named(name: str, xyz, M, monkey_env=None):
    """Row ``name``'s FPS of ``xyz``; ``monkey_env`` (when given) sets ``ZOO_KERNEL`` for the zoo rows."""
    from zoo.ops.pointcloud import furthest_point_sample

    if name == "naive_loop":
        return fps_naive_loop(xyz, M)
    if name == "dense_nxn":
        return fps_dense_nxn(xyz, M)
    if monkey_env is None:
        return furthest_point_sample(xyz, M)
    with monkey_env("cpu" if name == "zoo_cpu" else None):
        return furthest_point_sample(xyz, M)


def _knn_rows(xyz: torch.Tensor, centers: torch.Tensor, K: int, device: str, repeat: int) -> list[Row]:
    from zoo.ops import pointcloud

    zoo_name = "zoo_cpu" if device == "cpu" else "zoo_cuda"
    fns = {"knn_point": lambda: knn_point(K, xyz, centers), zoo_name: lambda: pointcloud.knn(xyz, centers, K)[1]}
    results = {name: fn() for name, fn in fns.items()}
    _check_knn(results, xyz, centers, K)  # the same neighbour sets (up to rounding ties) before timing
    rows = [_measure(name, fn, device, repeat) for name, fn in fns.items()]
    theirs, ours = (results[n].sort(-1).values for n in fns)
    rows[1]["same_set"] = float((theirs == ours).all(-1).float().mean())  # fraction of queries with the same K set
    return rows


def _fp_rows(B: int, N: int, S: int, C: int, device: str, repeat: int, kernel_env) -> list[Row]:
    g = torch.Generator().manual_seed(1)
    xyz1 = torch.rand(B, N, 3, generator=g).to(device)
    xyz2 = torch.rand(B, S, 3, generator=g).to(device)
    feats = torch.randn(B, S, C, generator=g).to(device)
    grad = torch.randn(B, N, C, generator=g).to(device)
    envs = {"pointnet2_py": None, "zoo_ref": "three_nn:ref,three_interpolate:ref",
            "zoo_cpu": "three_nn:cpu,three_interpolate:cpu"}
    if device == "cuda":
        envs["zoo_triton"] = "three_nn:triton,three_interpolate:triton"

    def step(name: str):
        f = feats.detach().requires_grad_()
        fn = fp_pointnet2_py if name == "pointnet2_py" else fp_zoo
        out = fn(xyz1, xyz2, f)
        out.backward(grad)
        return out.detach(), f.grad

    results = {}
    for name, env in envs.items():
        with kernel_env(env):
            results[name] = step(name)
    ref_out, ref_grad = results["pointnet2_py"]
    for name, (out, gr) in results.items():
        for what, got, want in (("values", out, ref_out), ("feature gradients", gr, ref_grad)):
            err = float((got - want).abs().max() / want.abs().max().clamp_min(1e-30))
            check_true(err <= FP_RTOL, "pointops", name, f"feature propagation {what} differ from pointnet2_py by "
                                                         f"{err:.2e} (relative; allowed {FP_RTOL:.0e})")
    rows = []
    for name, env in envs.items():
        with kernel_env(env):
            rows.append(_measure(name, lambda: step(name), device, repeat))
    return rows


def run(args: argparse.Namespace) -> list[dict]:
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
    results = BenchmarkResults("pointops", args)
    for device in devices:
        for B, N, M, K in configs:
            g = torch.Generator().manual_seed(0)
            xyz = torch.rand(B, N, 3, generator=g).to(device)
            rows = _fps_rows(xyz, M, device, repeat, kernel_env)
            title = f"FPS {device}: B={B} N={N} -> M={M}"
            results.add(f"fps_{device}_{B}x{N}to{M}", title, rows, baseline="naive_loop",
                        columns={"time_ms": "time", "peak_mb": "peak memory", "same_idx": "same indices as the loop"})
            centers = xyz[torch.arange(B, device=device)[:, None], _run_named("zoo_cpu", xyz, M, kernel_env)]
            rows = _knn_rows(xyz, centers, K, device, repeat)
            title = f"KNN {device}: B={B} N={N} M={M} K={K}"
            results.add(f"knn_{device}_{B}x{N}x{M}k{K}", title, rows, baseline="knn_point",
                        columns={"time_ms": "time", "peak_mb": "peak memory", "same_set": "share of queries with the same K set"})
        for B, N, S, C in FP_CONFIGS[:1] if args.quick else FP_CONFIGS:
            rows = _fp_rows(B, N, S, C, device, repeat, kernel_env)
            title = f"feature propagation {device} (fwd+bwd): B={B} N={N} from S={S}, C={C}"
            results.add(f"fp_{device}_{B}x{N}from{S}c{C}", title, rows, baseline="pointnet2_py",
                        columns={"time_ms": "fwd+bwd time", "peak_mb": "peak memory"})
    results.write(repeat=repeat, threads=torch.get_num_threads())
    return results.tables
