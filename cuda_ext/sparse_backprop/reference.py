"""Plain-PyTorch sampled weight gradient, written from the math: the ground truth for the other backends.

For a linear map ``y = x Wᵀ + b`` over tokens ``t`` (batch ``b`` and position ``p`` folded together), the gradient
of the weight is ``dW = Σ_t dy[t]ᵀ x[t]`` — an ``(out, in)`` matrix. Sparse fine-tuning (SaRA) only trains the
entries at an index list ``(rows[k], cols[k])``, so it only needs::

    dv[k] = Σ_b Σ_t grad_out[b, t, rows[k]] * x[b, t, cols[k]]        k = 0 .. K-1

a *sampled dense-dense matmul* (SDDMM). This reference forms the dense ``dW`` (float32) and gathers it — exactly
what SaRA's official "unstructural backpropagation" does implicitly — so it costs ``out × in`` memory. The fast
paths (``cpu.py``, ``triton.py``) compute the same numbers without the dense matrix.

This module also holds :func:`check_inputs`, the one place where the argument contract is written down.
"""
from __future__ import annotations

import torch

__all__ = ["sampled_weight_grad_ref", "check_inputs", "flat_to_rows_cols"]


def check_inputs(grad_out: torch.Tensor, x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> None:
    """Validate the contract shared by every backend (raises ``ValueError``/``TypeError`` naming the fix).

    Args:
        grad_out: ``(B, T, out)`` float tensor, any strides.
        x: ``(B, T, in)`` float tensor on the same device, any strides.
        rows, cols: ``(K,)`` integer tensors (int32 or int64) on that device, ``0 <= rows < out``, ``0 <= cols < in``.
    """
    for name, t in (("grad_out", grad_out), ("x", x)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 3:
            raise ValueError(f"{name} must have shape (B, T, features), got {tuple(t.shape)}; "
                             "flatten leading dims with .reshape(1, -1, features)")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be floating point, got {t.dtype}")
    if grad_out.shape[:2] != x.shape[:2]:
        raise ValueError(f"grad_out {tuple(grad_out.shape)} and x {tuple(x.shape)} must agree on (B, T)")
    if grad_out.device != x.device:
        raise ValueError(f"grad_out is on {grad_out.device} but x is on {x.device}")
    for name, t in (("rows", rows), ("cols", cols)):
        if t.dim() != 1 or t.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"{name} must be a 1-D int32/int64 tensor, got {t.dtype} of shape {tuple(t.shape)}")
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}")
    if rows.numel() != cols.numel():
        raise ValueError(f"rows ({rows.numel()}) and cols ({cols.numel()}) must have the same length")


def flat_to_rows_cols(index: torch.Tensor, in_features: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-major flat indices into an ``(out, in)`` matrix -> ``(rows, cols)`` (same dtype as ``index``)."""
    return torch.div(index, in_features, rounding_mode="floor"), torch.remainder(index, in_features)


def sampled_weight_grad_ref(
    grad_out: torch.Tensor, x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
) -> torch.Tensor:
    """``(B, T, out), (B, T, in), (K,), (K,) -> (K,)`` float32: ``Σ_{b,t} grad_out[b,t,rows] * x[b,t,cols]``.

    Dense ``(out, in)`` float32 gradient, then a gather. Float64 inputs are kept in float64 (for gradcheck).
    """
    check_inputs(grad_out, x, rows, cols)
    acc = torch.float64 if torch.float64 in (grad_out.dtype, x.dtype) else torch.float32
    dense = torch.einsum("bto,bti->oi", grad_out.to(acc), x.to(acc))
    return dense[rows.long(), cols.long()]
