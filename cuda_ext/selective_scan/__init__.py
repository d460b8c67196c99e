"""Selective scan (the S6 recurrence of Mamba) with mamba-ssm's API and several backends.

``selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
return_last_state=False)`` has mamba-ssm's signature and semantics (see :mod:`.reference` for the math).

Backends (``backend=`` keyword, else ``$ZOO_KERNEL`` -- ``scan:NAME`` or a global ``NAME`` -- else automatic; the
rules live in :mod:`cuda_ext._dispatch`, shared by every op):

* ``"triton"`` — Triton kernels (:mod:`.triton`); the default for CUDA tensors when triton imports.
  CPU tensors only under ``TRITON_INTERPRET=1`` (tests).
* ``"cpu"`` — chunked plain-PyTorch scan with a hand-written backward (:mod:`.cpu`); the default otherwise.
  Pure PyTorch, so it also runs on CUDA tensors.
* ``"ref"`` — the readable reference (:mod:`.reference`), autograd through a Python loop over L.
* ``"mamba_ssm"`` — mamba-ssm's CUDA kernel, when ``pip install zoo[mamba]`` is installed.

Nothing here imports triton or needs a GPU until a backend that needs them is asked for.
"""
from __future__ import annotations

import torch

from cuda_ext import _dispatch
from cuda_ext._dispatch import triton_available

from . import cpu as _cpu
from .reference import check_inputs, selective_scan_ref

__all__ = ["selective_scan_fn", "selective_scan_ref", "SelectiveScanFn", "resolve_backend", "BACKENDS",
           "triton_available"]

BACKENDS = _dispatch.OPS["scan"].backends


def _triton_module():
    """The kernel module, imported on first use (the interpreter flag is read at that moment)."""
    from . import triton as mod

    mod._require()
    return mod


def _mamba_ssm_fn():
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as fn
    except ImportError as e:
        raise ImportError("selective_scan_fn: backend 'mamba_ssm' needs mamba-ssm; install it with "
                          "`pip install zoo[mamba]` (its CUDA selective-scan kernel must be built), "
                          "or use backend='triton'/'cpu'") from e
    return fn


def resolve_backend(backend: str | None, u: torch.Tensor) -> str:
    """Pick the backend for ``u (batch, D, L)``: explicit ``backend`` > ``$ZOO_KERNEL`` (``scan:NAME``, then a global
    ``NAME``) > triton on CUDA (when importable, fp16/bf16/fp32) > cpu. See :func:`cuda_ext._dispatch.resolve`."""
    return _dispatch.resolve("scan", u, backend)


class SelectiveScanFn(torch.autograd.Function):
    """Autograd wrapper around a backend module's ``scan_fwd`` / ``scan_bwd`` (``cpu`` or ``triton``).

    The backend forward returns ``(out, last_state, saved)`` with ``saved = (meta, *tensors)``; the last state
    is marked non-differentiable (as in mamba-ssm, its gradient is not propagated).
    """

    @staticmethod
    def forward(ctx, impl, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        out, last, saved = impl.scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
        meta, *saved_tensors = saved
        ctx.impl, ctx.meta, ctx.delta_softplus = impl, meta, delta_softplus
        ctx.n_saved = len(saved_tensors)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, *saved_tensors)
        ctx.mark_non_differentiable(last)
        return out, last

    @staticmethod
    def backward(ctx, dout, dlast):
        u, delta, A, B, C, D, z, delta_bias, *saved_tensors = ctx.saved_tensors
        grads = ctx.impl.scan_bwd(dout, u, delta, A, B, C, D, z, delta_bias, ctx.delta_softplus,
                                  (ctx.meta, *saved_tensors))
        return (None, *grads, None)


def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                      return_last_state=False, *, backend: str | None = None):
    """Selective scan ``h[l] = exp(dt[l] A) h[l-1] + dt[l] u[l] B[l];  y[l] = C[l] h[l] (+ D u[l]) (* silu(z[l]))``.

    Args:
        u: ``(batch, D, L)`` float16/bfloat16/float32 (float64 on the cpu/ref backends).
        delta: ``(batch, D, L)``, u's dtype. ``dt = softplus(delta + delta_bias)`` when ``delta_softplus``.
        A: ``(D, N)`` real (Mamba passes ``-exp(A_log)``, float32). Complex ``A`` is not supported.
        B, C: ``(D, N)`` constant, ``(batch, N, L)`` input-dependent, or ``(batch, G, N, L)`` grouped
            (channel ``d`` reads group ``d // (D // G)``).
        D: ``(D,)`` skip weight; z: ``(batch, D, L)`` gate; delta_bias: ``(D,)``.
        return_last_state: also return the final state ``(batch, D, N)`` (float32, no gradient).
        backend: ``"ref" | "cpu" | "triton" | "mamba_ssm"``; default from ``$ZOO_KERNEL`` or automatic.

    Returns:
        ``out (batch, D, L)`` in u's dtype, or ``(out, last_state)``.
    """
    check_inputs(u, delta, A, B, C, D, z, delta_bias)
    name = resolve_backend(backend, u)
    if name == "ref":
        return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if name == "mamba_ssm":
        return _mamba_ssm_fn()(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    impl = _triton_module() if name == "triton" else _cpu
    out, last = SelectiveScanFn.apply(impl, u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus))
    return (out, last) if return_last_state else out
