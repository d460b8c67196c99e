"""Triton SDDMM kernel for the sampled weight gradient ``dv[k] = Σ_{b,t} grad_out[b,t,rows[k]] · x[b,t,cols[k]]``.

Grid ``(cdiv(K, BLOCK_K), SPLIT)``: each program owns ``BLOCK_K`` consecutive indices and one of ``SPLIT`` slices of
the ``N = B·T`` tokens; it streams its tokens in tiles of ``BLOCK_T``, loading the ``(BLOCK_T, BLOCK_K)`` tiles
``grad_out[t, rows]`` and ``x[t, cols]`` with arbitrary strides (so channel-first conv activations need no copy)
and accumulates their product in float32 registers. With indices sorted row-major (SaRA's are), neighbouring
``k`` share a row (the ``grad_out`` loads broadcast) and have increasing columns (the ``x`` loads coalesce).
Slices write float32 partial sums to a ``(SPLIT, K)`` buffer reduced on the host, so the result is
deterministic (no atomics). Memory: ``SPLIT · K`` floats; never the dense ``(out, in)`` gradient.

Importing this module imports Triton; ``cuda_ext.sparse_backprop`` imports it lazily. Under
``TRITON_INTERPRET=1`` (read when this module is imported) the kernel runs on CPU tensors with a single
autotune config — that is how the tests check it (fp32/fp16 only: the interpreter returns garbage for bf16).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from cuda_ext.sparse_backprop.reference import check_inputs

__all__ = ["sampled_weight_grad_triton"]

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

if _INTERPRET:  # two or more configs make the autotuner benchmark, which needs a GPU driver
    _CONFIGS = [triton.Config({"BLOCK_K": 32, "BLOCK_T": 16}, num_warps=4)]
else:
    _CONFIGS = [
        triton.Config({"BLOCK_K": 64, "BLOCK_T": 32}, num_warps=4),
        triton.Config({"BLOCK_K": 128, "BLOCK_T": 32}, num_warps=4),
        triton.Config({"BLOCK_K": 128, "BLOCK_T": 64}, num_warps=8),
        triton.Config({"BLOCK_K": 256, "BLOCK_T": 16}, num_warps=8),
    ]


@triton.autotune(configs=_CONFIGS, key=["N_BUCKET", "SPLIT"])
@triton.jit
def _sddmm_kernel(
    g_ptr, x_ptr, rows_ptr, cols_ptr, out_ptr,
    K, N, T,
    g_sb, g_st, g_sf, x_sb, x_st, x_sf,
    N_BUCKET, SPLIT,
    BLOCK_K: tl.constexpr, BLOCK_T: tl.constexpr,
):
    pid_k = tl.program_id(0)
    pid_s = tl.program_id(1)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    mask_k = offs_k < K
    rows = tl.load(rows_ptr + offs_k, mask=mask_k, other=0).to(tl.int64)
    cols = tl.load(cols_ptr + offs_k, mask=mask_k, other=0).to(tl.int64)
    g_col = rows * g_sf
    x_col = cols * x_sf
    per_split = tl.cdiv(tl.cdiv(N, SPLIT), BLOCK_T) * BLOCK_T
    n_start = pid_s * per_split
    n_end = tl.minimum(N, n_start + per_split)
    acc = tl.zeros([BLOCK_K], dtype=tl.float32)
    for n0 in range(n_start, n_end, BLOCK_T):
        offs_n = n0 + tl.arange(0, BLOCK_T)
        mask_n = offs_n < n_end
        tok = offs_n.to(tl.int64)
        b = tok // T
        t = tok - b * T
        m = mask_n[:, None] & mask_k[None, :]
        g = tl.load(g_ptr + (b * g_sb + t * g_st)[:, None] + g_col[None, :], mask=m, other=0.0).to(tl.float32)
        xv = tl.load(x_ptr + (b * x_sb + t * x_st)[:, None] + x_col[None, :], mask=m, other=0.0).to(tl.float32)
        acc += tl.sum(g * xv, axis=0)
    tl.store(out_ptr + pid_s.to(tl.int64) * K + offs_k, acc, mask=mask_k)


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


def sampled_weight_grad_triton(
    grad_out: torch.Tensor, x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, *, split: int | None = None
) -> torch.Tensor:
    """``(B, T, out), (B, T, in), (K,), (K,) -> (K,)`` float32 with the Triton kernel (CUDA, or CPU when interpreting).

    ``split``: number of token slices (default: enough programs to fill the GPU; 1 under the interpreter).
    Inputs: float16 / bfloat16 (GPU only) / float32, any strides; int32 or int64 indices.
    """
    check_inputs(grad_out, x, rows, cols)
    if grad_out.dtype == torch.float64 or x.dtype == torch.float64:
        raise TypeError("the Triton sampled-weight-grad kernel accumulates in float32; use the cpu backend for float64")
    K = rows.numel()
    B, T, _ = grad_out.shape
    N = B * T
    if K == 0 or N == 0:
        return torch.zeros(K, dtype=torch.float32, device=x.device)
    rows = rows.contiguous()
    cols = cols.contiguous()
    if split is None:
        if _INTERPRET:
            split = 1
        else:
            k_blocks = triton.cdiv(K, 128)
            split = max(1, min(triton.cdiv(N, 256), (4 * _num_sms(x.device)) // k_blocks))
    split = max(1, min(int(split), N))
    partial = torch.empty((split, K), dtype=torch.float32, device=x.device)
    n_bucket = min(triton.next_power_of_2(N), 1 << 20)
    grid = lambda meta: (triton.cdiv(K, meta["BLOCK_K"]), split)  # noqa: E731
    _sddmm_kernel[grid](
        grad_out, x, rows, cols, partial,
        K, N, T,
        grad_out.stride(0), grad_out.stride(1), grad_out.stride(2),
        x.stride(0), x.stride(1), x.stride(2),
        n_bucket, split,
    )
    return partial[0] if split == 1 else partial.sum(0)
