"""Sparse weight gradients: train only the entries of a weight at a flat index list, without a dense ``dW``.

For ``y = x Wᵀ + b`` the weight gradient restricted to the entries ``(rows[k], cols[k])`` is the sampled
dense-dense product ``dv[k] = Σ_t dy[t, rows[k]] · x[t, cols[k]]`` (SDDMM). The ops here compute it through
``cuda_ext.sparse_backprop`` (Triton on CUDA, a bounded-memory PyTorch path elsewhere, the dense reference with
``ZOO_KERNEL=ref`` or ``ZOO_KERNEL=sddmm:ref``; op name ``sddmm`` in :mod:`cuda_ext._dispatch`) and wrap it into
autograd (the dense-then-gather path has a single implementation and no backend choice):

* :func:`sparse_weight_grad` — the SDDMM itself, ``(*, out), (*, in), (K,) -> (K,)``;
* :func:`sparse_linear` / :func:`sparse_conv1x1` — a Linear / 1×1 conv whose trainable parameters are
  ``values (K,)`` at ``index``; ``values`` gets its gradient from the SDDMM, the frozen weight none;
* :func:`attach_sparse_grad` — SaRA's official dense-gradient-then-gather, for any parameter (k×k convs, norms);
* the autograd Functions behind them, re-exported for layers that call ``.apply`` directly (``zoo.layers.lora``):
  :class:`SparseLinearFunction`, :class:`SparseConv1x1Function`, :class:`GatherGradFunction`.

Indices are flat row-major positions into the weight viewed as ``(out, in·kh·kw)`` (``weight.flatten()``
positions), int32 or int64, unique.
"""
from __future__ import annotations

import torch

from cuda_ext.sparse_backprop import GatherGradFunction, SparseConv1x1Function, SparseLinearFunction

__all__ = ["sparse_weight_grad", "sparse_linear", "sparse_conv1x1", "attach_sparse_grad", "is_conv1x1",
           "SparseLinearFunction", "SparseConv1x1Function", "GatherGradFunction"]


def _check_index(index: torch.Tensor, numel: int, device: torch.device) -> None:
    if not isinstance(index, torch.Tensor) or index.dim() != 1 or index.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"index must be a 1-D int32/int64 tensor of flat weight positions, got "
                        f"{getattr(index, 'dtype', type(index).__name__)} {tuple(getattr(index, 'shape', ()))}")
    if index.device != device:
        raise ValueError(f"index is on {index.device} but the weight is on {device}")
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= numel):
        raise ValueError(f"index entries must be in [0, {numel}), got min {int(index.min())} max {int(index.max())}")


def _check_values(values: torch.Tensor, index: torch.Tensor) -> None:
    if values.dim() != 1 or values.numel() != index.numel():
        raise ValueError(f"values must have shape ({index.numel()},) like index, got {tuple(values.shape)}")


def sparse_weight_grad(grad_out: torch.Tensor, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Linear-layer weight gradient at flat positions: ``(*, out), (*, in), (K,) -> (K,)`` float32.

    Equals ``(grad_out.flatten(0,-2).T @ x.flatten(0,-2)).flatten()[index]`` without forming the ``(out, in)`` matrix.
    """
    from cuda_ext import sparse_backprop as sb

    if grad_out.shape[:-1] != x.shape[:-1]:
        raise ValueError(f"grad_out {tuple(grad_out.shape)} and x {tuple(x.shape)} must agree on all but the last dim")
    out_f, in_f = grad_out.shape[-1], x.shape[-1]
    _check_index(index, out_f * in_f, x.device)
    rows, cols = sb.flat_to_rows_cols(index, in_f)
    return sb.sampled_weight_grad(grad_out.reshape(1, -1, out_f), x.reshape(1, -1, in_f), rows, cols)


def _with_values(weight: torch.Tensor, index: torch.Tensor, values: torch.Tensor, scale: float) -> torch.Tensor:
    """A copy of ``weight`` with ``scale · values`` added at ``index`` (no autograd)."""
    with torch.no_grad():
        return weight.detach().flatten().index_add(0, index.long(), (values.detach() * scale).to(weight.dtype)).view_as(weight)


def sparse_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    index: torch.Tensor,
    values: torch.Tensor,
    scale: float = 1.0,
    *,
    weight_has_values: bool = False,
) -> torch.Tensor:
    """``x (*, in) -> (*, out)`` with effective weight ``W + scale · scatter(index, values)``; grads for ``x``,
    ``values`` (sparse kernel) and ``bias``.

    ``weight_has_values=True``: ``weight`` already holds the values at ``index`` (SaRA keeps them in place), so
    no weight copy is made; otherwise a dense effective weight is built for the forward (and saved).
    """
    if weight.dim() != 2 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"x (*, {weight.shape[-1] if weight.dim() == 2 else '?'}) and weight (out, in) expected, "
                         f"got x {tuple(x.shape)} and weight {tuple(weight.shape)}")
    _check_index(index, weight.numel(), weight.device)
    _check_values(values, index)
    w = weight.detach() if weight_has_values else _with_values(weight, index, values, scale)
    return SparseLinearFunction.apply(x, w, bias, index, values, scale)


def is_conv1x1(conv: torch.nn.Module) -> bool:
    """Whether ``conv`` is a plain 1×1 ``nn.Conv2d`` (stride 1, no padding, dilation 1, one group): a Linear over channels."""
    return (
        isinstance(conv, torch.nn.Conv2d)
        and tuple(conv.kernel_size) == (1, 1)
        and tuple(conv.stride) == (1, 1)
        and tuple(conv.dilation) == (1, 1)
        and conv.groups == 1
        and (conv.padding == "valid" or tuple(conv.padding) == (0, 0))
    )


def sparse_conv1x1(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    index: torch.Tensor,
    values: torch.Tensor,
    scale: float = 1.0,
    *,
    weight_has_values: bool = False,
) -> torch.Tensor:
    """1×1 convolution ``(B, C, H, W) -> (B, O, H, W)`` with the same sparse-values semantics as :func:`sparse_linear`."""
    if weight.dim() != 4 or tuple(weight.shape[2:]) != (1, 1) or x.dim() != 4 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"x (B, C, H, W) and a 1x1 weight (O, C, 1, 1) expected, got x {tuple(x.shape)} and "
                         f"weight {tuple(weight.shape)}")
    _check_index(index, weight.numel(), weight.device)
    _check_values(values, index)
    w = weight.detach() if weight_has_values else _with_values(weight, index, values, scale)
    return SparseConv1x1Function.apply(x, w, bias, index, values, scale)


def attach_sparse_grad(weight: torch.Tensor, index: torch.Tensor, values: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """``weight`` (an alias, no copy) whose gradient is gathered into ``values`` at ``index`` (dense ``dW`` formed).

    ``weight`` must already hold ``scale · values`` at ``index``; use the result in place of the weight in any op.
    """
    _check_index(index, weight.numel(), weight.device)
    _check_values(values, index)
    return GatherGradFunction.apply(weight.detach(), index, values, scale)
