"""Triton kernels for the selective scan: forward and backward, fp32 accumulation, chunk checkpoints.

Layout of the work (both kernels): one program per (batch row, block of ``BLOCK_D`` channels); it walks the
sequence in order with its ``(BLOCK_D, N)`` state in registers. Channel blocks never straddle a group of the
grouped ``B``/``C`` layouts (the channels are cut in ``G = lcm(G_B, G_C)`` equal segments first), so a program
reads one group of ``B`` and one of ``C``.

* Forward: writes ``out`` and, at the start of every chunk of ``CHUNK`` steps, the state entering it
  (``ckpt``, ``(batch, n_chunks, D, N)`` fp32) plus the final state.
* Backward: walks the chunks in reverse; per chunk it recomputes the ``CHUNK`` states from the checkpoint into a
  per-program scratch area (``(CHUNK, BLOCK_D, N)`` fp32, so nothing ``L``-sized), then steps backwards through
  them carrying the state gradient. Gradients shared across programs are written as per-program partial sums and
  reduced afterwards with ``torch.sum`` (deterministic; no atomics): ``dA``, ``dD``, ``ddelta_bias`` and
  constant ``dB``/``dC`` per batch row ``(batch, D, ...)``; input-dependent ``dB``/``dC`` per channel block
  ``(batch, n_blocks, N, L)``.

Inputs may be float32, float16 or bfloat16 (math in float32). Under ``TRITON_INTERPRET=1`` the kernels run on CPU
tensors (float32/float16 are exact there; bfloat16 is not — the interpreter silently returns wrong values).
The interpreter flag is read when this module is imported (kernels are decorated then), so set it before that.
No ``@triton.autotune``: the block sizes come from :func:`_launch_config` (autotuning would also need one
config under the interpreter). This module imports without triton; its functions then raise ImportError.
"""
from __future__ import annotations

import math
import os

import torch

from .reference import check_inputs

try:  # the package must import without triton (dispatch then never picks this backend)
    import triton
    import triton.language as tl

    AVAILABLE = True
except ImportError:  # pragma: no cover - exercised only where triton is absent
    triton = tl = None
    AVAILABLE = False

__all__ = ["AVAILABLE", "INTERPRET", "scan_fwd", "scan_bwd"]

#: True when the kernels were decorated in interpreter mode (CPU tensors allowed).
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DEFAULT_CHUNK = 64


def _require():
    if not AVAILABLE:
        raise ImportError("selective_scan_fn: the triton backend needs triton; install it with "
                          "`pip install zoo[triton]` (or set ZOO_KERNEL=cpu)")


