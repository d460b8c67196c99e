"""Every registered adaptation method implements the one adapter interface (zoo/adapters/base.py).

One small model, every method: apply (base frozen, only the method's tensors train), a training step moves the
outputs, state_dict / load_state_dict and save / from_saved / load reproduce them, merge / unmerge and
enable / disable behave. A method registered without an entry here fails :func:`test_the_sweep_covers_every_method`:
adding a method means adding it to the sweep.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from zoo.adapters.base import AdapterMethod, adapter_names, build_adapter


class Net(nn.Module):
    """Convolutions, a linear block and a linear head."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 1)
        self.attn = nn.Module()
        self.attn.qkv = nn.Linear(8, 8)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        h = self.conv2(torch.relu(self.conv1(x))).mean((2, 3))
        return self.head(h + self.attn.qkv(h))


def _projector():
    from zoo.adapters.hello import HelloProjector

    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 1), nn.AdaptiveAvgPool2d(1),
                            nn.Flatten())
    return HelloProjector(encoder, 8, 5, normalize=False)


#: method -> (its config for the sweep model, the model factory)
SWEEP = {
    "full": ({"name": "full", "target_modules": ["conv2", "head"]}, Net),
    "lora": ({"name": "lora", "target_modules": ["conv1", "conv2", "head"], "rank": 2}, Net),
    "peft_lora": ({"name": "peft_lora", "target_modules": ["conv2", "head"], "rank": 2}, Net),
    "sara": ({"name": "sara", "threshold": 0.2}, Net),
    "plp": ({"name": "plp", "target_modules": ["head"], "rank": 2, "basis_rows": None}, Net),
    "colora": ({"name": "colora", "layer_types": ["Conv2d", "Linear"], "budget": 0.3, "probe_steps": 2,
                "probe_lr": 1e-2, "faig_steps": 4, "faig_batches": 1}, Net),
    "vida": ({"name": "vida", "low_rank": 1, "high_rank": 4, "seed": 0, "target_modules": ["attn.qkv", "conv2"]}, Net),
    "hello_projector": ({"name": "hello_projector", "encoder_rank": 2, "head_rank": 2}, _projector),
}

X = torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(1))
Y = torch.tensor([0, 1, 2, 3])


def _loss(model, batch):
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


def _applied(name):
    config, factory = SWEEP[name]
    if name == "peft_lora":
        pytest.importorskip("peft")
    method = build_adapter(config)
    model = factory()
    base = copy.deepcopy(model)
    if method.needs_calibration:
        method.calibrate(model, [(X, Y)], _loss, lambda loss: loss.backward())
        model.zero_grad(set_to_none=True)
    method.apply(model)
    return method, model, base


def _train_step(method, model):
    opt = torch.optim.SGD(method.param_groups(model, lr=0.5), lr=0.5)
    for _ in range(2):
        _loss(model, (X, Y)).backward()
        opt.step()
        opt.zero_grad()


def test_the_sweep_covers_every_method():
    assert sorted(adapter_names()) == sorted(SWEEP), "add the new method to SWEEP"


@pytest.mark.parametrize("name", sorted(SWEEP))
def test_method_trains_only_its_tensors_and_round_trips(name, tmp_path):
    method, model, base = _applied(name)
    assert isinstance(method, AdapterMethod) and method.name == name
    trainable = method.trainable_parameters(model)
    assert trainable and method.num_trainable(model) == sum(p.numel() for p in trainable)
    assert {id(p) for p in trainable} == {id(p) for p in model.parameters() if p.requires_grad}, \
        "the base must be frozen: only the method's tensors train"
    _train_step(method, model)
    with torch.no_grad():
        want = model(X)
        assert not torch.allclose(want, base(X)), "training must change the outputs"

    state = method.state_dict(model)
    assert state and all(isinstance(v, torch.Tensor) for v in state.values())
    again = build_adapter(method.config).apply(copy.deepcopy(base))
    method.load_state_dict(again, state)
    folder = method.save(model, tmp_path / name)
    restored = type(method).from_saved(folder).load(copy.deepcopy(base), folder)
    with torch.no_grad():
        torch.testing.assert_close(again(X), want, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(restored(X), want, rtol=1e-3, atol=1e-3)  # hello stores fp16


@pytest.mark.parametrize("name", sorted(set(SWEEP) - {"full", "peft_lora"}))
def test_delta_methods_merge_and_switch_off(name):
    """Methods built on the delta layers: merge is exact and reversible; disabled gives the base model."""
    method, model, base = _applied(name)
    _train_step(method, model)
    with torch.no_grad():
        want = model(X)
        method.merge(model)
        torch.testing.assert_close(model(X), want, rtol=1e-5, atol=1e-5)
        method.unmerge(model)
        torch.testing.assert_close(model(X), want, rtol=1e-5, atol=1e-5)
        method.disable(model)
        torch.testing.assert_close(model(X), base(X), rtol=1e-6, atol=1e-6)
        method.enable(model)
        torch.testing.assert_close(model(X), want, rtol=1e-6, atol=1e-6)
        plain = method.merge_and_unload(model)
        torch.testing.assert_close(plain(X), want, rtol=1e-5, atol=1e-5)
