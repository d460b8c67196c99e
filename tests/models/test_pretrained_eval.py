"""Shipped classification weights reproduce their published accuracy through ``tools/eval.py``.

Each entry of ``checkpoints/manifest.yaml`` that has an ``eval_command`` is run exactly as written (the README
and the model's pretrained cfg quote the same command) and its top-1 / mean-class accuracy must match the
recorded metrics to ±0.1 point. Needs the sample data (``../shared/data`` or ``$ZOO_DATA``).
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from zoo.hub import CHECKPOINT_DIR
from zoo.registry import get_pretrained_cfg

REPO = Path(__file__).resolve().parents[2]
MANIFEST = yaml.safe_load((CHECKPOINT_DIR / "manifest.yaml").read_text()) or []
EVALUATED = [e for e in MANIFEST if str(e.get("eval_command", "")).startswith("python tools/eval.py")]


@pytest.mark.data
@pytest.mark.slow
@pytest.mark.parametrize("entry", EVALUATED or [pytest.param(None, marks=pytest.mark.skip("no evaluated weights"))],
                         ids=[e["name"] for e in EVALUATED] or ["none"])
def test_eval_command_reproduces_published_metrics(entry, shared_data, tmp_path):
    cmd = shlex.split(entry["eval_command"])
    assert cmd[:2] == ["python", "tools/eval.py"]
    env = {**os.environ, "ZOO_DATA": str(shared_data), "OMP_NUM_THREADS": "2"}
    proc = subprocess.run([sys.executable, *cmd[1:], "--output", str(tmp_path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    published = get_pretrained_cfg(entry["name"]).metrics
    assert published == entry["metrics"], "manifest and pretrained cfg disagree on the metrics"
    for key, value in published.items():
        assert metrics[key] == pytest.approx(value, abs=0.1), f"{entry['name']}: {key} {metrics[key]:.2f} vs {value}"


@pytest.mark.data
@pytest.mark.slow
def test_shipped_training_pipeline_runs_end_to_end(shared_data, tmp_path):
    """The pipeline that made the shipped ModelNet10 weights (train -> refine from ``${stage:train}/last.pt``) runs
    with its real configs and data, shortened to 2 steps per stage."""
    env = {**os.environ, "ZOO_DATA": str(shared_data), "OMP_NUM_THREADS": "2"}
    out = tmp_path / "pipe"
    proc = subprocess.run([sys.executable, "tools/train.py", "configs/pointramba/modelnet10_small_pipeline.yaml",
                           "trainer.epochs=1", "trainer.max_steps_per_epoch=2", "eval.bn_recalibration_batches=2",
                           "trainer.tensorboard=false", "--output", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    refine = yaml.safe_load((out / "refine" / "config.yaml").read_text())
    assert refine["model"]["checkpoint_path"] == str((out / "train" / "last.pt").resolve())
    assert refine["optim"]["lr"] == 3.0e-4
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["complete"] and set(summary["stages"]) == {"train", "refine"}
