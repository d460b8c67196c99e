"""BigNAS supernet: the space's extremes, subnet setting, export == active child, FLOPs of exported children."""
from __future__ import annotations

import random

import pytest
import torch
from torch import nn

import zoo
from zoo.engine.batchnorm import recalibrate_batchnorm
from zoo.layers.elastic import ElasticBatchNorm2d
from zoo.models.bignas import SPACES, BigNASChild, BigNASNet, count_flops, resize_input


def _randomise_bn(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


@pytest.fixture(scope="module")
def supernet() -> BigNASNet:
    torch.manual_seed(0)
    model = zoo.create_model("bignas_mnist")
    _randomise_bn(model)  # the residual blocks' zero gamma would hide mistakes in their branches
    return model


def _archs(model: BigNASNet) -> list[dict]:
    rng = random.Random(0)
    return [model.max_subnet(), model.min_subnet(), model.sample_subnet(rng), model.sample_subnet(rng)]


def test_extremes_are_what_the_space_says():
    model = BigNASNet("mnist")
    sp = SPACES["mnist"]
    big, small = model.max_subnet(), model.min_subnet()
    assert big["resolution"] == 28 and small["resolution"] == 20
    assert big["widths"] == [max(s.widths) for s in sp.stages] and small["depths"] == [min(s.depths) for s in sp.stages]
    assert big["kernels"] == [3, 7, 7, 7] and small["kernels"] == [3, 3, 3, 3]
    assert big["expands"] == [1, 4, 4, 4] and small["expands"] == [1, 2, 2, 2]
    assert model.active_arch == big  # the largest child is active after construction
    middle = model.sample_subnet(random.Random(1))
    assert model.subnet_flops(small) < model.subnet_flops(middle) <= model.subnet_flops(big)
    # the ImageNet space is BigNAS's (mmrazor's table): 7 stages, res 192-320, head 1280-1408
    im = SPACES["imagenet"]
    assert len(im.stages) == 7 and im.resolutions == (192, 224, 256, 288, 320) and im.head_widths[-1] == 1408
    assert [max(s.widths) for s in im.stages] == [24, 32, 48, 88, 128, 216, 352]


def test_sampling_is_reproducible_and_inside_the_space():
    model = BigNASNet("mnist")
    a = [model.sample_subnet(random.Random(3)) for _ in range(2)]
    assert a[0] == a[1]
    seen = {tuple(model.sample_subnet(random.Random(i))["kernels"]) for i in range(20)}
    assert len(seen) > 5
    with pytest.raises(ValueError, match=r"kernels\[1\]=9"):
        model.set_subnet(dict(model.max_subnet(), kernels=[3, 9, 3, 3]))
    with pytest.raises(ValueError, match="missing keys"):
        model.set_subnet({"resolution": 28})


def test_active_child_changes_shapes_and_depth(supernet):
    small = supernet.min_subnet()
    supernet.set_subnet(small)
    x = torch.rand(2, 1, 20, 20)
    _, feats = supernet.forward_intermediates(x)
    assert [f.shape[1] for f in feats] == small["widths"]
    assert supernet.forward_features(x).shape == (2, small["head"])
    supernet.set_subnet(supernet.max_subnet())


@pytest.mark.parametrize("which", [0, 1, 2, 3])
def test_exported_child_equals_the_active_supernet_after_bn_recalibration(supernet, which):
    arch = _archs(supernet)[which]
    supernet.set_subnet(arch)
    g = torch.Generator().manual_seed(which)
    batches = [resize_input(torch.rand(8, 1, 28, 28, generator=g), arch["resolution"]) for _ in range(3)]
    recalibrate_batchnorm(supernet, batches)
    supernet.eval()
    child = supernet.export_subnet().eval()
    assert isinstance(child, BigNASChild)
    assert not any(isinstance(m, ElasticBatchNorm2d) for m in child.modules())
    assert all(type(m).__module__.startswith("torch.nn") or isinstance(m, BigNASChild) or
               type(m).__module__ == "zoo.models.bignas" or type(m).__name__ == "SqueezeExcite"
               for m in child.modules())
    x = batches[0]
    with torch.no_grad():
        torch.testing.assert_close(child(x), supernet(x), rtol=1e-5, atol=1e-5)
    # FLOPs of the exported child equal the counter on the supernet's active child
    r = arch["resolution"]
    assert count_flops(child, (1, 1, r, r)) == supernet.subnet_flops(arch)
    assert sum(p.numel() for p in child.parameters()) == supernet.subnet_params(arch)
    supernet.train()
    supernet.set_subnet(supernet.max_subnet())


def test_export_does_not_change_the_active_child(supernet):
    supernet.set_subnet(supernet.max_subnet())
    supernet.export_subnet(supernet.min_subnet())
    assert supernet.active_arch == supernet.max_subnet()


def test_zero_init_of_the_last_bn_in_residual_blocks():
    model = BigNASNet("mnist")
    blocks = model.residual_blocks()
    assert blocks and all(torch.equal(b.project.bn.weight, torch.zeros_like(b.project.bn.weight)) for b in blocks)
    first = [stage[0] for stage in model.stages]
    assert all(not b.residual and b.project.bn.weight.abs().sum() > 0 for b in first)


def test_child_loads_through_create_model(tmp_path, supernet):
    from safetensors.torch import save_file

    arch = supernet.sample_subnet(random.Random(5))
    child = supernet.export_subnet(arch).eval()
    path = tmp_path / "child.safetensors"
    save_file({k: v.contiguous() for k, v in child.state_dict().items()}, str(path))
    loaded = zoo.create_model("bignas_child", space="mnist", arch=arch, checkpoint_path=str(path)).eval()
    x = torch.rand(2, 1, arch["resolution"], arch["resolution"])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), child(x), rtol=0, atol=0)
    assert loaded.arch == arch


def test_imagenet_space_builds_and_counts():
    model = zoo.create_model("bignas_imagenet")
    small = model.min_subnet()
    mflops = model.subnet_flops(small) / 1e6
    assert 100 < mflops < 250, mflops
    with torch.no_grad():
        assert model.eval()(torch.rand(1, 3, 192, 192)).shape == (1, 1000)


def test_child_refuses_or_resizes_an_input_of_another_resolution(tmp_path, supernet):
    """A child runs at the resolution it was searched for: another size is an error naming both sizes (the default)
    or, with on_resolution="resize", is bilinearly resized first -- never run silently (28 px into a 24-px child
    used to give other logits without a word)."""
    from zoo.models.bignas import load_child, save_child

    arch = dict(supernet.min_subnet(), resolution=24)
    save_child(supernet.export_subnet(arch).eval(), tmp_path)
    strict = load_child(tmp_path)
    x28 = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="searched at 24x24 inputs, got 28x28.*resize_input"):
        strict(x28)
    with torch.no_grad():
        want = strict(resize_input(x28, 24))
        torch.testing.assert_close(load_child(tmp_path, on_resolution="resize")(x28), want, rtol=0, atol=0)
    with pytest.raises(ValueError, match="on_resolution"):
        load_child(tmp_path, on_resolution="ignore")
