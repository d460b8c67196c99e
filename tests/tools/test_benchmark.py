"""tools/benchmark.py: every benchmark runs end to end at tiny sizes and writes real, positive measurements, and
refuses to time a row that does not compute what its reference computes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]

TINY_ARGS = {
    "scan": ["--quick", "--skip-reference", "--repeat", "1", "--threads", "1"],
    "pointops": ["--quick", "--repeat", "1", "--threads", "1"],
    "pointramba": ["--variants", "pointramba_tiny", "pointramba_partseg_tiny", "--batch", "2", "--points", "256",
                   "--seg-batch", "2", "--seg-points", "256", "--repeat", "1", "--threads", "1"],
    "sara": ["--width", "0.125", "--latent", "8", "--batch", "1", "--repeat", "1", "--threads", "1", "--no-layer",
             "--variants", "lora", "sara_official", "sara_kernel", "sara_attn_kernel"],
    "supernet": ["--batch", "8", "--repeat", "1", "--threads", "1"],
    "ctta": ["--batch", "4", "--embed-dim", "24", "--depth", "1", "--num-aug", "2", "--cotta-aug", "2", "--repeat", "1",
             "--threads", "1"],
    "restore": ["--size", "96", "--tiles", "48", "--repeat", "1", "--threads", "1"],
}


def _bench(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "tools/benchmark.py", *args], cwd=REPO, capture_output=True, text=True,
                          env=env, timeout=900)


def _measured_rows(data) -> list[dict]:
    """Every table row (a dict with a ``name``) anywhere in a benchmark's JSON."""
    if isinstance(data, dict):
        if "name" in data:
            return [data]
        return [r for v in data.values() for r in _measured_rows(v)]
    if isinstance(data, list):
        return [r for v in data for r in _measured_rows(v)]
    return []


def test_list_names_every_benchmark():
    proc = _bench("--list")
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in TINY_ARGS:
        assert name in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TINY_ARGS))
