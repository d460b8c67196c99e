"""BigNAS single-stage supernets (Yu et al., ECCV 2020): a MobileNetV2/V3-style network of inverted-residual
(MBConv) blocks whose every child -- depth per stage, width, kernel size, expand ratio, input resolution -- shares
the largest network's weights (``zoo.layers.elastic``).

A child ("arch") is a plain dict, one entry per stage for the per-stage choices::

    {"resolution": 28, "stem": 16, "widths": [16, 24, 32, 48], "depths": [1, 2, 3, 2],
     "kernels": [3, 7, 5, 3], "expands": [1, 4, 3, 2], "head": 96}

:class:`BigNASNet` is the supernet: ``sample_subnet(rng)``, ``max_subnet()``, ``min_subnet()``, ``set_subnet(arch)``
(the active child every forward then runs), ``export_subnet(arch) -> BigNASChild`` (plain ``nn.Conv2d`` /
``nn.BatchNorm2d`` / ``nn.Linear`` with copied weights), ``subnet_flops(arch)`` / ``subnet_params(arch)``
(``torch.utils.flop_counter``). The input resolution is part of the arch but *not* applied inside ``forward``: the
caller resizes the batch (:func:`resize_input`), so a network runs on whatever it gets, as any timm model, and the
FLOPs of an arch are those at its resolution.

Spaces: ``SPACES["imagenet"]`` (BigNAS's space as encoded in mmrazor's ``bignas_mobilenet.py``, expand ratios
{4, 5, 6} as AttentiveNAS, SE in the stages AttentiveNAS puts it; res 192-320) and ``SPACES["mnist"]`` (a small
space for 28x28 CPU-scale data, kernels {3, 5, 7}, expand {2, 3, 4}). Residual blocks are the blocks after the
first of each stage (stride 1, same width); their last BN's gamma starts at zero (each block starts as the identity).

:func:`save_child` / :func:`load_child` write / read a child as ``model.safetensors`` + ``config.json``.

Registered: ``bignas_mnist`` (supernet, 1x28x28), ``bignas_imagenet`` (supernet, 3x224x224) and ``bignas_child``
(a static child: ``create_model("bignas_child", space="mnist", arch={...}, checkpoint_path=...)`` loads a child
written by ``tools/export.py``).
"""
from __future__ import annotations

import json
import os
import random
from pathlib import Path
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from zoo.hub import PretrainedCfg, build_model_with_cfg
from zoo.layers.elastic import (ElasticBatchNorm2d, ElasticConv2d, ElasticDepthwiseConv2d, ElasticLinear, ElasticSE,
                                SqueezeExcite, make_divisible)
from zoo.models._contract import AuxiliaryLossMixin, DropFcHeadMixin, check_image_input, feature_take_indices
from zoo.registry import register_model

__all__ = ["StageSpace", "SearchSpace", "SPACES", "get_space", "BigNASNet", "BigNASChild", "resize_input",
           "count_flops", "arch_key", "save_child", "load_child", "bignas_mnist", "bignas_imagenet", "bignas_child"]

default_cfgs = {
    "bignas_mnist": PretrainedCfg(
        num_classes=10, classifier="head.fc", input_size=(1, 28, 28), mean=(0.0,), std=(1.0,),
        label_names=tuple(str(i) for i in range(10)), license="apache-2.0",
        notes="BigNAS supernet, small space for 28x28 images (SPACES['mnist']); images in [0, 1]. No weights shipped.",
    ),
    "bignas_imagenet": PretrainedCfg(
        num_classes=1000, classifier="head.fc", input_size=(3, 224, 224), mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225), license="apache-2.0",
        notes="BigNAS supernet, ImageNet space (SPACES['imagenet'], resolutions 192-320). No weights shipped.",
    ),
    "bignas_child": PretrainedCfg(
        num_classes=10, classifier="head.fc", input_size=(1, 28, 28), mean=(0.0,), std=(1.0,),
        license="apache-2.0",
        notes="A static child of a BigNAS supernet (space + arch kwargs); load an exported one with checkpoint_path.",
    ),
}


