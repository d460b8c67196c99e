"""Composition of content and style adapters (zoo.adapters.merge): B4M's stage-2 merge rule on random weights,
learned content columns surviving it (the official re-initialisation bug not reproduced), weighted sum,
ZipLoRA-style mergers, B-LoRA-style block split, and the diffusers-format export read by ``pipe.load_lora_weights``."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from zoo.adapters.merge import (  # noqa: E402
    add_ziplora, compose, merge_b4m, ziplora_loss, ziplora_to_lowrank,
)
from zoo.adapters.plp import PLPConfig, add_plp, load_plp, plp_deltas  # noqa: E402
from zoo.errors import CheckpointError  # noqa: E402
from zoo.adapters.model import (
    active_adapters,
    adapter_names,
    iter_lora_layers,
    set_active_adapters,
    set_adapter_scale,
)

pytestmark = pytest.mark.usefixtures("one_thread")
CFG = PLPConfig(rank=4)
X, T, E = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([10]), \
    torch.randn(1, 16, 32, generator=torch.Generator().manual_seed(1))


def _pipe():
    from zoo.diffusion.tiny import build_tiny_pipeline

    return build_tiny_pipeline(seed=0)


@torch.no_grad()
def _trained(unet, name, seed):
    """Stand-in for a stage-1 run: random values in the learnable parts."""
    g = torch.Generator().manual_seed(seed)
    for d in plp_deltas(unet, name).values():
        d.down.copy_(torch.randn(d.down.shape, generator=g) * 0.1)
        d.up.copy_(torch.randn(d.up.shape, generator=g) * 0.1)


def _two_adapters():
    unet = _pipe().unet
    add_plp(unet, CFG, name="content")
    add_plp(unet, CFG, name="style")
    _trained(unet, "content", 1)
    _trained(unet, "style", 2)
    return unet


def _out(unet):
    with torch.no_grad():
        return unet(X, T, E).sample


def test_b4m_merge_equals_the_formula_and_keeps_the_content_columns():
    unet = _two_adapters()
    wc, ws = 0.7, 1.3
    merge_b4m(unet, "content", "style", name="b4m", weights=(wc, ws))
    assert active_adapters(unet) == ["b4m"]
    for _, layer in iter_lora_layers(unet):
        c, s, m = layer.deltas["content"], layer.deltas["style"], layer.deltas["b4m"]
        up = torch.cat([c.up_frozen, ws * s.up])  # [A; w_s B_style]
        down = torch.cat([c.down_frozen, wc * c.down], dim=1)  # [C | w_c D_content]
        torch.testing.assert_close(m.delta_weight(), m.scaling * up @ down)
        assert torch.equal(m.down_frozen, s.down_frozen) and torch.equal(m.up_frozen, s.up_frozen)
        assert m.down.requires_grad and m.up.requires_grad
    merge_b4m(unet, "content", "style", name="plain")
    for path, layer in iter_lora_layers(unet):
        # every layer, square q/k/v included (where the official re-initialises down after loading)
        assert torch.equal(layer.deltas["plain"].down, layer.deltas["content"].down), path
        assert torch.equal(layer.deltas["plain"].up, layer.deltas["style"].up), path


def test_b4m_merge_from_saved_stage_files_keeps_the_learned_content_columns(tmp_path):
    from zoo.adapters.lora_formats import save_diffusers_lora

    src = _two_adapters()
    fc = save_diffusers_lora(src, tmp_path / "content", "content")
    fs = save_diffusers_lora(src, tmp_path / "style", "style")
    unet = _pipe().unet
    load_plp(unet, fc.parent, CFG, name="content")
    load_plp(unet, fs, CFG, name="style")
    merge_b4m(unet, "content", "style", name="b4m")
    want = plp_deltas(src, "content")
    for path, d in plp_deltas(unet, "b4m").items():
        assert torch.equal(d.down, want[path].down), path
        assert torch.equal(d.down_frozen, want[path].down_frozen), path
        assert torch.equal(d.up, plp_deltas(src, "style")[path].up), path


def test_b4m_merge_refuses_adapters_with_different_frozen_parts():
    unet = _pipe().unet
    add_plp(unet, CFG, name="content")
    add_plp(unet, PLPConfig(rank=4, seed=3), name="style")
    with pytest.raises(CheckpointError, match="adapter.seed"):
        merge_b4m(unet, "content", "style")


def test_weighted_sum_equals_set_adapters_arithmetic():
    unet = _two_adapters()
    set_adapter_scale(unet, "content", 0.6)
    set_adapter_scale(unet, "style", 0.9)
    set_active_adapters(unet, ["content", "style"])
    both = _out(unet)
    set_adapter_scale(unet, "content", 1.0)
    set_adapter_scale(unet, "style", 1.0)
    compose(unet, "weighted_sum", "content", "style", weights=(0.6, 0.9))
    torch.testing.assert_close(_out(unet), both, rtol=1e-5, atol=1e-6)
    for _, layer in iter_lora_layers(unet):
        c, s, w = (layer.deltas[k] for k in ("content", "style", "weighted_sum"))
        assert w.rank == c.rank + s.rank
        torch.testing.assert_close(w.delta_weight(), 0.6 * c.delta_weight() + 0.9 * s.delta_weight())


def test_ziplora_mergers_scale_input_columns_and_fold_into_a_lowrank_delta():
    unet = _two_adapters()
    add_ziplora(unet, "content", "style", weights=(1.0, 1.0))
    (_, layer), *_ = iter_lora_layers(unet)
    z = layer.deltas["ziplora"]
    both = layer.deltas["content"].delta_weight() + layer.deltas["style"].delta_weight()
    torch.testing.assert_close(z.delta_weight(), both)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for _, lay in iter_lora_layers(unet):
            d = lay.deltas["ziplora"]
            d.merger_c.copy_(torch.rand(d.merger_c.shape, generator=g))
            d.merger_s.copy_(torch.rand(d.merger_s.shape, generator=g))
    c, s = layer.deltas["content"].delta_weight(), layer.deltas["style"].delta_weight()
    torch.testing.assert_close(z.delta_weight(), c * z.merger_c + s * z.merger_s)
    want = sum((lay.deltas["ziplora"].merger_c * lay.deltas["ziplora"].merger_s).abs().mean()
               for _, lay in iter_lora_layers(unet))
    torch.testing.assert_close(ziplora_loss(unet), want)
    assert [n for n, p in unet.named_parameters() if p.requires_grad and ".ziplora." in n]  # mergers train
    before = _out(unet)
    ziplora_to_lowrank(unet)
    torch.testing.assert_close(_out(unet), before, rtol=1e-5, atol=1e-6)


def test_block_split_keeps_each_adapter_in_its_blocks_only():
    unet = _two_adapters()
    blocks = {"content": ["up_blocks.0.attentions.0"], "style": ["up_blocks.0.attentions.1"]}
    compose(unet, "blora", "content", "style", blocks=blocks, weights=(1.0, 0.5))
    for path, layer in iter_lora_layers(unet):
        if path.startswith("up_blocks.0.attentions.0."):
            torch.testing.assert_close(layer.deltas["blora"].delta_weight(), layer.deltas["content"].delta_weight())
        elif path.startswith("up_blocks.0.attentions.1."):
            torch.testing.assert_close(layer.deltas["blora"].delta_weight(), 0.5 * layer.deltas["style"].delta_weight())
        else:
            assert "blora" not in layer.deltas
    with pytest.raises(ValueError, match="module-name"):
        compose(unet, "blora", "content", "style", name="bad", blocks={"content": ["nope"], "style": ["up_blocks.0"]})
    with pytest.raises(ValueError, match="choose one of"):
        compose(unet, "svd", "content", "style")


@pytest.mark.parametrize("method", ["b4m", "weighted_sum", "ziplora", "blora"])
def test_diffusers_export_loads_with_load_lora_weights_and_gives_the_same_unet_output(method, tmp_path):
    pytest.importorskip("peft")
    from zoo.adapters.lora_formats import save_diffusers_lora

    unet = _two_adapters()
    opts = {"blocks": {"content": ["down_blocks.1"], "style": ["up_blocks.0"]}} if method == "blora" else {}
    name = compose(unet, method, "content", "style", weights=(0.8, 1.1), **opts)
    if method == "ziplora":
        name = ziplora_to_lowrank(unet)
    ours = _out(unet)
    f = save_diffusers_lora(unet, tmp_path / "merged.safetensors", name)
    pipe = _pipe()
    base = _out(pipe.unet)
    pipe.load_lora_weights(str(tmp_path), weight_name=f.name)
    torch.testing.assert_close(_out(pipe.unet), ours, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(base, ours)
    assert "content" in adapter_names(unet)
