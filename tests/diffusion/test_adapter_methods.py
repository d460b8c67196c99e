"""The adaptation methods of zoo.adapters on a diffusers UNet and on plain nn.Modules (one interface): registry,
apply / state / generic save-load, the pipeline hooks (file, detection, loading with an on/off switch), and
tools/sample.py's choices."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from zoo.adapters.base import ADAPTERS, ADAPTER_CONFIG_FILE, adapter_names, build_adapter, get_adapter  # noqa: E402
from zoo.adapters.lora import LoRAConfig, LoRAMethod  # noqa: E402
from zoo.adapters.model import iter_lora_layers  # noqa: E402
from zoo.diffusion import adapters as pipe_adapters  # noqa: E402
from zoo.errors import ConfigError  # noqa: E402
from zoo.layers import lora  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

UNET_SECTIONS = {"lora": {"name": "lora", "init": "random", "rank": 2, "alpha": 3},
                 "sara": {"name": "sara", "threshold": 2e-2},
                 "plp": {"name": "plp", "rank": 4, "basis_rows": None}}


@pytest.fixture(scope="module")
def pipe():
    from zoo.diffusion.tiny import build_tiny_pipeline

    return build_tiny_pipeline()


def _inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 4, 8, 8, generator=g), torch.tensor([3, 900]), torch.randn(2, 16, 32, generator=g)


def _perturb(params):
    """A non-trivial trained state (LoRA / PLP ``up`` start at 0)."""
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 1e-2)


class ConvNet(nn.Module):
    """A NAFNet-like stand-in: convolutions and a linear head (no diffusers in sight)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        return self.head(self.conv2(torch.relu(self.conv1(x))).mean((2, 3)))


def test_registry_names_configs_and_errors():
    names = adapter_names()
    assert {"sara", "lora", "peft_lora", "full", "plp"} <= set(names)
    assert get_adapter("lora") is LoRAMethod and LoRAMethod.name == "lora" and LoRAMethod.config_class is LoRAConfig
    with pytest.raises(KeyError, match="'lroa'.*Did you mean: lora"):
        get_adapter("lroa")
    with pytest.raises(ConfigError, match="adapter.treshold.*adapter method 'sara'"):
        build_adapter({"name": "sara", "treshold": 0.1})
    with pytest.raises(ConfigError, match="adapter.decay_to"):
        build_adapter({"name": "sara", "decay_to": "one"})
    with pytest.raises(ConfigError, match="adapter.frozen"):
        build_adapter({"name": "plp", "frozen": 1.0})


def test_sample_tool_offers_every_registered_method():
    from zoo.diffusion.sampling import sample_parser

    assert sample_parser()._option_string_actions["--kind"].choices == adapter_names()