# ---------------------------------------------------------------------------------------------------- the space
@dataclass(frozen=True)
class StageSpace:
    """Choices of one stage of MBConv blocks (all blocks of the stage share width, kernel and expand ratio)."""

    widths: tuple[int, ...]
    depths: tuple[int, ...]
    kernels: tuple[int, ...]
    expands: tuple[float, ...]
    stride: int = 1
    se: bool = False


@dataclass(frozen=True)
class SearchSpace:
    """A BigNAS search space: resolutions, stem widths, stages, head (last 1x1 conv) widths, activation."""

    resolutions: tuple[int, ...]
    stem_widths: tuple[int, ...]
    stages: tuple[StageSpace, ...]
    head_widths: tuple[int, ...]
    stem_stride: int = 2
    act: str = "silu"  # silu (swish) | relu

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SearchSpace":
        """Build from a plain dict (a config's ``model.space``)."""
        d = dict(d)
        stages = tuple(StageSpace(**{k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in s.items()})
                       for s in d.pop("stages"))
        return cls(stages=stages, **{k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in d.items()})

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON / YAML), inverse of :meth:`from_dict`."""
        return asdict(self)


def _r(lo: int, hi: int, step: int = 8) -> tuple[int, ...]:
    return tuple(range(lo, hi + 1, step))


SPACES: dict[str, SearchSpace] = {
    "imagenet": SearchSpace(
        resolutions=(192, 224, 256, 288, 320),
        stem_widths=_r(32, 40),
        stages=(
            StageSpace(_r(16, 24), (1, 2), (3,), (1,), 1, False),
            StageSpace(_r(24, 32), (2, 3), (3,), (4, 5, 6), 2, False),
            StageSpace(_r(40, 48), (2, 3), (3, 5), (4, 5, 6), 2, True),
            StageSpace(_r(80, 88), (2, 3, 4), (3, 5), (4, 5, 6), 2, False),
            StageSpace(_r(112, 128), (2, 3, 4, 5, 6), (3, 5), (4, 5, 6), 1, True),
            StageSpace(_r(192, 216), (2, 3, 4, 5, 6), (3, 5), (6,), 2, True),
            StageSpace(_r(320, 352), (1, 2), (3, 5), (6,), 1, True),
        ),
        head_widths=(1280, 1344, 1408),
        stem_stride=2,
    ),
    "mnist": SearchSpace(
        resolutions=(20, 24, 28),
        stem_widths=(8, 16),
        stages=(
            StageSpace((8, 16), (1,), (3,), (1,), 1, False),
            StageSpace((16, 24), (1, 2), (3, 5, 7), (2, 3, 4), 2, False),
            StageSpace((24, 32), (1, 2, 3), (3, 5, 7), (2, 3, 4), 1, True),
            StageSpace((32, 48), (1, 2), (3, 5, 7), (2, 3, 4), 1, True),
        ),
        head_widths=(64, 96),
        stem_stride=2,
    ),
}


def get_space(space: str | SearchSpace | Mapping[str, Any]) -> SearchSpace:
    """A :class:`SearchSpace` from a name in :data:`SPACES`, a dict, or itself."""
    if isinstance(space, SearchSpace):
        return space
    if isinstance(space, str):
        if space not in SPACES:
            raise KeyError(f"unknown BigNAS space '{space}'; choose one of {sorted(SPACES)} or pass a dict "
                           "(see zoo/models/bignas.py SPACES)")
        return SPACES[space]
    return SearchSpace.from_dict(space)


def arch_key(arch: Mapping[str, Any]) -> str:
    """A canonical string for an arch dict (for caches and de-duplication)."""
    keys = ("resolution", "stem", "widths", "depths", "kernels", "expands", "head")
    return ";".join(f"{k}={list(arch[k]) if isinstance(arch[k], (list, tuple)) else arch[k]}" for k in keys)


def resize_input(x: torch.Tensor, resolution: int | None) -> torch.Tensor:
    """``(B, C, H, W) -> (B, C, r, r)`` (bilinear) when ``H, W != r``; unchanged otherwise or when ``r`` is None."""
    if resolution is None or (x.shape[-2] == resolution and x.shape[-1] == resolution):
        return x
    return F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)


def count_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-adds of one eval-mode forward of ``model`` on zeros of ``input_shape`` (e.g. ``(1, 3, 224, 224)``),
    counted by ``torch.utils.flop_counter.FlopCounterMode`` (its FLOPs / 2: the MobileNet/BigNAS "FLOPs" convention,
    convolutions and matmuls only)."""
    from torch.utils.flop_counter import FlopCounterMode

    param = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(torch.zeros(*input_shape, dtype=param.dtype, device=param.device))
    finally:
        model.train(was_training)
    return int(counter.get_total_flops()) // 2


