"""tools/benchmark.py: every benchmark runs end to end at tiny sizes and writes real, positive measurements."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

TINY_ARGS = {
    "scan": ["--quick", "--skip-reference", "--repeat", "1", "--threads", "1"],
    "pointops": ["--quick", "--repeat", "1", "--threads", "1"],
    "pointramba": ["--variants", "pointramba_tiny", "--batch", "2", "--points", "256", "--repeat", "1", "--threads", "1"],
    "sara": ["--width", "0.125", "--latent", "8", "--batch", "1", "--repeat", "1", "--threads", "1", "--no-layer",
             "--variants", "lora", "sara_official", "sara_kernel", "sara_attn_kernel"],
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
    rows = _measured_rows(data)
    assert rows, f"{name}: no measured rows in its JSON"
    for row in rows:
        timings = [v for k, v in row.items() if k.endswith(("_ms", "_s")) and v is not None]
        assert timings and all(isinstance(v, (int, float)) and v > 0 for v in timings), row
