"""Selective scan (Mamba's S6 recurrence): public entry point of the kernels in :mod:`cuda_ext.selective_scan`.

``selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
return_last_state=False, *, backend=None)`` — mamba-ssm's signature; ``(batch, D, L) -> (batch, D, L)``.
The backend is Triton on CUDA, the chunked PyTorch path elsewhere; ``backend=``, ``ZOO_KERNEL=scan:NAME`` or a
global ``ZOO_KERNEL=NAME`` (NAME in ``ref|cpu|triton|mamba_ssm``) forces one (see :mod:`cuda_ext._dispatch`).
"""
from cuda_ext.selective_scan import BACKENDS, resolve_backend, selective_scan_fn, selective_scan_ref

__all__ = ["selective_scan_fn", "selective_scan_ref", "resolve_backend", "BACKENDS"]
