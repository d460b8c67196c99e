"""Triton selective-scan kernels against the reference.

Without CUDA the kernels run under the Triton interpreter, in this process: this module sets
``TRITON_INTERPRET=1`` before anything imports ``cuda_ext.selective_scan.triton`` (the package imports that
module lazily, and Triton reads the flag when the kernels are decorated). tests/conftest.py may set it earlier;
either way works. Interpreter sizes are tiny (about a second per case); bf16 is checked only on a real GPU, since
the interpreter silently returns wrong bf16 values.
"""
from __future__ import annotations

import os
from functools import partial

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import importlib.util  # noqa: E402
import pathlib  # noqa: E402

from cuda_ext.selective_scan import SelectiveScanFn, selective_scan_fn  # noqa: E402


def _sibling(name):
    """Load a sibling test module by path (works with any pytest import mode; tests/ has no __init__.py)."""
    spec = importlib.util.spec_from_file_location(f"_zoo_{name}", pathlib.Path(__file__).with_name(f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_helpers = _sibling("test_selective_scan")
compare, make_inputs = _helpers.compare, _helpers.make_inputs

triton = pytest.importorskip("triton")


def _kernels():
    from cuda_ext.selective_scan import triton as tr

    if not torch.cuda.is_available() and not tr.INTERPRET:
        pytest.skip("cuda_ext.selective_scan.triton was imported before TRITON_INTERPRET=1 was set")
    return tr


class _Impl:
    """Kernel module with a forced chunk length / channel block (to cover several chunks and blocks)."""

    def __init__(self, chunk, block_d):
        tr = _kernels()
        self.scan_fwd = partial(tr.scan_fwd, chunk=chunk, block_d=block_d)
        self.scan_bwd = tr.scan_bwd


def triton_fn(chunk=4, block_d=None):
    impl = _Impl(chunk, block_d)

    def fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False):
        out, last = SelectiveScanFn.apply(impl, u, delta, A, B, C, D, z, delta_bias, delta_softplus)
        return (out, last) if return_last_state else out

    return fn


INTERP_CASES = [  # (batch, D, N, L, layout_B, layout_C, G, has_D, has_z, has_bias, softplus, chunk, block_d)
    (2, 5, 4, 1, "v", "v", 1, True, True, True, True, 4, None),
    (2, 5, 1, 7, "c", "c", 1, True, False, False, False, 4, 2),
    (2, 6, 4, 9, "g", "g", 3, False, True, True, True, 4, 2),
    (1, 6, 3, 9, "c", "g", 2, True, True, False, True, 2, 2),
    (1, 4, 16, 6, "g", "v", 2, True, False, True, True, 4, None),
    (2, 3, 4, 8, "v", "c", 1, False, False, False, False, 8, None),
]


@pytest.mark.triton
@pytest.mark.parametrize("case", INTERP_CASES, ids=lambda c: "b{}-d{}-n{}-l{}-{}{}{}".format(*c[:7]))
def test_triton_matches_reference(case):
    if torch.cuda.is_available():
        pytest.skip("interpreter test; the GPU tests below cover CUDA")
    *shape, softplus, chunk, block_d = case
    inputs = make_inputs(*shape)
    compare(triton_fn(chunk, block_d), inputs, softplus)


@pytest.mark.triton
def test_triton_fp16_interpreter():
    if torch.cuda.is_available():
        pytest.skip("interpreter test")
    inputs = make_inputs(2, 4, 4, 6, "g", "v", 2, dtype=torch.float16)
    compare(triton_fn(chunk=4, block_d=2), inputs, True, tol=1e-3)


@pytest.mark.triton
def test_triton_backend_through_public_api(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("interpreter test")
    _kernels()
    inputs = make_inputs(1, 3, 2, 5)
    compare(partial(selective_scan_fn, backend="triton"), inputs, True)
    monkeypatch.setenv("ZOO_KERNEL", "triton")
    compare(selective_scan_fn, inputs, False)


@pytest.mark.triton
def test_triton_rejects_float64():
    tr = _kernels()
    i = make_inputs(1, 2, 2, 3, dtype=torch.float64)
    with pytest.raises(TypeError, match="triton backend supports float16/bfloat16/float32"):
        tr.scan_fwd(i["u"], i["delta"], i["A"], i["B"], i["C"])


# ---------------------------------------------------------------------------------------------------------------
# real GPU
# ---------------------------------------------------------------------------------------------------------------
GPU_TOL = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layouts", [("v", "v", 1), ("g", "g", 4), ("c", "c", 1), ("c", "g", 2)])
@pytest.mark.parametrize("L", [1, 127, 2049])
def test_triton_gpu_matches_reference(dtype, layouts, L):
    lb, lc, G = layouts
    inputs = {k: (v.cuda() if v is not None else None)
              for k, v in make_inputs(2, 24, 16, L, lb, lc, G, dtype=dtype).items()}
    compare(partial(selective_scan_fn, backend="triton"), inputs, True, tol=GPU_TOL[dtype])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_default_backend_on_cuda_is_triton():
    from cuda_ext.selective_scan import resolve_backend

    assert resolve_backend(None, torch.zeros(1, device="cuda")) in ("triton", os.environ.get("ZOO_KERNEL", "triton"))
