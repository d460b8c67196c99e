"""Plain-PyTorch selective scan, written from the math: the ground truth for every other backend.

The recurrence (per batch ``b``, channel ``d`` and state ``n``; ``l`` runs over the sequence)::

    dt[l]   = softplus(delta[l] + delta_bias)        (bias / softplus optional)
    h[l, n] = exp(dt[l] * A[n]) * h[l-1, n] + dt[l] * u[l] * B[l, n]        h[-1] = 0
    y[l]    = sum_n C[l, n] * h[l, n]
    out[l]  = (y[l] + D * u[l]) * silu(z[l])         (D / z optional)

Same semantics as mamba-ssm's ``selective_scan_ref`` (real ``A`` only). It materialises two
``(batch, D, L, N)`` tensors and loops over ``L`` in Python: slow and memory hungry on purpose,
so that it reads like the equations. Gradients come from autograd.

This module also holds :func:`check_inputs`, the one place where the argument contract of
``selective_scan_fn`` is written down and enforced (shapes, dtypes, devices).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["selective_scan_ref", "check_inputs", "ScanShapes", "compute_dtype"]

_INPUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float32 for 16/32-bit inputs, float64 for float64 inputs (used by gradcheck)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@dataclass(frozen=True)
class ScanShapes:
    """Sizes of one selective-scan call: ``batch``, channels ``dim`` (D), ``seqlen`` (L), ``dstate`` (N).

    ``groups_B`` / ``groups_C`` are 0 for a constant ``(D, N)`` matrix, else the number of groups G of the
    input-dependent ``(batch, G, N, L)`` form (a 3-D ``(batch, N, L)`` input counts as G = 1).
    """

    batch: int
    dim: int
    seqlen: int
    dstate: int
    groups_B: int
    groups_C: int


def _fail(name: str, msg: str, fn: str, exc=ValueError):
    raise exc(f"{fn}: {name} {msg}")


def _check_bc(name: str, t: torch.Tensor, batch: int, dim: int, dstate: int, seqlen: int, fn: str) -> int:
    shape = tuple(t.shape)
    ok_const = shape == (dim, dstate)
    ok_var = shape == (batch, dstate, seqlen)
    ok_group = (t.dim() == 4 and shape[0] == batch and shape[2:] == (dstate, seqlen)
                and shape[1] > 0 and dim % shape[1] == 0)
    if not (ok_const or ok_var or ok_group):
        _fail(
            name,
            f"must be (D, N)=({dim}, {dstate}), (batch, N, L)=({batch}, {dstate}, {seqlen}) or "
            f"(batch, G, N, L)=({batch}, G, {dstate}, {seqlen}) with D % G == 0 (D={dim}); got {shape}",
            fn,
        )
    if not t.is_floating_point():
        _fail(name, f"must be a floating-point tensor; got dtype {t.dtype}", fn, TypeError)
    return 0 if ok_const else (1 if ok_var else shape[1])


def check_inputs(u, delta, A, B, C, D=None, z=None, delta_bias=None, fn: str = "selective_scan_fn") -> ScanShapes:
    """Validate the arguments of a selective scan; raise ``ValueError``/``TypeError`` naming the bad argument.

    Contract (mamba-ssm's): ``u``, ``delta``, ``z``: ``(batch, D, L)`` with one dtype among float16/bfloat16/
    float32/float64; ``A``: real ``(D, N)``; ``B``, ``C``: ``(D, N)``, ``(batch, N, L)`` or ``(batch, G, N, L)``
    (``D % G == 0``); ``D``, ``delta_bias``: ``(D,)``. All on one device. Returns the :class:`ScanShapes`.
    """
    for name, t in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C)):
        if not isinstance(t, torch.Tensor):
            _fail(name, f"must be a torch.Tensor; got {type(t).__name__}", fn, TypeError)
    for name, t in (("D", D), ("z", z), ("delta_bias", delta_bias)):
        if t is not None and not isinstance(t, torch.Tensor):
            _fail(name, f"must be a torch.Tensor or None; got {type(t).__name__}", fn, TypeError)
    if u.dim() != 3:
        _fail("u", f"must be (batch, D, L); got shape {tuple(u.shape)}", fn)
    batch, dim, seqlen = u.shape
    if u.dtype not in _INPUT_DTYPES:
        _fail("u", f"dtype must be one of float16, bfloat16, float32, float64; got {u.dtype}", fn, TypeError)
    if A.is_complex():
        raise NotImplementedError(f"{fn}: complex A is not supported (only real A of shape (D, N)); got {A.dtype}")
    if A.dim() != 2 or A.shape[0] != dim:
        _fail("A", f"must be (D, N) with D={dim}; got shape {tuple(A.shape)}", fn)
    if not A.is_floating_point():
        _fail("A", f"must be a real floating-point tensor; got dtype {A.dtype}", fn, TypeError)
    dstate = A.shape[1]
    if tuple(delta.shape) != (batch, dim, seqlen):
        _fail("delta", f"must be (batch, D, L)=({batch}, {dim}, {seqlen}); got {tuple(delta.shape)}", fn)
    if delta.dtype != u.dtype:
        _fail("delta", f"must have u's dtype {u.dtype}; got {delta.dtype}", fn, TypeError)
    gB = _check_bc("B", B, batch, dim, dstate, seqlen, fn)
    gC = _check_bc("C", C, batch, dim, dstate, seqlen, fn)
    if D is not None:
        if tuple(D.shape) != (dim,):
            _fail("D", f"must be (D,)=({dim},); got {tuple(D.shape)}", fn)
        if not D.is_floating_point():
            _fail("D", f"must be floating point; got dtype {D.dtype}", fn, TypeError)
    if z is not None:
        if tuple(z.shape) != (batch, dim, seqlen):
            _fail("z", f"must be (batch, D, L)=({batch}, {dim}, {seqlen}); got {tuple(z.shape)}", fn)
        if z.dtype != u.dtype:
            _fail("z", f"must have u's dtype {u.dtype}; got {z.dtype}", fn, TypeError)
    if delta_bias is not None:
        if tuple(delta_bias.shape) != (dim,):
            _fail("delta_bias", f"must be (D,)=({dim},); got {tuple(delta_bias.shape)}", fn)
        if not delta_bias.is_floating_point():
            _fail("delta_bias", f"must be floating point; got dtype {delta_bias.dtype}", fn, TypeError)
    for name, t in (("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D), ("z", z), ("delta_bias", delta_bias)):
        if t is not None and t.device != u.device:
            _fail(name, f"is on {t.device} but u is on {u.device}; move all inputs to one device", fn)
    return ScanShapes(batch, dim, seqlen, dstate, gB, gC)


def _expand_groups(M: torch.Tensor, dim: int) -> torch.Tensor:
    """``(batch, N, L)`` or ``(batch, G, N, L)`` -> ``(batch, D, N, L)``; channel ``d`` uses group ``d // (D // G)``."""
    if M.dim() == 3:
        M = M.unsqueeze(1)
    return M.repeat_interleave(dim // M.shape[1], dim=1)


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False):
    """Reference selective scan (autograd through a Python loop over L).

    Shapes: ``u``, ``delta``, ``z``: ``(batch, D, L)``; ``A``: ``(D, N)`` real; ``B``, ``C``: ``(D, N)`` |
    ``(batch, N, L)`` | ``(batch, G, N, L)``; ``D``, ``delta_bias``: ``(D,)``.
    Returns ``out`` ``(batch, D, L)`` in ``u.dtype`` or ``(out, last_state)`` with ``last_state``
    ``(batch, D, N)`` in the accumulation dtype (float32; float64 for float64 inputs).
    Math runs in float32 (float64 inputs stay float64 so that gradcheck works, unlike mamba-ssm which
    always casts to float32). Complex ``A`` is not supported.
    """
    shapes = check_inputs(u, delta, A, B, C, D, z, delta_bias, fn="selective_scan_ref")
    dtype_in = u.dtype
    wt = compute_dtype(dtype_in)
    u_f = u.to(wt)
    dt = delta.to(wt)
    if delta_bias is not None:
        dt = dt + delta_bias.to(wt)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    A_f = A.to(wt)
    B_f = B.to(wt) if B.dim() == 2 else _expand_groups(B.to(wt), shapes.dim)  # (D, N) | (batch, D, N, L)
    C_f = C.to(wt) if C.dim() == 2 else _expand_groups(C.to(wt), shapes.dim)

    deltaA = torch.exp(torch.einsum("bdl,dn->bdln", dt, A_f))  # (batch, D, L, N)
    if B_f.dim() == 2:
        deltaB_u = torch.einsum("bdl,dn,bdl->bdln", dt, B_f, u_f)
    else:
        deltaB_u = torch.einsum("bdl,bdnl,bdl->bdln", dt, B_f, u_f)

    # unbind (not deltaA[:, :, i]) so that autograd stacks the per-step gradients once; indexing inside the
    # loop (as mamba-ssm's reference does) makes the backward quadratic in L (a full-size zero tensor per step).
    deltaA_steps, deltaB_u_steps = deltaA.unbind(2), deltaB_u.unbind(2)
    C_steps = C_f.unbind(3) if C_f.dim() == 4 else None
    h = u_f.new_zeros((shapes.batch, shapes.dim, shapes.dstate))
    ys = []
    for i in range(shapes.seqlen):
        h = deltaA_steps[i] * h + deltaB_u_steps[i]
        if C_steps is None:
            ys.append(torch.einsum("bdn,dn->bd", h, C_f))
        else:
            ys.append(torch.einsum("bdn,bdn->bd", h, C_steps[i]))
    y = torch.stack(ys, dim=2) if ys else u_f.new_zeros(u_f.shape)  # (batch, D, L)
    out = y if D is None else y + u_f * D.to(wt)[:, None]
    if z is not None:  # silu in fp32 (mamba-ssm's reference applies it in z's dtype; its kernel in fp32)
        out = out * F.silu(z.to(wt))
    out = out.to(dtype_in)
    return (out, h) if return_last_state else out
