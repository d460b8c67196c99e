"""Runs are never lost or silently wrong (issue 14): overwrite refusal, exact resume with data-loader workers after a
real Ctrl-C, the config in force on resume, validation messages, pipelines of stages."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import toys

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def cli(*args, cwd, env=None, timeout=300):
    """``tools/train.py`` (with the test toys registered) in a subprocess of its own session (process group)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, str(HERE / "toy_cli.py"), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, env=env, timeout=timeout, start_new_session=True)


@pytest.fixture
def toy_config(tmp_path):
    path = tmp_path / "toy.yaml"
    path.write_text(toys.TOY_CONFIG)
    return path


def _weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "last.pt", weights_only=True)["model"]


def test_second_run_refuses_to_overwrite_a_finished_one(toy_config, tmp_path):
    out = tmp_path / "runs" / "demo"
    first = cli(toy_config, "trainer.epochs=2", "--output", out, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    second = cli(toy_config, "trainer.epochs=1", "--output", out, cwd=tmp_path)
    assert second.returncode == 2
    assert "already holds a finished run" in second.stderr and "--resume" in second.stderr and "--overwrite" in second.stderr
    assert "Traceback" not in second.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before, "the finished run was touched"
    third = cli(toy_config, "trainer.epochs=1", "--output", out, "--overwrite", cwd=tmp_path)
    assert third.returncode == 0, third.stderr[-2000:]
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 1
    assert len((out / "metrics.csv").read_text().splitlines()) == 2, "--overwrite must start the logs afresh"


def test_default_output_of_a_rerun_is_refused_too(toy_config, tmp_path):
    assert cli(toy_config, "trainer.epochs=1", cwd=tmp_path).returncode == 0
    again = cli(toy_config, "trainer.epochs=1", cwd=tmp_path)
    assert again.returncode == 2 and "runs/toy" in again.stderr


@pytest.mark.slow
def test_ctrl_c_with_workers_saves_and_resumes_bitwise(toy_config, tmp_path):
    """A real SIGINT to the process group (workers too) in epoch 2 saves last.pt mid-epoch and prints the resume
    command; resuming with 2 data-loader workers gives bit for bit the weights of an uninterrupted run."""
    common = ["recipe=classify_sigint", "data.name=toy_noisy_blobs", "data.num_workers=2", "data.kwargs.n=192",
              "trainer.epochs=3"]
    full = cli(toy_config, *common, "--output", tmp_path / "full", cwd=tmp_path)
    assert full.returncode == 0, full.stderr[-3000:]
    cut = cli(toy_config, *common, "--output", tmp_path / "cut", cwd=tmp_path, env={"ZOO_TEST_SIGINT_STEP": "17"})
    assert cut.returncode == 130, cut.stderr[-3000:]
    assert "Traceback" not in cut.stderr and "KeyboardInterrupt" not in cut.stderr
    assert "--resume" in cut.stderr and str(tmp_path / "cut") in cut.stderr
    state = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert (state["epoch"], state["global_step"], state["batch_in_epoch"]) == (1, 17, 5), "saved mid-epoch"
    resumed = cli(toy_config, *common, "--output", tmp_path / "cut", "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "cut")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rows = (tmp_path / "cut" / "metrics.csv").read_text().splitlines()
    assert rows == (tmp_path / "full" / "metrics.csv").read_text().splitlines(), "logs of the resumed run differ"
    summary = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert summary["sessions"] == 2 and summary["train_time_s"] > 0


def test_resume_keeps_the_config_in_force(toy_config, tmp_path):
    out = tmp_path / "run"
    assert cli(toy_config, "trainer.epochs=2", "--output", out, cwd=tmp_path).returncode == 0
    refused = cli(toy_config, "trainer.epochs=3", "optim.lr=0.5", "--output", out, "--resume", cwd=tmp_path)
    assert refused.returncode == 2 and "optim.lr: the run has 0.1, now 0.5" in refused.stderr
    ok = cli(toy_config, "trainer.epochs=3", "--output", out, "--resume", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr[-2000:]
    import yaml

    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["trainer"]["epochs"] == 3 and config["optim"]["lr"] == 0.1
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["history"][0]["changes"] == {"trainer.epochs": [2, 3]}
    assert summary["sessions"] == 2


@pytest.mark.parametrize("override, message", [
    ("trainer.epochs=0", "trainer.epochs must be an integer >= 1, got 0"),
    ("trainer.epochs=-1", "trainer.epochs must be an integer >= 1, got -1"),
    ("data.batch_size=0", "data.batch_size must be an integer >= 1, got 0"),
    ("trainer.mixed_precision=fp8", "trainer.mixed_precision must be one of no, fp16, bf16, got 'fp8'"),
    ("model.num_classes='10'", "model.num_classes must be a non-negative integer, got '10'"),
    ("epochs=2", "Did you mean 'trainer.epochs'?"),
])
def test_bad_settings_fail_early_naming_the_key(toy_config, tmp_path, override, message):
    proc = cli(toy_config, override, "--output", tmp_path / "run", cwd=tmp_path)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists(), "a run that fails to start must leave no directory"


def test_failed_start_leaves_no_run_dir(toy_config, tmp_path):
    proc = cli(toy_config, "data.root=/nonexistent", "data.name=modelnet10", "--output", tmp_path / "run", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "error:" in proc.stderr
    assert not (tmp_path / "run").exists()


def _pipeline(tmp_path: Path, toy_config: Path) -> Path:
    stage2 = tmp_path / "refine.yaml"
    stage2.write_text("_base_: [toy.yaml]\nmodel:\n  name: toy_mlp\n  checkpoint_path: ???\noptim: {lr: 0.01}\n")
    path = tmp_path / "pipe.yaml"
    path.write_text("pipeline:\n"
                    "  - {name: train, config: toy.yaml}\n"
                    "  - name: refine\n"
                    "    config: refine.yaml\n"
                    "    overrides: {model.checkpoint_path: '${stage:train}/last.pt'}\n")
    return path


def test_pipeline_runs_stages_refers_by_name_and_resumes_stage_by_stage(toy_config, tmp_path):
    pipe = _pipeline(tmp_path, toy_config)
    only_second = cli(pipe, "trainer.epochs=1", "--stage", "refine", "--output", tmp_path / "p", cwd=tmp_path)
    assert only_second.returncode == 2 and "'train' has not finished" in only_second.stderr
    first = cli(pipe, "trainer.epochs=1", "--stage", "train", "--output", tmp_path / "p", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    assert (tmp_path / "p" / "train" / "metrics.json").is_file() and not (tmp_path / "p" / "refine").exists()
    rest = cli(pipe, "trainer.epochs=1", "--output", tmp_path / "p", cwd=tmp_path)
    assert rest.returncode == 0, rest.stderr[-2000:]
    assert "stage 'train' is finished" in rest.stderr
    refine_cfg = (tmp_path / "p" / "refine" / "config.yaml").read_text()
    assert str((tmp_path / "p" / "train" / "last.pt").resolve()) in refine_cfg
    summary = json.loads((tmp_path / "p" / "metrics.json").read_text())
    assert set(summary["stages"]) == {"train", "refine"} and summary["complete"]
    # the refine stage started from the first stage's weights: its first epoch beats a fresh start
    refine_rows = (tmp_path / "p" / "refine" / "metrics.csv").read_text().splitlines()
    header = refine_rows[0].split(",")
    assert float(refine_rows[1].split(",")[header.index("train_loss")]) < 0.5


def test_stage_reference_outside_a_pipeline_is_a_clear_error(tmp_path, toy_config):
    _pipeline(tmp_path, toy_config)
    proc = cli(tmp_path / "refine.yaml", "model.checkpoint_path=${stage:train}/last.pt", cwd=tmp_path)
    assert proc.returncode == 2 and "not run as a stage of a pipeline" in proc.stderr
    missing = cli(tmp_path / "refine.yaml", cwd=tmp_path)
    assert missing.returncode == 2 and "model.checkpoint_path must be set" in missing.stderr


def test_truncated_last_pt_on_resume_names_the_file(toy_config, tmp_path):
    out = tmp_path / "run"
    assert cli(toy_config, "trainer.epochs=1", "--output", out, cwd=tmp_path).returncode == 0
    last = out / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    proc = cli(toy_config, "trainer.epochs=2", "--output", out, "--resume", cwd=tmp_path)
    assert proc.returncode == 2 and str(last) in proc.stderr and "truncated or corrupt" in proc.stderr
    assert "weights_only=False" not in proc.stderr and "Traceback" not in proc.stderr


def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    from zoo.engine.checkpoint import atomic_save

    path = tmp_path / "last.pt"
    atomic_save({"a": torch.ones(1)}, path)

    def full_disk(obj, f, *args, **kwargs):
        with open(f, "wb") as handle:
            handle.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="Is the disk full") as info:
        atomic_save({"a": torch.zeros(1)}, path)
    assert str(path) in str(info.value) and "previous last.pt is intact" in str(info.value)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(1))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_resume_drops_log_rows_the_checkpoint_does_not_have(toy_config, tmp_path):
    """A run stopped between writing a metrics row and saving (save_every=2 here) resumes without repeated rows."""
    out = tmp_path / "run"
    assert cli(toy_config, "trainer.epochs=3", "trainer.save_every=2", "--output", out, cwd=tmp_path).returncode == 0
    # make it look interrupted after epoch 3's row but with last.pt of epoch 2
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["epoch"] == 3
    (out / "metrics.json").unlink()
    early = cli(toy_config, "trainer.epochs=2", "--output", tmp_path / "two", cwd=tmp_path)
    assert early.returncode == 0
    (out / "last.pt").write_bytes((tmp_path / "two" / "last.pt").read_bytes())
    proc = cli(toy_config, "trainer.epochs=3", "trainer.save_every=2", "--output", out, "--resume", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    epochs = [r.split(",")[0] for r in (out / "metrics.csv").read_text().splitlines()[1:]]
    assert epochs == ["1", "2", "3"]
