"""tools/train.py and tools/eval.py end to end (subprocesses), and their error messages."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TINY = ["model.name=pointnet_tiny", "data.batch_size=16", "data.kwargs.num_points=128",
        "data.kwargs.samples_per_class=8", "trainer.epochs=2", "trainer.tensorboard=false"]


def run(*args, cwd=REPO):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    proc = run("tools/train.py", "configs/pointnet/synthetic_shapes.yaml", *TINY, "--output", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_train_writes_run_dir(trained):
    out, proc = trained
    assert "final: top1=" in proc.stdout
    for name in ("config.yaml", "metrics.csv", "metrics.json", "last.pt", "best.pt", "confusion_matrix.png"):
        assert (out / name).is_file(), name
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 2


def test_resume_auto_continues(trained, tmp_path):
    out, _ = trained
    proc = run("tools/train.py", out / "config.yaml", "trainer.epochs=3", "--output", out, "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Resumed from" in proc.stderr and json.loads((out / "metrics.json").read_text())["epochs"] == 3


def test_eval_reproduces_training_metrics(trained, tmp_path):
    out, _ = trained
    proc = run("tools/eval.py", "--checkpoint", out / "best.pt", "--config", out / "config.yaml", "--output", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads(proc.stdout.strip().splitlines()[-1])
    best = json.loads((out / "metrics.json").read_text())["best"]
    assert metrics["top1"] == pytest.approx(best["value"], abs=1e-6)
    assert (tmp_path / "metrics.json").is_file() and (tmp_path / "confusion_matrix.csv").is_file()


def test_missing_config_file():
    proc = run("tools/train.py", "configs/does_not_exist.yaml")
    assert proc.returncode == 2 and "not found" in proc.stderr and "configs/does_not_exist.yaml" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_override_syntax():
    proc = run("tools/train.py", "configs/pointnet/synthetic_shapes.yaml", "trainer.epochs")
    assert proc.returncode == 2 and "Bad override 'trainer.epochs'" in proc.stderr


def test_unknown_config_key():
    proc = run("tools/train.py", "configs/pointnet/synthetic_shapes.yaml", "trainer.epoch=3")
    assert proc.returncode == 2 and "Did you mean 'trainer.epochs'" in proc.stderr


def test_missing_checkpoint_file(tmp_path):
    proc = run("tools/eval.py", "--checkpoint", tmp_path / "gone.pt", "--config", "configs/pointnet/synthetic_shapes.yaml", *TINY)
    assert proc.returncode == 2 and "gone.pt" in proc.stderr and "does not exist" in proc.stderr


def test_print_config_shows_merged_values():
    proc = run("tools/train.py", "configs/pointnet/synthetic_shapes.yaml", "optim.lr=0.5", "--print-config")
    assert proc.returncode == 0 and "lr: 0.5" in proc.stdout and "recipe: classify" in proc.stdout


def test_packaged_config_name_works_from_another_folder(tmp_path):
    proc = run(REPO / "tools" / "train.py", "pointnet/synthetic_shapes", "optim.lr=0.5", "--print-config", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "lr: 0.5" in proc.stdout and "name: pointnet_tiny" in proc.stdout


def test_eval_refuses_a_reinitialised_head(tmp_path):
    """Shipped 10-class weights on a 3-class dataset: an error naming both counts, not a 'random head' accuracy."""
    proc = run("tools/eval.py", "--config", "configs/pointnet/synthetic_shapes.yaml", "--model", "pointramba_small_modelnet10",
               "--pretrained", "data.kwargs.classes=[sphere,cube,cylinder]", "data.kwargs.samples_per_class=2")
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "10" in proc.stderr and "3" in proc.stderr and "Traceback" not in proc.stderr
    assert "top1" not in proc.stdout