def _act(name: str) -> type[nn.Module]:
    acts = {"silu": nn.SiLU, "swish": nn.SiLU, "relu": nn.ReLU}
    if name not in acts:
        raise ValueError(f"BigNAS space act must be one of {sorted(acts)}, got {name!r}")
    return acts[name]


# ---------------------------------------------------------------------------------------------------- blocks
class MBConv(nn.Module):
    """Static inverted-residual block: [1x1 expand + BN + act] -> kxk depthwise + BN + act -> [SE] -> 1x1 project +
    BN, plus the input when ``residual``: ``(B, C_in, H, W) -> (B, C_out, H / stride, W / stride)``."""

    def __init__(self, expand: nn.Module | None, dw: nn.Module, se: nn.Module | None, project: nn.Module,
                 residual: bool):
        super().__init__()
        self.expand = expand if expand is not None else nn.Identity()
        self.dw = dw
        self.se = se if se is not None else nn.Identity()
        self.project = project
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.se(self.dw(self.expand(x))))
        return out + x if self.residual else out


def _conv_bn_act(conv: nn.Module, bn: nn.Module, act: nn.Module | None) -> nn.Sequential:
    parts = OrderedDict(conv=conv, bn=bn)
    if act is not None:
        parts["act"] = act
    return nn.Sequential(parts)


