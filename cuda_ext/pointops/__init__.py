"""Point-cloud kernels (FPS, KNN, ball query, three_nn, three_interpolate): reference, fast PyTorch and Triton
implementations plus dispatch.

The public API with argument checking is ``zoo.ops.pointcloud``; this package picks the implementation through
the shared dispatcher :mod:`cuda_ext._dispatch` (op names ``fps``, ``knn``, ``ball_query``, ``three_nn``,
``three_interpolate``):

* ``ZOO_KERNEL=ref|cpu|triton`` (or per op, ``ZOO_KERNEL=fps:cpu,knn:ref``) forces one; a global backend an op
  lacks (``triton`` for KNN / ball query, ``mamba_ssm`` for all three) falls back to the op's automatic choice;
* otherwise CUDA tensors use Triton for FPS, three_nn and three_interpolate (``triton_interpolate.py``) when it
  is importable, everything else the fast PyTorch path
  (``cpu.py``, which is device-agnostic and is also the CUDA path of KNN / ball query: chunked distances + ``topk``).

Importing this package never imports Triton.
"""

from __future__ import annotations

import torch

from cuda_ext import _dispatch
from cuda_ext.pointops import cpu, reference

__all__ = ["backend", "ball_query", "furthest_point_sample", "knn", "three_interpolate", "three_nn"]


_OPS = ("fps", "knn", "ball_query", "three_nn", "three_interpolate")


def backend(t: torch.Tensor, op: str = "fps") -> str:
    """The implementation ``op`` (one of ``fps``, ``knn``, ``ball_query``, ``three_nn``, ``three_interpolate``)
    uses for tensor ``t``: ``"ref"``, ``"cpu"`` (fast PyTorch) or ``"triton"`` (not for KNN / ball query).
    See :func:`cuda_ext._dispatch.resolve`."""
    if op not in _OPS:
        raise ValueError(f"cuda_ext.pointops.backend: op must be one of {', '.join(_OPS)}, got {op!r}")
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


def three_nn(unknown: torch.Tensor, known: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """3 nearest known points ``(B, N, 3), (B, M, 3) -> (sq_dist (B, N, 3), idx (B, N, 3))``."""
    which = backend(unknown, "three_nn")
    if which == "ref":
        return reference.three_nn_ref(unknown, known)
    if which == "triton":
        from cuda_ext.pointops.triton_interpolate import three_nn_triton

        return three_nn_triton(unknown, known)
    max_elems = cpu.DEFAULT_MAX_ELEMS * (16 if known.is_cuda else 1)
    return cpu.three_nn_fast(unknown, known, max_elems=max_elems)


def three_interpolate(features: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``features (B, M, C), idx (B, N, 3), weight (B, N, 3) -> (B, N, C)`` weighted sums (differentiable)."""
    which = backend(features, "three_interpolate")
    if which == "ref":
        return reference.three_interpolate_ref(features, idx, weight)
    if which == "triton":
        from cuda_ext.pointops.triton_interpolate import three_interpolate_triton

        return three_interpolate_triton(features, idx, weight)
    return cpu.three_interpolate_fast(features, idx, weight)
