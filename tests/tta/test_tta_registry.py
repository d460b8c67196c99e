"""The TTA algorithm registry and configs: every algorithm is registered with its official defaults, sections are
validated against the algorithm's own config class, adapters go only to the algorithm that uses one, and the
starting-weights helper loads source and adapted models in the right order."""
from __future__ import annotations

import pytest
import torch

from zoo.config import ConfigError
from zoo.errors import CheckpointError
from zoo.registry import create_model
from zoo.tta.base import (
    LocalStep,
    TTAAlgorithm,
    TTAConfig,
    build_tta,
    load_source_model,
    mean_over_processes,
    tta_names,
)

VIT = dict(img_size=16, patch_size=8, embed_dim=32, depth=1, num_heads=2, num_classes=5)


def test_every_algorithm_is_registered():
    assert set(tta_names()) == {"source", "bn_adapt", "tent", "cotta", "vida"}
    for name in tta_names():
        algorithm = build_tta({"name": name})
        assert isinstance(algorithm, TTAAlgorithm) and algorithm.name == name
        assert (algorithm.adapter is not None) == (name == "vida")


def test_official_defaults():
    tent, cotta = build_tta({"name": "tent"}).config, build_tta({"name": "cotta"}).config
    assert tent.lr == 1e-3 and tent.betas == [0.9, 0.999]
    official = (1e-3, 0.999, 0.01, 32, 0.92)
    assert (cotta.lr, cotta.ema, cotta.restore_prob, cotta.num_aug, cotta.aug_threshold) == official


@pytest.mark.parametrize("section,match", [
    ({}, "tta: set tta.name"),
    ({"name": "memo"}, "tta.name"),
    ({"name": "tent", "num_aug": 4}, "tta.num_aug"),  # a key of another algorithm
    ({"name": "source", "lr": 1e-3}, "tta.lr"),  # source trains nothing
    ({"name": "cotta", "restore_prob": 2.0}, "tta.restore_prob"),
    ({"name": "vida", "train": "head"}, "tta.train"),
    ({"name": "tent", "lr": -1.0}, "tta.lr"),
])
def test_bad_sections_name_the_key(section, match):
    with pytest.raises(ConfigError, match=match):
        build_tta(section)


def test_local_step_and_mean_over_one_process():
    model = torch.nn.Linear(3, 2)
    step = LocalStep(model)
    value = torch.tensor(0.25)
    assert mean_over_processes(value, step) is value
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    before = model.weight.detach().clone()
    step.manual_backward(model(torch.ones(1, 3)).sum())
    assert step.optimizer_step(optimizer) and model.weight.grad is None
    assert torch.allclose(model.weight, before - 1.0)


def test_source_weights_are_loaded_before_the_adapter_and_an_adapted_model_after():
    torch.manual_seed(0)
    source = create_model("timm/vit_tiny_patch16_224", **VIT)
    vida = build_tta({"name": "vida"}, {"high_rank": 4})
    fresh = create_model("timm/vit_tiny_patch16_224", **VIT)
    model = load_source_model(fresh, source.state_dict(), vida.adapter)
    assert torch.equal(model.blocks[0].attn.qkv.base.weight, source.blocks[0].attn.qkv.weight)
    with torch.no_grad():
        model.blocks[0].attn.qkv.deltas["vida_low"].up.fill_(0.5)
    again = load_source_model(create_model("timm/vit_tiny_patch16_224", **VIT), model.state_dict(), vida.adapter)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values()))
    with pytest.raises(CheckpointError, match="head.weight"):  # a head of another class count is an error
        load_source_model(create_model("timm/vit_tiny_patch16_224", **{**VIT, "num_classes": 3}),
                          source.state_dict(), None)


def test_registering_checks_the_pair():
    from zoo.tta.base import register_tta

    with pytest.raises(TypeError, match="TTAConfig dataclass"):
        register_tta("broken", config=dict)
    with pytest.raises(TypeError, match="must subclass TTAAlgorithm"):
        register_tta("broken", config=TTAConfig)(object)
    assert "broken" not in tta_names()