class ElasticMBConv(nn.Module):
    """Inverted-residual block with elastic width, kernel and expand ratio (same layout as :class:`MBConv`).

    ``(B, c_in, H, W) -> (B, active_out, H / stride, W / stride)``; the middle width is
    ``make_divisible(c_in * active_expand, 8)`` (``c_in`` when the block has no expand conv).
    """

    def __init__(self, max_in: int, max_out: int, kernels: Sequence[int], expands: Sequence[float], stride: int,
                 se: bool, act: type[nn.Module], residual: bool):
        super().__init__()
        self.max_in, self.max_out, self.stride = max_in, max_out, stride
        self.kernels, self.expands = tuple(kernels), tuple(expands)
        self.has_expand = tuple(expands) != (1,)
        self.act_layer = act
        max_mid = make_divisible(max_in * max(expands)) if self.has_expand else max_in
        self.expand = (_conv_bn_act(ElasticConv2d(max_in, max_mid), ElasticBatchNorm2d(max_mid), act())
                       if self.has_expand else nn.Identity())
        self.dw = _conv_bn_act(ElasticDepthwiseConv2d(max_mid, kernels, stride), ElasticBatchNorm2d(max_mid), act())
        self.se = ElasticSE(max_mid, act=act) if se else nn.Identity()
        self.project = _conv_bn_act(ElasticConv2d(max_mid, max_out), ElasticBatchNorm2d(max_out), None)
        self.residual = residual
        if residual:  # BigNAS init: the block starts as the identity
            nn.init.zeros_(self.project.bn.weight)
        self.active_expand = max(expands)

    def mid_channels(self, in_channels: int) -> int:
        """Width of the depthwise conv for ``in_channels`` inputs at the active expand ratio."""
        return make_divisible(in_channels * self.active_expand) if self.has_expand else in_channels

    def set_active(self, out_channels: int, kernel: int, expand: float) -> None:
        """Set the block's active width, kernel and expand ratio."""
        self.active_expand = expand
        self.dw.conv.active_kernel = kernel
        self.project.conv.active_out = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.has_expand:
            self.expand.conv.active_out = self.mid_channels(x.shape[1])
        out = self.project(self.se(self.dw(self.expand(x))))
        if self.residual:
            if out.shape != x.shape:
                raise ValueError(f"ElasticMBConv: a residual block needs equal input and output widths, got "
                                 f"{tuple(x.shape)} -> {tuple(out.shape)}; widths of one stage must be equal")
            out = out + x
        return out

    @torch.no_grad()
    def export(self, in_channels: int) -> MBConv:
        """The static :class:`MBConv` of the active setting for ``in_channels`` inputs."""
        mid = self.mid_channels(in_channels)
        expand = None
        if self.has_expand:
            self.expand.conv.active_out = mid
            expand = _conv_bn_act(self.expand.conv.export(in_channels), self.expand.bn.export(mid), self.act_layer())
        dw = _conv_bn_act(self.dw.conv.export(mid), self.dw.bn.export(mid), self.act_layer())
        se = self.se.export(mid) if isinstance(self.se, ElasticSE) else None
        out = self.project.conv.active_out
        project = _conv_bn_act(self.project.conv.export(mid), self.project.bn.export(out), None)
        return MBConv(expand, dw, se, project, self.residual)


