"""Sparse weight gradients for sparse fine-tuning (SaRA): reference, fast PyTorch and Triton backends, dispatch,
and the autograd Functions of a Linear / 1×1 convolution whose trainable entries are a flat index list.

The public API with argument checking is ``zoo.ops.sparse_grad``; this package picks the implementation:

* ``ZOO_KERNEL=ref|cpu|triton`` (or for this op only, ``ZOO_KERNEL=sddmm:NAME``) forces one through the shared
  dispatcher :mod:`cuda_ext._dispatch` (``triton`` on CPU tensors needs ``TRITON_INTERPRET=1``; a global
  ``mamba_ssm`` falls back to the automatic choice);
* otherwise CUDA tensors in float16/bfloat16/float32 use Triton when it is importable, everything else the fast
  PyTorch path (``cpu.py``, device-agnostic, bounded memory).

Importing this package never imports Triton.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from cuda_ext import _dispatch
from cuda_ext.sparse_backprop import cpu, reference
from cuda_ext.sparse_backprop.reference import flat_to_rows_cols

__all__ = ["backend", "sampled_weight_grad", "SparseLinearFunction", "SparseConv1x1Function", "GatherGradFunction"]


def backend(t: torch.Tensor) -> str:
    """The implementation of the SDDMM (op ``"sddmm"``) for tensor ``t``: ``"ref"``, ``"cpu"`` (fast PyTorch) or
    ``"triton"``. See :func:`cuda_ext._dispatch.resolve`."""
    return _dispatch.resolve("sddmm", t)


def sampled_weight_grad(grad_out: torch.Tensor, x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``(B, T, out), (B, T, in), (K,), (K,) -> (K,)``: ``Σ_{b,t} grad_out[b,t,rows[k]] · x[b,t,cols[k]]``, float32."""
    which = backend(x)
    if which == "ref":
        return reference.sampled_weight_grad_ref(grad_out, x, rows, cols)
    if which == "triton" and grad_out.dtype != torch.float64 and x.dtype != torch.float64:
        from cuda_ext.sparse_backprop.triton import sampled_weight_grad_triton

        return sampled_weight_grad_triton(grad_out, x, rows, cols)
    return cpu.sampled_weight_grad_cpu(grad_out, x, rows, cols)


def _values_grad(dy3: torch.Tensor, x3: torch.Tensor, index: torch.Tensor, in_features: int, scale: float,
                 dtype: torch.dtype) -> torch.Tensor:
    rows, cols = flat_to_rows_cols(index, in_features)
    return (sampled_weight_grad(dy3, x3, rows, cols) * scale).to(dtype)


class SparseLinearFunction(torch.autograd.Function):
    """``y = x Wᵀ + b`` where ``W`` holds ``scale · values`` at the flat (row-major) positions ``index``.

    ``weight`` must already contain the values (SaRA writes them into the frozen weight in place; see
    ``zoo.layers.lora.SparseDelta``), so the forward is one plain ``F.linear`` with no weight copy. Backward:
    ``dx = dy W`` (dense, as usual), ``dvalues = scale · SDDMM(dy, x)[index]`` via :func:`sampled_weight_grad`
    (no dense ``dW``), ``dbias = Σ dy`` when the bias requires grad; ``weight`` itself gets no gradient.
    Saved for backward: ``x`` and the weight (the tensors ``F.linear`` saves anyway) and the index.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, index, values, scale):
        ctx.save_for_backward(x, weight, index)
        ctx.scale = scale
        ctx.values_dtype = values.dtype
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, dy):
        x, weight, index = ctx.saved_tensors
        out_f, in_f = weight.shape
        dx = dvalues = dbias = None
        if ctx.needs_input_grad[0]:
            dx = dy.matmul(weight.to(dy.dtype))
        if ctx.needs_input_grad[4]:
            dvalues = _values_grad(dy.reshape(1, -1, out_f), x.reshape(1, -1, in_f), index, in_f, ctx.scale, ctx.values_dtype)
        if ctx.needs_input_grad[2]:
            dbias = dy.reshape(-1, out_f).sum(0)
        return dx, None, dbias, None, dvalues, None


class SparseConv1x1Function(torch.autograd.Function):
    """The 1×1 convolution (stride 1, no padding, one group) analogue of :class:`SparseLinearFunction`.

    ``x (B, C, H, W) -> y (B, O, H, W)``; ``weight (O, C, 1, 1)`` already holds the values. The SDDMM reads
    ``dy`` and ``x`` as ``(B, H·W, channels)`` strided views (no transposed copies).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, index, values, scale):
        ctx.save_for_backward(x, weight, index)
        ctx.scale = scale
        ctx.values_dtype = values.dtype
        return F.conv2d(x, weight, bias)

    @staticmethod
    def backward(ctx, dy):
        x, weight, index = ctx.saved_tensors
        O, C = weight.shape[:2]
        B = dy.shape[0]
        dx = dvalues = dbias = None
        dy3 = dy.reshape(B, O, -1)
        if ctx.needs_input_grad[0]:
            dx = torch.matmul(weight.reshape(O, C).t().to(dy.dtype), dy3).view(x.shape)
        if ctx.needs_input_grad[4]:
            dvalues = _values_grad(dy3.transpose(1, 2), x.reshape(B, C, -1).transpose(1, 2), index, C, ctx.scale, ctx.values_dtype)
        if ctx.needs_input_grad[2]:
            dbias = dy3.sum((0, 2))
        return dx, None, dbias, None, dvalues, None


class GatherGradFunction(torch.autograd.Function):
    """Dense-gradient-then-gather (SaRA's official "unstructural backpropagation"), for any parameter shape.

    Forward returns ``weight`` itself (an alias, no copy) — it must already hold ``scale · values`` at ``index``.
    Backward receives the dense gradient of the weight computed by the consuming op (so the dense ``dW`` *is*
    formed, transiently, by cuBLAS/cuDNN) and returns ``scale · dW.flatten()[index]`` for ``values``. Used for the
    layers without a sparse kernel (k×k convolutions, norms, biases) and as the baseline of the benchmarks.
    """

    @staticmethod
    def forward(ctx, weight, index, values, scale):
        ctx.save_for_backward(index)
        ctx.scale = scale
        ctx.values_dtype = values.dtype
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx, grad_weight):
        (index,) = ctx.saved_tensors
        dvalues = None
        if ctx.needs_input_grad[2]:
            dvalues = (grad_weight.reshape(-1)[index.long()] * ctx.scale).to(ctx.values_dtype)
        return None, None, dvalues, None
