"""LoRA files of peft, diffusers and kohya-ss read into the adapter core, and our deltas written for diffusers."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from zoo.adapters import lora_formats as lf
from zoo.errors import CheckpointError
from zoo.adapters import model as adapter_model
from zoo.layers import lora

pytestmark = pytest.mark.usefixtures("one_thread")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.proj = nn.Conv2d(8, 8, 1)
        self.attn = nn.ModuleDict({"to_q": nn.Linear(8, 8), "to_out": nn.Sequential(nn.Linear(8, 6))})

    def forward(self, x):
        h = self.proj(torch.relu(self.conv(x))).mean((2, 3))
        return self.attn["to_out"][0](self.attn["to_q"](h))


TARGETS = ["conv", "proj", "attn.to_q", "attn.to_out.0"]
RANKS = {"conv": 2, "proj": 3, "attn.to_q": 3, "attn.to_out.0": 3}
ALPHAS = {"conv": 7.0, "proj": 5.0, "attn.to_q": 5.0, "attn.to_out.0": 1.5}


def _net(seed=0):
    torch.manual_seed(seed)
    return Net()


def _x():
    return torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(1))


def _adapted(seed=3):
    """Ours: per-layer ranks and alphas (alpha != rank everywhere), random non-zero factors."""
    net = _net()
    adapter_model.add_lora(net, TARGETS, rank=lambda n, m: RANKS[n], alpha=lambda n, m: ALPHAS[n], init="random", seed=seed)
    return net


def _factors(net, adapter="default"):
    return {p: layer.deltas[adapter] for p, layer in adapter_model.iter_lora_layers(net)}


# ------------------------------------------------------------------------------------------------ peft
def test_from_peft_matches_peft_itself_with_rank_and_alpha_patterns():
    peft = pytest.importorskip("peft")
    base = _net()
    cfg = peft.LoraConfig(r=3, lora_alpha=5, target_modules=TARGETS, rank_pattern={"conv": 2},
                          alpha_pattern={"conv": 7, "to_out.0": 1.5}, init_lora_weights=False)  # random B
    torch.manual_seed(5)
    model = peft.get_peft_model(copy.deepcopy(base), cfg)
    state = peft.get_peft_model_state_dict(model)
    assert any(k.startswith("base_model.model.") and ".lora_A.weight" in k for k in state)
    ours = _net()
    adapter_model.add_lora(ours, TARGETS, rank=lambda n, m: RANKS[n], alpha=1.0)  # wrong alphas: the file must fix them
    adapter_model.load_adapter_state_dict(ours, state, convert=lambda s: lf.from_peft(s, config=cfg.to_dict()))
    for p, d in _factors(ours).items():
        assert d.alpha == ALPHAS[p] and d.scaling == ALPHAS[p] / RANKS[p], p
    with torch.no_grad():
        torch.testing.assert_close(ours(_x()), model(_x()), rtol=1e-5, atol=1e-6)
        assert not torch.allclose(ours(_x()), base(_x()))
    # the PeftModel.state_dict() form with adapter names in the keys, through import_lora on a plain model
    full = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    assert any(".lora_A.default.weight" in k for k in full)
    plain = _net()
    layers = lf.import_lora(plain, full, format="peft", config=cfg.to_dict())
    assert set(layers) == set(TARGETS)
    with torch.no_grad():
        torch.testing.assert_close(plain(_x()), model(_x()), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------ diffusers / kohya
def _diffusers_layout(net):
    """The diffusers layout written by hand (not by our exporter): unet.P.lora_A.weight = down, lora_B = up."""
    out = {}
    for p, d in _factors(net).items():
        up = d.up_weight().detach()
        out[f"unet.{p}.lora_A.weight"] = d.down_weight().detach().clone()
        out[f"unet.{p}.lora_B.weight"] = (up.reshape(*up.shape, 1, 1) if d.is_conv else up).clone()
    return out


def test_from_diffusers_new_and_old_layouts_alpha_exact():
    ref = _adapted()
    new = _diffusers_layout(ref)
    # today's layout has no alpha: diffusers loads it with alpha = rank (scaling 1)
    a = _net()
    adapter_model.add_lora(a, TARGETS, rank=lambda n, m: RANKS[n])
    adapter_model.load_adapter_state_dict(a, new, convert=lf.from_diffusers)
    for p, d in _factors(a).items():
        assert d.scaling == 1.0 and torch.equal(d.up_weight(), _factors(ref)[p].up_weight()), p
    # the older layout, with the network alphas of a kohya conversion: the same model as ours
    old = {k.replace(".lora_A.weight", ".lora.down.weight").replace(".lora_B.weight", ".lora.up.weight"): v
           for k, v in new.items()}
    old |= {f"unet.{p}.alpha": torch.tensor(ALPHAS[p]) for p in TARGETS}
    old["text_encoder.x.lora.down.weight"] = torch.zeros(1)  # other components pass through
    b = _net()
    adapter_model.add_lora(b, TARGETS, rank=lambda n, m: RANKS[n])
    with pytest.raises(RuntimeError, match=r"unexpected \(1\): text_encoder.x.lora.down.weight"):
        adapter_model.load_adapter_state_dict(b, old, convert=lf.from_diffusers)
    del old["text_encoder.x.lora.down.weight"]
    adapter_model.load_adapter_state_dict(b, old, convert=lf.from_diffusers)
    for p, d in _factors(b).items():
        assert d.alpha == ALPHAS[p], p
    torch.testing.assert_close(b(_x()), ref(_x()), rtol=0, atol=0)
    assert lf.detect_lora_format(new) == lf.detect_lora_format(old) == "diffusers"


def test_from_kohya_resolves_underscores_against_the_model():
    ref = _adapted()
    kohya = {}
    for p, d in _factors(ref).items():
        name = "lora_unet_" + p.replace(".", "_")
        up = d.up_weight().detach()
        kohya[f"{name}.lora_down.weight"] = d.down_weight().detach().clone()
        kohya[f"{name}.lora_up.weight"] = up.reshape(*up.shape, 1, 1).clone() if d.is_conv else up.clone()
        kohya[f"{name}.alpha"] = torch.tensor(ALPHAS[p], dtype=torch.float16)
    assert lf.detect_lora_format(kohya) == "kohya"
    ours = _net()
    adapter_model.add_lora(ours, TARGETS, rank=lambda n, m: RANKS[n])
    adapter_model.load_adapter_state_dict(ours, kohya, convert=lf.from_kohya)  # the loader passes model=
    torch.testing.assert_close(ours(_x()), ref(_x()), rtol=0, atol=0)
    plain = _net()
    lf.import_lora(plain, kohya)
    torch.testing.assert_close(plain(_x()), ref(_x()), rtol=0, atol=0)
    with pytest.raises(ValueError, match="needs the model"):
        lf.from_kohya(kohya)
    with pytest.raises(CheckpointError, match="adapt no module.*lora_unet_attn_to_k.lora_down.weight"):
        lf.import_lora(_net(), kohya | {"lora_unet_attn_to_k.lora_down.weight": torch.zeros(2, 8)}, format="kohya")


# ------------------------------------------------------------------------------------------------ with diffusers
@pytest.fixture(scope="module")
def tiny_pipe():
    pytest.importorskip("diffusers")
    pytest.importorskip("peft")
    from zoo.diffusion.tiny import build_tiny_pipeline

    return build_tiny_pipeline()


UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "proj_in", "time_emb_proj"]


def _unet_inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 4, 8, 8, generator=g), torch.tensor([10, 500]), torch.randn(2, 16, 32, generator=g)


def test_export_is_read_by_diffusers_load_lora_weights(tiny_pipe, tmp_path):
    pipe = copy.deepcopy(tiny_pipe)
    ours = copy.deepcopy(tiny_pipe.unet)
    adapter_model.add_lora(ours, UNET_TARGETS, rank=4, alpha=3, init="random", seed=0)  # alpha != rank, up non-zero
    assert all(d.up.abs().sum() > 0 for d in _factors(ours).values())
    f = lf.save_diffusers_lora(ours, tmp_path)
    assert f.name == "pytorch_lora_weights.safetensors"
    x, t, e = _unet_inputs()
    with torch.no_grad():
        base = pipe.unet(x, t, e).sample
        pipe.load_lora_weights(str(tmp_path), weight_name=f.name)  # diffusers' own loader (peft inside)
        theirs = pipe.unet(x, t, e).sample
        mine = ours.eval()(x, t, e).sample
    torch.testing.assert_close(theirs, mine, rtol=0, atol=1e-5)
    assert (base - mine).abs().max() > 1e-2
    # and back into our core on a plain UNet
    plain = copy.deepcopy(tiny_pipe.unet)
    layers = lf.import_lora(plain, f)
    assert set(layers) == {p for p, _ in adapter_model.iter_lora_layers(ours)}
    with torch.no_grad():
        torch.testing.assert_close(plain(x, t, e).sample, mine, rtol=0, atol=1e-5)


def test_kohya_file_reads_like_diffusers_reads_it(tiny_pipe):
    """diffusers converts kohya files itself: our converter must give the same UNet (alpha != rank)."""
    src = copy.deepcopy(tiny_pipe.unet)
    adapter_model.add_lora(src, ["to_q", "to_v", "proj_in", "conv1"], rank=2, alpha=5, init="random", seed=1)
    kohya = {}
    for p, d in _factors(src).items():
        name = "lora_unet_" + p.replace(".", "_")
        up = d.up_weight().detach()
        kohya[f"{name}.lora_down.weight"] = d.down_weight().detach().clone()
        kohya[f"{name}.lora_up.weight"] = up.reshape(*up.shape, 1, 1).clone() if d.is_conv else up.clone()
        kohya[f"{name}.alpha"] = torch.tensor(5.0)
    pipe = copy.deepcopy(tiny_pipe)
    pipe.load_lora_weights({k: v.clone() for k, v in kohya.items()})
    plain = copy.deepcopy(tiny_pipe.unet)
    lf.import_lora(plain, kohya)
    x, t, e = _unet_inputs()
    with torch.no_grad():
        torch.testing.assert_close(plain(x, t, e).sample, pipe.unet(x, t, e).sample, rtol=0, atol=1e-5)
        torch.testing.assert_close(plain(x, t, e).sample, src(x, t, e).sample, rtol=0, atol=1e-5)


def test_export_refuses_what_lora_cannot_hold(tmp_path):
    net = _net()
    with pytest.raises(ValueError, match="no adapter named 'default'"):
        lf.to_diffusers(net)
    adapter_model.inject_adapter(net, ["proj"], lambda n, b: lora.SparseDelta(b, {"weight": torch.arange(3)}), name="sara",
                        layer_types=(nn.Module,))
    with pytest.raises(TypeError, match="'sara' at 'proj' is a SparseDelta"):
        lf.to_diffusers(net, "sara")
