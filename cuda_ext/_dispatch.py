"""One kernel-backend vocabulary and one dispatcher for every op in ``cuda_ext``.

Every op (selective scan, FPS, KNN, ball query, three_nn / three_interpolate, the SaRA sampled weight gradient)
asks :func:`resolve` which
implementation to run. The choice, in order:

1. an explicit ``backend=`` argument of the op (``selective_scan_fn(..., backend="cpu")``);
2. a per-op entry of ``$ZOO_KERNEL`` (``ZOO_KERNEL=scan:mamba_ssm,fps:cpu``);
3. the global entry of ``$ZOO_KERNEL`` (``ZOO_KERNEL=cpu``; may be combined: ``ZOO_KERNEL=cpu,scan:triton``);
4. the op's automatic choice: ``triton`` for CUDA tensors when the op has a Triton kernel for their dtype and
   triton imports, else ``cpu`` (the fast, device-agnostic PyTorch path).

Backends (:data:`BACKENDS`): ``ref`` (the readable plain-PyTorch reference), ``cpu`` (fast PyTorch), ``triton``
(Triton kernels; CPU tensors only under ``TRITON_INTERPRET=1``), ``mamba_ssm`` (mamba-ssm's CUDA scan, an optional
extra). Each op has its own subset (:data:`OPS`). A *global* preference an op lacks (``ZOO_KERNEL=mamba_ssm`` for
FPS) is not an error: that op falls back to its automatic choice, logged once at INFO on the ``cuda_ext`` logger.
Naming a backend an op lacks explicitly (``backend=`` or ``fps:mamba_ssm``), an unknown backend or an unknown op is
a ``ValueError`` that lists the valid names.

Importing this module imports neither triton nor anything that needs a GPU.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
from functools import lru_cache

import torch

__all__ = ["BACKENDS", "ENV", "OPS", "OpSpec", "KernelPreference", "parse_kernel_env", "resolve", "auto_backend",
           "triton_available"]

ENV = "ZOO_KERNEL"
BACKENDS = ("ref", "cpu", "triton", "mamba_ssm")
_TRITON_FLOATS = (torch.float16, torch.bfloat16, torch.float32)

logger = logging.getLogger("cuda_ext")


@dataclasses.dataclass(frozen=True)
class OpSpec:
    """One op: its ``$ZOO_KERNEL`` name, the public function it backs, its backends and the dtypes of its Triton kernel
    (``None``: any float dtype)."""

    name: str
    function: str
    backends: tuple[str, ...]
    triton_dtypes: tuple[torch.dtype, ...] | None = None


OPS: dict[str, OpSpec] = {
    spec.name: spec
    for spec in (
        OpSpec("scan", "selective_scan_fn (cuda_ext.selective_scan)", ("ref", "cpu", "triton", "mamba_ssm"),
               _TRITON_FLOATS),
        OpSpec("fps", "furthest_point_sample (cuda_ext.pointops)", ("ref", "cpu", "triton")),
        OpSpec("knn", "knn (cuda_ext.pointops)", ("ref", "cpu")),
        OpSpec("ball_query", "ball_query (cuda_ext.pointops)", ("ref", "cpu")),
        OpSpec("sddmm", "sampled_weight_grad (cuda_ext.sparse_backprop)", ("ref", "cpu", "triton"), _TRITON_FLOATS),
        OpSpec("three_nn", "three_nn (cuda_ext.pointops)", ("ref", "cpu", "triton")),
        OpSpec("three_interpolate", "three_interpolate (cuda_ext.pointops)", ("ref", "cpu", "triton"), _TRITON_FLOATS),
    )
}

_EXAMPLE = f"e.g. {ENV}=cpu (every op) or {ENV}=scan:mamba_ssm,fps:cpu (per op)"


@dataclasses.dataclass(frozen=True)
class KernelPreference:
    """A parsed ``$ZOO_KERNEL``: the backend preferred for every op (or ``None``) and per-op overrides."""

    default: str | None = None
    per_op: tuple[tuple[str, str], ...] = ()

    def for_op(self, op: str) -> tuple[str | None, bool]:
        """``(backend, per_op)``: the preference for ``op`` and whether it came from a per-op entry."""
        for name, backend in self.per_op:
            if name == op:
                return backend, True
        return self.default, False


def _bad_backend(source: str, name: str) -> ValueError:
    return ValueError(f"{source}: {name!r} is not a kernel backend; valid backends: {', '.join(BACKENDS)} "
                      f"({_EXAMPLE})")


@lru_cache(maxsize=32)
def parse_kernel_env(value: str) -> KernelPreference:
    """Parse a ``$ZOO_KERNEL`` value: comma-separated ``BACKEND`` (all ops, at most one) and ``OP:BACKEND`` entries.

    Case and blanks are ignored; ``""`` means no preference. Raises ``ValueError`` naming the bad entry and the valid
    backends / ops.
    """
    source = f"${ENV}={value!r}"
    default, per_op = None, {}
    for entry in (e.strip().lower() for e in value.split(",")):
        if not entry:
            continue
        op, sep, name = (p.strip() for p in entry.partition(":"))
        if not sep:
            op, name = None, op
        if name not in BACKENDS:
            raise _bad_backend(source, name)
        if op is None:
            if default is not None:
                raise ValueError(f"{source}: two global backends ({default!r}, {name!r}); give one, plus OP:BACKEND "
                                 f"entries for single ops ({_EXAMPLE})")
            default = name
            continue
        if op not in OPS:
            raise ValueError(f"{source}: {op!r} is not a kernel op; ops: {', '.join(OPS)} ({_EXAMPLE})")
        if op in per_op:
            raise ValueError(f"{source}: op {op!r} is given twice")
        if name not in OPS[op].backends:
            raise ValueError(f"{source}: op {op!r} has no {name!r} backend; it has {', '.join(OPS[op].backends)}")
        per_op[op] = name
    return KernelPreference(default, tuple(per_op.items()))


@lru_cache(maxsize=None)
def triton_available() -> bool:
    """True when the ``triton`` package can be imported (says nothing about a GPU)."""
    return importlib.util.find_spec("triton") is not None


def auto_backend(op: str, t: torch.Tensor) -> str:
    """The op's automatic choice for tensor ``t``: ``triton`` on CUDA when it has a kernel for ``t.dtype`` (and triton
    imports), else ``cpu``."""
    spec = OPS[op]
    if "triton" in spec.backends and t.is_cuda and triton_available() and (
            spec.triton_dtypes is None or t.dtype in spec.triton_dtypes):
        return "triton"
    return "cpu"


_logged_fallbacks: set[tuple[str, str]] = set()


def _require_triton(spec: OpSpec, t: torch.Tensor, source: str) -> None:
    if not triton_available():
        raise ImportError(f"{spec.function}: {source} asks for the triton backend but Triton is not installed; "
                          f"install it with `pip install 'zoo[triton]'` (or set {ENV}=cpu)")
    if t.device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") != "1":
        raise RuntimeError(f"{spec.function}: {source} asks for the triton backend with CPU tensors; that needs "
                           f"TRITON_INTERPRET=1 (tests) or CUDA tensors (or set {ENV}=cpu)")


def resolve(op: str, t: torch.Tensor, backend: str | None = None) -> str:
    """The backend ``op`` runs for tensor ``t``: explicit ``backend`` > per-op ``$ZOO_KERNEL`` > global > automatic.

    Args:
        op: a key of :data:`OPS` (``"scan"``, ``"fps"``, ``"knn"``, ``"ball_query"``, ``"sddmm"``, ``"three_nn"``,
            ``"three_interpolate"``).
        t: the op's main input (its device and dtype drive the automatic choice).
        backend: the op's ``backend=`` argument, if it has one.

    Returns one of the op's backends. A global preference the op lacks falls back to :func:`auto_backend` (logged
    once per op and backend at INFO); a missing Triton or CPU tensors without ``TRITON_INTERPRET=1`` for a chosen
    ``triton`` raise ``ImportError`` / ``RuntimeError``.
    """
    spec = OPS[op]
    if backend is not None:
        name, source, explicit = backend.strip().lower(), f"backend={backend!r}", True
        if name not in BACKENDS:
            raise _bad_backend(f"{spec.function}: {source}", name)
    else:
        value = os.environ.get(ENV, "")
        name, explicit = parse_kernel_env(value).for_op(op)
        source = f"${ENV}={value!r}"
        if name is None:
            return auto_backend(op, t)
    if name not in spec.backends:
        if explicit:
            raise ValueError(f"{spec.function}: {source} names {name!r}, which this op does not have; "
                             f"it has {', '.join(spec.backends)}")
        fallback = auto_backend(op, t)
        if (op, name) not in _logged_fallbacks:
            _logged_fallbacks.add((op, name))
            logger.info("%s: %s prefers %r, which op %r does not have (it has %s); using its automatic choice %r",
                        spec.function, source, name, op, ", ".join(spec.backends), fallback)
        return fallback
    if name == "triton":
        _require_triton(spec, t, source)
    return name
