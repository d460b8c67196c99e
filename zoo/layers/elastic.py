"""Elastic ("dynamic") layers for weight-sharing supernets (BigNAS, OFA, AttentiveNAS).

Each layer holds the weights of its *largest* configuration and runs a smaller one by slicing them:

* channels are always a **prefix** slice (the first ``C`` filters / input channels / BN statistics);
* kernels are a **centre crop** of the largest kernel (BigNAS; OFA's learned kernel-transform matrices are not
  used), e.g. the 3x3 kernel is ``weight[..., 2:5, 2:5]`` of a 7x7 one.

The active setting is read from attributes the network sets before a forward (``active_out``,
``active_kernel``); the active *input* width is the width of the tensor that arrives (``x.shape[1]``), so the
network only sets output widths. ``export(in_channels)`` returns a plain static module (``nn.Conv2d``,
``nn.BatchNorm2d``, ``nn.Linear``, :class:`SqueezeExcite`) holding copies of the active slices; in eval mode it
computes exactly what the elastic layer computes with that setting.

:class:`ElasticBatchNorm2d` subclasses ``nn.BatchNorm2d`` and :class:`ElasticLinear` subclasses ``nn.Linear``, so
:func:`zoo.engine.batchnorm.recalibrate_batchnorm` and code that looks for the classifier's ``nn.Linear`` work on a
supernet unchanged. Sliced BatchNorm statistics are shared by all children: recalibrate them for the child you
evaluate or export (BigNAS §3.3).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "make_divisible",
    "center_crop_kernel",
    "ElasticConv2d",
    "ElasticDepthwiseConv2d",
    "ElasticBatchNorm2d",
    "ElasticLinear",
    "ElasticSE",
    "SqueezeExcite",
]


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """``value`` rounded to the nearest multiple of ``divisor`` (at least ``min_value``, default ``divisor``), never
    more than 10 % below ``value`` (the MobileNet rule)."""
    min_value = divisor if min_value is None else min_value
    new = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return int(new)


def center_crop_kernel(weight: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """The centre ``kernel_size x kernel_size`` window of ``weight (O, I, K, K)`` (a view), ``K - kernel_size`` even."""
    k_max = weight.shape[-1]
    if kernel_size > k_max or (k_max - kernel_size) % 2:
        raise ValueError(f"center_crop_kernel: cannot crop a {k_max}x{k_max} kernel to {kernel_size}x{kernel_size}; "
                         f"the size must be <= {k_max} and differ from it by an even number")
    start = (k_max - kernel_size) // 2
    return weight[..., start:start + kernel_size, start:start + kernel_size]


def _check_kernels(name: str, kernel_sizes: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(sorted({int(k) for k in kernel_sizes}))
    if not ks or any(k < 1 or k % 2 == 0 for k in ks):
        raise ValueError(f"{name}: kernel_sizes must be odd positive integers, got {tuple(kernel_sizes)}")
    return ks


def _check_in(name: str, x: torch.Tensor, max_in: int) -> int:
    if x.ndim != 4 or x.shape[1] > max_in:
        raise ValueError(f"{name}: expected input (B, C, H, W) with C <= {max_in}, got {tuple(x.shape)}")
    return int(x.shape[1])


class ElasticConv2d(nn.Module):
    """Conv2d with elastic output channels, input channels (from the input) and kernel size (centre crop).

    ``(B, c_in, H, W) -> (B, active_out, H', W')`` with ``c_in <= max_in``; padding ``k // 2`` ("same" for stride 1).

    Args:
        max_in, max_out: largest input / output channels (the stored weight is ``(max_out, max_in, K, K)``).
        kernel_sizes: allowed odd kernel sizes; ``K = max(kernel_sizes)``.
        stride: convolution stride. bias: with a bias ``(max_out,)``.

    Attributes set by the network: ``active_out`` (default ``max_out``), ``active_kernel`` (default ``K``).
    """

    def __init__(self, max_in: int, max_out: int, kernel_sizes: Sequence[int] = (1,), stride: int = 1,
                 bias: bool = False):
        super().__init__()
        self.kernel_sizes = _check_kernels("ElasticConv2d", kernel_sizes)
        self.max_in, self.max_out, self.stride = int(max_in), int(max_out), int(stride)
        k = self.kernel_sizes[-1]
        self.weight = nn.Parameter(torch.empty(self.max_out, self.max_in, k, k))
        self.bias = nn.Parameter(torch.zeros(self.max_out)) if bias else None
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")
        self.active_out = self.max_out
        self.active_kernel = k

    def active_weight(self, in_channels: int) -> torch.Tensor:
        """``(active_out, in_channels, k, k)``: prefix channels, centre-cropped to ``active_kernel``."""
        if self.active_kernel not in self.kernel_sizes or not 0 < self.active_out <= self.max_out:
            raise ValueError(f"ElasticConv2d: active setting out={self.active_out}, kernel={self.active_kernel} is "
                             f"outside the layer's space (out <= {self.max_out}, kernel in {self.kernel_sizes})")
        return center_crop_kernel(self.weight[:self.active_out, :in_channels], self.active_kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c_in = _check_in("ElasticConv2d", x, self.max_in)
        bias = self.bias[:self.active_out] if self.bias is not None else None
        return F.conv2d(x, self.active_weight(c_in), bias, self.stride, self.active_kernel // 2)

    @torch.no_grad()
    def export(self, in_channels: int) -> nn.Conv2d:
        """A static ``nn.Conv2d(in_channels, active_out, active_kernel)`` with copies of the active weights."""
        k = self.active_kernel
        conv = nn.Conv2d(in_channels, self.active_out, k, self.stride, k // 2, bias=self.bias is not None)
        conv.weight.copy_(self.active_weight(in_channels))
        if self.bias is not None:
            conv.bias.copy_(self.bias[:self.active_out])
        return conv

    def extra_repr(self) -> str:
        return f"max_in={self.max_in}, max_out={self.max_out}, kernel_sizes={self.kernel_sizes}, stride={self.stride}"


class ElasticDepthwiseConv2d(nn.Module):
    """Depthwise conv with elastic channels (from the input) and kernel size (centre crop).

    ``(B, C, H, W) -> (B, C, H', W')`` with ``C <= max_channels``; weight ``(max_channels, 1, K, K)``; padding
    ``k // 2``. Attribute ``active_kernel`` (default ``K``).
    """

    def __init__(self, max_channels: int, kernel_sizes: Sequence[int] = (3,), stride: int = 1):
        super().__init__()
        self.kernel_sizes = _check_kernels("ElasticDepthwiseConv2d", kernel_sizes)
        self.max_channels, self.stride = int(max_channels), int(stride)
        k = self.kernel_sizes[-1]
        self.weight = nn.Parameter(torch.empty(self.max_channels, 1, k, k))
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")
        self.active_kernel = k

    def active_weight(self, channels: int) -> torch.Tensor:
        """``(channels, 1, k, k)``: the first ``channels`` filters, centre-cropped to ``active_kernel``."""
        if self.active_kernel not in self.kernel_sizes:
            raise ValueError(f"ElasticDepthwiseConv2d: active_kernel={self.active_kernel} is not in "
                             f"{self.kernel_sizes}")
        return center_crop_kernel(self.weight[:channels], self.active_kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = _check_in("ElasticDepthwiseConv2d", x, self.max_channels)
        return F.conv2d(x, self.active_weight(c), None, self.stride, self.active_kernel // 2, groups=c)

    @torch.no_grad()
    def export(self, channels: int) -> nn.Conv2d:
        """A static depthwise ``nn.Conv2d(channels, channels, active_kernel, groups=channels)``."""
        k = self.active_kernel
        conv = nn.Conv2d(channels, channels, k, self.stride, k // 2, groups=channels, bias=False)
        conv.weight.copy_(self.active_weight(channels))
        return conv

    def extra_repr(self) -> str:
        return f"max_channels={self.max_channels}, kernel_sizes={self.kernel_sizes}, stride={self.stride}"


class ElasticBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d over the first ``C`` channels of its ``max_features``: ``(B, C, H, W) -> (B, C, H, W)``.

    Training mode normalises with batch statistics and updates the running statistics of those ``C`` channels
    only (momentum, or the cumulative average when ``momentum is None``, as ``nn.BatchNorm2d``); eval mode uses
    ``running_mean[:C]`` / ``running_var[:C]``. The sliced statistics are shared by all children.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = _check_in("ElasticBatchNorm2d", x, self.num_features)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        use_batch = self.training or not self.track_running_stats
        mean = self.running_mean[:c] if self.track_running_stats else None
        var = self.running_var[:c] if self.track_running_stats else None
        weight = self.weight[:c] if self.affine else None
        bias = self.bias[:c] if self.affine else None
        # F.batch_norm updates the sliced views in place, i.e. the first c entries of the full buffers
        return F.batch_norm(x, mean, var, weight, bias, use_batch, factor, self.eps)

    @torch.no_grad()
    def export(self, channels: int) -> nn.BatchNorm2d:
        """A static ``nn.BatchNorm2d(channels)`` with the first ``channels`` weights and running statistics."""
        bn = nn.BatchNorm2d(channels, self.eps, self.momentum, self.affine, self.track_running_stats)
        if self.affine:
            bn.weight.copy_(self.weight[:channels])
            bn.bias.copy_(self.bias[:channels])
        if self.track_running_stats:
            bn.running_mean.copy_(self.running_mean[:channels])
            bn.running_var.copy_(self.running_var[:channels])
            bn.num_batches_tracked.copy_(self.num_batches_tracked)
        return bn


class ElasticLinear(nn.Linear):
    """Linear with elastic input (from the input) and output features: ``(..., c_in) -> (..., active_out)``.

    Stores ``(max_out, max_in)``; ``active_out`` defaults to ``out_features`` (a classifier keeps all classes).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__(in_features, out_features, bias)
        self.active_out = out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[-1]
        if c > self.in_features:
            raise ValueError(f"ElasticLinear: expected at most {self.in_features} input features, got {tuple(x.shape)}")
        bias = self.bias[:self.active_out] if self.bias is not None else None
        return F.linear(x, self.weight[:self.active_out, :c], bias)

    @torch.no_grad()
    def export(self, in_features: int) -> nn.Linear:
        """A static ``nn.Linear(in_features, active_out)`` with copies of the active weights."""
        fc = nn.Linear(in_features, self.active_out, bias=self.bias is not None)
        fc.weight.copy_(self.weight[:self.active_out, :in_features])
        if self.bias is not None:
            fc.bias.copy_(self.bias[:self.active_out])
        return fc


