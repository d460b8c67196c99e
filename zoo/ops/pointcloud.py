"""Point-cloud ops: furthest point sampling, k nearest neighbours, ball query, gather and group, and PointNet++
feature propagation (``three_nn``, ``interpolation_weights``, ``three_interpolate``).

Conventions (the ones of pointnet2_ops and of PointMamba / PoinTramba ``misc.fps`` + ``knn_point``):

* tensors are channel-last: points ``(B, N, 3)``, features ``(B, N, C)``; indices are int64;
* distances are squared Euclidean distances computed in float32 as ``dx*dx + dy*dy + dz*dz`` (no
  ``|a|^2 + |b|^2 - 2ab`` shortcut, so duplicate points give exactly 0 and equal distances are real ties);
* ties go to the lowest index, everywhere.

Each op dispatches through ``cuda_ext.pointops`` and the shared :mod:`cuda_ext._dispatch` (op names ``fps``,
``knn``, ``ball_query``, ``three_nn``, ``three_interpolate``): the Triton kernels for FPS, three_nn and
three_interpolate on CUDA, fast memory-bounded PyTorch elsewhere, the plain
reference with ``ZOO_KERNEL=ref`` (or ``ZOO_KERNEL=fps:ref``). A global ``ZOO_KERNEL=mamba_ssm`` (for the scan)
leaves these ops on their automatic choice. All implementations return the same indices.
"""

from __future__ import annotations

import torch

__all__ = [
    "ball_query",
    "fps_knn_group",
    "furthest_point_sample",
    "gather_points",
    "group_points",
    "knn",
    "interpolation_weights",
    "square_distance",
    "three_interpolate",
    "three_nn",
]


def _check_points(name: str, t: torch.Tensor, batch: int | None = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, N, 3), got {type(t).__name__}.")
    if t.dim() != 3 or t.shape[-1] != 3:
        raise ValueError(f"{name} must have shape (B, N, 3), got {tuple(t.shape)}. Slice xyz with x[..., :3].")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}.")
    if batch is not None and t.shape[0] != batch:
        raise ValueError(f"{name} has batch size {t.shape[0]} but the point cloud has {batch}.")


def furthest_point_sample(
    xyz: torch.Tensor,
    npoint: int,
    start_idx: int | torch.Tensor = 0,
    random_start: bool = False,
    generator: torch.Generator | None = None,
    skip_near_origin: bool = False,
) -> torch.Tensor:
    """Furthest point sampling: ``xyz (B, N, 3) -> idx (B, npoint)`` int64.

    Greedy: start at ``start_idx`` (default 0, like ``pointnet2_ops.furthest_point_sample`` and so PointMamba's
    ``misc.fps``), then repeatedly add the point whose squared distance to the chosen set is largest; ties go to
    the first such index. The output is ordered (its first k entries are the FPS of size k). If ``npoint > N``
    the tail repeats index 0 once every point is taken, as pointnet2_ops does.

    Args:
        xyz: ``(B, N, 3)`` points (any float dtype; distances in float32).
        npoint: number of points to sample.
        start_idx: first index, an int or a ``(B,)`` tensor.
        random_start: draw the first index uniformly per cloud with ``generator`` (torch RNG), instead.
        generator: torch generator for ``random_start`` (default: the global torch RNG).
        skip_near_origin: reproduce pointnet2_ops' quirk of never choosing points with ``|p|^2 <= 1e-3`` after
            the first; only needed to match its output bit for bit on clouds that contain the origin.
    """
    from cuda_ext import pointops

    _check_points("xyz", xyz)
    B, N, _ = xyz.shape
    if npoint < 0:
        raise ValueError(f"npoint must be >= 0, got {npoint}.")
    if N == 0 and npoint > 0:
        raise ValueError("furthest_point_sample got empty clouds (N = 0); there is nothing to sample.")
    if random_start:
        gen_device = generator.device if generator is not None else torch.device("cpu")
        start = torch.randint(N, (B,), generator=generator, device=gen_device).to(xyz.device)
    elif isinstance(start_idx, torch.Tensor):
        start = start_idx.to(device=xyz.device, dtype=torch.long).reshape(-1)
        if start.numel() != B:
            raise ValueError(f"start_idx must have B={B} entries, got shape {tuple(start_idx.shape)}.")
        if B and (int(start.min()) < 0 or int(start.max()) >= N):
            raise ValueError(
                f"start_idx entries must be in [0, {N}), got min {int(start.min())} max {int(start.max())}."
            )
    else:
        if not 0 <= int(start_idx) < max(N, 1):
            raise ValueError(f"start_idx must be in [0, {N}), got {start_idx}.")
        start = torch.full((B,), int(start_idx), dtype=torch.long, device=xyz.device)
    if npoint == 0:
        return torch.empty(B, 0, dtype=torch.long, device=xyz.device)
    return pointops.furthest_point_sample(xyz.detach(), int(npoint), start, skip_near_origin)


