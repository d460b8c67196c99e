"""Selective scan: the CPU path and dispatch against the reference (values, gradients, errors, gradcheck)."""
from __future__ import annotations

import types
from functools import partial

import pytest
import torch

from cuda_ext.selective_scan import SelectiveScanFn, cpu, resolve_backend, selective_scan_fn
from cuda_ext.selective_scan.reference import selective_scan_ref

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
TINY_TILES = dict(block_elems=96, step_elems=24, width=2)  # many channel/batch blocks, windows and chunks


def make_inputs(batch=2, dim=5, dstate=4, seqlen=7, layout_B="v", layout_C="v", groups=1, has_D=True, has_z=True,
                has_bias=True, dtype=torch.float32, seed=0):
    """Random inputs in mamba-ssm's layouts; ``layout`` is 'c' (D, N), 'v' (batch, N, L) or 'g' (batch, G, N, L)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, dt=dtype):
        return torch.randn(*shape, generator=g).to(dt)

    def bc(layout):
        return {"c": lambda: rnd(dim, dstate, dt=torch.float32), "v": lambda: rnd(batch, dstate, seqlen),
                "g": lambda: rnd(batch, groups, dstate, seqlen)}[layout]()

    return dict(
        u=rnd(batch, dim, seqlen),
        delta=(0.5 * torch.rand(batch, dim, seqlen, generator=g) - 0.25).to(dtype),
        A=-(torch.rand(dim, dstate, generator=g) * 2 + 0.2),
        B=bc(layout_B), C=bc(layout_C),
        D=rnd(dim, dt=torch.float32) if has_D else None,
        z=rnd(batch, dim, seqlen) if has_z else None,
        delta_bias=(0.3 * torch.rand(dim, generator=g)) if has_bias else None,
    )


def _leafs(inputs):
    return {k: (v.detach().clone().requires_grad_() if v is not None else None) for k, v in inputs.items()}


def run_with_grads(fn, inputs, softplus, seed=1):
    """``fn(**inputs) -> (out, last)``; returns out, last and the gradient of every given input."""
    ins = _leafs(inputs)
    out, last = fn(**ins, delta_softplus=softplus, return_last_state=True)
    gout = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out.dtype)
    names = [k for k in NAMES if ins[k] is not None]
    grads = torch.autograd.grad(out, [ins[k] for k in names], gout)
    return out, last, dict(zip(names, grads))


def assert_rel_close(actual, expected, tol, name=""):
    """Elementwise close with a tolerance relative to the largest magnitude of ``expected``."""
    actual, expected = actual.double(), expected.double()
    scale = expected.abs().max().clamp_min(1e-30)
    err = ((actual - expected).abs().max() / scale).item()
    assert err <= tol, f"{name}: max error {err:.2e} relative to max|ref| exceeds {tol:.0e}"


def compare(fn, inputs, softplus, tol=1e-4):
    out_r, last_r, grads_r = run_with_grads(selective_scan_ref, inputs, softplus)
    out, last, grads = run_with_grads(fn, inputs, softplus)
    assert out.dtype == inputs["u"].dtype and out.shape == inputs["u"].shape
    assert last.shape == out.shape[:2] + (inputs["A"].shape[1],) and not last.requires_grad
    assert_rel_close(out, out_r, tol, "out")
    assert_rel_close(last, last_r, tol, "last_state")
    assert grads.keys() == grads_r.keys()
    for k in grads:
        assert grads[k].shape == inputs[k].shape and grads[k].dtype == inputs[k].dtype, k
        assert_rel_close(grads[k], grads_r[k], tol, f"d{k}")


def tiled_cpu_fn(**tiles):
    """selective_scan_fn on the cpu backend with a forced tiling."""
    impl = types.SimpleNamespace(scan_fwd=partial(cpu.scan_fwd, **tiles), scan_bwd=cpu.scan_bwd)

    def fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False):
        out, last = SelectiveScanFn.apply(impl, u, delta, A, B, C, D, z, delta_bias, delta_softplus)
        return (out, last) if return_last_state else out

    return fn


CASES = [  # (batch, D, N, L, layout_B, layout_C, G, has_D, has_z, has_bias, softplus)
    (2, 5, 4, 1, "v", "v", 1, True, True, True, True),
    (2, 5, 1, 7, "c", "c", 1, True, False, False, False),
    (3, 6, 16, 129, "g", "g", 3, False, True, True, True),
    (2, 5, 4, 129, "v", "c", 1, False, False, False, False),
    (2, 6, 4, 33, "c", "g", 2, True, True, False, True),
    (1, 3, 16, 1000, "v", "v", 1, True, True, True, True),
    (2, 6, 4, 1000, "g", "v", 2, True, False, True, True),
]


def chunked_tiles(dstate):
    """Tiles of 8 chunks x batch rows with 4-step chunks: windows of several chunks (pass 1 + chunk decays)."""
    return dict(block_elems=4 * 2 * dstate * 8, step_elems=2 * dstate * 8, width=2)


@pytest.mark.parametrize("tiles", ["default", "tiny", "chunked"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "b{}-d{}-n{}-l{}-{}{}{}".format(*c[:7]))
def test_cpu_matches_reference(case, tiles):
    batch, dim, dstate, L, lb, lc, G, has_D, has_z, has_bias, softplus = case
    inputs = make_inputs(batch, dim, dstate, L, lb, lc, G, has_D, has_z, has_bias)
    if tiles == "default":
        fn = partial(selective_scan_fn, backend="cpu")
    else:
        kw = TINY_TILES if tiles == "tiny" else chunked_tiles(dstate)
        plan = cpu.make_plan(batch, dim, L, dstate, 0, 0, **kw)
        if tiles == "chunked" and L > 64:
            assert plan.k > 1 and len(plan.windows()) > 1 and len(plan.cblocks) > 1
        fn = tiled_cpu_fn(**kw)
    compare(fn, inputs, softplus)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cpu_half_inputs(dtype):
    inputs = make_inputs(2, 5, 4, 40, "g", "v", 5, dtype=dtype)
    # both compute in fp32 and round the outputs to `dtype`: allow one rounding step of that dtype
    compare(tiled_cpu_fn(**chunked_tiles(4)), inputs, True, tol=8e-3 if dtype == torch.bfloat16 else 1e-3)


def test_cpu_strided_inputs():
    """x, z as the two halves of one (B, 2D, L) tensor, dt as a permuted view — as Mamba passes them."""
    inputs = make_inputs(2, 4, 4, 11)
    xz = torch.randn(2, 8, 11)
    inputs["u"], inputs["z"] = xz[:, :4], xz[:, 4:]
    inputs["delta"] = torch.rand(11, 2, 4).permute(1, 2, 0)
    compare(partial(selective_scan_fn, backend="cpu"), inputs, True)


def test_ref_backend_and_positional_signature():
    i = make_inputs(2, 5, 4, 9)
    args = (i["u"], i["delta"], i["A"], i["B"], i["C"], i["D"], i["z"], i["delta_bias"], True, True)
    out, last = selective_scan_fn(*args, backend="ref")
    out2, last2 = selective_scan_fn(*args)  # cpu on CPU tensors
    assert_rel_close(out2, out, 1e-5)
    assert_rel_close(last2, last, 1e-5)
    assert isinstance(selective_scan_fn(*args[:9]), torch.Tensor)


@pytest.mark.parametrize("layouts", [("v", "g"), ("c", "c")])
def test_gradcheck_float64(layouts):
    inputs = {k: (v.double() if v is not None else None)
              for k, v in make_inputs(2, 4, 2, 6, *layouts, groups=2, seed=3).items()}
    names = [k for k in NAMES if inputs[k] is not None]
    leaves = [inputs[k].detach().clone().requires_grad_() for k in names]
    for fn in (selective_scan_ref, tiled_cpu_fn(block_elems=48, step_elems=16, width=2)):
        def f(*xs, fn=fn):
            return fn(**dict(zip(names, xs)), delta_softplus=True)
        assert torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_long_sequence_chunk_decay_is_stable():
    """Strong decay (|A dt| up to ~10 per step) over many chunks: no inf/nan, still equal to the reference."""
    inputs = make_inputs(1, 3, 4, 300, has_z=False)
    inputs["A"] = inputs["A"] * 10
    inputs["delta"] = inputs["delta"].abs() + 0.5
    compare(tiled_cpu_fn(**chunked_tiles(4)), inputs, True)


# ---------------------------------------------------------------------------------------------------------------
# errors and dispatch
# ---------------------------------------------------------------------------------------------------------------
def _args(**override):
    i = make_inputs(2, 4, 3, 5)
    i.update(override)
    return i


@pytest.mark.parametrize("name,bad,match", [
    ("u", torch.randn(2, 4), r"u must be \(batch, D, L\)"),
    ("delta", torch.randn(2, 4, 6), r"delta must be \(batch, D, L\)=\(2, 4, 5\); got \(2, 4, 6\)"),
    ("A", torch.randn(5, 3), r"A must be \(D, N\) with D=4; got shape \(5, 3\)"),
    ("B", torch.randn(2, 5, 5), r"B must be \(D, N\)=\(4, 3\), \(batch, N, L\)=\(2, 3, 5\) or .*got \(2, 5, 5\)"),
    ("C", torch.randn(2, 3, 3, 5), r"C must be .*D % G == 0 \(D=4\); got \(2, 3, 3, 5\)"),
    ("D", torch.randn(3), r"D must be \(D,\)=\(4,\); got \(3,\)"),
    ("z", torch.randn(2, 4, 4), r"z must be \(batch, D, L\)"),
    ("delta_bias", torch.randn(4, 1), r"delta_bias must be \(D,\)"),
])
def test_bad_shapes_name_the_argument(name, bad, match):
    with pytest.raises(ValueError, match=r"selective_scan_fn: " + match):
        selective_scan_fn(**_args(**{name: bad}))


def test_bad_dtypes_and_devices():
    i = _args()
    with pytest.raises(TypeError, match="delta must have u's dtype torch.float32; got torch.float64"):
        selective_scan_fn(**_args(delta=i["delta"].double()))
    with pytest.raises(TypeError, match="u dtype must be one of"):
        selective_scan_fn(**_args(u=i["u"].long(), delta=i["delta"].long()))
    with pytest.raises(NotImplementedError, match="complex A is not supported"):
        selective_scan_fn(**_args(A=torch.randn(4, 3, dtype=torch.complex64)))
    with pytest.raises(ValueError, match=r"B is on meta but u is on cpu"):
        selective_scan_fn(**_args(B=i["B"].to("meta")))
    with pytest.raises(ValueError, match=r"delta_bias is on meta"):
        selective_scan_fn(**_args(delta_bias=i["delta_bias"].to("meta")))


def test_backend_resolution(monkeypatch):
    u = torch.zeros(1, 1, 1)
    monkeypatch.delenv("ZOO_KERNEL", raising=False)
    assert resolve_backend(None, u) == "cpu"
    monkeypatch.setenv("ZOO_KERNEL", "REF")
    assert resolve_backend(None, u) == "ref"
    assert resolve_backend("cpu", u) == "cpu"  # the keyword wins over the environment
    monkeypatch.setenv("ZOO_KERNEL", "cuda")
    with pytest.raises(ValueError, match=r"\$ZOO_KERNEL='cuda': 'cuda' is not a kernel backend; valid backends: "
                                         r"ref, cpu, triton, mamba_ssm"):
        resolve_backend(None, u)
    with pytest.raises(ValueError, match=r"backend='x'"):
        resolve_backend("x", u)


def test_env_var_forces_reference(monkeypatch):
    import cuda_ext.selective_scan as ss

    called = []
    monkeypatch.setattr(ss, "selective_scan_ref", lambda *a, **k: called.append(1) or "ref-result")
    monkeypatch.setenv("ZOO_KERNEL", "ref")
    assert ss.selective_scan_fn(**_args()) == "ref-result" and called


def test_mamba_ssm_backend_missing_names_the_extra():
    pytest.importorskip("torch")
    try:
        import mamba_ssm  # noqa: F401
        pytest.skip("mamba-ssm is installed")
    except ImportError:
        pass
    with pytest.raises(ImportError, match=r"zoo\[mamba\]"):
        selective_scan_fn(**_args(), backend="mamba_ssm")


def test_import_needs_no_triton():
    """With triton unimportable the package imports, CPU calls work, and backend='triton' names the extra."""
    import subprocess
    import sys

    code = "\n".join([
        "import sys; sys.modules['triton'] = None",
        "import torch, cuda_ext.selective_scan as s, zoo.ops.selective_scan as z",
        "assert 'cuda_ext.selective_scan.triton' not in sys.modules and not s.triton_available()",
        "u = torch.randn(1, 2, 3); A = -torch.rand(2, 2); B = torch.randn(1, 2, 3)",
        "assert z.selective_scan_fn(u, u.abs(), A, B, B).shape == (1, 2, 3)",
        "try:",
        "    s.selective_scan_fn(u, u.abs(), A, B, B, backend='triton'); raise SystemExit('no error')",
        "except ImportError as e:",
        "    assert 'zoo[triton]' in str(e), e",
    ])
    subprocess.run([sys.executable, "-c", code], check=True)


def test_empty_sequence():
    i = make_inputs(2, 3, 2, 0)
    out, last = selective_scan_fn(**i, delta_softplus=True, return_last_state=True)
    ref, ref_last = selective_scan_ref(**i, delta_softplus=True, return_last_state=True)
    assert out.shape == ref.shape == (2, 3, 0) and torch.equal(last, ref_last)