def test_benchmark_runs_and_writes_json(name, tmp_path):
    out = tmp_path / "rows.json"
    proc = _bench(name, *TINY_ARGS[name], "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    rows = _measured_rows(data["tables"])
    assert rows, f"{name}: no measured rows in its JSON"
    for row in rows:
        timings = [v for k, v in row.items() if k.endswith(("_ms", "_s")) and v is not None]
        assert timings and all(isinstance(v, (int, float)) and v > 0 for v in timings), row
    # a results file tools/report.py renders: the command that measured it (without where it was written)
    from zoo.studies.report import load_results, render_table

    results = load_results(out)
    assert results["kind"] == "benchmark" and results["benchmark"] == name
    assert results["command"] == f"python tools/benchmark.py {name} " + " ".join(TINY_ARGS[name])
    for key, table in results["tables"].items():
        text = render_table(results, key, "rows.json")
        assert text.count("\n| `") == len(table["rows"]) and table["title"] in text


# ----------------------------------------------------------------------------------------------------- the checks
# Each benchmark checks that its rows compute the same result before timing them; these tests make one row
# compute something else and assert that the benchmark refuses (and times nothing), and that honest rows pass.
@pytest.fixture
def bench(monkeypatch):
    """zoo.benchmarks in-process, with ``time_fn`` of each benchmark module recording its calls."""
    import importlib

    mods = {name: importlib.import_module(f"zoo.benchmarks.{name}") for name in ("_common", "scan", "pointops", "sara")}
    timed = []

    def recording_time_fn(fn, *, warmup=1, repeat=5, device=None):
        timed.append({"warmup": warmup, "repeat": repeat})
        return mods["_common"].time_fn(fn, warmup=warmup, repeat=repeat, device=device)

    for name in ("scan", "pointops", "sara"):
        monkeypatch.setattr(mods[name], "time_fn", recording_time_fn)
    mods["timed"] = timed
    return mods


def _args(module, *argv):
    import argparse

    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    args = parser.parse_args(list(argv))
    args.json = None
    return args


TINY_SCAN = [(2, 8, 4, 16)]


def _scan_args(bench, monkeypatch, *extra):
    scan = bench["scan"]
    monkeypatch.setattr(scan, "QUICK_CONFIGS", TINY_SCAN)
    monkeypatch.setattr(scan, "cpu_peak_mb", lambda *a: 1.0)  # the memory probe's subprocess is covered above
    return _args(scan, "--quick", "--device", "cpu", "--threads", "1", *extra)


def test_scan_times_checked_rows_with_the_same_warmup(bench, monkeypatch, capsys):
    bench["scan"].run(_scan_args(bench, monkeypatch))
    assert "checked against the reference" in capsys.readouterr().out
    # reference + zoo_cpu (mambapy when installed), fwd and fwd+bwd each: every row, the baseline too, warms up once
    assert len(bench["timed"]) >= 4 and all(t["warmup"] == 1 for t in bench["timed"]), bench["timed"]


def test_scan_refuses_a_row_with_another_output(bench, monkeypatch, capsys):
    scan = bench["scan"]
    real = scan.forward_fn

    def forward_fn(backend):
        fwd = real(backend)
        return (lambda **kw: fwd(**kw) * 1.01) if backend == "zoo_cpu" else fwd

    monkeypatch.setattr(scan, "forward_fn", forward_fn)
    with pytest.raises(bench["_common"].BenchmarkCheckError,
                       match=r"scan: row 'zoo_cpu' disagrees with 'reference' on the output .*not timing it"):
        scan.run(_scan_args(bench, monkeypatch, "--skip-reference"))
    assert bench["timed"] == []
    import zoo.benchmarks as benchmark  # the command line prints the check's message and exits 2

    capsys.readouterr()
    assert benchmark.main(["scan", "--quick", "--device", "cpu", "--threads", "1", "--skip-reference"]) == 2
    assert "error: scan: row 'zoo_cpu' disagrees with 'reference' on the output" in capsys.readouterr().err
    assert bench["timed"] == []


def test_scan_refuses_a_row_with_other_gradients(bench, monkeypatch):
    """Same forward values, but the gradient of delta is 1.5x: only the gradient check can catch it."""
    scan = bench["scan"]
    real = scan.forward_fn

    def forward_fn(backend):
        fwd = real(backend)
        if backend != "zoo_cpu":
            return fwd
        return lambda delta, **kw: fwd(delta=delta * 1.5 - delta.detach() * 0.5, **kw)

    monkeypatch.setattr(scan, "forward_fn", forward_fn)
    with pytest.raises(bench["_common"].BenchmarkCheckError, match=r"row 'zoo_cpu' .* on the gradient of delta"):
        scan.run(_scan_args(bench, monkeypatch))
    assert bench["timed"] == []


def _pointops_args(bench, monkeypatch):
    monkeypatch.setattr(bench["pointops"], "CONFIGS", [(2, 96, 12, 4)])
    monkeypatch.setattr(bench["pointops"], "FP_CONFIGS", [(2, 40, 9, 5)])
    monkeypatch.setattr(bench["pointops"], "peak_memory", lambda fn, device: None)
    return _args(bench["pointops"], "--quick", "--device", "cpu", "--threads", "1")


def test_pointops_honest_rows_pass_and_agree(bench, monkeypatch):
    tables = list(bench["pointops"].run(_pointops_args(bench, monkeypatch)).values())
    fps, knn, fp = tables[0]["rows"], tables[1]["rows"], tables[2]["rows"]
    assert [r["name"] for r in fps] == ["naive_loop", "dense_nxn", "zoo_cpu"] and fps[2]["same_idx"] is True
    assert [r["name"] for r in fp] == ["pointnet2_py", "zoo_ref", "zoo_cpu"]
    assert knn[1]["same_set"] == 1.0 and len(bench["timed"]) == 8


def test_pointops_refuses_feature_propagation_with_other_values(bench, monkeypatch):
    from zoo.ops import pointcloud

    real = pointcloud.three_interpolate
    monkeypatch.setattr(pointcloud, "three_interpolate", lambda f, idx, w: real(f, idx, w.flip(-1)))
    with pytest.raises(bench["_common"].BenchmarkCheckError,
                       match=r"row 'zoo_ref' feature propagation values differ from pointnet2_py"):
        bench["pointops"]._fp_rows(2, 40, 9, 5, "cpu", 1, lambda env: __import__("contextlib").nullcontext())
    assert bench["timed"] == []


def test_pointops_refuses_zoo_fps_with_other_indices(bench, monkeypatch):
    from zoo.ops import pointcloud

    real = pointcloud.furthest_point_sample
    monkeypatch.setattr(pointcloud, "furthest_point_sample", lambda xyz, M: real(xyz, M).flip(1))
    with pytest.raises(bench["_common"].BenchmarkCheckError,
                       match=r"row 'zoo_cpu' returns other FPS indices than 'naive_loop' in 2 of 2 clouds"):
        bench["pointops"].run(_pointops_args(bench, monkeypatch))
    assert bench["timed"] == []


def test_pointops_refuses_a_baseline_that_is_no_fps(bench, monkeypatch):
    pointops = bench["pointops"]
    real = pointops.fps_dense_nxn
    monkeypatch.setattr(pointops, "fps_dense_nxn", lambda xyz, M: real(xyz, M)[:, [0, 2, 1, *range(3, M)]])
    with pytest.raises(bench["_common"].BenchmarkCheckError, match=r"row 'dense_nxn' is not a furthest point sampling"):
        pointops.run(_pointops_args(bench, monkeypatch))
    assert bench["timed"] == []


def test_pointops_refuses_knn_with_other_neighbour_sets(bench, monkeypatch):
    from zoo.ops import pointcloud

    real = pointcloud.knn
    monkeypatch.setattr(pointcloud, "knn", lambda ref, q, k: tuple(t[..., 1:k + 1] for t in real(ref, q, k + 1)))
    xyz = torch.rand(2, 64, 3, generator=torch.Generator().manual_seed(0))
    with pytest.raises(bench["_common"].BenchmarkCheckError, match=r"row 'zoo_cpu' returns other neighbour sets"):
        bench["pointops"]._knn_rows(xyz, xyz[:, :8], 4, "cpu", 1)
    assert bench["timed"] == []


def _sara_layer_args(bench, monkeypatch):
    sara = bench["sara"]
    monkeypatch.setattr(sara, "LAYER_IN", 24)
    monkeypatch.setattr(sara, "LAYER_OUT", 40)
    monkeypatch.setattr(sara, "LAYER_TOKENS", 16)
    return _args(sara, "--batch", "2", "--repeat", "1", "--threads", "1", "--fraction", "0.2")


@pytest.mark.parametrize("variant", ["layer_dense", "layer_kernel"])
def test_sara_layer_rows_pass_the_gradient_check(bench, monkeypatch, variant):
    row = bench["sara"].measure_layer(variant, _sara_layer_args(bench, monkeypatch))
    assert row["time_ms"] > 0 and len(bench["timed"]) == 1


def test_sara_layer_refuses_a_kernel_with_other_gradients(bench, monkeypatch):
    import cuda_ext.sparse_backprop as sb

    real = sb.sampled_weight_grad
    monkeypatch.setattr(sb, "sampled_weight_grad", lambda *a: real(*a) * 1.1)
    with pytest.raises(bench["_common"].BenchmarkCheckError,
                       match=r"sara: row 'layer_kernel' disagrees with 'dense dW gathered' on the gradient of its "
                             r"weight values"):
        bench["sara"].measure_layer("layer_kernel", _sara_layer_args(bench, monkeypatch))
    assert bench["timed"] == []


def test_sara_refuses_a_variant_that_starts_from_other_weights(bench, monkeypatch):
    pytest.importorskip("diffusers")
    pytest.importorskip("peft")
    from zoo.adapters import sara as zoo_sara

    class Shifted(zoo_sara.SaRAOptimizer):
        def __init__(self, model, **kw):
            super().__init__(model, **kw)
            with torch.no_grad():
                self.param_groups[0]["params"][0].add_(0.5)  # a non-zero initial delta: another function

    monkeypatch.setattr(zoo_sara, "SaRAOptimizer", Shifted)
    args = _args(bench["sara"], "--width", "0.125", "--latent", "8", "--batch", "1", "--repeat", "1", "--threads", "1")
    args.width, args.latent = 0.125, 8
    with pytest.raises(bench["_common"].BenchmarkCheckError,
                       match=r"row 'sara_dense' gives loss .* at its initial weights where the unmodified UNet gives"):
        bench["sara"].measure("sara_dense", args)
    assert bench["timed"] == []


def test_sara_rows_must_agree_after_the_same_step(bench):
    check = bench["sara"].check_same_step
    rows = [{"name": "full", "loss0": 1.0, "loss1": 0.9}, {"name": "sara_dense", "loss0": 1.0, "loss1": 0.95},
            {"name": "sara_kernel", "loss0": 1.0, "loss1": 0.95}]
    check(rows)
    with pytest.raises(bench["_common"].BenchmarkCheckError,
                       match=r"row 'sara_kernel' reaches loss 0.96 after one AdamW step where 'sara_dense' "
                             r"reaches 0.95"):
        check([*rows[:2], {**rows[2], "loss1": 0.96}])
    with pytest.raises(bench["_common"].BenchmarkCheckError, match=r"row 'sara_dense' started from loss 1.1"):
        check([rows[0], {**rows[1], "loss0": 1.1}])


def test_sara_parent_stops_when_a_child_check_fails(bench, monkeypatch, tmp_path):
    sara = bench["sara"]
    msg = "sara: row 'sara_kernel' gives loss 2 at its initial weights ...; not timing it"
    monkeypatch.setattr(sara.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(
        a, sara.CHECK_EXIT, "", f"Traceback ...\nBenchmarkCheckError: {msg}\n"))
    args = _args(sara, "--width", "0.125", "--latent", "8")
    with pytest.raises(bench["_common"].BenchmarkCheckError, match=r"^sara: row 'sara_kernel' gives loss 2"):
        sara._spawn("sara_kernel", args)
