"""Every registered zoo model: builds, runs forward and backward on tiny inputs, round-trips its state dict.

Inputs come from the model's pretrained cfg ``input_size``: ``(N, 3)`` point clouds or ``(C, H, W)`` images.
"""
from __future__ import annotations

import pytest
import torch

import zoo
from zoo.registry import get_pretrained_cfg, model_info

MODELS = [n for n in zoo.list_models() if model_info(n)["module"].startswith("zoo.models")]
NUM_CLASSES = 5


def _input(name: str, batch: int) -> torch.Tensor:
    cfg = get_pretrained_cfg(name)
    assert cfg.input_size, f"{name}: its pretrained cfg must give input_size"
    torch.manual_seed(0)
    return torch.randn(batch, *cfg.input_size)


def _logits(out):
    return out["logits"] if isinstance(out, dict) else out


def test_sweep_is_not_empty():
    assert MODELS, "no models registered under zoo.models"


@pytest.mark.parametrize("name", MODELS)
def test_model_forward_backward(name):
    torch.manual_seed(0)
    model = zoo.create_model(name, num_classes=NUM_CLASSES)
    x = _input(name, 2)
    model.train()
    out = model(x)
    logits = _logits(out)
    assert logits.shape == (2, NUM_CLASSES) and torch.isfinite(logits).all()
    loss = logits.float().pow(2).mean() + sum(out.get("losses", {}).values()) if isinstance(out, dict) else logits.pow(2).mean()
    loss.backward()
    unused = set(getattr(model, "params_without_grad", ()))
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None and n not in unused]
    assert not missing, f"parameters without gradient: {missing[:10]}"
    model.eval()
    with torch.no_grad():
        assert _logits(model(x)).shape == (2, NUM_CLASSES)


@pytest.mark.parametrize("name", MODELS)
def test_model_state_dict_round_trip(name, tmp_path):
    torch.manual_seed(0)
    src = zoo.create_model(name, num_classes=NUM_CLASSES).eval()
    path = tmp_path / "w.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    torch.manual_seed(1)
    dst = zoo.create_model(name, num_classes=NUM_CLASSES, checkpoint_path=str(path)).eval()
    x = _input(name, 2)
    with torch.no_grad():
        torch.testing.assert_close(_logits(dst(x)), _logits(src(x)), rtol=0, atol=0)


@pytest.mark.parametrize("name", MODELS)
def test_model_cfg_is_consistent(name):
    cfg = get_pretrained_cfg(name)
    model = zoo.create_model(name)
    assert cfg.num_classes is None or model.num_classes == cfg.num_classes
    state = model.state_dict()
    for head in cfg.classifier_names:
        assert any(k.startswith(head + ".") for k in state), f"{name}: classifier '{head}' not in state dict"
