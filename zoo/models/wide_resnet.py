"""Wide residual networks for 32x32 images (pre-activation BasicBlocks, BatchNorm): the BatchNorm backbone of the
test-time adaptation studies, in the key layout of RobustBench's / TRADES' ``WideResNet``.

``WideResNet(depth, widen_factor)``: a 3x3 stem conv (16 channels), three groups of ``(depth - 4) / 6``
pre-activation BasicBlocks (BN-ReLU-conv3x3-BN-ReLU-conv3x3, widths ``16k, 32k, 64k``, the second and third
groups start with stride 2), a final BN-ReLU, global average pooling and a linear classifier ``fc``. Inputs are
images in [0, 1] with no normalisation layer, as RobustBench's models take them.

The module and parameter names are RobustBench's (``conv1``, ``block1.layer.0.bn1`` ... ``convShortcut``, ``bn1``,
``fc``), so ``wrn28_10`` loads RobustBench's CIFAR-10 ``Standard`` checkpoint (the source model of the CoTTA /
Tent CIFAR-10-C tables) as it is (``checkpoint_filter_fn`` unwraps ``state_dict`` and drops ``module.``).

Reference: Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016; RobustBench
``robustbench/model_zoo/architectures/wide_resnet.py`` (from yaodongyu/TRADES), including its block's quirk: when
a block changes width, the shortcut takes the block's pre-activated input (``x = relu(bn1(x))``).
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from zoo.hub import PretrainedCfg, build_model_with_cfg
from zoo.models._contract import AuxiliaryLossMixin, check_image_input, feature_take_indices
from zoo.registry import register_model

__all__ = ["WideResNet", "BasicBlock", "wrn10_2", "wrn16_1", "wrn28_10", "checkpoint_filter_fn"]

_DIGITS = tuple(str(i) for i in range(10))
_CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

default_cfgs = {
    "wrn10_2": PretrainedCfg(
        num_classes=10, classifier="fc", input_size=(3, 32, 32), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
        label_names=_DIGITS, license="apache-2.0",
        notes="WRN-10-2 (one pre-activation BasicBlock per group, widths 32-64-128, ~0.3M parameters): the BatchNorm "
              "source model of the MNIST-C test-time adaptation study (configs/vida/README.md); images in [0, 1], no "
              "normalisation. No weights shipped (the study trains three sources).",
    ),
    "wrn16_1": PretrainedCfg(
        num_classes=10, classifier="fc", input_size=(3, 32, 32), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
        label_names=_DIGITS, license="apache-2.0",
        notes="WRN-16-1 (two BasicBlocks per group, widths 16-32-64, ~0.18M parameters); no weights shipped.",
    ),
    "wrn28_10": PretrainedCfg(
        num_classes=10, classifier="fc", input_size=(3, 32, 32), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
        label_names=_CIFAR10, dataset="cifar10", license="mit",
        origin_url="https://github.com/RobustBench/robustbench",
        notes="WRN-28-10 (36.5M parameters), the architecture of RobustBench's CIFAR-10 'Standard' model (the source "
              "of the CoTTA / Tent CIFAR-10-C tables); its checkpoint (Standard.pt) loads with checkpoint_path=. "
              "No weights shipped.",
    ),
}


class BasicBlock(nn.Module):
    """Pre-activation wide-ResNet block ``(B, in_chs, H, W) -> (B, out_chs, H / stride, W / stride)``:
    ``bn1-relu-conv1(3x3, stride)-bn2-relu-(dropout)-conv2(3x3)`` plus the shortcut (identity, or a 1x1 strided
    ``convShortcut`` of the pre-activated input when the width changes)."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_chs)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, stride=1, padding=1, bias=False)
        self.drop_rate = float(drop_rate)
        self.equal_in_out = in_chs == out_chs and stride == 1
        self.convShortcut = None if self.equal_in_out else nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(pre)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        return out + (x if self.equal_in_out else self.convShortcut(pre))


