"""Trainer: learning, exact resume, gradient accumulation, DDP equivalence, checkpoints and logs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import final_weights, run_toy

HERE = Path(__file__).resolve().parent


def test_loss_decreases_and_run_dir_complete(tmp_path):
    trainer = run_toy(tmp_path, tmp_path / "run", ["trainer.epochs=6"])
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    losses = [float(r.split(",")[header.index("train_loss")]) for r in rows[1:]]
    assert len(losses) == 6 and losses[-1] < 0.5 * losses[0]
    summary = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert summary["final"]["top1"] > 90 and summary["epochs"] == 6
    for name in ("last.pt", "best.pt", "confusion_matrix.csv", "confusion_matrix.png", "per_class_accuracy.csv"):
        assert (tmp_path / "run" / name).is_file(), name
    assert not list((tmp_path / "run").glob("*.tmp*")), "temporary checkpoint files left behind"
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert best["metric"] == "top1" and best["value"] == trainer.best["value"]


class _Interrupt(Exception):
    pass


def _interrupt_after(epoch_to_stop: int):
    def callback(trainer, epoch, metrics):
        if epoch == epoch_to_stop:
            raise _Interrupt

    return callback


@pytest.mark.parametrize("extra", [[], ["trainer.ema_decay=0.9", "trainer.clip_grad_norm=1.0"]], ids=["plain", "ema+clip"])
def test_resume_is_bitwise_exact(tmp_path, extra):
    full = final_weights(run_toy(tmp_path, tmp_path / "full", extra))
    with pytest.raises(_Interrupt):
        run_toy(tmp_path, tmp_path / "cut", extra, callbacks=[_interrupt_after(2)])
    assert torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["epoch"] == 2
    resumed = run_toy(tmp_path, tmp_path / "cut", extra, resume="auto")
    assert resumed.epoch == 4
    for k, v in final_weights(resumed).items():
        assert torch.equal(v, full[k]), k


def test_resume_auto_without_checkpoint_starts_fresh(tmp_path):
    trainer = run_toy(tmp_path, tmp_path / "run", ["trainer.epochs=1"], resume="auto")
    assert trainer.epoch == 1


def test_resume_missing_path_is_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        run_toy(tmp_path, tmp_path / "run", ["trainer.epochs=1"], resume=str(tmp_path / "nope.pt"))


def test_gradient_accumulation_matches_large_batch(tmp_path):
    common = ["optim.momentum=0.0", "trainer.epochs=2"]
    big = final_weights(run_toy(tmp_path, tmp_path / "big", common + ["data.batch_size=32"]))
    acc = final_weights(run_toy(tmp_path, tmp_path / "acc", common + ["data.batch_size=16", "trainer.grad_accum_steps=2"]))
    for k in big:
        torch.testing.assert_close(acc[k], big[k], rtol=1e-5, atol=1e-6)


@pytest.mark.ddp
def test_two_process_ddp_matches_single_process(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "PYTHONPATH": str(HERE.parents[1])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(HERE / "ddp_worker.py"), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    single = final_weights(run_toy(tmp_path, tmp_path / "single"))
    for k in single:
        assert torch.equal(rank0[k], rank1[k]), f"ranks differ at {k}"
        torch.testing.assert_close(rank0[k], single[k], rtol=1e-5, atol=1e-5)
    summary = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert summary["world_size"] == 2


def test_mixed_precision_no_typed_on_the_command_line_is_no():
    """``trainer.mixed_precision=no`` as typed: YAML 1.1 reads the bare ``no`` as false, which means "no"; other
    values are still refused naming the key."""
    from zoo.config import apply_overrides, validate_config
    from zoo.engine.trainer import TrainerConfig
    from zoo.errors import ConfigError

    value = apply_overrides({"trainer": {}}, ["trainer.mixed_precision=no"])["trainer"]["mixed_precision"]
    assert TrainerConfig(mixed_precision=value).mixed_precision == "no"
    # through the schema, as a run validates its config (the str field turns the bool into "False" first)
    assert validate_config({"mixed_precision": value}, TrainerConfig).mixed_precision == "no"
    with pytest.raises(ConfigError, match="trainer.mixed_precision"):
        TrainerConfig(mixed_precision="fp8")
