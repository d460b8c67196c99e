"""The adapter core: low-rank and sparse deltas on frozen layers, merge/unmerge, save/load, trainability."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from zoo.adapters import model as lora
from zoo.layers.lora import LoRALayer, SparseDelta


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 6, 1)
        self.norm = nn.GroupNorm(2, 6)
        self.block = nn.Sequential(nn.Linear(6, 12), nn.GELU(), nn.Linear(12, 5))

    def forward(self, x):
        h = self.norm(self.pw(self.dw(self.conv(x))))
        return self.block(h.mean((2, 3)))


def _net(seed=0):
    torch.manual_seed(seed)
    return Net()


def _x(seed=1):
    return torch.randn(2, 3, 9, 7, generator=torch.Generator().manual_seed(seed))


ALL = ["conv", "dw", "pw", "block.0", "block.2"]


@pytest.mark.parametrize("init", ["lora", "gaussian", "vida", "orthogonal"])
def test_zero_init_forward_equals_base(init):
    net, ref = _net(), _net()
    layers = lora.add_lora(net, ALL, rank=2, init=init)
    assert set(layers) == set(ALL)
    torch.testing.assert_close(net(_x()), ref(_x()), rtol=0, atol=0)


def test_lowrank_matches_dense_delta_and_merge_roundtrip_is_exact():
    net, ref = _net(), _net()
    lora.add_lora(net, ALL, rank=3, alpha=6, init="random")
    x = _x()
    y = net(x)
    # dense reference: base weights + delta weights
    with torch.no_grad():
        for name, layer in lora.iter_lora_layers(net):
            ref.get_submodule(name).weight.add_(layer.delta_weight("default"))
    torch.testing.assert_close(y, ref(x), rtol=1e-5, atol=1e-6)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    lora.merge_adapters(net)
    torch.testing.assert_close(net(x), y, rtol=1e-5, atol=1e-6)
    lora.unmerge_adapters(net)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k  # bit for bit
    torch.testing.assert_close(net(x), y, rtol=0, atol=0)


def test_only_deltas_trainable_and_receive_grads():
    net = _net()
    lora.add_lora(net, ["block.*", "pw"], rank=2, init="random")
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable and all(".deltas." in n for n in trainable)
    assert {n for n, _ in lora.named_adapter_parameters(net)} == {
        "block.0.default.down", "block.0.default.up", "block.2.default.down", "block.2.default.up",
        "pw.default.down", "pw.default.up"}
    net(_x()).square().sum().backward()
    for n, p in net.named_parameters():
        assert (p.grad is not None) == p.requires_grad, n


def test_save_load_roundtrip_through_safetensors(tmp_path):
    from safetensors.torch import load_file, save_file

    net = _net()
    lora.add_lora(net, ALL, rank=2, init="random", seed=3, frozen_down_cols=1)
    sd = lora.adapter_state_dict(net)
    assert all(k.split(".")[-2] == "default" for k in sd)
    save_file(sd, tmp_path / "a.safetensors")
    other = _net()
    lora.add_lora(other, ALL, rank=2, frozen_down_cols=1)  # different (zero-up) init
    lora.load_adapter_state_dict(other, load_file(tmp_path / "a.safetensors"))
    torch.testing.assert_close(other(_x()), net(_x()), rtol=0, atol=0)
    bad = {k: v for k, v in sd.items() if not k.startswith("pw.")}
    with pytest.raises(RuntimeError, match=r"missing \(3\): pw.default.down, pw.default.down_frozen"):
        lora.load_adapter_state_dict(other, bad | {"nope.default.up": torch.zeros(1)})


def test_scale_enable_and_tensor_scale():
    net, ref = _net(), _net()
    lora.add_lora(net, ["block.0"], rank=2, init="random")
    lora.add_lora(net, ["block.0"], rank=4, init="random", name="high")
    x = _x()
    assert not torch.allclose(net(x), ref(x))
    lora.enable_adapter(net, None, False)
    torch.testing.assert_close(net(x), ref(x), rtol=0, atol=0)
    lora.enable_adapter(net, None, True)
    assert lora.set_adapter_scale(net, "default", 0.0) == 1
    lora.set_adapter_scale(net, "high", torch.tensor(0.0))  # ViDA: a tensor scale computed per batch
    torch.testing.assert_close(net(x), ref(x))
    assert lora.adapter_names(net) == ["default", "high"]


def test_per_layer_ranks_and_plp_frozen_parts():
    net = _net()
    ranks = {"block.0": 3, "block.2": 0}  # CoLoRA-style: rank 0 skips a layer
    layers = lora.add_lora(net, ["block.0", "block.2"], rank=lambda name, m: ranks[name])
    assert set(layers) == {"block.0"} and layers["block.0"].deltas["default"].rank == 3
    # Break-for-Make PLP: half of down's columns and half of up's rows frozen, identical across runs by seed
    a, b = _net(), _net()
    for m in (a, b):
        lora.add_lora(m, ["block.0"], rank=4, init="orthogonal", frozen_down_cols=3, frozen_up_rows=6, seed=0)
    da, db = a.block[0].deltas["default"], b.block[0].deltas["default"]
    assert da.down.shape == (4, 3) and da.down_frozen.shape == (4, 3) and da.up.shape == (6, 4)
    assert torch.equal(da.down_frozen, db.down_frozen) and torch.equal(da.up_frozen, db.up_frozen)
    assert da.up_frozen.abs().sum() > 0 and not da.down_frozen.requires_grad
    basis = torch.cat([da.down_frozen.t(), da.up_frozen])  # disjoint rows of one orthogonal basis
    torch.testing.assert_close(basis.t() @ basis, torch.eye(4), atol=1e-5, rtol=0)
    assert {n for n, _ in lora.named_adapter_parameters(a)} == {"block.0.default.down", "block.0.default.up"}


def test_unknown_targets_raise():
    with pytest.raises(ValueError, match="matches targets"):
        lora.add_lora(_net(), ["to_q"], rank=2)


def _sparse(net, name, params=("weight",), frac=0.3, kernel=True, seed=0):
    layer = dict(net.named_modules())[name]
    base = layer.base if isinstance(layer, LoRALayer) else layer
    g = torch.Generator().manual_seed(seed)
    idx = {p: torch.randperm(getattr(base, p).numel(), generator=g)[: max(1, int(frac * getattr(base, p).numel()))]
           for p in params}
    layers = lora.inject_adapter(net, [name], lambda n, b: SparseDelta(b, idx, kernel=kernel), name="sparse",
                                 layer_types=(nn.Module,))
    return layers[name]


@pytest.mark.parametrize("kernel", [True, False])
def test_sparse_delta_grads_are_masked_dense_grads(kernel):
    net, ref = _net(), _net()
    names = {"conv": ("weight", "bias"), "pw": ("weight", "bias"), "norm": ("weight",), "block.0": ("weight", "bias")}
    for n, ps in names.items():
        _sparse(net, n, ps, kernel=kernel)
    lora.mark_only_adapters_trainable(net)
    with torch.no_grad():  # give the deltas non-zero values; the base weights follow in place
        for _, p in lora.named_adapter_parameters(net):
            p.normal_(0, 0.1)
    x = _x()
    y = net(x)
    # reference: dense model with the effective weights, full autograd, gradient gathered at the indices
    ref.load_state_dict({k.replace(".base.", "."): v for k, v in net.state_dict().items() if ".deltas." not in k})
    torch.testing.assert_close(y, ref(x), rtol=1e-6, atol=1e-6)
    y.square().sum().backward()
    ref(x).square().sum().backward()
    for n, ps in names.items():
        delta = net.get_submodule(n).deltas["sparse"]
        for p in ps:
            want = getattr(ref.get_submodule(n), p).grad.flatten()[delta.index(p).long()]
            torch.testing.assert_close(delta.values(p).grad, want, rtol=1e-5, atol=1e-6)
    assert all(p.grad is None for n, p in net.named_parameters() if ".deltas." not in n)


def test_sparse_training_changes_only_selected_entries_and_disable_restores():
    net, pristine = _net(), _net()
    layer = _sparse(net, "block.0", ("weight", "bias"))
    lora.mark_only_adapters_trainable(net)
    opt = torch.optim.AdamW(lora.adapter_parameters(net), lr=1e-2, foreach=True)
    for _ in range(3):
        net(_x()).square().sum().backward()
        opt.step()
        opt.zero_grad()
    net(_x())  # a forward writes the last update in place
    delta = layer.deltas["sparse"]
    for p in ("weight", "bias"):
        now, before = getattr(layer.base, p).flatten(), getattr(pristine.block[0], p).flatten()
        changed = (now != before).nonzero().flatten()
        assert set(changed.tolist()) <= set(delta.index(p).long().tolist()) and changed.numel() > 0
        torch.testing.assert_close(now[delta.index(p).long()], before[delta.index(p).long()] + delta.values(p).detach())
    lora.enable_adapter(net, "sparse", False)
    net(_x())
    assert torch.equal(layer.base.weight, pristine.block[0].weight)  # bit for bit
    lora.enable_adapter(net, "sparse", True)
    lora.merge_adapters(net)
    lora.unmerge_adapters(net)
    out = lora.remove_adapters(net, merge=False)
    assert isinstance(out.block[0], nn.Linear) and torch.equal(out.block[0].weight, pristine.block[0].weight)


def test_sparse_freeze_entries_keeps_learned_values_and_state_roundtrip():
    net = _net()
    layer = _sparse(net, "block.2", ("weight",), frac=0.5)
    delta = layer.deltas["sparse"]
    with torch.no_grad():
        delta.values("weight").uniform_(-1, 1)
    y = net(_x())
    keep = delta.values("weight").detach() > 0
    delta.freeze_entries(layer.base, "weight", keep)
    assert delta.values("weight").numel() == int(keep.sum()) and delta.weight_frozen_index.numel() == int((~keep).sum())
    torch.testing.assert_close(net(_x()), y, rtol=0, atol=0)  # nothing learned is lost
    sd = lora.adapter_state_dict(net)
    other = _net()
    _sparse(other, "block.2", ("weight",), frac=0.1, seed=5)  # another index set: loading replaces it
    lora.load_adapter_state_dict(other, sd)
    torch.testing.assert_close(other(_x()), y, rtol=0, atol=0)
    assert other.block[2].deltas["sparse"].values("weight").numel() == int(keep.sum())


def test_mixed_sparse_and_lowrank_merge_roundtrip():
    net = _net()
    lora.add_lora(net, ["block.0"], rank=2, init="random")
    _sparse(net, "block.0", ("weight",))
    with torch.no_grad():
        net.block[0].deltas["sparse"].values("weight").normal_()
    x = _x()
    y = net(x)
    w = net.block[0].base.weight.clone()
    lora.merge_adapters(net)
    torch.testing.assert_close(net(x), y, rtol=1e-5, atol=1e-6)
    lora.unmerge_adapters(net)
    assert torch.equal(net.block[0].base.weight, w)
    merged = lora.remove_adapters(net, merge=True)
    torch.testing.assert_close(merged(x), y, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------ per-adapter control
def test_add_lora_freeze_keeps_an_earlier_frozen_adapter_frozen():
    """Break-for-Make: train the style adapter with the content adapter present (active) but frozen."""
    net = _net()
    lora.add_lora(net, ALL, rank=2, init="random", name="content")
    assert lora.set_adapter_trainable(net, "content", False) == len(ALL)
    lora.add_lora(net, ALL, rank=2, init="random", name="style")  # freeze=True: the base only
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable and all(".deltas.style." in n for n in trainable)
    assert lora.trainable_adapters(net) == ["style"] and lora.active_adapters(net) == ["content", "style"]
    net(_x()).square().sum().backward()
    for n, p in net.named_parameters():
        assert (p.grad is not None) == (".deltas.style." in n), n
    # the two explicit forms keep their meaning
    lora.set_adapter_trainable(net, ["content"], True)
    assert lora.trainable_adapters(net) == ["content", "style"]
    lora.mark_only_adapters_trainable(net, ["content"])
    assert lora.trainable_adapters(net) == ["content"]
    assert not any(p.requires_grad for n, p in net.named_parameters() if ".deltas." not in n)
    with pytest.raises(KeyError, match="no adapter named 'contnet'.*'content', 'style'"):
        lora.set_adapter_trainable(net, "contnet")


def test_fp32_factors_over_a_bf16_base():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 12), nn.GELU(), nn.Conv1d(12, 5, 3, padding=1)).to(torch.bfloat16)
    ref = {k: v.float() for k, v in net.state_dict().items()}
    lora.add_lora(net, ["0", "2"], rank=3, alpha=6, init="random", dtype=torch.float32)
    for name, p in lora.named_adapter_parameters(net):
        assert p.dtype == torch.float32, name
    assert net[0].base.weight.dtype == torch.bfloat16
    x = torch.randn(2, 7, 6).to(torch.bfloat16)

    def forward(model, x):
        return model[2](model[1](model[0](x)).transpose(1, 2))

    y = forward(net, x)
    assert y.dtype == torch.bfloat16
    # reference in float32: the (bf16-valued) base weights plus the fp32 deltas
    dense = nn.Sequential(nn.Linear(6, 12), nn.GELU(), nn.Conv1d(12, 5, 3, padding=1))
    dense.load_state_dict(ref)
    with torch.no_grad():
        dense[0].weight.add_(net[0].delta_weight("default"))
        dense[2].weight.add_(net[2].delta_weight("default"))
    want = forward(dense, x.float())
    torch.testing.assert_close(y.float(), want, rtol=3e-2, atol=3e-2)
    assert not torch.allclose(forward(_bare(ref), x.float()), want, atol=3e-2)  # the delta matters
    y.float().square().sum().backward()
    grads = [p.grad for _, p in lora.named_adapter_parameters(net)]
    assert all(g is not None and g.dtype == torch.float32 and g.abs().sum() > 0 for g in grads)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # mixed precision: the factors are cast by autocast
        assert forward(net, x).dtype == torch.bfloat16
    lora.merge_adapters(net)
    assert net[0].base.weight.dtype == torch.bfloat16
    torch.testing.assert_close(forward(net, x).float(), want, rtol=3e-2, atol=3e-2)
    lora.unmerge_adapters(net)
    net.to(torch.bfloat16)
    lora.cast_adapters(net, torch.float32)
    assert all(p.dtype == torch.float32 for _, p in lora.named_adapter_parameters(net))


def _bare(state):
    m = nn.Sequential(nn.Linear(6, 12), nn.GELU(), nn.Conv1d(12, 5, 3, padding=1))
    m.load_state_dict(state)
    return m


def test_active_adapter_sets():
    net, ref = _net(), _net()
    lora.add_lora(net, ["block.0"], rank=2, init="random", name="a")
    lora.add_lora(net, ["block.0", "pw"], rank=2, init="random", name="b")
    only_a = _net()
    lora.add_lora(only_a, ["block.0"], rank=2, init="random", name="a")
    lora.load_adapter_state_dict(only_a, lora.adapter_state_dict(net, ["a"]))
    x = _x()
    assert lora.set_active_adapters(net, ["a"]) == ["a"] and lora.active_adapters(net) == ["a"]
    torch.testing.assert_close(net(x), only_a(x), rtol=0, atol=0)
    assert lora.set_active_adapters(net, []) == []
    torch.testing.assert_close(net(x), ref(x), rtol=0, atol=0)
    assert lora.set_active_adapters(net, "b") == ["b"]
    assert not torch.allclose(net(x), ref(x)) and not torch.allclose(net(x), only_a(x))
    assert sorted(lora.trainable_adapters(net)) == ["a", "b"]  # activity does not change trainability
    with pytest.raises(KeyError, match="no adapter named 'c'"):
        lora.set_active_adapters(net, ["a", "c"])
    assert lora.active_adapters(net) == ["b"]  # a failed call changes nothing


def test_adapter_param_groups_two_learning_rates():
    net = _net()
    lora.add_lora(net, ALL, rank=2, init="random", name="vida_low")
    lora.add_lora(net, ["block.*"], rank=4, init="random", name="vida_high")
    lora.add_lora(net, ["pw"], rank=2, init="orthogonal", name="plp", frozen_down_cols=4, frozen_up_rows=3)
    lora.add_lora(net, ["conv"], rank=2, name="off")
    lora.set_adapter_trainable(net, "off", False)
    net.norm.requires_grad_(True)  # a trainable base parameter: goes to the base group
    groups = lora.adapter_param_groups(net, {"vida_low": {"lr": 1e-5}, "vida_high": {"lr": 1e-4},
                                             "plp.up": {"lr": 3e-4}}, base={"lr": 1e-3})
    assert [g["name"] for g in groups] == ["vida_low", "vida_high", "plp.up", "base"]
    ids = [id(p) for g in groups for p in g["params"]]
    trainable = [p for p in net.parameters() if p.requires_grad]
    assert len(ids) == len(set(ids)) == len(trainable) and set(ids) == {id(p) for p in trainable}
    by_name = {id(p): n for n, p in net.named_parameters()}
    assert all(".deltas.vida_low." in by_name[id(p)] for p in groups[0]["params"]) and len(groups[0]["params"]) == 10
    assert [by_name[id(p)] for p in groups[2]["params"]] == ["pw.deltas.plp.up"]
    assert {by_name[id(p)] for p in groups[3]["params"]} == {"norm.weight", "norm.bias", "pw.deltas.plp.down"}
    opt = torch.optim.AdamW(groups, lr=0.5)
    assert [g["lr"] for g in opt.param_groups] == [1e-5, 1e-4, 3e-4, 1e-3]
    assert lora.adapter_param_groups(net, {})[0]["name"] == "base"
    with pytest.raises(KeyError, match="no adapter named 'vida_mid'.*'vida_low'"):
        lora.adapter_param_groups(net, {"vida_mid": {"lr": 1.0}})
    with pytest.raises(KeyError, match="adapter 'plp' has no tensor 'left'"):
        lora.adapter_param_groups(net, {"plp.left": {"lr": 1.0}})


def test_plp_initial_delta_is_nonzero_as_the_official_code():
    fd, fu, r = 3, 6, 4
    a, b = _net(), _net()
    for m in (a, b):  # the content run and the style run, same seed
        lora.add_lora(m, ["block.0"], rank=r, alpha=8, init="orthogonal", frozen_down_cols=fd, frozen_up_rows=fu,
                      seed=7, name="content")
    lora.add_lora(b, ["block.0"], rank=r, alpha=8, init="orthogonal", frozen_down_cols=fd, frozen_up_rows=fu,
                  seed=7, name="style")  # same seed, same layer: the style adapter shares the frozen parts
    d = a.block[0].deltas["content"]
    dw = d.delta_weight()
    s = 8 / r
    assert dw.abs().sum() > 0 and not torch.allclose(a(_x()), _net()(_x()))  # the layer changed at step 0
    torch.testing.assert_close(dw[:fu], s * d.up_frozen @ d.down_weight(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(dw[:fu, :fd], s * d.up_frozen @ d.down_frozen, rtol=1e-6, atol=1e-7)
    assert torch.equal(dw[fu:], torch.zeros_like(dw[fu:]))  # the trainable rows of up start at zero
    assert d.up.abs().sum() == 0 and d.down.abs().sum() > 0
    for other in (b.block[0].deltas["content"], b.block[0].deltas["style"]):
        assert torch.equal(other.down_frozen, d.down_frozen) and torch.equal(other.up_frozen, d.up_frozen)
    c = _net()
    lora.add_lora(c, ["block.0"], rank=r, init="orthogonal", frozen_down_cols=fd, frozen_up_rows=fu, seed=8)
    assert not torch.equal(c.block[0].deltas["default"].up_frozen, d.up_frozen)  # another seed, other parts


def test_sparse_deltas_go_through_zoo_ops(monkeypatch):
    import inspect

    import zoo.adapters.sara as sara_mod
    from zoo.ops import sparse_grad

    calls = []
    for fn_name in ("SparseLinearFunction", "GatherGradFunction"):
        original = getattr(sparse_grad, fn_name)

        class Spy:
            @staticmethod
            def apply(*args, _fn=original, _name=fn_name):
                calls.append(_name)
                return _fn.apply(*args)

        monkeypatch.setattr(sparse_grad, fn_name, Spy)
    net = _net()
    _sparse(net, "block.0", ("weight", "bias"))
    lora.mark_only_adapters_trainable(net)
    net(_x()).sum().backward()
    assert calls == ["GatherGradFunction", "SparseLinearFunction"]  # bias gathered, weight through the SDDMM op
    assert net.block[0].deltas["sparse"].values("weight").grad is not None
    for mod in (lora, sara_mod):
        assert "import cuda_ext" not in inspect.getsource(mod) and "from cuda_ext" not in inspect.getsource(mod)
