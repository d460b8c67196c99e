"""cuda_ext._dispatch: one backend vocabulary, $ZOO_KERNEL parsing (global and per op), fallback and errors."""
from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import torch

from cuda_ext import _dispatch
from cuda_ext._dispatch import OPS, KernelPreference, parse_kernel_env, resolve
from zoo.ops import pointcloud, sparse_grad


@pytest.fixture
def fresh_log(monkeypatch):
    """Forget which fallbacks were logged, so that this test sees the first one."""
    monkeypatch.setattr(_dispatch, "_logged_fallbacks", set())


def _cloud(B=2, N=64, seed=0):
    return torch.randn(B, N, 3, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------------- parsing
@pytest.mark.parametrize("value, want", [
    ("", KernelPreference()),
    (" CPU ", KernelPreference("cpu")),
    ("scan:mamba_ssm,fps:cpu", KernelPreference(None, (("scan", "mamba_ssm"), ("fps", "cpu")))),
    ("ref, scan : triton,", KernelPreference("ref", (("scan", "triton"),))),
])
def test_parse_global_and_per_op_entries(value, want):
    assert parse_kernel_env(value) == want


@pytest.mark.parametrize("value, match", [
    ("bogus", r"\$ZOO_KERNEL='bogus': 'bogus' is not a kernel backend; valid backends: ref, cpu, triton, mamba_ssm"),
    ("scan:cuda", r"'cuda' is not a kernel backend; valid backends: ref, cpu, triton, mamba_ssm"),
    ("fpss:cpu", r"'fpss' is not a kernel op; ops: scan, fps, knn, ball_query, sddmm"),
    ("cpu,ref", r"two global backends \('cpu', 'ref'\)"),
    ("fps:cpu,fps:ref", r"op 'fps' is given twice"),
    ("fps:mamba_ssm", r"op 'fps' has no 'mamba_ssm' backend; it has ref, cpu, triton"),
])
def test_parse_errors_name_the_entry_and_the_valid_names(value, match):
    with pytest.raises(ValueError, match=match):
        parse_kernel_env(value)


# ----------------------------------------------------------------------------------------------------- resolution
def test_precedence_explicit_then_per_op_then_global_then_auto(monkeypatch):
    t = torch.zeros(1)
    monkeypatch.delenv("ZOO_KERNEL", raising=False)
    assert {op: resolve(op, t) for op in OPS} == dict.fromkeys(OPS, "cpu")  # automatic on CPU tensors
    monkeypatch.setenv("ZOO_KERNEL", "ref,knn:cpu")
    assert resolve("fps", t) == "ref" and resolve("scan", t) == "ref" and resolve("knn", t) == "cpu"
    assert resolve("scan", t, backend="cpu") == "cpu"  # the keyword wins over the environment
    with pytest.raises(ValueError, match=r"backend='nope': 'nope' is not a kernel backend"):
        resolve("scan", t, backend="nope")
    with pytest.raises(ValueError, match=r"backend='triton' names 'triton', which this op does not have; "
                                         r"it has ref, cpu"):
        resolve("knn", t, backend="triton")


def test_global_backend_an_op_lacks_falls_back_and_logs_once(monkeypatch, caplog, fresh_log):
    monkeypatch.setenv("ZOO_KERNEL", "mamba_ssm")
    t = torch.zeros(1)
    with caplog.at_level(logging.INFO, logger="cuda_ext"):
        assert resolve("fps", t) == "cpu" and resolve("fps", t) == "cpu" and resolve("knn", t) == "cpu"
    msgs = [r.getMessage() for r in caplog.records if r.name == "cuda_ext"]
    assert len(msgs) == 2 and all(r.levelno == logging.INFO for r in caplog.records), msgs
    assert "prefers 'mamba_ssm', which op 'fps' does not have (it has ref, cpu, triton)" in msgs[0]
    assert resolve("scan", t) == "mamba_ssm"  # the op that has it gets it


def test_global_triton_leaves_knn_on_cpu_without_the_interpreter(monkeypatch, fresh_log):
    monkeypatch.setenv("ZOO_KERNEL", "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert resolve("knn", torch.zeros(1)) == "cpu" and resolve("ball_query", torch.zeros(1)) == "cpu"
    if _dispatch.triton_available():
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
            resolve("fps", torch.zeros(1))


# ----------------------------------------------------------------------------------------------------- through the ops
def test_mamba_ssm_preference_runs_point_ops(monkeypatch, fresh_log):
    """PoinTramba with ZOO_KERNEL=mamba_ssm: FPS, KNN, ball query and the SDDMM run (on their CPU paths)."""
    x = _cloud()
    monkeypatch.setenv("ZOO_KERNEL", "cpu")
    want_fps = pointcloud.furthest_point_sample(x, 16)
    want_knn = pointcloud.knn(x, x[:, :8], 5)
    want_bq = pointcloud.ball_query(0.8, 4, x, x[:, :8])
    want_group = pointcloud.fps_knn_group(x, 8, 4)
    monkeypatch.setenv("ZOO_KERNEL", "mamba_ssm")
    assert torch.equal(pointcloud.furthest_point_sample(x, 16), want_fps)
    got_knn = pointcloud.knn(x, x[:, :8], 5)
    assert torch.equal(got_knn[1], want_knn[1]) and torch.equal(got_knn[0], want_knn[0])
    assert torch.equal(pointcloud.ball_query(0.8, 4, x, x[:, :8]), want_bq)
    for got, want in zip(pointcloud.fps_knn_group(x, 8, 4), want_group):
        assert torch.equal(got, want)
    dy, xs = torch.randn(10, 6), torch.randn(10, 5)
    idx = torch.tensor([0, 7, 29])
    torch.testing.assert_close(sparse_grad.sparse_weight_grad(dy, xs, idx), (dy.T @ xs).flatten()[idx])


def test_per_op_override_picks_that_op_only(monkeypatch):
    """ZOO_KERNEL=fps:ref,scan:ref sends FPS and the scan to their references; KNN stays on its automatic path."""
    import cuda_ext.pointops as po
    import cuda_ext.selective_scan as ss

    calls = []
    real_fps, real_knn = po.reference.furthest_point_sample_ref, po.reference.knn_ref
    monkeypatch.setattr(po.reference, "furthest_point_sample_ref", lambda *a: calls.append("fps") or real_fps(*a))
    monkeypatch.setattr(po.reference, "knn_ref", lambda *a: calls.append("knn") or real_knn(*a))
    monkeypatch.setattr(ss, "selective_scan_ref", lambda *a, **k: calls.append("scan") or "ref-result")
    monkeypatch.setenv("ZOO_KERNEL", "fps:ref,scan:ref")
    x = _cloud()
    pointcloud.furthest_point_sample(x, 8)
    pointcloud.knn(x, x[:, :4], 3)
    u = torch.randn(1, 2, 3)
    B, C = torch.randn(1, 2, 3), torch.randn(1, 2, 3)
    assert ss.selective_scan_fn(u, u.abs(), -torch.rand(2, 2), B, C) == "ref-result"
    assert calls == ["fps", "scan"]
    monkeypatch.setenv("ZOO_KERNEL", "knn:ref")
    pointcloud.knn(x, x[:, :4], 3)
    pointcloud.furthest_point_sample(x, 8)
    assert calls == ["fps", "scan", "knn"]


def test_unknown_backend_error_reaches_every_op(monkeypatch):
    monkeypatch.setenv("ZOO_KERNEL", "cuda")
    x = _cloud()
    for call in (lambda: pointcloud.furthest_point_sample(x, 4), lambda: pointcloud.knn(x, x, 2),
                 lambda: pointcloud.ball_query(0.5, 2, x, x),
                 lambda: sparse_grad.sparse_weight_grad(torch.randn(3, 2), torch.randn(3, 2), torch.tensor([1]))):
        with pytest.raises(ValueError, match=r"'cuda' is not a kernel backend; valid backends: ref, cpu, triton, "
                                             r"mamba_ssm"):
            call()


def test_dispatch_imports_without_triton():
    code = "\n".join([
        "import sys; sys.modules['triton'] = None",
        "import torch, cuda_ext._dispatch as d, cuda_ext.pointops, cuda_ext.sparse_backprop, cuda_ext.selective_scan",
        "assert not d.triton_available() and d.resolve('fps', torch.zeros(1)) == 'cpu'",
        "assert not any(m.endswith('.triton') for m in sys.modules if m.startswith('cuda_ext'))",
    ])
    subprocess.run([sys.executable, "-c", code], check=True)
