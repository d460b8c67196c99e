"""The SD adapter methods as registered classes: one interface for sara, lora (our core), peft_lora and full."""
from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from zoo.diffusion import methods  # noqa: E402
from zoo.layers import lora  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pipe():
    from zoo.diffusion.tiny import build_tiny_pipeline

    return build_tiny_pipeline()


def _cfg(**lora_kw):
    from zoo.recipes.sd_finetune import LoRAConfig, SaRAConfig

    return SimpleNamespace(sara=SaRAConfig(threshold=2e-2), lora=LoRAConfig(**lora_kw))


def _inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 4, 8, 8, generator=g), torch.tensor([3, 900]), torch.randn(2, 16, 32, generator=g)


def test_registry_names_and_errors():
    assert {"sara", "lora", "peft_lora", "full"} <= set(methods.adapter_method_names())
    assert methods.get_adapter_method("lora") is methods.LoRAMethod and methods.LoRAMethod.name == "lora"
    with pytest.raises(KeyError, match="Unknown adapter method.*'lroa'.*Did you mean: lora"):
        methods.get_adapter_method("lroa")


def test_registry_is_open_for_new_methods(tmp_path):
    @methods.register_adapter_method("dummy_plp")
    class Dummy(methods.AdapterMethod):
        artefact = "plp.safetensors"
        detect_priority = 0

        @classmethod
        def detect(cls, path):
            return path.is_dir() and (path / "plp.safetensors").is_file()

    try:
        (tmp_path / "plp.safetensors").write_bytes(b"")
        assert "dummy_plp" in methods.adapter_method_names()
        assert methods.detect_adapter_method(tmp_path) == "dummy_plp"
        from zoo.diffusion.sampling import detect_adapter_kind

        assert detect_adapter_kind(tmp_path) == "dummy_plp"
    finally:
        methods.ADAPTER_METHODS._entries.pop("dummy_plp")
    with pytest.raises(ValueError, match="none of: a UNet"):
        methods.detect_adapter_method(tmp_path)


@pytest.mark.parametrize("name", ["lora", "sara"])
def test_method_interface_roundtrip(pipe, name, tmp_path):
    unet = copy.deepcopy(pipe.unet)
    m = methods.get_adapter_method(name)(_cfg(init="random", rank=2, alpha=3))
    m.apply(unet, m.cfg)
    params = m.trainable_parameters(unet)
    assert params and {id(p) for p in params} == {id(p) for p in unet.parameters() if p.requires_grad}
    with torch.no_grad():  # a non-trivial trained state
        for p in params:
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 1e-2)
    x, t, e = _inputs()
    with torch.no_grad():
        want = unet(x, t, e).sample
    # checkpoint state: only the adapter's tensors, loadable into a fresh adaptation
    state = m.state_dict(unet)
    assert state and all(f".{name}." in k for k in state)
    fresh = copy.deepcopy(pipe.unet)
    m2 = methods.get_adapter_method(name)(m.cfg)
    m2.apply(fresh, m.cfg)
    m2.load_state_dict(fresh, state)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x, t, e).sample, want, rtol=0, atol=1e-6)
    # the saved file, detected and loaded into a pipeline, with its on/off switch
    path = m.save(unet, tmp_path)
    assert path.name == m.artefact and methods.detect_adapter_method(tmp_path) == name
    p2 = copy.deepcopy(pipe)
    set_enabled = methods.get_adapter_method(name).load(p2, tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(p2.unet(x, t, e).sample, want, rtol=0, atol=1e-5)
        set_enabled(False)
        torch.testing.assert_close(p2.unet(x, t, e).sample, pipe.unet(x, t, e).sample, rtol=0, atol=0)
    # the switch used for sample grids during training, and merge into a plain UNet
    switch = m.switch(None, unet, None)
    switch(False)
    with torch.no_grad():
        torch.testing.assert_close(unet(x, t, e).sample, pipe.unet(x, t, e).sample, rtol=0, atol=0)
    switch(True)
    merged = m.merge(unet)
    assert not list(lora.iter_lora_layers(merged))
    with torch.no_grad():
        torch.testing.assert_close(merged(x, t, e).sample, want, rtol=1e-5, atol=1e-5)


def test_lora_method_is_our_core_with_peft_init_names(pipe):
    unet = copy.deepcopy(pipe.unet)
    m = methods.LoRAMethod(_cfg(init="gaussian", rank=4))
    m.apply(unet, m.cfg)
    layers = dict(lora.iter_lora_layers(unet))
    assert layers and all(n.endswith(("to_k", "to_q", "to_v", "to_out.0")) for n in layers)
    d = next(iter(layers.values())).deltas["lora"]
    assert isinstance(d, lora.LowRankDelta) and d.init == "gaussian" and d.up.abs().sum() == 0
    assert not any(p.requires_grad for n, p in unet.named_parameters() if ".deltas." not in n)
    m = methods.LoRAMethod(_cfg(init="true"))
    other = m.apply(copy.deepcopy(pipe.unet), m.cfg)  # peft's init_lora_weights=True: kaiming / zero, our "lora"
    assert {layer.deltas["lora"].init for _, layer in lora.iter_lora_layers(other)} == {"lora"}
