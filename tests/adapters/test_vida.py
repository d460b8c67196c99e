"""ViDA adapters on the low-rank core: zero-init, scales, trainable sets, state dicts (ours and the official layout),
and the adaptation method ``vida`` (config, apply / save / load, which weights hold an adapted model)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from tta.official_vida import OfficialViDALinear, official_vida_model
from zoo.adapters.base import ADAPTER_CONFIG_FILE, AdapterMethod, build_adapter
from zoo.adapters.model import iter_lora_layers
from zoo.adapters.vida import (
    VIDA_HIGH,
    VIDA_LOW,
    ViDAMethod,
    apply_vida,
    default_vida_targets,
    load_vida_state_dict,
    set_vida_scales,
    vida_parameters,
    vida_state_dict,
)
from zoo.config import ConfigError
from zoo.errors import CheckpointError
from zoo.layers.lora import LoRALayer
from zoo.registry import create_model


def tiny_vit(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("timm/vit_tiny_patch16_224", img_size=16, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                        num_classes=5).eval()


def _randomise_adapters(model: nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in vida_parameters(model, trainable_only=False):
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def test_default_targets_are_the_attention_linears_and_outputs_are_unchanged():
    model = tiny_vit()
    x = torch.rand(3, 3, 16, 16)
    before = model(x)
    assert default_vida_targets(model) == ["blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.1.attn.qkv",
                                           "blocks.1.attn.proj"]
    apply_vida(model, low_rank=1, high_rank=128)
    layers = dict(iter_lora_layers(model))
    assert sorted(layers) == sorted(default_vida_targets(model))
    assert not isinstance(model.blocks[0].mlp.fc1, LoRALayer)  # the MLP is not adapted (official)
    qkv = layers["blocks.0.attn.qkv"]
    assert qkv.deltas[VIDA_LOW].down.shape == (1, 32) and qkv.deltas[VIDA_LOW].up.shape == (96, 1)
    assert qkv.deltas[VIDA_HIGH].down.shape == (128, 32) and qkv.deltas[VIDA_HIGH].up.shape == (96, 128)
    assert all(float(d.up.detach().abs().sum()) == 0 for l in layers.values() for d in l.deltas.values())
    # down ~ N(0, 1/r²): std 1 for rank 1, 1/128² for rank 128
    high = torch.cat([l.deltas[VIDA_HIGH].down.flatten() for l in layers.values()])
    assert high.std().item() == pytest.approx(1 / 128**2, rel=0.1)
    assert torch.allclose(model(x), before, atol=1e-6)


def test_scales_act_as_specified_float_and_per_sample():
    model = apply_vida(tiny_vit(), 1, 4)
    _randomise_adapters(model)
    layer = dict(iter_lora_layers(model))["blocks.0.attn.proj"]
    x = torch.randn(2, 5, 32)
    base = layer.base(x)
    low = layer.deltas[VIDA_LOW](x, layer.base)
    high = layer.deltas[VIDA_HIGH](x, layer.base)
    set_vida_scales(model, 0.3, 1.7)
    assert torch.allclose(layer(x), base + 0.3 * low + 1.7 * high, atol=1e-5)
    set_vida_scales(model, torch.tensor([0.5, 2.0]), torch.tensor([1.5, 0.0]))  # per sample
    y = layer(x)
    assert torch.allclose(y[0], (base + 0.5 * low + 1.5 * high)[0], atol=1e-5)
    assert torch.allclose(y[1], (base + 2.0 * low)[1], atol=1e-5)
    with pytest.raises(ValueError, match="batch"):
        layer(torch.randn(3, 5, 32))  # scales were set for a batch of 2


def test_only_adapters_train_when_the_base_is_frozen_and_all_otherwise():
    model = apply_vida(tiny_vit(), 1, 8, freeze_base=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    adapter_ids = {id(p) for _, p in vida_parameters(model)}
    assert {id(p) for p in model.parameters() if p.requires_grad} == adapter_ids and trainable
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(torch.rand(2, 3, 16, 16)).square().sum().backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable
    assert any(".vida_high.up" in n for n in changed)
    full = apply_vida(tiny_vit(), 1, 8, freeze_base=False)
    assert all(p.requires_grad for p in full.parameters())  # the official test-time setting: whole model


def _official_model(seed: int, r: int, r2: int) -> nn.Module:
    return official_vida_model(tiny_vit(seed), r, r2)


@pytest.mark.parametrize("wrap", ["model_module", "bare"])
def test_official_checkpoint_layout_loads_and_gives_the_official_logits(wrap):
    official = _official_model(seed=3, r=1, r2=6)
    state = official.state_dict()
    assert "blocks.0.attn.qkv.vida_down2.weight" in state and "blocks.0.attn.qkv.linear_vida.bias" in state
    if wrap == "model_module":  # torch.save({'model': DataParallel(model).state_dict()})
        state = {"model": {f"module.{k}": v for k, v in state.items()}}
    ours = apply_vida(tiny_vit(seed=9), 1, 6)
    result = load_vida_state_dict(ours, state)
    assert result == {"missing": [], "unexpected": []}
    x = torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(ours(x), official(x), atol=1e-5)
        for m in official.modules():
            if isinstance(m, OfficialViDALinear):
                m.scale1, m.scale2 = 0.4, 1.6
        set_vida_scales(ours, 0.4, 1.6)  # scale1 = low, scale2 = high
        assert torch.allclose(ours(x), official(x), atol=1e-5)


def test_official_checkpoint_with_other_ranks_is_refused():
    state = _official_model(seed=3, r=2, r2=6).state_dict()
    with pytest.raises(RuntimeError, match="size mismatch|shape"):
        load_vida_state_dict(apply_vida(tiny_vit(), 1, 6), state)


def test_our_adapter_state_dict_round_trips():
    a = apply_vida(tiny_vit(), 1, 4)
    _randomise_adapters(a, seed=5)
    state = vida_state_dict(a)
    assert set(state) == {n for n, _ in vida_parameters(a)} and len(state) == 4 * 2 * 2
    b = apply_vida(tiny_vit(), 1, 4)
    assert load_vida_state_dict(b, state) == {"missing": [], "unexpected": []}
    x = torch.rand(2, 3, 16, 16)
    assert torch.allclose(a(x), b(x), atol=1e-6)
    with pytest.raises(RuntimeError, match="missing"):
        load_vida_state_dict(b, {k: v for k, v in state.items() if "vida_high" not in k})


def test_apply_vida_on_a_cnn_needs_targets_and_adapts_convs():
    cnn = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1))
    with pytest.raises(ValueError, match="targets"):
        apply_vida(cnn)
    apply_vida(cnn, 1, 16, targets=["0", "2"])
    assert isinstance(cnn[0], LoRALayer) and cnn[0].deltas[VIDA_HIGH].down.shape == (16, 3, 3, 3)
    _randomise_adapters(cnn)
    set_vida_scales(cnn, torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.0]))
    x = torch.rand(2, 3, 5, 5)
    y = cnn(x)
    plain = cnn[2].base(cnn[1](cnn[0].base(x)))
    assert torch.allclose(y[1], plain[1], atol=1e-5) and not torch.allclose(y[0], plain[0], atol=1e-3)


# ------------------------------------------------------------------------------------------------ the method
def test_vida_is_a_registered_adaptation_method_with_its_config():
    method = build_adapter({"name": "vida", "low_rank": 2, "high_rank": 4})
    assert isinstance(method, ViDAMethod) and (method.config.low_rank, method.config.high_rank) == (2, 4)
    with pytest.raises(ConfigError, match="adapter.high_rank"):
        build_adapter({"name": "vida", "high_rank": 0})
    with pytest.raises(ConfigError, match="adapter.rank"):
        build_adapter({"name": "vida", "rank": 4})  # LoRA's key: unknown for vida


def test_method_apply_trains_only_the_adapters_and_save_load_round_trips(tmp_path):
    method = build_adapter({"name": "vida", "high_rank": 4})
    model = method.apply(tiny_vit())
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in method.trainable_parameters(model)} and len(trainable) == 4 * 2 * 2
    _randomise_adapters(model, seed=4)
    method.save(model, tmp_path / "adapter")
    assert (tmp_path / "adapter" / ADAPTER_CONFIG_FILE).is_file()
    loaded = AdapterMethod.from_saved(tmp_path / "adapter")
    assert isinstance(loaded, ViDAMethod) and loaded.config.high_rank == 4
    other = loaded.load(tiny_vit(), tmp_path / "adapter")
    x = torch.rand(2, 3, 16, 16)
    assert torch.allclose(other(x), model(x), atol=1e-6)
    method.set_scales(model, 0.0, 0.0)  # scales 0: the base model again
    assert torch.allclose(model(x), tiny_vit()(x), atol=1e-6)


def test_which_weights_hold_an_adapted_model():
    method = build_adapter({"name": "vida", "high_rank": 6})
    assert not method.holds_adapted_model(tiny_vit().state_dict())  # a source model: loaded before apply
    assert method.holds_adapted_model(apply_vida(tiny_vit(), 1, 6).state_dict())  # our warm-up model
    assert method.holds_adapted_model(_official_model(3, 1, 6).state_dict())  # the official layout
    with pytest.raises(CheckpointError, match="only ViDA adapter"):
        method.holds_adapted_model(vida_state_dict(apply_vida(tiny_vit(), 1, 6)))