# ---------------------------------------------------------------------------------------------------- networks
class _MobileNetBase(DropFcHeadMixin, AuxiliaryLossMixin, nn.Module):
    """Shared model contract of the supernet and its static children: stem -> stages -> 1x1 head conv -> global
    pool -> dropout -> ``head.fc``. Subclasses give ``_blocks(i)`` (the blocks stage ``i`` runs)."""

    in_chans: int
    num_classes: int
    num_features: int
    head_hidden_size: int
    feature_info: list[dict[str, Any]]

    def _blocks(self, i: int) -> Sequence[nn.Module]:
        raise NotImplementedError

    def _check_input(self, x: torch.Tensor) -> None:
        check_image_input(x, self, type(self).__name__, self.in_chans, match_dtype=False)

    def _run(self, x: torch.Tensor, take: set[int], last: int | None) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        self._check_input(x)
        x = self.stem(x)
        feats: dict[int, torch.Tensor] = {}
        for i in range(len(self.stages)):
            for block in self._blocks(i):
                x = block(x)
            if i in take:
                feats[i] = x
            if last is not None and i >= last:
                return self.pool(x).flatten(1), feats
        return self.pool(self.conv_head(x)).flatten(1), feats

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_chans, H, W) -> (B, head width)``: pooled output of the 1x1 head conv."""
        return self._run(x, set(), None)[0]

    def forward_intermediates(self, x: torch.Tensor, indices: int | Sequence[int] | None = None, norm: bool = False,
                              stop_early: bool = False, intermediates_only: bool = False):
        """Stage outputs (timm's ``forward_intermediates``): stage i gives ``(B, width_i, H / r_i, W / r_i)``
        (``feature_info[i]``). ``norm`` changes nothing (no final norm). Returns ``(forward_features(x), feats)``
        or the list; with ``stop_early`` the stages after the last requested one (and the head conv) are skipped
        and the first element is the pooled last stage output."""
        take, max_index = feature_take_indices(len(self.stages), indices)
        final, feats = self._run(x, set(take), max_index if stop_early else None)
        out = [feats[i] for i in take]
        return out if intermediates_only else (final, out)

    def set_drop_rate(self, p: float) -> None:
        """Dropout probability before the classifier (BigNAS: only while training the largest child)."""
        self.head.drop.p = float(p)


class BigNASNet(_MobileNetBase):
    """BigNAS supernet over a :class:`SearchSpace`: ``(B, in_chans, H, W) -> (B, num_classes)`` for the active child.

    Args:
        space: a name in :data:`SPACES` (``"mnist"``, ``"imagenet"``), a :class:`SearchSpace` or its dict.
        num_classes: classes (0: ``forward`` returns pooled features). in_chans: image channels.
        drop_rate: dropout before the classifier (the recipe sets it per child).

    ``num_features`` / ``head_hidden_size`` are the largest head width (the active child's features are its own
    head width); ``feature_info`` lists the stages at their largest widths. The active child is the largest one
    after construction.
    """

    def __init__(self, space: str | SearchSpace | Mapping[str, Any] = "mnist", num_classes: int = 10,
                 in_chans: int = 1, drop_rate: float = 0.0):
        super().__init__()
        self.space = get_space(space)
        sp = self.space
        act = _act(sp.act)
        self.in_chans, self.num_classes = int(in_chans), int(num_classes)
        self.stem = _conv_bn_act(ElasticConv2d(in_chans, max(sp.stem_widths), (3,), sp.stem_stride),
                                 ElasticBatchNorm2d(max(sp.stem_widths)), act())
        stages, c_in, reduction, info = [], max(sp.stem_widths), sp.stem_stride, []
        for i, st in enumerate(sp.stages):
            w = max(st.widths)
            blocks = [ElasticMBConv(c_in if j == 0 else w, w, st.kernels, st.expands, st.stride if j == 0 else 1,
                                    st.se, act, residual=j > 0) for j in range(max(st.depths))]
            stages.append(nn.Sequential(*blocks))
            reduction *= st.stride
            info.append(dict(module=f"stages.{i}", num_chs=w, reduction=reduction, fmt="NCHW"))
            c_in = w
        self.stages = nn.ModuleList(stages)
        self.feature_info = info
        head = max(sp.head_widths)
        self.conv_head = _conv_bn_act(ElasticConv2d(c_in, head), ElasticBatchNorm2d(head), act())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = self.head_hidden_size = head
        self.head = nn.Sequential(OrderedDict(
            drop=nn.Dropout(drop_rate),
            fc=ElasticLinear(head, num_classes) if num_classes > 0 else nn.Identity(),
        ))
        self.depths = [max(st.depths) for st in sp.stages]
        self.active_arch: dict[str, Any] = {}
        self.set_subnet(self.max_subnet())

    # ------------------------------------------------------------------ the space
    def _extreme(self, pick) -> dict[str, Any]:
        sp = self.space
        return {"resolution": pick(sp.resolutions), "stem": pick(sp.stem_widths),
                "widths": [pick(s.widths) for s in sp.stages], "depths": [pick(s.depths) for s in sp.stages],
                "kernels": [pick(s.kernels) for s in sp.stages], "expands": [pick(s.expands) for s in sp.stages],
                "head": pick(sp.head_widths)}

    def max_subnet(self) -> dict[str, Any]:
        """The largest child: every choice at its maximum."""
        return self._extreme(max)

    def min_subnet(self) -> dict[str, Any]:
        """The smallest child: every choice at its minimum."""
        return self._extreme(min)

    def sample_subnet(self, rng: random.Random) -> dict[str, Any]:
        """A child drawn uniformly per dimension and per stage with ``rng`` (a ``random.Random``)."""
        return self._extreme(lambda choices: rng.choice(list(choices)))

    def validate_arch(self, arch: Mapping[str, Any]) -> dict[str, Any]:
        """``arch`` as a clean dict; ``ValueError`` naming the first value outside the space."""
        sp = self.space
        keys = {"resolution", "stem", "widths", "depths", "kernels", "expands", "head"}
        missing, extra = keys - set(arch), set(arch) - keys
        if missing or extra:
            raise ValueError(f"BigNAS arch: missing keys {sorted(missing)}, unknown keys {sorted(extra)}; an arch has "
                             f"{sorted(keys)} (see zoo/models/bignas.py)")

        def check(name: str, value: Any, choices: Sequence) -> None:
            if value not in choices:
                raise ValueError(f"BigNAS arch: {name}={value!r} is not in the space's choices {tuple(choices)}")

        check("resolution", arch["resolution"], sp.resolutions)
        check("stem", arch["stem"], sp.stem_widths)
        check("head", arch["head"], sp.head_widths)
        for key, attr in (("widths", "widths"), ("depths", "depths"), ("kernels", "kernels"), ("expands", "expands")):
            values = list(arch[key])
            if len(values) != len(sp.stages):
                raise ValueError(f"BigNAS arch: {key} needs one value per stage ({len(sp.stages)}), got {values}")
            for i, (v, st) in enumerate(zip(values, sp.stages)):
                check(f"{key}[{i}]", v, getattr(st, attr))
        return {k: (list(arch[k]) if isinstance(arch[k], (list, tuple)) else arch[k]) for k in
                ("resolution", "stem", "widths", "depths", "kernels", "expands", "head")}

    def set_subnet(self, arch: Mapping[str, Any]) -> None:
        """Make ``arch`` the child every following forward runs."""
        arch = self.validate_arch(arch)
        self.stem.conv.active_out = arch["stem"]
        for i, stage in enumerate(self.stages):
            for block in stage:
                block.set_active(arch["widths"][i], arch["kernels"][i], arch["expands"][i])
        self.depths = list(arch["depths"])
        self.conv_head.conv.active_out = arch["head"]
        self.active_arch = arch

    def _blocks(self, i: int) -> Sequence[nn.Module]:
        return self.stages[i][:self.depths[i]]

    # ------------------------------------------------------------------ children
    @torch.no_grad()
    def export_subnet(self, arch: Mapping[str, Any] | None = None) -> "BigNASChild":
        """A static :class:`BigNASChild` of ``arch`` (default: the active child) with copies of its weights and
        BN statistics; in eval mode it computes what the supernet computes with ``arch`` active. The supernet's
        active child is left as it was."""
        previous = self.active_arch
        arch = self.validate_arch(arch if arch is not None else previous)
        self.set_subnet(arch)
        try:
            stem = _conv_bn_act(self.stem.conv.export(self.in_chans), self.stem.bn.export(arch["stem"]),
                                _act(self.space.act)())
            stages, c_in = [], arch["stem"]
            for i, stage in enumerate(self.stages):
                blocks = []
                for block in stage[:arch["depths"][i]]:
                    blocks.append(block.export(c_in))
                    c_in = arch["widths"][i]
                stages.append(nn.Sequential(*blocks))
            conv_head = _conv_bn_act(self.conv_head.conv.export(c_in), self.conv_head.bn.export(arch["head"]),
                                     _act(self.space.act)())
            fc = self.head.fc.export(arch["head"]) if isinstance(self.head.fc, ElasticLinear) else nn.Identity()
            info = [dict(d, num_chs=arch["widths"][i]) for i, d in enumerate(self.feature_info)]
            child = BigNASChild(stem, stages, conv_head, fc, self.head.drop.p, arch, self.space, self.in_chans, info)
        finally:
            self.set_subnet(previous)
        return child

    def subnet_flops(self, arch: Mapping[str, Any] | None = None) -> int:
        """Multiply-adds of ``arch`` (default: the active child) at its resolution, batch 1 (:func:`count_flops`)."""
        previous = self.active_arch
        arch = self.validate_arch(arch if arch is not None else previous)
        self.set_subnet(arch)
        try:
            return count_flops(self, (1, self.in_chans, arch["resolution"], arch["resolution"]))
        finally:
            self.set_subnet(previous)

    def subnet_params(self, arch: Mapping[str, Any] | None = None) -> int:
        """Parameters of the exported child of ``arch``."""
        return sum(p.numel() for p in self.export_subnet(arch).parameters())

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh elastic classifier for ``num_classes`` (0: identity, ``forward`` gives the features)."""
        self.num_classes = int(num_classes)
        self.head.fc = ElasticLinear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def residual_blocks(self) -> list[ElasticMBConv]:
        """The blocks with a skip connection (their last BN is zero-initialised)."""
        return [b for stage in self.stages for b in stage if b.residual]


#: what a child does with an input whose size is not its ``arch["resolution"]``
ON_RESOLUTION = ("error", "resize")


class BigNASChild(_MobileNetBase):
    """A static child of a :class:`BigNASNet`, built by :meth:`BigNASNet.export_subnet` (plain modules).

    ``arch`` and ``space`` record where it came from; ``arch["resolution"]`` is the input size it was searched,
    scored and BN-recalibrated at. ``forward``: ``(B, in_chans, r, r) -> (B, num_classes)``. An input of another
    size is refused (``on_resolution="error"``, the default: a ``ValueError`` naming both sizes) or bilinearly
    resized to ``r`` first (``on_resolution="resize"``: :func:`resize_input`, what the supernet recipes do), never
    run silently at a size the child was not chosen for.
    """

    def __init__(self, stem: nn.Module, stages: Sequence[nn.Module], conv_head: nn.Module, fc: nn.Module,
                 drop_rate: float, arch: Mapping[str, Any], space: SearchSpace, in_chans: int,
                 feature_info: list[dict[str, Any]], on_resolution: str = "error"):
        super().__init__()
        if on_resolution not in ON_RESOLUTION:
            raise ValueError(f"BigNASChild: on_resolution must be one of {ON_RESOLUTION}, got {on_resolution!r}")
        self.on_resolution = on_resolution
        self.stem, self.stages, self.conv_head = stem, nn.ModuleList(stages), conv_head
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(OrderedDict(drop=nn.Dropout(drop_rate), fc=fc))
        self.arch, self.space, self.in_chans = dict(arch), space, int(in_chans)
        self.num_features = self.head_hidden_size = int(arch["head"])
        self.num_classes = fc.out_features if isinstance(fc, nn.Linear) else 0
        self.feature_info = feature_info

    def _blocks(self, i: int) -> Sequence[nn.Module]:
        return self.stages[i]

    def _run(self, x: torch.Tensor, take: set[int], last: int | None) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        self._check_input(x)
        r = int(self.arch["resolution"])
        if tuple(x.shape[-2:]) != (r, r):
            if self.on_resolution == "error":
                raise ValueError(f"BigNASChild: this child was searched at {r}x{r} inputs, got "
                                 f"{x.shape[-2]}x{x.shape[-1]}; resize first "
                                 f"(zoo.models.bignas.resize_input(x, {r})) or load it with "
                                 "load_child(dir, on_resolution='resize')")
            x = resize_input(x, r)
        return super()._run(x, take, last)

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh ``nn.Linear`` classifier for ``num_classes`` (0: identity)."""
        self.num_classes = int(num_classes)
        self.head.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()


def _build_child(space: str | Mapping[str, Any] = "mnist", arch: Mapping[str, Any] | None = None,
                 num_classes: int = 10, in_chans: int = 1, drop_rate: float = 0.0,
                 on_resolution: str = "error") -> BigNASChild:
    """A static child of ``arch`` (default: the largest) of a freshly initialised supernet over ``space``."""
    supernet = BigNASNet(space, num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate)
    child = supernet.export_subnet(arch if arch is not None else supernet.max_subnet())
    if on_resolution not in ON_RESOLUTION:
        raise ValueError(f"bignas_child: on_resolution must be one of {ON_RESOLUTION}, got {on_resolution!r}")
    child.on_resolution = on_resolution
    return child


# ---------------------------------------------------------------------------------------------------- files
CHILD_WEIGHTS, CHILD_CONFIG = "model.safetensors", "config.json"


def save_child(child: BigNASChild, directory: str | os.PathLike, source: str = "",
               metrics: Mapping[str, Any] | None = None) -> Path:
    """Write ``child`` as a standalone model: ``directory/model.safetensors`` (weights) and ``config.json``
    (``{"model": "bignas_child", "kwargs": {space, arch, num_classes, in_chans}, "input_size", "mflops", ...}``),
    which :func:`load_child` (or ``create_model("bignas_child", **kwargs, checkpoint_path=...)``) loads.
    Returns the config path."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    r = int(child.arch["resolution"])
    cfg = {"model": "bignas_child",
           "kwargs": {"space": child.space.to_dict(), "arch": child.arch, "num_classes": child.num_classes,
                      "in_chans": child.in_chans},
           "input_size": [child.in_chans, r, r], "source": source,
           "mflops": count_flops(child, (1, child.in_chans, r, r)) / 1e6,
           "params": sum(p.numel() for p in child.parameters()), "metrics": dict(metrics or {})}
    weights = directory / CHILD_WEIGHTS
    tmp = weights.with_suffix(".tmp")
    save_file({k: v.detach().contiguous() for k, v in child.state_dict().items()}, str(tmp))
    os.replace(tmp, weights)
    path = directory / CHILD_CONFIG
    path.write_text(json.dumps(cfg, indent=2))
    return path


def load_child(directory: str | os.PathLike, on_resolution: str = "error") -> BigNASChild:
    """The child :func:`save_child` wrote into ``directory`` (weights loaded, eval mode). It takes inputs of its own
    resolution (``config.json``'s ``input_size``); another size is an error (``on_resolution="error"``) or is
    bilinearly resized to it (``"resize"``) -- see :class:`BigNASChild`."""
    from zoo.registry import create_model

    directory = Path(directory)
    path = directory / CHILD_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"load_child: no {CHILD_CONFIG} in {directory}; write one with tools/export.py")
    cfg = json.loads(path.read_text())
    return create_model(cfg["model"], **cfg["kwargs"], on_resolution=on_resolution,
                        checkpoint_path=str(directory / CHILD_WEIGHTS)).eval()


# ---------------------------------------------------------------------------------------------------- registry
@register_model
def bignas_mnist(pretrained: bool = False, **kwargs) -> BigNASNet:
    """BigNAS supernet over the small 28x28 space (``SPACES["mnist"]``; children 0.21-5.35 MFLOPs)."""
    kwargs = dict(dict(space="mnist", in_chans=1), **kwargs)
    return build_model_with_cfg(BigNASNet, "bignas_mnist", pretrained, **kwargs)


@register_model
def bignas_imagenet(pretrained: bool = False, **kwargs) -> BigNASNet:
    """BigNAS supernet over the ImageNet space (``SPACES['imagenet']``, resolutions 192-320)."""
    return build_model_with_cfg(BigNASNet, "bignas_imagenet", pretrained,
                                **dict(dict(space="imagenet", in_chans=3, num_classes=1000), **kwargs))


@register_model
def bignas_child(pretrained: bool = False, **kwargs) -> BigNASChild:
    """A static BigNAS child: ``space`` (name or dict), ``arch`` (dict; default the largest), ``num_classes``,
    ``in_chans``; ``checkpoint_path`` loads the weights ``tools/export.py`` wrote."""
    return build_model_with_cfg(_build_child, "bignas_child", pretrained, **kwargs)
