"""Fast PyTorch sampled weight gradient with bounded memory (the CPU path; device-agnostic).

Same numbers as ``reference.sampled_weight_grad_ref`` (float32 accumulation) without ever forming the dense
``(out, in)`` gradient. The index list is processed in blocks of output rows (``rows`` sorted — SaRA's are; other
input is sorted once by row and the result un-permuted). For each block of ``rb`` rows that holds ``n`` indices:

* dense enough (``n / (rb·in) >= gemm_density``): one GEMM ``grad_out[..., r0:r1]ᵀ @ x`` gives the
  ``(rb, in)`` block of ``dW``, from which the block's entries are gathered — GEMMs are so much faster per
  flop than strided gathers (~100-250x on a 2-core x86) that this wins from about 0.2 % density on;
* sparse: chunks of ``c`` indices gather ``grad_out[..., rows]`` and ``x[..., cols]`` as ``(B, T, c)`` slabs and
  reduce their product over ``(B, T)``.

Either way the temporary is at most ``max_elems`` elements (plus one float32 copy of a half-precision ``x``), so
memory is bounded independently of the layer size.
"""
from __future__ import annotations

import torch

from cuda_ext.sparse_backprop.reference import check_inputs

__all__ = ["sampled_weight_grad_cpu", "DEFAULT_MAX_ELEMS", "DEFAULT_GEMM_DENSITY"]

DEFAULT_MAX_ELEMS = 1 << 20  # 1M elements (4 MB float32) per temporary block
DEFAULT_GEMM_DENSITY = 1.0 / 512  # block density from which a block GEMM beats per-index gathers (measured, 2-core x86)


def _block_gemm(g: torch.Tensor, x: torch.Tensor, r0: int, r1: int) -> torch.Tensor:
    """``Σ_b g[b, :, r0:r1]ᵀ @ x[b]`` as a float32 ``(r1 - r0, in)`` block (inputs already float32/64)."""
    B = g.shape[0]
    out = g[0, :, r0:r1].t() @ x[0]
    for b in range(1, B):
        out.addmm_(g[b, :, r0:r1].t(), x[b])
    return out


def sampled_weight_grad_cpu(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    *,
    max_elems: int = DEFAULT_MAX_ELEMS,
    gemm_density: float = DEFAULT_GEMM_DENSITY,
) -> torch.Tensor:
    """``(B, T, out), (B, T, in), (K,), (K,) -> (K,)`` float32 (float64 for float64 inputs); see module doc.

    Index temporaries stay in the indices' own dtype (int32 for SaRA), so the transient memory is about
    ``max_elems`` floats plus a few bytes per index.
    """
    check_inputs(grad_out, x, rows, cols)
    K = rows.numel()
    acc = torch.float64 if torch.float64 in (grad_out.dtype, x.dtype) else torch.float32
    B, T, O = grad_out.shape
    I = x.shape[2]
    if K == 0 or B * T == 0:
        return torch.zeros(K, dtype=acc, device=x.device)
    perm = None
    if K > 1 and not bool((rows[1:] >= rows[:-1]).all()):  # blocks need rows sorted (any order within a row)
        perm = torch.argsort(rows, stable=True)
        rows, cols = rows[perm], cols[perm]
    # one float copy of each operand at most (half inputs); float32 inputs are used in place with their strides
    g = grad_out if grad_out.dtype == acc else grad_out.to(acc)
    xx = x if x.dtype == acc else x.to(acc)
    rb = max(1, min(O, max_elems // max(I, 1)))
    starts = torch.arange(0, O + rb, rb, dtype=rows.dtype, device=rows.device)
    bounds = torch.searchsorted(rows, starts).tolist()
    chunk = max(1, max_elems // (B * T))
    out_sorted = torch.empty(K, dtype=acc, device=x.device)
    for blk in range(len(bounds) - 1):
        s, e = bounds[blk], bounds[blk + 1]
        if s == e:
            continue
        r0, r1 = blk * rb, min(O, (blk + 1) * rb)
        if e - s >= gemm_density * (r1 - r0) * I:
            dense = _block_gemm(g, xx, r0, r1)
            out_sorted[s:e] = dense[rows[s:e] - r0, cols[s:e]]
            del dense
        else:
            for c0 in range(s, e, chunk):
                c1 = min(e, c0 + chunk)
                out_sorted[c0:c1] = (g[:, :, rows[c0:c1]] * xx[:, :, cols[c0:c1]]).sum(dim=(0, 1))
    if perm is None:
        return out_sorted
    result = torch.empty_like(out_sorted)
    result[perm] = out_sorted
    return result