class _Group(nn.Module):
    """``n`` blocks, the first with ``stride`` (RobustBench's ``NetworkBlock``: the blocks are ``.layer``)."""

    def __init__(self, n: int, in_chs: int, out_chs: int, stride: int, drop_rate: float):
        super().__init__()
        self.layer = nn.Sequential(*[BasicBlock(in_chs if i == 0 else out_chs, out_chs, stride if i == 0 else 1,
                                                drop_rate) for i in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(AuxiliaryLossMixin, nn.Module):
    """WRN-``depth``-``widen_factor`` classifier ``(B, in_chans, H, W) -> (B, num_classes)`` (see the module doc).

    Args:
        depth: ``6n + 4`` (10: one block per group, 16: two, 28: four).
        widen_factor: ``k``; group widths ``16k, 32k, 64k``.
        num_classes: output classes; 0 makes ``forward`` return the pooled features ``(B, 64k)``.
        in_chans: input channels.
        drop_rate: dropout inside each block (between its two convs), as the reference.

    ``forward_intermediates`` gives the three groups' outputs ``(B, 16k·2^i, H / 2^i, W / 2^i)`` (pre-activation
    sums; ``norm=True`` passes the last one through the final BN + ReLU). No auxiliary losses.
    """

    def __init__(self, depth: int = 28, widen_factor: int = 10, num_classes: int = 10, in_chans: int = 3,
                 drop_rate: float = 0.0):
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, ...), got {depth}")
        if widen_factor < 1 or in_chans < 1:
            raise ValueError(f"WideResNet needs widen_factor >= 1 and in_chans >= 1, got {widen_factor}, {in_chans}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.in_chans = int(in_chans)
        self.num_classes = int(num_classes)
        self.num_features = self.head_hidden_size = widths[3]
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, padding=1, bias=False)
        self.block1 = _Group(n, widths[0], widths[1], 1, drop_rate)
        self.block2 = _Group(n, widths[1], widths[2], 2, drop_rate)
        self.block3 = _Group(n, widths[2], widths[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(widths[3], num_classes) if num_classes > 0 else nn.Identity()
        self.feature_info = [dict(module=f"block{i + 1}", num_chs=widths[i + 1], reduction=2 ** i, fmt="NCHW")
                             for i in range(3)]
        for m in self.modules():  # the reference's initialisation
            if isinstance(m, nn.Conv2d):
                m.weight.data.normal_(0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    @property
    def groups(self) -> list[nn.Module]:
        """The three block groups, in order."""
        return [self.block1, self.block2, self.block3]

    def _check_input(self, x: torch.Tensor) -> None:
        check_image_input(x, self, "WideResNet", self.in_chans, min_size=4)

    def _final(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn1(x))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_chans, H, W) -> (B, num_features)``: the groups, final BN + ReLU, global average pooling (the
        reference's ``avg_pool2d(out, 8)`` at 32x32 input)."""
        self._check_input(x)
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return self._final(x).mean((2, 3))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """``(B, num_features) -> (B, num_classes)`` (``pre_logits``: the features unchanged)."""
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_chans, H, W) -> (B, num_classes)`` logits."""
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: torch.Tensor, indices: int | Sequence[int] | None = None, norm: bool = False,
                              stop_early: bool = False, intermediates_only: bool = False
                              ) -> tuple[torch.Tensor, list[torch.Tensor]] | list[torch.Tensor]:
        """The groups' outputs (timm's ``forward_intermediates``): ``indices`` an int n (the last n groups), a list
        (negative from the end) or None (all). Returns ``(final_features (B, C), [features])`` — the pooled output
        of the last group run (after the final BN + ReLU when all three ran: what :meth:`forward_head` takes) — or
        the list alone."""
        take, max_index = feature_take_indices(3, indices)
        self._check_input(x)
        groups = self.groups[:max_index + 1] if stop_early else self.groups
        x = self.conv1(x)
        feats = {}
        for i, group in enumerate(groups):
            x = group(x)
            if i in take:
                feats[i] = self._final(x) if norm and i == 2 else x
        out = [feats[i] for i in take]
        if intermediates_only:
            return out
        return (self._final(x) if len(groups) == 3 else x).mean((2, 3)), out

    def get_classifier(self) -> nn.Module:
        """The classifier (``fc``)."""
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh classifier for ``num_classes`` (0: identity, ``forward`` gives the pooled features)."""
        self.num_classes = int(num_classes)
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()


def checkpoint_filter_fn(state: Mapping[str, Any], model: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """A RobustBench / TRADES checkpoint (``{'state_dict': ...}`` or a bare state dict, ``module.`` prefixes of
    DataParallel) -> this model's keys (the same names)."""
    if "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


def _create(variant: str, pretrained: bool, depth: int, widen_factor: int, **kwargs: Any) -> WideResNet:
    return build_model_with_cfg(WideResNet, variant, pretrained, checkpoint_filter_fn=checkpoint_filter_fn,
                                **dict(dict(depth=depth, widen_factor=widen_factor), **kwargs))


@register_model
def wrn10_2(pretrained: bool = False, **kwargs) -> WideResNet:
    """WRN-10-2 for 32x32 RGB images in [0, 1] (~0.3M parameters): the BatchNorm backbone of the MNIST-C study."""
    return _create("wrn10_2", pretrained, 10, 2, **kwargs)


@register_model
def wrn16_1(pretrained: bool = False, **kwargs) -> WideResNet:
    """WRN-16-1 for 32x32 RGB images in [0, 1] (~0.18M parameters)."""
    return _create("wrn16_1", pretrained, 16, 1, **kwargs)


@register_model
def wrn28_10(pretrained: bool = False, **kwargs) -> WideResNet:
    """WRN-28-10 (36.5M parameters), RobustBench's CIFAR-10 ``Standard`` architecture; its checkpoint loads with
    ``checkpoint_path=``."""
    return _create("wrn28_10", pretrained, 28, 10, **kwargs)
