"""Sampled weight gradient (SDDMM) backends against the dense reference, and the sparse Linear / 1×1 conv autograd."""
from __future__ import annotations

import pytest
import torch

from cuda_ext import sparse_backprop as sb
from cuda_ext.sparse_backprop import cpu, reference
from zoo.ops import sparse_grad

# (B, T, out, in, K): odd sizes, single token, empty / full index sets
SHAPES = [(1, 7, 5, 3, 4), (2, 33, 17, 29, 60), (3, 5, 64, 48, 500), (1, 1, 1, 1, 1), (2, 9, 6, 10, 0)]


def _index(out_f: int, in_f: int, k: int, seed: int, full: bool = False, shuffle: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    idx = torch.arange(out_f * in_f) if full else torch.randperm(out_f * in_f, generator=g)[:k].sort().values
    if shuffle:
        idx = idx[torch.randperm(idx.numel(), generator=g)]
    return idx.to(torch.int32)


def _inputs(B, T, O, I, seed=0, dtype=torch.float32, channel_first=False):
    g = torch.Generator().manual_seed(seed)
    if channel_first:  # conv layout: (B, C, T) memory seen as (B, T, C)
        dy = torch.randn(B, O, T, generator=g).to(dtype).transpose(1, 2)
        x = torch.randn(B, I, T, generator=g).to(dtype).transpose(1, 2)
    else:
        dy = torch.randn(B, T, O, generator=g).to(dtype)
        x = torch.randn(B, T, I, generator=g).to(dtype)
    return dy, x


def _assert_close(got, want, rtol=1e-5):
    """Max error relative to the largest reference entry (sums over T cancel, so entry-wise rel. error is ill-posed)."""
    assert got.shape == want.shape and got.dtype == torch.float32
    if want.numel() == 0:
        return
    err = (got - want).abs().max().item()
    assert err <= rtol * max(want.abs().max().item(), 1.0), err


@pytest.mark.parametrize("B,T,O,I,K", SHAPES)
@pytest.mark.parametrize("channel_first", [False, True])
def test_cpu_matches_reference(B, T, O, I, K, channel_first):
    dy, x = _inputs(B, T, O, I, channel_first=channel_first)
    idx = _index(O, I, K, seed=K)
    rows, cols = reference.flat_to_rows_cols(idx, I)
    want = reference.sampled_weight_grad_ref(dy, x, rows, cols)
    _assert_close(cpu.sampled_weight_grad_cpu(dy, x, rows, cols), want)
    # tiny blocks force both the GEMM and the gather branch and many chunks
    for density in (0.0, 2.0):
        _assert_close(cpu.sampled_weight_grad_cpu(dy, x, rows, cols, max_elems=37, gemm_density=density), want)


def test_cpu_full_and_unsorted_index_sets():
    dy, x = _inputs(2, 11, 13, 7)
    for idx in (_index(13, 7, 0, 0, full=True), _index(13, 7, 40, 1, shuffle=True)):
        rows, cols = reference.flat_to_rows_cols(idx, 7)
        want = reference.sampled_weight_grad_ref(dy, x, rows, cols)
        _assert_close(cpu.sampled_weight_grad_cpu(dy, x, rows, cols, max_elems=20), want)
    dense = torch.einsum("bto,bti->oi", dy, x).flatten()
    full = _index(13, 7, 0, 0, full=True)
    _assert_close(sparse_grad.sparse_weight_grad(dy, x, full), dense)


def test_half_inputs_accumulate_in_float32():
    dy, x = _inputs(1, 300, 8, 8, dtype=torch.float16)
    idx = _index(8, 8, 20, 3)
    rows, cols = reference.flat_to_rows_cols(idx, 8)
    want = reference.sampled_weight_grad_ref(dy, x, rows, cols)
    _assert_close(cpu.sampled_weight_grad_cpu(dy, x, rows, cols), want)


def test_input_errors_name_the_fix():
    dy, x = _inputs(1, 4, 3, 2)
    with pytest.raises(ValueError, match=r"\(B, T, features\)"):
        reference.check_inputs(dy[0], x, torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long))
    with pytest.raises(TypeError, match="int32/int64"):
        reference.check_inputs(dy, x, torch.zeros(1), torch.zeros(1))
    with pytest.raises(ValueError, match="index entries must be in"):
        sparse_grad.sparse_weight_grad(dy, x, torch.tensor([6], dtype=torch.int32))


def test_dispatch_env(monkeypatch):
    t = torch.zeros(1)
    monkeypatch.setenv("ZOO_KERNEL", "ref")
    assert sb.backend(t) == "ref"
    monkeypatch.setenv("ZOO_KERNEL", "bogus")
    with pytest.raises(ValueError, match="ZOO_KERNEL"):
        sb.backend(t)
    monkeypatch.delenv("ZOO_KERNEL")
    assert sb.backend(t) == "cpu"