if AVAILABLE:

    @triton.jit
    def _softplus(x):
        # log1p(exp(x)) without log1p (not in tl): series for tiny exp(x), identity above 20 (as torch)
        y = tl.exp(tl.minimum(x, 20.0))
        sp = tl.where(y < 1e-4, y * (1.0 - 0.5 * y), tl.log(1.0 + y))
        return tl.where(x > 20.0, x, sp)

    @triton.jit
    def _load_step(delta_ptr, u_ptr, bias, row, l, mask_d, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
        """(dt_pre, dt, u) of one time step for the program's channels, fp32 (BLOCK_D,)."""
        dt_pre = tl.load(delta_ptr + row + l, mask=mask_d, other=0.0).to(tl.float32)
        if HAS_BIAS:
            dt_pre += bias
        if SOFTPLUS:
            dt = _softplus(dt_pre)
        else:
            dt = dt_pre
        dt = tl.where(mask_d, dt, 0.0)
        uu = tl.load(u_ptr + row + l, mask=mask_d, other=0.0).to(tl.float32)
        return dt_pre, dt, uu

    @triton.jit
    def _load_bc(ptr, base, l, L, offs_n, mask_n, const_tile, VAR: tl.constexpr):
        """B or C at step l as a (1, BLOCK_N) row (input-dependent) or the constant (BLOCK_D, BLOCK_N) tile."""
        if VAR:
            return tl.load(ptr + base + offs_n * L + l, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        else:
            return const_tile

    @triton.jit
    def _setup(A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, pid_b, pid_s, dim, L, N, seg, n_blk,
               gsize_B, gsize_C, G_B, G_C, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr,
               B_VAR: tl.constexpr, C_VAR: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
        e = pid_s // n_blk
        j = pid_s % n_blk
        offs_j = j * BLOCK_D + tl.arange(0, BLOCK_D)
        mask_d = offs_j < seg
        offs_d = e * seg + offs_j
        offs_n = tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        mask_dn = mask_d[:, None] & mask_n[None, :]
        dn = offs_d[:, None] * N + offs_n[None, :]
        A = tl.load(A_ptr + dn, mask=mask_dn, other=0.0).to(tl.float32)
        d0 = e * seg
        B_base = (pid_b * G_B + d0 // gsize_B) * N * L
        C_base = (pid_b * G_C + d0 // gsize_C) * N * L
        if B_VAR:
            Bc = A  # unused placeholder
        else:
            Bc = tl.load(B_ptr + dn, mask=mask_dn, other=0.0).to(tl.float32)
        if C_VAR:
            Cc = A
        else:
            Cc = tl.load(C_ptr + dn, mask=mask_dn, other=0.0).to(tl.float32)
        if HAS_D:
            Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
        else:
            Dv = tl.zeros((BLOCK_D,), dtype=tl.float32)
        if HAS_BIAS:
            bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
        else:
            bias = tl.zeros((BLOCK_D,), dtype=tl.float32)
        row = (pid_b * dim + offs_d) * L
        return offs_d, mask_d, offs_n, mask_n, mask_dn, A, B_base, C_base, Bc, Cc, Dv, bias, row

    @triton.jit
    def _scan_fwd_kernel(
        u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr,
        out_ptr, ckpt_ptr, last_ptr,
        dim, L, N, n_chunks, seg, n_blk, gsize_B, gsize_C, G_B, G_C,
        HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
        B_VAR: tl.constexpr, C_VAR: tl.constexpr,
        BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
    ):
        pid_b = tl.program_id(0)
        pid_s = tl.program_id(1)
        offs_d, mask_d, offs_n, mask_n, mask_dn, A, B_base, C_base, Bc, Cc, Dv, bias, row = _setup(
            A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, pid_b, pid_s, dim, L, N, seg, n_blk, gsize_B, gsize_C,
            G_B, G_C, HAS_D, HAS_BIAS, B_VAR, C_VAR, BLOCK_D, BLOCK_N)
        state_off = (pid_b * dim + offs_d)[:, None] * N + offs_n[None, :]
        h = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
        for c in range(0, n_chunks):
            tl.store(ckpt_ptr + ((pid_b * n_chunks + c) * dim + offs_d)[:, None] * N + offs_n[None, :], h,
                     mask=mask_dn)
            t_end = tl.minimum(CHUNK, L - c * CHUNK)
            for t in range(0, t_end):
                l = c * CHUNK + t
                _, dt, uu = _load_step(delta_ptr, u_ptr, bias, row, l, mask_d, HAS_BIAS, SOFTPLUS)
                Bl = _load_bc(B_ptr, B_base, l, L, offs_n, mask_n, Bc, B_VAR)
                Cl = _load_bc(C_ptr, C_base, l, L, offs_n, mask_n, Cc, C_VAR)
                h = tl.exp(dt[:, None] * A) * h + (dt * uu)[:, None] * Bl
                y = tl.sum(h * Cl, axis=1)
                if HAS_D:
                    y += Dv * uu
                if HAS_Z:
                    zz = tl.load(z_ptr + row + l, mask=mask_d, other=0.0).to(tl.float32)
                    y = y * zz * tl.sigmoid(zz)
                tl.store(out_ptr + row + l, y.to(out_ptr.dtype.element_ty), mask=mask_d)
        tl.store(last_ptr + state_off, h, mask=mask_dn)

    @triton.jit
    def _scan_bwd_kernel(
        u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dout_ptr, ckpt_ptr, scratch_ptr,
        du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dD_ptr, dbias_ptr, dB_ptr, dC_ptr,
        dim, L, N, n_chunks, seg, n_blk, n_prog_s, gsize_B, gsize_C, G_B, G_C,
        HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
        B_VAR: tl.constexpr, C_VAR: tl.constexpr,
        BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
    ):
        pid_b = tl.program_id(0)
        pid_s = tl.program_id(1)
        offs_d, mask_d, offs_n, mask_n, mask_dn, A, B_base, C_base, Bc, Cc, Dv, bias, row = _setup(
            A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, pid_b, pid_s, dim, L, N, seg, n_blk, gsize_B, gsize_C,
            G_B, G_C, HAS_D, HAS_BIAS, B_VAR, C_VAR, BLOCK_D, BLOCK_N)
        # this program's scratch: CHUNK states of (BLOCK_D, BLOCK_N)
        tile = tl.arange(0, BLOCK_D)[:, None] * BLOCK_N + offs_n[None, :]
        scratch = scratch_ptr + (pid_b * n_prog_s + pid_s) * CHUNK * BLOCK_D * BLOCK_N
        # partial-sum rows of dB / dC (input-dependent): (batch, n_prog_s, N, L)
        part_bc = (pid_b * n_prog_s + pid_s) * N * L
        g_next = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)  # a[l+1] * g[l+1]
        dA_acc = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
        dB_acc = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
        dC_acc = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
        dD_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
        dbias_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
        for cc in range(0, n_chunks):
            c = n_chunks - 1 - cc
            t_end = tl.minimum(CHUNK, L - c * CHUNK)
            h_in = tl.load(ckpt_ptr + ((pid_b * n_chunks + c) * dim + offs_d)[:, None] * N + offs_n[None, :],
                           mask=mask_dn, other=0.0)
            h = h_in
            for t in range(0, t_end):  # recompute the chunk's states
                l = c * CHUNK + t
                _, dt, uu = _load_step(delta_ptr, u_ptr, bias, row, l, mask_d, HAS_BIAS, SOFTPLUS)
                Bl = _load_bc(B_ptr, B_base, l, L, offs_n, mask_n, Bc, B_VAR)
                h = tl.exp(dt[:, None] * A) * h + (dt * uu)[:, None] * Bl
                tl.store(scratch + t * BLOCK_D * BLOCK_N + tile, h)
            tl.debug_barrier()
            for tt in range(0, t_end):
                t = t_end - 1 - tt
                l = c * CHUNK + t
                dt_pre, dt, uu = _load_step(delta_ptr, u_ptr, bias, row, l, mask_d, HAS_BIAS, SOFTPLUS)
                Bl = _load_bc(B_ptr, B_base, l, L, offs_n, mask_n, Bc, B_VAR)
                Cl = _load_bc(C_ptr, C_base, l, L, offs_n, mask_n, Cc, C_VAR)
                h_l = tl.load(scratch + t * BLOCK_D * BLOCK_N + tile)
                prev_ok = t > 0
                h_prev = tl.load(scratch + (t - 1) * BLOCK_D * BLOCK_N + tile, mask=mask_dn & prev_ok, other=0.0)
                h_prev = tl.where(prev_ok, h_prev, h_in)
                go = tl.load(dout_ptr + row + l, mask=mask_d, other=0.0).to(tl.float32)
                if HAS_Z:
                    o = tl.sum(h_l * Cl, axis=1)
                    if HAS_D:
                        o += Dv * uu
                    zz = tl.load(z_ptr + row + l, mask=mask_d, other=0.0).to(tl.float32)
                    sz = tl.sigmoid(zz)
                    dz = go * o * sz * (1.0 + zz * (1.0 - sz))
                    tl.store(dz_ptr + row + l, dz.to(dz_ptr.dtype.element_ty), mask=mask_d)
                    go = go * zz * sz
                g = go[:, None] * Cl + g_next
                x = dt * uu
                if C_VAR:
                    tl.store(dC_ptr + part_bc + offs_n * L + l, tl.sum(go[:, None] * h_l, axis=0), mask=mask_n)
                else:
                    dC_acc += go[:, None] * h_l
                if B_VAR:
                    tl.store(dB_ptr + part_bc + offs_n * L + l, tl.sum(g * x[:, None], axis=0), mask=mask_n)
                else:
                    dB_acc += g * x[:, None]
                dx = tl.sum(g * Bl, axis=1)
                a = tl.exp(dt[:, None] * A)
                q = g * a * h_prev
                dA_acc += q * dt[:, None]
                ddt = tl.sum(q * A, axis=1) + dx * uu
                du = dx * dt
                if HAS_D:
                    du += go * Dv
                    dD_acc += go * uu
                if SOFTPLUS:
                    ddt = ddt * tl.sigmoid(dt_pre)
                dbias_acc += ddt
                tl.store(du_ptr + row + l, du.to(du_ptr.dtype.element_ty), mask=mask_d)
                tl.store(ddelta_ptr + row + l, ddt.to(ddelta_ptr.dtype.element_ty), mask=mask_d)
                g_next = a * g
            tl.debug_barrier()  # the next chunk overwrites the scratch
        state_off = (pid_b * dim + offs_d)[:, None] * N + offs_n[None, :]
        tl.store(dA_ptr + state_off, dA_acc, mask=mask_dn)
        if not B_VAR:
            tl.store(dB_ptr + state_off, dB_acc, mask=mask_dn)
        if not C_VAR:
            tl.store(dC_ptr + state_off, dC_acc, mask=mask_dn)
        if HAS_D:
            tl.store(dD_ptr + pid_b * dim + offs_d, dD_acc, mask=mask_d)
        if HAS_BIAS:
            tl.store(dbias_ptr + pid_b * dim + offs_d, dbias_acc, mask=mask_d)


# ----------------------------------------------------------------------------------------------------------------
# host side
# ----------------------------------------------------------------------------------------------------------------
def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def _launch_config(shapes, chunk=None, block_d=None):
    """Block sizes and grid: channel segments of ``D / lcm(G_B, G_C)``, ``BLOCK_D`` channels per program."""
    gB, gC = max(shapes.groups_B, 1), max(shapes.groups_C, 1)
    G = gB * gC // math.gcd(gB, gC)
    seg = shapes.dim // G
    BLOCK_N = max(2, _next_pow2(shapes.dstate))
    if block_d is None:
        block_d = max(1, min(32, 2048 // BLOCK_N))
    BLOCK_D = max(2, min(_next_pow2(block_d), _next_pow2(seg)))
    n_blk = -(-seg // BLOCK_D)
    CHUNK = int(chunk or DEFAULT_CHUNK)
    n_chunks = max(1, -(-shapes.seqlen // CHUNK))
    return dict(G=G, seg=seg, BLOCK_N=BLOCK_N, BLOCK_D=BLOCK_D, n_blk=n_blk, CHUNK=CHUNK, n_chunks=n_chunks,
                gB=gB, gC=gC)


def _prep(u, delta, A, B, C, D, z, delta_bias, fn):
    _require()
    shapes = check_inputs(u, delta, A, B, C, D, z, delta_bias, fn=fn)
    if u.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"{fn}: the triton backend supports float16/bfloat16/float32 inputs; got u.dtype={u.dtype} "
                        "(use backend='cpu' for float64)")
    if not (u.is_cuda or INTERPRET):
        raise RuntimeError(f"{fn}: the triton backend needs CUDA tensors (or TRITON_INTERPRET=1 set before "
                           f"importing cuda_ext.selective_scan.triton); got tensors on {u.device}")
    f32 = torch.float32
    t = dict(
        u=u.contiguous(), delta=delta.contiguous(), A=A.to(f32).contiguous(),
        B=(B.unsqueeze(1) if B.dim() == 3 else B).contiguous() if B.dim() >= 3 else B.to(f32).contiguous(),
        C=(C.unsqueeze(1) if C.dim() == 3 else C).contiguous() if C.dim() >= 3 else C.to(f32).contiguous(),
        D=D.to(f32).contiguous() if D is not None else None,
        z=z.contiguous() if z is not None else None,
        bias=delta_bias.to(f32).contiguous() if delta_bias is not None else None,
    )
    return shapes, t


def _size_args(shapes, cfg):
    """``dim, L, N, n_chunks, seg, n_blk`` and the group arguments ``gsize_B, gsize_C, G_B, G_C``."""
    dim = shapes.dim
    return ((dim, shapes.seqlen, shapes.dstate, cfg["n_chunks"], cfg["seg"], cfg["n_blk"]),
            (dim // cfg["gB"], dim // cfg["gC"], cfg["gB"], cfg["gC"]))


def _flags(shapes, t, delta_softplus, cfg):
    """The constexpr switches and block sizes of both kernels."""
    return dict(HAS_D=t["D"] is not None, HAS_Z=t["z"] is not None, HAS_BIAS=t["bias"] is not None,
                SOFTPLUS=bool(delta_softplus), B_VAR=shapes.groups_B > 0, C_VAR=shapes.groups_C > 0,
                BLOCK_D=cfg["BLOCK_D"], BLOCK_N=cfg["BLOCK_N"], CHUNK=cfg["CHUNK"])


def scan_fwd(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, chunk=None, block_d=None):
    """Triton forward. ``(batch, D, L)`` inputs as ``selective_scan_fn`` -> ``(out, last_state, saved)``.

    ``saved = (cfg, ckpt (batch, n_chunks, D, N) fp32)``; ``chunk`` / ``block_d`` override the block sizes.
    """
    shapes, t = _prep(u, delta, A, B, C, D, z, delta_bias, "selective_scan_fn[triton]")
    cfg = _launch_config(shapes, chunk, block_d)
    batch, dim, L, N = shapes.batch, shapes.dim, shapes.seqlen, shapes.dstate
    out = torch.empty_like(t["u"])
    ckpt = torch.empty((batch, cfg["n_chunks"], dim, N), dtype=torch.float32, device=u.device)
    last = torch.empty((batch, dim, N), dtype=torch.float32, device=u.device)
    if L == 0:
        last.zero_()
        return out, last, (cfg, ckpt)
    dummy = t["u"]  # stands in for absent optional tensors (never read: the flags are constexpr)
    sizes, groups = _size_args(shapes, cfg)
    grid = (batch, cfg["G"] * cfg["n_blk"])
    _scan_fwd_kernel[grid](
        t["u"], t["delta"], t["A"], t["B"], t["C"],
        t["D"] if t["D"] is not None else dummy, t["z"] if t["z"] is not None else dummy,
        t["bias"] if t["bias"] is not None else dummy,
        out, ckpt, last,
        *sizes, *groups,
        **_flags(shapes, t, delta_softplus, cfg),
    )
    return out, last, (cfg, ckpt)


def scan_bwd(dout, u, delta, A, B, C, D, z, delta_bias, delta_softplus, saved):
    """Triton backward -> ``(du, ddelta, dA, dB, dC, dD, dz, ddelta_bias)`` (None where the input is None)."""
    cfg, ckpt = saved
    shapes, t = _prep(u, delta, A, B, C, D, z, delta_bias, "selective_scan_fn[triton]")
    batch, dim, L, N = shapes.batch, shapes.dim, shapes.seqlen, shapes.dstate
    dev, f32 = u.device, torch.float32
    n_prog_s = cfg["G"] * cfg["n_blk"]
    dout = dout.contiguous()
    du = torch.empty_like(t["u"])
    ddelta = torch.empty_like(t["delta"])
    dz = torch.empty_like(t["z"]) if t["z"] is not None else None
    dA_p = torch.zeros((batch, dim, N), dtype=f32, device=dev)
    dD_p = torch.zeros((batch, dim), dtype=f32, device=dev) if t["D"] is not None else None
    dbias_p = torch.zeros((batch, dim), dtype=f32, device=dev) if t["bias"] is not None else None
    dB_p = torch.zeros((batch, n_prog_s, N, L) if shapes.groups_B else (batch, dim, N), dtype=f32, device=dev)
    dC_p = torch.zeros((batch, n_prog_s, N, L) if shapes.groups_C else (batch, dim, N), dtype=f32, device=dev)
    scratch = torch.empty((batch * n_prog_s * cfg["CHUNK"] * cfg["BLOCK_D"] * cfg["BLOCK_N"],), dtype=f32,
                          device=dev)
    if L > 0:
        dummy = t["u"]
        sizes, groups = _size_args(shapes, cfg)
        _scan_bwd_kernel[(batch, n_prog_s)](
            t["u"], t["delta"], t["A"], t["B"], t["C"],
            t["D"] if t["D"] is not None else dummy, t["z"] if t["z"] is not None else dummy,
            t["bias"] if t["bias"] is not None else dummy, dout, ckpt, scratch,
            du, ddelta, dz if dz is not None else dummy, dA_p,
            dD_p if dD_p is not None else dA_p, dbias_p if dbias_p is not None else dA_p, dB_p, dC_p,
            *sizes, n_prog_s, *groups,
            **_flags(shapes, t, delta_softplus, cfg),
        )
    dB = _reduce_bc(dB_p, B, shapes.groups_B, cfg, batch, N, L)
    dC = _reduce_bc(dC_p, C, shapes.groups_C, cfg, batch, N, L)
    return (du, ddelta, dA_p.sum(0).to(A.dtype), dB, dC,
            dD_p.sum(0).to(D.dtype) if dD_p is not None else None, dz,
            dbias_p.sum(0).to(delta_bias.dtype) if dbias_p is not None else None)


def _reduce_bc(part, M, groups, cfg, batch, N, L):
    """Partial sums -> gradient in the layout of ``M``."""
    if not groups:
        return part.sum(0).to(M.dtype)  # (D, N)
    # program s = e * n_blk + j, and segment e lies in group e // (G / groups) of M
    g = part.view(batch, groups, -1, N, L).sum(2)
    return (g[:, 0] if M.dim() == 3 else g).to(M.dtype)