@pytest.mark.parametrize("name", ["lora", "sara", "plp"])
def test_unet_method_roundtrip_and_pipeline_hooks(pipe, name, tmp_path):
    unet = copy.deepcopy(pipe.unet)
    m = build_adapter(UNET_SECTIONS[name])
    m.apply(unet)
    params = m.trainable_parameters(unet)
    assert params and {id(p) for p in params} == {id(p) for p in unet.parameters() if p.requires_grad}
    _perturb(params)
    x, t, e = _inputs()
    with torch.no_grad():
        want = unet(x, t, e).sample
    # checkpoint state: only the adapter's tensors, loadable into a fresh adaptation
    state = m.state_dict(unet)
    assert state and all(f".{name}." in k for k in state)
    fresh = copy.deepcopy(pipe.unet)
    m2 = build_adapter(UNET_SECTIONS[name])
    m2.apply(fresh)
    m2.load_state_dict(fresh, state)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x, t, e).sample, want, rtol=0, atol=1e-6)
    # the pipeline file, detected and loaded into a pipeline with its on/off switch
    path = pipe_adapters.save_for_pipeline(m, unet, tmp_path)
    assert path.name == m.pipeline_file
    assert pipe_adapters.detect_adapter(tmp_path) == ("lora" if name == "plp" else name)  # PLP files are LoRA files
    p2 = copy.deepcopy(pipe)
    set_enabled = pipe_adapters.load_adapter(p2, tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(p2.unet(x, t, e).sample, want, rtol=0, atol=1e-5)
        set_enabled(False)
        torch.testing.assert_close(p2.unet(x, t, e).sample, pipe.unet(x, t, e).sample, rtol=0, atol=0)
    # the sample grid's switch during training, and merge_and_unload into a plain UNet
    switch = pipe_adapters.sample_switch(m, None, unet, None)
    switch(False)
    with torch.no_grad():
        torch.testing.assert_close(unet(x, t, e).sample, pipe.unet(x, t, e).sample, rtol=0, atol=0)
    switch(True)
    merged = m.merge_and_unload(unet)
    assert not list(iter_lora_layers(merged))
    with torch.no_grad():
        torch.testing.assert_close(merged(x, t, e).sample, want, rtol=1e-5, atol=1e-5)


def test_lora_method_is_our_core_with_peft_init_names(pipe):
    unet = build_adapter({"name": "lora", "init": "gaussian", "rank": 4}).apply(copy.deepcopy(pipe.unet))
    layers = dict(iter_lora_layers(unet))
    assert layers and all(n.endswith(("to_k", "to_q", "to_v", "to_out.0")) for n in layers)
    d = next(iter(layers.values())).deltas["lora"]
    assert isinstance(d, lora.LowRankDelta) and d.init == "gaussian" and d.up.abs().sum() == 0
    assert not any(p.requires_grad for n, p in unet.named_parameters() if ".deltas." not in n)
    other = build_adapter({"name": "lora", "init": "true"}).apply(copy.deepcopy(pipe.unet))  # peft's True: kaiming/zero
    assert {layer.deltas["lora"].init for _, layer in iter_lora_layers(other)} == {"lora"}
    with pytest.raises(ConfigError, match="adapter.target_modules"):
        build_adapter({"name": "lora", "target_modules": ["no_such_layer"]}).apply(copy.deepcopy(pipe.unet))


def test_peft_lora_on_a_plain_module(tmp_path):
    pytest.importorskip("peft")
    net, base = ConvNet(), ConvNet()
    m = build_adapter({"name": "peft_lora", "target_modules": ["conv2", "head"], "init": "false", "rank": 2})
    m.apply(net)
    assert {n for n, p in net.named_parameters() if p.requires_grad} == {
        "conv2.lora_A.default.weight", "conv2.lora_B.default.weight", "head.lora_A.default.weight",
        "head.lora_B.default.weight"}
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        want = net(x)
        m.set_enabled(net, False)
        torch.testing.assert_close(net(x), base(x))
        m.set_enabled(net, True)
    state = m.state_dict(net)
    fresh = m.apply(ConvNet())
    m.load_state_dict(fresh, state)
    plain = m.merge_and_unload(fresh)
    assert type(plain.head) is nn.Linear
    with torch.no_grad():
        torch.testing.assert_close(plain(x), want, rtol=1e-5, atol=1e-6)


def test_detection_of_a_method_save_folder_and_unknown_folders(pipe, tmp_path):
    """A folder a method's save() wrote names its method; any method loads into a pipeline through save/load."""

    from zoo.adapters.base import register_adapter

    class NoHooksLoRA(LoRAMethod):  # a method without pipeline hooks (as colora / vida): the generic path
        pipeline_file = save_pipeline_file = detect_pipeline_file = load_into_pipeline = None

    try:
        register_adapter("test_nohooks", config=LoRAConfig)(NoHooksLoRA)
        m = build_adapter({"name": "test_nohooks", "init": "random", "rank": 2})
        unet = m.apply(copy.deepcopy(pipe.unet))
        out = tmp_path / "run"
        folder = m.save(unet, out)
        assert pipe_adapters.detect_adapter(folder) == "test_nohooks"
        x, t, e = _inputs()
        p2 = copy.deepcopy(pipe)
        set_enabled = pipe_adapters.load_adapter(p2, folder)
        with torch.no_grad():
            torch.testing.assert_close(p2.unet(x, t, e).sample, unet(x, t, e).sample, rtol=0, atol=1e-6)
            set_enabled(False)
            torch.testing.assert_close(p2.unet(x, t, e).sample, pipe.unet(x, t, e).sample, rtol=0, atol=0)
        with pytest.raises(ConfigError, match="holds a 'test_nohooks' adapter"):
            pipe_adapters.load_adapter(copy.deepcopy(pipe), folder, "lora")
    finally:
        ADAPTERS._entries.pop("test_nohooks", None)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="none of: a UNet"):
        pipe_adapters.detect_adapter(empty)
    with pytest.raises(FileNotFoundError):
        pipe_adapters.detect_adapter(tmp_path / "missing")


def test_every_shipped_adapter_section_validates():
    """The adapter sections of configs/sara and configs/b4m are valid configs of their methods."""
    from pathlib import Path

    from zoo.adapters.base import adapter_config_from_dict
    from zoo.config import load_config, load_raw_config, to_container
    from zoo.engine.pipeline import is_pipeline

    repo = Path(__file__).resolve().parents[2]
    seen = set()
    for path in sorted([*(repo / "configs" / "sara").glob("*.yaml"), *(repo / "configs" / "b4m").glob("*.yaml")]):
        raw = {} if is_pipeline(load_raw_config(path)) else to_container(load_config(path))  # studies: their stages
        if raw.get("recipe") in ("sd_finetune", "b4m"):
            seen.add(adapter_config_from_dict(raw["adapter"], where=f"{path.name}: adapter").name)
            assert not {"adapter", "sara", "lora", "plp"} & set(raw.get("model", {})), path
    assert seen == {"sara", "lora", "full", "plp"}