@pytest.mark.triton
@pytest.mark.parametrize("B,T,O,I,K", SHAPES[:3] + SHAPES[4:])
@pytest.mark.parametrize("split", [1, 3])
def test_triton_matches_reference(B, T, O, I, K, split):
    pytest.importorskip("triton")
    if not torch.cuda.is_available() and __import__("os").environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs CUDA or TRITON_INTERPRET=1")
    from cuda_ext.sparse_backprop.triton import sampled_weight_grad_triton

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    for channel_first in (False, True):
        dy, x = _inputs(B, T, O, I, channel_first=channel_first)
        idx = _index(O, I, K, seed=K, shuffle=True)
        rows, cols = reference.flat_to_rows_cols(idx, I)
        want = reference.sampled_weight_grad_ref(dy, x, rows, cols)
        got = sampled_weight_grad_triton(dy.to(dev), x.to(dev), rows.to(dev), cols.to(dev), split=split)
        _assert_close(got.cpu(), want)


@pytest.mark.triton
def test_triton_fp16_and_full_index_set():
    pytest.importorskip("triton")
    if not torch.cuda.is_available() and __import__("os").environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs CUDA or TRITON_INTERPRET=1")
    from cuda_ext.sparse_backprop.triton import sampled_weight_grad_triton

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    dy, x = _inputs(1, 40, 6, 5, dtype=torch.float16)
    idx = _index(6, 5, 0, 0, full=True)
    rows, cols = reference.flat_to_rows_cols(idx, 5)
    want = reference.sampled_weight_grad_ref(dy, x, rows, cols)
    got = sampled_weight_grad_triton(dy.to(dev), x.to(dev), rows.to(dev), cols.to(dev))
    _assert_close(got.cpu(), want)


@pytest.mark.parametrize("kernel", ["ref", "cpu", pytest.param("triton", marks=pytest.mark.triton)])
def test_sparse_linear_grads_equal_masked_dense_autograd(kernel, monkeypatch):
    if kernel == "triton" and not torch.cuda.is_available() and __import__("os").environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs CUDA or TRITON_INTERPRET=1")
    monkeypatch.setenv("ZOO_KERNEL", kernel)
    torch.manual_seed(0)
    W, b = torch.randn(9, 7), torch.randn(9)
    idx = _index(9, 7, 20, 5)
    values = torch.randn(20, requires_grad=True)
    bias = b.clone().requires_grad_(True)
    x = torch.randn(2, 5, 7, requires_grad=True)
    y = sparse_grad.sparse_linear(x, W, bias, idx, values, scale=0.5)
    gy = torch.randn_like(y)
    (y * gy).sum().backward()
    # dense autograd on the effective weight, then the gradient masked / gathered
    Wd = (W.flatten().index_add(0, idx.long(), 0.5 * values.detach())).view_as(W).requires_grad_(True)
    xd = x.detach().clone().requires_grad_(True)
    bd = b.clone().requires_grad_(True)
    yd = torch.nn.functional.linear(xd, Wd, bd)
    (yd * gy).sum().backward()
    torch.testing.assert_close(y, yd, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.grad, xd.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bias.grad, bd.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(values.grad, 0.5 * Wd.grad.flatten()[idx.long()], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel", ["ref", "cpu"])
def test_sparse_conv1x1_grads_equal_masked_dense_autograd(kernel, monkeypatch):
    monkeypatch.setenv("ZOO_KERNEL", kernel)
    torch.manual_seed(1)
    W = torch.randn(6, 4, 1, 1)
    idx = _index(6, 4, 11, 2)
    values = torch.randn(11, requires_grad=True)
    x = torch.randn(2, 4, 5, 3, requires_grad=True)
    y = sparse_grad.sparse_conv1x1(x, W, None, idx, values)
    gy = torch.randn_like(y)
    (y * gy).sum().backward()
    Wd = W.flatten().index_add(0, idx.long(), values.detach()).view_as(W).requires_grad_(True)
    xd = x.detach().clone().requires_grad_(True)
    yd = torch.nn.functional.conv2d(xd, Wd)
    (yd * gy).sum().backward()
    torch.testing.assert_close(y, yd, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.grad, xd.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(values.grad, Wd.grad.flatten()[idx.long()], rtol=1e-5, atol=1e-5)


def test_attach_sparse_grad_is_dense_then_gather():
    torch.manual_seed(2)
    W = torch.randn(5, 3, 3, 3)
    idx = _index(5, 27, 30, 4)
    values = torch.zeros(30, requires_grad=True)
    x = torch.randn(1, 3, 6, 6)
    w = sparse_grad.attach_sparse_grad(W, idx, values)
    assert w.data_ptr() == W.data_ptr()  # an alias, no copy
    y = torch.nn.functional.conv2d(x, w, padding=1)
    y.square().sum().backward()
    Wd = W.clone().requires_grad_(True)
    torch.nn.functional.conv2d(x, Wd, padding=1).square().sum().backward()
    torch.testing.assert_close(values.grad, Wd.grad.flatten()[idx.long()])


def test_float64_gradcheck():
    torch.manual_seed(3)
    W = torch.randn(4, 3, dtype=torch.float64)
    idx = torch.tensor([0, 4, 7, 11], dtype=torch.int64)
    values = torch.randn(4, dtype=torch.float64, requires_grad=True)
    x = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, v: sparse_grad.sparse_linear(x, W, None, idx, v), (x, values))
