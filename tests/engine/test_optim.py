"""Optimiser groups, lr schedule, EMA, atomic saves, RNG capture, mixed precision."""
from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from torch import nn

from zoo.engine.checkpoint import atomic_save, capture_rng_state, restore_rng_state
from zoo.engine.ema import ModelEma
from zoo.engine.optim import OptimConfig, ScheduleConfig, build_optimizer, build_scheduler, param_groups_weight_decay


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.A_log = nn.Parameter(torch.zeros(4, 2))
        self.A_log._no_weight_decay = True
        self.pos = nn.Parameter(torch.zeros(1, 3, 4))
        self.frozen = nn.Parameter(torch.zeros(4, 4), requires_grad=False)

    def no_weight_decay(self):
        return {"pos"}


def test_no_decay_on_bias_norm_and_flagged_params():
    decay, no_decay = param_groups_weight_decay(Net(), 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    net = Net()
    names = {id(p): n for n, p in net.named_parameters()}
    groups = param_groups_weight_decay(net, 0.05)
    assert {names[id(p)] for p in groups[0]["params"]} == {"fc.weight"}
    assert {names[id(p)] for p in groups[1]["params"]} == {"fc.bias", "norm.weight", "norm.bias", "A_log", "pos"}


def test_optimizer_names():
    for name, cls in [("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD), ("adam", torch.optim.Adam)]:
        assert isinstance(build_optimizer(Net(), OptimConfig(name=name)), cls)
    with pytest.raises(ValueError, match="optim.name"):
        build_optimizer(Net(), OptimConfig(name="lion"))


def test_warmup_then_cosine_per_step():
    opt = build_optimizer(Net(), OptimConfig(lr=1.0))
    sched = build_scheduler(opt, ScheduleConfig(warmup_epochs=1, min_lr=0.1), steps_per_epoch=10, epochs=5)
    lrs = []
    for _ in range(50):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == 0.0 and lrs[5] == pytest.approx(0.5) and lrs[10] == pytest.approx(1.0)
    mid = 10 + 20  # halfway through the 40 cosine steps
    assert lrs[mid] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] > 0.1


def test_ema_average():
    model = nn.Linear(2, 2)
    ema = ModelEma(model, decay=0.5, warmup=False)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    torch.testing.assert_close(ema.module.weight, start + 0.5)
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_atomic_save_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "last.pt"
    atomic_save({"a": torch.ones(1)}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_save({"a": Unpicklable()}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(1))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_rng_state_round_trip(tmp_path):
    state = capture_rng_state()
    atomic_save(state, tmp_path / "rng.pt")
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


def test_exponential_schedule_decays_per_epoch_to_a_constant_floor():
    """BigNAS's schedule: warm-up, then lr * decay_rate ** epochs, never below min_lr."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, ScheduleConfig(name="exponential", decay_rate=0.5, min_lr=0.2, warmup_epochs=1),
                            steps_per_epoch=10, epochs=6)
    lrs = []
    for _ in range(60):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == 0.0 and lrs[10] == 1.0  # end of warm-up
    assert lrs[15] == pytest.approx(0.5 ** 0.5) and lrs[20] == pytest.approx(0.5)
    assert lrs[30] == pytest.approx(0.25) and lrs[40] == lrs[59] == pytest.approx(0.2)  # the constant ending