class SqueezeExcite(nn.Module):
    """Static squeeze-and-excitation: ``x * sigmoid(expand(act(reduce(mean_hw(x)))))``, ``(B, C, H, W) -> same``."""

    def __init__(self, channels: int, squeeze: int, act: type[nn.Module] = nn.SiLU):
        super().__init__()
        self.conv_reduce = nn.Conv2d(channels, squeeze, 1, bias=True)
        self.act = act()
        self.conv_expand = nn.Conv2d(squeeze, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.conv_expand(self.act(self.conv_reduce(s))))


class ElasticSE(nn.Module):
    """Squeeze-and-excitation for an elastic width ``C <= max_channels``: ``(B, C, H, W) -> (B, C, H, W)``.

    The squeeze width follows the active width: ``make_divisible(C * se_ratio, divisor)`` (prefix slices of the
    reduce / expand 1x1 convs).
    """

    def __init__(self, max_channels: int, se_ratio: float = 0.25, divisor: int = 8, act: type[nn.Module] = nn.SiLU):
        super().__init__()
        self.max_channels, self.se_ratio, self.divisor, self.act_layer = int(max_channels), se_ratio, divisor, act
        max_sq = self.squeeze_channels(self.max_channels)
        self.conv_reduce = ElasticConv2d(self.max_channels, max_sq, (1,), bias=True)
        self.act = act()
        self.conv_expand = ElasticConv2d(max_sq, self.max_channels, (1,), bias=True)

    def squeeze_channels(self, channels: int) -> int:
        """Squeeze width for ``channels`` active channels."""
        return make_divisible(channels * self.se_ratio, self.divisor)

    def _set(self, c: int) -> None:
        self.conv_reduce.active_out = self.squeeze_channels(c)
        self.conv_expand.active_out = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = _check_in("ElasticSE", x, self.max_channels)
        self._set(c)
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.conv_expand(self.act(self.conv_reduce(s))))

    @torch.no_grad()
    def export(self, channels: int) -> SqueezeExcite:
        """A static :class:`SqueezeExcite` for ``channels`` active channels."""
        self._set(channels)
        sq = self.squeeze_channels(channels)
        se = SqueezeExcite(channels, sq, self.act_layer)
        se.conv_reduce = self.conv_reduce.export(channels)
        se.conv_expand = self.conv_expand.export(sq)
        return se
