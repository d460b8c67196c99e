"""Point-cloud kernels (FPS, KNN, ball query): reference, fast PyTorch and Triton implementations plus dispatch.

The public API with argument checking is ``zoo.ops.pointcloud``; this package picks the implementation:

* ``ZOO_KERNEL=ref|cpu|triton`` forces one (``triton`` falls back to ``cpu`` for ops without a Triton kernel);
* otherwise CUDA tensors use Triton when it is importable, everything else the fast PyTorch path (``cpu.py``,
  which is device-agnostic and is also the CUDA path of KNN / ball query: chunked distances + ``topk``).

Importing this package never imports Triton.
"""

from __future__ import annotations

import importlib.util
import os
from functools import cache

import torch

from cuda_ext.pointops import cpu, reference

__all__ = ["backend", "ball_query", "furthest_point_sample", "knn"]

_BACKENDS = ("ref", "cpu", "triton")


@cache
def _triton_importable() -> bool:
    return importlib.util.find_spec("triton") is not None


def backend(t: torch.Tensor, has_triton_kernel: bool = True) -> str:
    """The implementation used for tensor ``t``: ``"ref"``, ``"cpu"`` (fast PyTorch) or ``"triton"``."""
    forced = os.environ.get("ZOO_KERNEL", "").strip().lower()
    if forced:
        if forced not in _BACKENDS:
            raise ValueError(f"ZOO_KERNEL={forced!r} is not a kernel backend; use one of {', '.join(_BACKENDS)}.")
        if forced == "triton":
            if not has_triton_kernel:
                return "cpu"
            if not _triton_importable():
                raise ImportError("ZOO_KERNEL=triton but Triton is not installed: pip install 'zoo[triton]'.")
            if t.device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") != "1":
                raise RuntimeError("ZOO_KERNEL=triton with CPU tensors needs TRITON_INTERPRET=1 (or CUDA tensors).")
        return forced
    if t.is_cuda and has_triton_kernel and _triton_importable():
        return "triton"
    return "cpu"


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
    if backend(ref, has_triton_kernel=False) == "ref":
        return reference.knn_ref(ref, query, k)
    max_elems = cpu.DEFAULT_MAX_ELEMS * (16 if ref.is_cuda else 1)
    return cpu.knn_fast(ref, query, k, max_elems=max_elems)


def ball_query(radius: float, nsample: int, xyz: torch.Tensor, new_xyz: torch.Tensor) -> torch.Tensor:
    """pointnet2 ball query ``(B, N, 3), (B, M, 3) -> (B, M, nsample)`` int64."""
    if backend(xyz, has_triton_kernel=False) == "ref":
        return reference.ball_query_ref(radius, nsample, xyz, new_xyz)
    max_elems = cpu.DEFAULT_MAX_ELEMS * (16 if xyz.is_cuda else 1)
    return cpu.ball_query_fast(radius, nsample, xyz, new_xyz, max_elems=max_elems)
