"""Point-cloud kernels (FPS, KNN, ball query): reference, fast PyTorch and Triton implementations plus dispatch.

The public API with argument checking is ``zoo.ops.pointcloud``; this package picks the implementation through
the shared dispatcher :mod:`cuda_ext._dispatch` (op names ``fps``, ``knn``, ``ball_query``):

* ``ZOO_KERNEL=ref|cpu|triton`` (or per op, ``ZOO_KERNEL=fps:cpu,knn:ref``) forces one; a global backend an op
  lacks (``triton`` for KNN / ball query, ``mamba_ssm`` for all three) falls back to the op's automatic choice;
* otherwise CUDA tensors use Triton for FPS when it is importable, everything else the fast PyTorch path
  (``cpu.py``, which is device-agnostic and is also the CUDA path of KNN / ball query: chunked distances + ``topk``).

Importing this package never imports Triton.
"""

from __future__ import annotations

import torch

from cuda_ext import _dispatch
from cuda_ext.pointops import cpu, reference

__all__ = ["backend", "ball_query", "furthest_point_sample", "knn"]


def backend(t: torch.Tensor, op: str = "fps") -> str:
    """The implementation ``op`` (``"fps"``, ``"knn"`` or ``"ball_query"``) uses for tensor ``t``: ``"ref"``,
    ``"cpu"`` (fast PyTorch) or ``"triton"`` (FPS only). See :func:`cuda_ext._dispatch.resolve`."""
    if op not in ("fps", "knn", "ball_query"):
        raise ValueError(f"cuda_ext.pointops.backend: op must be 'fps', 'knn' or 'ball_query', got {op!r}")
    return _dispatch.resolve(op, t)


def furthest_point_sample(
    xyz: torch.Tensor, npoint: int, start: torch.Tensor, skip_near_origin: bool = False
) -> torch.Tensor:
    """FPS ``(B, N, 3) -> (B, npoint)`` int64 with the first index of each cloud given by ``start`` (B,)."""
    which = backend(xyz)
    if which == "ref":
        return reference.furthest_point_sample_ref(xyz, npoint, start, skip_near_origin)
    if which == "triton":
        from cuda_ext.pointops.triton import furthest_point_sample_triton

        return furthest_point_sample_triton(xyz, npoint, start, skip_near_origin)
    return cpu.furthest_point_sample_fast(xyz, npoint, start, skip_near_origin)


def knn(ref: torch.Tensor, query: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """K nearest neighbours ``(B, N, 3), (B, M, 3) -> (sq_dist (B, M, k), idx (B, M, k))``."""
    if backend(ref, "knn") == "ref":
        return reference.knn_ref(ref, query, k)
    max_elems = cpu.DEFAULT_MAX_ELEMS * (16 if ref.is_cuda else 1)
    return cpu.knn_fast(ref, query, k, max_elems=max_elems)


def ball_query(radius: float, nsample: int, xyz: torch.Tensor, new_xyz: torch.Tensor) -> torch.Tensor:
    """pointnet2 ball query ``(B, N, 3), (B, M, 3) -> (B, M, nsample)`` int64."""
    if backend(xyz, "ball_query") == "ref":
        return reference.ball_query_ref(radius, nsample, xyz, new_xyz)
    max_elems = cpu.DEFAULT_MAX_ELEMS * (16 if xyz.is_cuda else 1)
    return cpu.ball_query_fast(radius, nsample, xyz, new_xyz, max_elems=max_elems)
