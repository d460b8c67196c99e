"""Plain-PyTorch references of the point-cloud ops: short, readable, the ground truth for tests.

Every function here is exact (no ``|a|^2 + |b|^2 - 2ab`` shortcut): squared distances are computed as
``dx*dx + dy*dy + dz*dz`` in that order, like the pointnet2_ops CUDA kernels, so ties are real ties.
They allocate dense ``(B, M, N)`` matrices, so keep them for small inputs; ``cuda_ext.pointops.cpu`` has the
fast, memory-bounded versions with the same outputs.
"""

from __future__ import annotations

import torch

__all__ = ["ball_query_ref", "furthest_point_sample_ref", "knn_ref", "square_distance_ref", "three_interpolate_ref",
           "three_nn_ref"]


def square_distance_ref(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact squared distances ``(B, M, 3), (B, N, 3) -> (B, M, N)``, summed as ``dx*dx + dy*dy + dz*dz``."""
    d = a[:, :, None, :] - b[:, None, :, :]
    return d[..., 0] * d[..., 0] + d[..., 1] * d[..., 1] + d[..., 2] * d[..., 2]


def furthest_point_sample_ref(
    xyz: torch.Tensor, npoint: int, start: torch.Tensor, skip_near_origin: bool = False
) -> torch.Tensor:
    """Textbook furthest point sampling, ``(B, N, 3) -> (B, npoint)`` int64.

    ``start`` (B,) holds the first index of each cloud. Each step adds the point whose squared distance to the
    chosen set is largest; ties go to the lowest index. With ``skip_near_origin`` points with ``|p|^2 <= 1e-3``
    are never chosen after the first (the pointnet2_ops kernel's rule); when no point qualifies index 0 is taken.
    """
    B, N, _ = xyz.shape
    xyz = xyz.float()
    dist = torch.full((B, N), float("inf"), device=xyz.device)
    out = torch.empty(B, npoint, dtype=torch.long, device=xyz.device)
    valid = (xyz * xyz).sum(-1) > 1e-3 if skip_near_origin else None
    cur = start.to(device=xyz.device, dtype=torch.long)
    rows = torch.arange(B, device=xyz.device)
    for i in range(npoint):
        out[:, i] = cur
        c = xyz[rows, cur]  # (B, 3)
        d = xyz - c[:, None, :]
        dist = torch.minimum(dist, d[..., 0] * d[..., 0] + d[..., 1] * d[..., 1] + d[..., 2] * d[..., 2])
        score = dist if valid is None else torch.where(valid, dist, torch.full_like(dist, -1.0))
        cur = score.argmax(dim=1)  # first index of the maximum
    return out


def knn_ref(ref: torch.Tensor, query: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """K nearest neighbours, ``ref (B, N, 3), query (B, M, 3) -> (sq_dist (B, M, k), idx (B, M, k))``.

    Sorted by squared distance ascending, ties by index ascending (a stable sort of the full distance row).
    """
    d = square_distance_ref(query.float(), ref.float())
    dist, idx = torch.sort(d, dim=-1, stable=True)
    return dist[..., :k], idx[..., :k]


def ball_query_ref(radius: float, nsample: int, xyz: torch.Tensor, new_xyz: torch.Tensor) -> torch.Tensor:
    """pointnet2 ball query, ``xyz (B, N, 3), new_xyz (B, M, 3) -> idx (B, M, nsample)`` int64.

    The first ``nsample`` indices (in index order) with squared distance ``< radius**2``; unused slots repeat the
    first index found; a query with no point in range gets all zeros.
    """
    N = xyz.shape[1]
    d = square_distance_ref(new_xyz.float(), xyz.float())
    inside = d < radius * radius
    order = torch.arange(N, device=xyz.device).expand_as(d)
    keys = torch.where(inside, order, torch.full_like(order, N))
    keys = keys.sort(dim=-1).values[..., :nsample]
    if keys.shape[-1] < nsample:  # nsample > N: pad with the sentinel, replaced below
        keys = torch.cat([keys, keys.new_full((*keys.shape[:-1], nsample - keys.shape[-1]), N)], dim=-1)
    first = keys[..., :1]
    first = torch.where(first == N, torch.zeros_like(first), first)
    return torch.where(keys == N, first.expand_as(keys), keys)


def three_nn_ref(unknown: torch.Tensor, known: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The 3 nearest ``known (B, M, 3)`` points of every ``unknown (B, N, 3)`` point -> ``(sq_dist, idx)``, each
    ``(B, N, 3)``: squared distances ascending, ties to the lower index (pointnet2_ops ``three_nn`` order)."""
    return knn_ref(known, unknown, 3)


def three_interpolate_ref(features: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted sum of 3 gathered features: ``features (B, M, C), idx (B, N, 3), weight (B, N, 3) -> (B, N, C)``,
    ``out[b, n] = sum_k weight[b, n, k] * features[b, idx[b, n, k]]`` (autograd gives both gradients)."""
    B, N, K = idx.shape
    C = features.shape[-1]
    picked = torch.gather(features, 1, idx.reshape(B, N * K, 1).expand(-1, -1, C)).view(B, N, K, C)
    return (picked * weight.to(picked.dtype)[..., None]).sum(dim=2)
