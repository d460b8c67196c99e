"""Triton kernel for furthest point sampling: one program per cloud, the whole ``npoint`` loop in one launch.

Same rules and numbers as ``reference.furthest_point_sample_ref`` (distances ``dx*dx + dy*dy + dz*dz`` without
FMA contraction, ties to the lowest index, optional pointnet2 near-origin rule). Memory: the input plus a
``(B, N)`` float32 scratch row only when the cloud does not fit one tile; never an N x N matrix.

Importing this module imports Triton; ``cuda_ext.pointops`` imports it lazily. Under ``TRITON_INTERPRET=1``
(decided when this module is imported) the kernel runs on CPU tensors, which is how the tests check it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["MAX_SINGLE_TILE", "furthest_point_sample_triton"]

MAX_SINGLE_TILE = 8192  # clouds up to this size stay in registers; larger ones stream tiles of TILE points
TILE = 4096


@triton.jit
def _fps_single_tile_kernel(
    xyz_ptr, start_ptr, out_ptr, N, npoint, SKIP_NEAR_ORIGIN: tl.constexpr, BLOCK: tl.constexpr
):
    b = tl.program_id(0).to(tl.int64)
    base = xyz_ptr + b * N * 3
    offs = tl.arange(0, BLOCK)
    inside = offs < N
    x = tl.load(base + offs * 3 + 0, mask=inside, other=0.0)
    y = tl.load(base + offs * 3 + 1, mask=inside, other=0.0)
    z = tl.load(base + offs * 3 + 2, mask=inside, other=0.0)
    valid = inside
    if SKIP_NEAR_ORIGIN:
        valid = valid & ((x * x + y * y + z * z) > 1e-3)
    dist = tl.full([BLOCK], float("inf"), tl.float32)
    old = tl.load(start_ptr + b)
    tl.store(out_ptr + b * npoint, old.to(tl.int64))
    for j in range(1, npoint):
        cx = tl.load(base + old.to(tl.int64) * 3 + 0)  # the last chosen point (an L1/L2 hit)
        cy = tl.load(base + old.to(tl.int64) * 3 + 1)
        cz = tl.load(base + old.to(tl.int64) * 3 + 2)
        dx = x - cx
        dy = y - cy
        dz = z - cz
        dist = tl.minimum(dist, dx * dx + dy * dy + dz * dz)
        old = tl.argmax(tl.where(valid, dist, -1.0), axis=0, tie_break_left=True).to(tl.int32)
        tl.store(out_ptr + b * npoint + j, old.to(tl.int64))


@triton.jit
def _fps_tiled_kernel(
    xyz_ptr, start_ptr, out_ptr, temp_ptr, N, npoint, SKIP_NEAR_ORIGIN: tl.constexpr, BLOCK: tl.constexpr
):
    b = tl.program_id(0).to(tl.int64)
    base = xyz_ptr + b * N * 3
    temp = temp_ptr + b * N
    offs0 = tl.arange(0, BLOCK)
    old = tl.load(start_ptr + b)
    tl.store(out_ptr + b * npoint, old.to(tl.int64))
    for j in range(1, npoint):
        cx = tl.load(base + old.to(tl.int64) * 3 + 0)
        cy = tl.load(base + old.to(tl.int64) * 3 + 1)
        cz = tl.load(base + old.to(tl.int64) * 3 + 2)
        best = tl.full([], -1.0, tl.float32)
        best_i = tl.full([], 0, tl.int32)
        for t0 in range(0, N, BLOCK):
            offs = t0 + offs0
            inside = offs < N
            x = tl.load(base + offs * 3 + 0, mask=inside, other=0.0)
            y = tl.load(base + offs * 3 + 1, mask=inside, other=0.0)
            z = tl.load(base + offs * 3 + 2, mask=inside, other=0.0)
            dx = x - cx
            dy = y - cy
            dz = z - cz
            d = tl.minimum(tl.load(temp + offs, mask=inside, other=0.0), dx * dx + dy * dy + dz * dz)
            tl.store(temp + offs, d, mask=inside)
            valid = inside
            if SKIP_NEAR_ORIGIN:
                valid = valid & ((x * x + y * y + z * z) > 1e-3)
            score = tl.where(valid, d, -1.0)
            m = tl.max(score, axis=0)
            a = tl.argmax(score, axis=0, tie_break_left=True).to(tl.int32) + t0
            better = m > best  # strict: an earlier tile wins a tie
            best_i = tl.where(better, a, best_i)
            best = tl.where(better, m, best)
        old = best_i.to(tl.int32)
        tl.store(out_ptr + b * npoint + j, old.to(tl.int64))


def furthest_point_sample_triton(
    xyz: torch.Tensor,
    npoint: int,
    start: torch.Tensor,
    skip_near_origin: bool = False,
    max_single_tile: int = MAX_SINGLE_TILE,
    tile: int = TILE,
) -> torch.Tensor:
    """FPS ``(B, N, 3) -> (B, npoint)`` int64 in one Triton launch (one program per cloud).

    ``max_single_tile`` / ``tile`` choose between the register-resident kernel (N <= max_single_tile) and the
    streaming one; tests lower them to exercise both paths on small inputs.
    """
    B, N, _ = xyz.shape
    pts = xyz.float().contiguous()
    start32 = start.to(device=xyz.device, dtype=torch.int32).contiguous()
    out = torch.empty(B, npoint, dtype=torch.long, device=xyz.device)
    if npoint == 0 or B == 0:
        return out
    opts = {} if pts.device.type == "cpu" else {"enable_fp_fusion": False}  # no FMA: exact ties as in the reference
    if N <= max_single_tile:
        block = max(16, triton.next_power_of_2(N))
        warps = 4 if block <= 1024 else (8 if block <= 4096 else 16)
        _fps_single_tile_kernel[(B,)](
            pts, start32, out, N, npoint, SKIP_NEAR_ORIGIN=skip_near_origin, BLOCK=block, num_warps=warps, **opts
        )
    else:
        temp = torch.full((B, N), float("inf"), device=xyz.device)
        _fps_tiled_kernel[(B,)](
            pts, start32, out, temp, N, npoint, SKIP_NEAR_ORIGIN=skip_near_origin, BLOCK=tile, num_warps=8, **opts
        )
    return out
