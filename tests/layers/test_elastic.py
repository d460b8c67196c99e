"""Elastic layers: centre crop, prefix slicing, sliced BN statistics, and export() == the active layer."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zoo.engine.batchnorm import recalibrate_batchnorm
from zoo.layers.elastic import (ElasticBatchNorm2d, ElasticConv2d, ElasticDepthwiseConv2d, ElasticLinear, ElasticSE,
                                center_crop_kernel, make_divisible)


def _x(c=6, hw=9, b=2, seed=0):
    return torch.randn(b, c, hw, hw, generator=torch.Generator().manual_seed(seed))


def test_center_crop_picks_the_middle_window():
    w = torch.arange(49.0).view(1, 1, 7, 7)
    assert center_crop_kernel(w, 3).flatten().tolist() == [16, 17, 18, 23, 24, 25, 30, 31, 32]
    assert center_crop_kernel(w, 1).item() == 24
    with pytest.raises(ValueError, match="cannot crop"):
        center_crop_kernel(w, 4)


@pytest.mark.parametrize("k", [3, 5, 7])
def test_conv_is_a_crop_and_slice_of_the_full_weight(k):
    torch.manual_seed(0)
    conv = ElasticConv2d(8, 12, (3, 5, 7), stride=2, bias=True)
    conv.active_out, conv.active_kernel = 5, k
    x = _x(6)
    s = (7 - k) // 2
    want = F.conv2d(x, conv.weight[:5, :6, s:s + k, s:s + k], conv.bias[:5], 2, k // 2)
    torch.testing.assert_close(conv(x), want)
    static = conv.export(6)
    assert isinstance(static, nn.Conv2d) and static.weight.shape == (5, 6, k, k)
    torch.testing.assert_close(static(x), conv(x))
    # export copies: changing the supernet leaves the exported layer alone
    with torch.no_grad():
        conv.weight.zero_()
    assert static.weight.abs().sum() > 0


def test_conv_refuses_settings_outside_its_space():
    conv = ElasticConv2d(4, 4, (3, 5))
    conv.active_kernel = 7
    with pytest.raises(ValueError, match="outside the layer's space"):
        conv(_x(4))
    with pytest.raises(ValueError, match="C <= 4"):
        ElasticConv2d(4, 4)(_x(5))


@pytest.mark.parametrize("k", [3, 5, 7])
def test_depthwise_matches_grouped_conv_and_export(k):
    torch.manual_seed(0)
    dw = ElasticDepthwiseConv2d(10, (3, 5, 7))
    dw.active_kernel = k
    x = _x(6)
    s = (7 - k) // 2
    want = F.conv2d(x, dw.weight[:6, :, s:s + k, s:s + k], None, 1, k // 2, groups=6)
    torch.testing.assert_close(dw(x), want)
    torch.testing.assert_close(dw.export(6)(x), want)


def test_batchnorm_updates_only_the_active_slice_and_exports_it():
    bn = ElasticBatchNorm2d(8).train()
    x = _x(5) * 3 + 1
    bn(x)
    ref = nn.BatchNorm2d(5).train()
    ref(x)
    torch.testing.assert_close(bn.running_mean[:5], ref.running_mean)
    torch.testing.assert_close(bn.running_var[:5], ref.running_var)
    assert torch.equal(bn.running_mean[5:], torch.zeros(3)) and torch.equal(bn.running_var[5:], torch.ones(3))
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    bn.eval()
    static = bn.export(5).eval()
    torch.testing.assert_close(static(x), bn(x))
    # train mode uses batch statistics, as nn.BatchNorm2d
    bn.train()
    ref.weight.data.copy_(bn.weight[:5])
    ref.bias.data.copy_(bn.bias[:5])
    torch.testing.assert_close(bn(x), ref(x))


def test_batchnorm_recalibration_gives_exact_statistics_of_the_slice():
    bn = ElasticBatchNorm2d(8)
    model = nn.Sequential(bn)
    batches = [_x(4, seed=i) * (i + 1) for i in range(3)]
    assert recalibrate_batchnorm(model, batches) == 3
    means = torch.stack([b.mean((0, 2, 3)) for b in batches]).mean(0)
    torch.testing.assert_close(bn.running_mean[:4], means)
    assert bn.training and bn.momentum == 0.1  # train mode and momentum restored
    torch.testing.assert_close(bn.running_mean[4:], torch.zeros(4))  # inactive channels untouched


def test_linear_slices_inputs_and_outputs():
    torch.manual_seed(0)
    fc = ElasticLinear(16, 10)
    assert isinstance(fc, nn.Linear)
    x = torch.randn(3, 12)
    torch.testing.assert_close(fc(x), F.linear(x, fc.weight[:, :12], fc.bias))
    fc.active_out = 4
    torch.testing.assert_close(fc(x), F.linear(x, fc.weight[:4, :12], fc.bias[:4]))
    torch.testing.assert_close(fc.export(12)(x), fc(x))


def test_se_squeeze_follows_the_active_width_and_exports():
    torch.manual_seed(0)
    se = ElasticSE(32, 0.25)
    x = _x(16)
    out = se(x)
    assert se.conv_reduce.active_out == make_divisible(16 * 0.25) == 8
    static = se.export(16)
    assert static.conv_reduce.weight.shape == (8, 16, 1, 1) and static.conv_expand.weight.shape == (16, 8, 1, 1)
    torch.testing.assert_close(static(x), out)


def test_gradients_reach_only_the_active_slice():
    conv = ElasticConv2d(6, 8, (3, 5))
    conv.active_out, conv.active_kernel = 4, 3
    conv(_x(3)).sum().backward()
    g = conv.weight.grad
    assert g[:4, :3, 1:4, 1:4].abs().sum() > 0
    mask = torch.ones_like(g, dtype=torch.bool)
    mask[:4, :3, 1:4, 1:4] = False
    assert g[mask].abs().sum() == 0