def knn(ref: torch.Tensor, query: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """K nearest neighbours of each query among ``ref``: ``(B, N, 3), (B, M, 3) -> (dist, idx)``, each ``(B, M, k)``.

    ``dist`` holds **squared** distances (float32), sorted ascending; ties go to the lower index. ``idx`` (int64)
    are the neighbours of PointMamba / PoinTramba ``knn_point(k, ref, query)`` (which returns the same set,
    unsorted). Memory is bounded: queries are processed in chunks, never a full ``(B, M, N)`` matrix at once.
    """
    from cuda_ext import pointops

    _check_points("ref", ref)
    _check_points("query", query, batch=ref.shape[0])
    N = ref.shape[1]
    if not 1 <= k <= N:
        raise ValueError(f"k must be in [1, N={N}], got {k}.")
    return pointops.knn(ref.detach(), query.detach(), int(k))


def ball_query(radius: float, nsample: int, xyz: torch.Tensor, new_xyz: torch.Tensor) -> torch.Tensor:
    """Ball query with pointnet2 semantics: ``xyz (B, N, 3), new_xyz (B, M, 3) -> idx (B, M, nsample)`` int64.

    For each query, the first ``nsample`` point indices (in index order, not by distance) whose squared distance
    is ``< radius**2``; remaining slots repeat the first index found; a query with no point in range gets zeros.
    """
    from cuda_ext import pointops

    _check_points("xyz", xyz)
    _check_points("new_xyz", new_xyz, batch=xyz.shape[0])
    if nsample < 1:
        raise ValueError(f"nsample must be >= 1, got {nsample}.")
    if radius <= 0:
        raise ValueError(f"radius must be > 0, got {radius}.")
    return pointops.ball_query(float(radius), int(nsample), xyz.detach(), new_xyz.detach())


def gather_points(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Pick points by index: ``x (B, N, C), idx (B, M) -> (B, M, C)`` (differentiable w.r.t. ``x``)."""
    if x.dim() != 3:
        raise ValueError(f"x must have shape (B, N, C), got {tuple(x.shape)}.")
    if idx.dim() != 2 or idx.shape[0] != x.shape[0]:
        raise ValueError(f"idx must have shape (B={x.shape[0]}, M), got {tuple(idx.shape)}.")
    return torch.gather(x, 1, idx.long()[..., None].expand(-1, -1, x.shape[-1]))


def group_points(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Group points by neighbour index: ``x (B, N, C), idx (B, M, K) -> (B, M, K, C)`` (differentiable)."""
    if x.dim() != 3:
        raise ValueError(f"x must have shape (B, N, C), got {tuple(x.shape)}.")
    if idx.dim() != 3 or idx.shape[0] != x.shape[0]:
        raise ValueError(f"idx must have shape (B={x.shape[0]}, M, K), got {tuple(idx.shape)}.")
    B, M, K = idx.shape
    return gather_points(x, idx.reshape(B, M * K)).view(B, M, K, x.shape[-1])


def fps_knn_group(xyz: torch.Tensor, num_group: int, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Point-BERT / PointMamba patching: ``(B, N, 3) -> (neighborhood (B, G, K, 3), center (B, G, 3))``.

    ``center`` = FPS of ``num_group`` points (start 0); each group = the ``group_size`` nearest points of its
    center, expressed relative to it (``neighborhood = xyz[idx] - center``).
    """
    center = gather_points(xyz, furthest_point_sample(xyz, num_group))
    _, idx = knn(xyz, center, group_size)
    return group_points(xyz, idx) - center[:, :, None, :], center


def square_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact squared distances ``(B, M, 3), (B, N, 3) -> (B, M, N)`` (dense; for small inputs and tests)."""
    from cuda_ext.pointops.reference import square_distance_ref

    _check_points("a", a)
    _check_points("b", b, batch=a.shape[0])
    return square_distance_ref(a, b)


def three_nn(unknown: torch.Tensor, known: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The 3 nearest ``known`` points of every ``unknown`` point: ``(B, N, 3), (B, M, 3) -> (dist, idx)``, each
    ``(B, N, 3)``.

    ``dist`` holds **squared** distances (float32, exact ``dx*dx + dy*dy + dz*dz``), ascending; ties go to the lower
    index (so a duplicated known point -- PoinTramba's BIO sequence holds every centre twice -- contributes its
    first copy first). pointnet2_ops' ``three_nn`` returns the square root of the same numbers; the official
    PoinTramba part-segmentation code uses the squared ones (its ``square_distance`` + sort). Needs M >= 3.
    """
    from cuda_ext import pointops

    _check_points("unknown", unknown)
    _check_points("known", known, batch=unknown.shape[0])
    if known.shape[1] < 3:
        raise ValueError(
            f"three_nn needs at least 3 known points per cloud, got M={known.shape[1]}. With a single known point "
            "repeat its feature instead (as PointNet++ feature propagation does for S == 1)."
        )
    return pointops.three_nn(unknown.detach(), known.detach())


def interpolation_weights(dist: torch.Tensor, eps: float = 1e-8, squared: bool = True) -> torch.Tensor:
    """Inverse-distance weights of :func:`three_nn`'s ``dist (B, N, 3)`` (squared distances) -> ``(B, N, 3)``,
    summing to 1 over the last dim: ``w_k = (1 / (d_k + eps)) / sum_j (1 / (d_j + eps))``.

    ``squared=True`` uses the squared distance itself as ``d`` (the official PoinTramba part-segmentation model,
    whose ``PointNetFeaturePropagation`` weighs by ``1 / (dist^2 + 1e-8)``); ``squared=False`` uses the Euclidean
    distance (pointnet2_ops / the original PointNet++ ``1 / (dist + 1e-8)``).
    """
    d = dist if squared else dist.clamp_min(0).sqrt()
    recip = 1.0 / (d + eps)
    return recip / recip.sum(dim=-1, keepdim=True)


def three_interpolate(features: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Interpolate features at new points: ``features (B, M, C), idx (B, N, 3), weight (B, N, 3) -> (B, N, C)``,
    ``out[b, n] = sum_k weight[b, n, k] * features[b, idx[b, n, k]]``.

    Channel-last (pointnet2_ops takes ``(B, C, M)``: transpose). Differentiable w.r.t. ``features`` (the gradient
    is scattered back to the known points) and ``weight``; ``idx`` is an integer index (no gradient).
    """
    from cuda_ext import pointops

    if not isinstance(features, torch.Tensor) or features.dim() != 3:
        shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
        raise ValueError(f"three_interpolate: features must have shape (B, M, C), got {shape}.")
    B, M, _ = features.shape
    if idx.dim() != 3 or idx.shape[0] != B or idx.shape[-1] != 3:
        raise ValueError(f"three_interpolate: idx must have shape (B={B}, N, 3), got {tuple(idx.shape)}.")
    if weight.shape != idx.shape:
        raise ValueError(
            f"three_interpolate: weight must have the shape of idx {tuple(idx.shape)}, got {tuple(weight.shape)}."
        )
    if not features.is_floating_point() or not weight.is_floating_point():
        raise TypeError(
            f"three_interpolate: features and weight must be floating point, got {features.dtype} and {weight.dtype}."
        )
    idx = idx.long()
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= M):
        raise ValueError(
            f"three_interpolate: idx values must be in [0, M={M}), got min {int(idx.min())} max {int(idx.max())}."
        )
    return pointops.three_interpolate(features, idx, weight)
