"""Triton kernels for PointNet++ feature propagation: ``three_nn`` and ``three_interpolate`` (forward + backward).

Same rules and numbers as ``reference.three_nn_ref`` / ``reference.three_interpolate_ref``:

* ``three_nn``: one program per block of ``BLOCK`` unknown points; it walks the known points in index order and
  keeps the best three with strict ``<`` insertions (so ties go to the lower index, like a stable sort and like
  the pointnet2_ops kernel); distances ``dx*dx + dy*dy + dz*dz`` in float32 without FMA contraction.
* ``three_interpolate``: channel-last ``features (B, M, C)``; the forward gathers three rows per point and sums
  ``w0*f0 + w1*f1 + w2*f2`` in float32; the backward scatters ``grad_out * w_k`` into a float32 feature-gradient
  buffer with ``atomic_add`` (on a GPU the summation order of colliding points is not fixed: last-bit
  differences between runs) and reduces ``grad_out . f_k`` over channels for the weight gradient.

Importing this module imports Triton; ``cuda_ext.pointops`` imports it lazily. Under ``TRITON_INTERPRET=1``
(decided when this module is imported) the kernels run on CPU tensors, which is how the tests check them.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["ThreeInterpolateTriton", "three_interpolate_triton", "three_nn_triton"]


@triton.jit
def _three_nn_kernel(unknown_ptr, known_ptr, dist_ptr, idx_ptr, N, M, BLOCK: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < N
    ub = unknown_ptr + b * N * 3
    x = tl.load(ub + offs * 3 + 0, mask=inside, other=0.0)
    y = tl.load(ub + offs * 3 + 1, mask=inside, other=0.0)
    z = tl.load(ub + offs * 3 + 2, mask=inside, other=0.0)
    kb = known_ptr + b * M * 3
    d0 = tl.full([BLOCK], float("inf"), tl.float32)
    d1 = tl.full([BLOCK], float("inf"), tl.float32)
    d2 = tl.full([BLOCK], float("inf"), tl.float32)
    i0 = tl.zeros([BLOCK], tl.int32)
    i1 = tl.zeros([BLOCK], tl.int32)
    i2 = tl.zeros([BLOCK], tl.int32)
    for m in range(0, M):
        dx = x - tl.load(kb + m * 3 + 0)
        dy = y - tl.load(kb + m * 3 + 1)
        dz = z - tl.load(kb + m * 3 + 2)
        d = dx * dx + dy * dy + dz * dz
        mi = tl.zeros([BLOCK], tl.int32) + m
        lt0 = d < d0  # d0 <= d1 <= d2, so lt0 implies lt1 implies lt2
        lt1 = d < d1
        lt2 = d < d2
        d2n = tl.where(lt1, d1, tl.where(lt2, d, d2))
        i2 = tl.where(lt1, i1, tl.where(lt2, mi, i2))
        d1n = tl.where(lt0, d0, tl.where(lt1, d, d1))
        i1 = tl.where(lt0, i0, tl.where(lt1, mi, i1))
        d0 = tl.where(lt0, d, d0)
        i0 = tl.where(lt0, mi, i0)
        d1 = d1n
        d2 = d2n
    ob = b * N * 3 + offs * 3
    tl.store(dist_ptr + ob + 0, d0, mask=inside)
    tl.store(dist_ptr + ob + 1, d1, mask=inside)
    tl.store(dist_ptr + ob + 2, d2, mask=inside)
    tl.store(idx_ptr + ob + 0, i0.to(tl.int64), mask=inside)
    tl.store(idx_ptr + ob + 1, i1.to(tl.int64), mask=inside)
    tl.store(idx_ptr + ob + 2, i2.to(tl.int64), mask=inside)


@triton.jit
def _load_neighbours(idx_ptr, w_ptr, b, n, nm, N):
    """The three neighbour indices and float32 weights of rows ``n`` (BLOCK_N,) of batch ``b`` (0 where ``~nm``)."""
    ib = idx_ptr + b * N * 3 + n * 3
    wb = w_ptr + b * N * 3 + n * 3
    i0 = tl.load(ib + 0, mask=nm, other=0)
    i1 = tl.load(ib + 1, mask=nm, other=0)
    i2 = tl.load(ib + 2, mask=nm, other=0)
    w0 = tl.load(wb + 0, mask=nm, other=0.0).to(tl.float32)
    w1 = tl.load(wb + 1, mask=nm, other=0.0).to(tl.float32)
    w2 = tl.load(wb + 2, mask=nm, other=0.0).to(tl.float32)
    return i0, i1, i2, w0, w1, w2


@triton.jit
def _three_interpolate_fwd_kernel(feat_ptr, idx_ptr, w_ptr, out_ptr, N, M, C, BLOCK_N: tl.constexpr,
                                  BLOCK_C: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    nm = n < N
    mask = nm[:, None] & (c < C)[None, :]
    i0, i1, i2, w0, w1, w2 = _load_neighbours(idx_ptr, w_ptr, b, n, nm, N)
    fb = feat_ptr + b * M * C
    f0 = tl.load(fb + i0[:, None] * C + c[None, :], mask=mask, other=0.0).to(tl.float32)
    f1 = tl.load(fb + i1[:, None] * C + c[None, :], mask=mask, other=0.0).to(tl.float32)
    f2 = tl.load(fb + i2[:, None] * C + c[None, :], mask=mask, other=0.0).to(tl.float32)
    acc = f0 * w0[:, None] + f1 * w1[:, None] + f2 * w2[:, None]
    tl.store(out_ptr + b * N * C + n[:, None] * C + c[None, :], acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_neighbour(go, fb, gfb, i, w, c, mask, C, NEED_GF: tl.constexpr, NEED_GW: tl.constexpr):
    """One neighbour slot: scatter ``go * w`` into the feature gradient; return ``sum_c go * f`` (BLOCK_N,)."""
    if NEED_GF:
        tl.atomic_add(gfb + i[:, None] * C + c[None, :], go * w[:, None], mask=mask)
    part = tl.zeros_like(w)
    if NEED_GW:
        f = tl.load(fb + i[:, None] * C + c[None, :], mask=mask, other=0.0).to(tl.float32)
        part = tl.sum(go * f, axis=1)
    return part


@triton.jit
def _three_interpolate_bwd_kernel(go_ptr, feat_ptr, idx_ptr, w_ptr, gf_ptr, gw_ptr, N, M, C,
                                  NEED_GF: tl.constexpr, NEED_GW: tl.constexpr, BLOCK_N: tl.constexpr,
                                  BLOCK_C: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    nm = n < N
    i0, i1, i2, w0, w1, w2 = _load_neighbours(idx_ptr, w_ptr, b, n, nm, N)
    fb = feat_ptr + b * M * C
    gfb = gf_ptr + b * M * C
    g0 = tl.zeros([BLOCK_N], tl.float32)
    g1 = tl.zeros([BLOCK_N], tl.float32)
    g2 = tl.zeros([BLOCK_N], tl.float32)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        mask = nm[:, None] & (c < C)[None, :]
        go = tl.load(go_ptr + b * N * C + n[:, None] * C + c[None, :], mask=mask, other=0.0).to(tl.float32)
        g0 += _bwd_neighbour(go, fb, gfb, i0, w0, c, mask, C, NEED_GF, NEED_GW)
        g1 += _bwd_neighbour(go, fb, gfb, i1, w1, c, mask, C, NEED_GF, NEED_GW)
        g2 += _bwd_neighbour(go, fb, gfb, i2, w2, c, mask, C, NEED_GF, NEED_GW)
    if NEED_GW:
        gb = gw_ptr + b * N * 3 + n * 3
        tl.store(gb + 0, g0, mask=nm)
        tl.store(gb + 1, g1, mask=nm)
        tl.store(gb + 2, g2, mask=nm)


def _opts(t: torch.Tensor) -> dict:
    return {} if t.device.type == "cpu" else {"enable_fp_fusion": False}  # no FMA: exact reference distances


def three_nn_triton(unknown: torch.Tensor, known: torch.Tensor, block: int = 128
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """``unknown (B, N, 3), known (B, M, 3) -> (sq_dist (B, N, 3) float32, idx (B, N, 3) int64)``, M >= 3."""
    B, N, _ = unknown.shape
    M = known.shape[1]
    u = unknown.float().contiguous()
    k = known.float().contiguous()
    dist = torch.empty(B, N, 3, device=unknown.device, dtype=torch.float32)
    idx = torch.empty(B, N, 3, device=unknown.device, dtype=torch.long)
    if B == 0 or N == 0:
        return dist, idx
    _three_nn_kernel[(B, triton.cdiv(N, block))](u, k, dist, idx, N, M, BLOCK=block, **_opts(u))
    return dist, idx


def _blocks(C: int) -> tuple[int, int]:
    block_c = min(128, max(16, triton.next_power_of_2(C)))
    return max(16, 4096 // block_c), block_c


class ThreeInterpolateTriton(torch.autograd.Function):
    """``three_interpolate`` through the Triton kernels; gradients w.r.t. ``features`` and ``weight``."""

    @staticmethod
    def forward(ctx, features: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        f = features.contiguous()
        i = idx.contiguous()
        w = weight.contiguous()
        B, M, C = f.shape
        N = i.shape[1]
        out = torch.empty(B, N, C, device=f.device, dtype=f.dtype)
        if out.numel():
            bn, bc = _blocks(C)
            _three_interpolate_fwd_kernel[(B, triton.cdiv(N, bn), triton.cdiv(C, bc))](
                f, i, w, out, N, M, C, BLOCK_N=bn, BLOCK_C=bc, **_opts(f))
        ctx.save_for_backward(f, i, w)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        f, i, w = ctx.saved_tensors
        need_gf, need_gw = ctx.needs_input_grad[0], ctx.needs_input_grad[2]
        B, M, C = f.shape
        N = i.shape[1]
        go = grad_out.contiguous()
        gf = torch.zeros(B, M, C, device=f.device, dtype=torch.float32)
        gw = torch.zeros(B, N, 3, device=f.device, dtype=torch.float32)
        if (need_gf or need_gw) and go.numel():
            bn, bc = _blocks(C)
            bn = max(16, bn // 4)
            _three_interpolate_bwd_kernel[(B, triton.cdiv(N, bn))](
                go, f, i, w, gf, gw, N, M, C, NEED_GF=bool(need_gf), NEED_GW=bool(need_gw), BLOCK_N=bn,
                BLOCK_C=bc, **_opts(f))
        return (gf.to(f.dtype) if need_gf else None), None, (gw.to(w.dtype) if need_gw else None)


def three_interpolate_triton(features: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``features (B, M, C), idx (B, N, 3), weight (B, N, 3) -> (B, N, C)`` with the Triton kernels."""
    return ThreeInterpolateTriton.apply(features, idx, weight)
