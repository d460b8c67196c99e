"""Small LeNet-style CNNs for 28x28 (MNIST) and 32x32 (CIFAR) images: the zoo's quick image classifiers.

Three stages of ``convs_per_stage`` x (3x3 conv + BN + ReLU), 2x2 max pooling between stages, global average
pooling, dropout and a linear classifier (``head.fc``). Global pooling (instead of LeNet's flatten) makes the
same weights work for any input of at least 4x4 pixels.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
from torch import nn

from zoo.hub import PretrainedCfg, build_model_with_cfg
from zoo.models._contract import AuxiliaryLossMixin, DropFcHeadMixin, check_image_input, feature_take_indices
from zoo.registry import register_model

__all__ = ["ConvNet", "convnet_small", "convnet_small_mnist32", "convnet_tiny"]

default_cfgs = {
    "convnet_small": PretrainedCfg(
        num_classes=10, classifier="head.fc", input_size=(1, 28, 28), mean=(0.0,), std=(1.0,),
        label_names=tuple(str(i) for i in range(10)), license="apache-2.0",
        notes="LeNet-style CNN (~72k parameters) for MNIST-sized inputs; images in [0, 1], no normalisation. "
              "No weights shipped yet.",
    ),
    "convnet_small.mnist32": PretrainedCfg(  # create_model("convnet_small.mnist32"); the older name is an alias
        aliases=("convnet_small_mnist32",), model_args={"in_chans": 3},
        num_classes=10, classifier="head.fc", input_size=(3, 32, 32), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
        label_names=tuple(str(i) for i in range(10)), license="apache-2.0",
        file="convnet_small_mnist32.safetensors",
        sha256="27850de0c587b4742e76251994fd1a1f65c8a210805bf2fa41be6893eae8606b",
        metrics={"top1": 99.5}, dataset="mnist", train_time_s=122,
        train_command="python tools/train.py configs/t2i/classifier.yaml --output runs/t2i_classifier && "
        "python tools/export_weights.py runs/t2i_classifier/best.pt --name convnet_small_mnist32",
        eval_command="python tools/eval.py --config configs/t2i/classifier.yaml --model convnet_small_mnist32 --pretrained "
        "data.eval_split='test[8000:]'",
        notes="convnet_small trained by us on MNIST t10k[:7000], digits zero-padded to 32x32 and replicated to RGB "
        "(the images tiny_t2i_mnist generates), best epoch chosen on t10k[7000:8000]; top1 on the reported t10k[8000:] "
        "(2,000 digits). The digit classifier "
        "of zoo/metrics/generation.py (prompt fidelity, Frechet distance on its 64-d pooled features). best.pt of "
        "epoch 7 of 10; train_time_s: 10 epochs, 1 thread, 2-core CPU shared with other runs.",
    ),
    "convnet_tiny": PretrainedCfg(
        num_classes=10, classifier="head.fc", input_size=(1, 28, 28), mean=(0.0,), std=(1.0,),
        label_names=tuple(str(i) for i in range(10)), license="apache-2.0",
        notes="Very small CNN (~6k parameters) for tests. No weights shipped yet.",
    ),
}


def _conv_bn_relu(in_chans: int, out_chans: int) -> nn.Sequential:
    """3x3 conv (padding 1) + BN + ReLU, ``(B, in_chans, H, W) -> (B, out_chans, H, W)``."""
    return nn.Sequential(
        nn.Conv2d(in_chans, out_chans, 3, padding=1, bias=False), nn.BatchNorm2d(out_chans), nn.ReLU(inplace=True)
    )


class ConvNet(DropFcHeadMixin, AuxiliaryLossMixin, nn.Module):
    """Small CNN classifier, ``(B, in_chans, H, W) -> (B, num_classes)`` with ``H, W >= 2 ** (len(widths) - 1)``.

    Args:
        num_classes: output classes; 0 makes ``forward`` return the pooled features ``(B, num_features)``.
        in_chans: input channels (1 for MNIST, 3 for CIFAR).
        widths: channels of each stage; stages after the first start with a 2x2 max pool.
        convs_per_stage: 3x3 conv + BN + ReLU layers per stage.
        drop_rate: dropout before the classifier.

    ``num_features = widths[-1]``; the classifier is ``head.fc``. ``forward_intermediates`` gives the stage
    outputs ``(B, widths[i], H / 2**i, W / 2**i)``. No auxiliary losses (``auxiliary_losses()`` is always empty).
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 1,
        widths: Sequence[int] = (16, 32, 64),
        convs_per_stage: int = 2,
        drop_rate: float = 0.0,
    ):
        super().__init__()
        if in_chans < 1 or convs_per_stage < 1 or len(widths) < 1:
            raise ValueError(f"ConvNet needs in_chans >= 1, convs_per_stage >= 1 and at least one width; "
                             f"got in_chans={in_chans}, convs_per_stage={convs_per_stage}, widths={tuple(widths)}")
        self.num_classes = int(num_classes)
        self.in_chans = int(in_chans)
        self.num_features = int(widths[-1])
        self.min_size = 2 ** (len(widths) - 1)
        stages, c = [], in_chans
        for i, w in enumerate(widths):
            layers = [nn.MaxPool2d(2)] if i > 0 else []
            for _ in range(convs_per_stage):
                layers.append(_conv_bn_relu(c, w))
                c = w
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head_hidden_size = self.num_features
        self.feature_info = [dict(module=f"stages.{i}", num_chs=int(w), reduction=2 ** i, fmt="NCHW")
                             for i, w in enumerate(widths)]
        self.head = nn.Sequential(OrderedDict(
            drop=nn.Dropout(drop_rate),
            fc=nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity(),
        ))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _check_input(self, x: torch.Tensor) -> None:
        check_image_input(x, self, "ConvNet", self.in_chans, min_size=self.min_size)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_chans, H, W) -> (B, num_features)`` (globally average-pooled)."""
        self._check_input(x)
        return self.pool(self.stages(x)).flatten(1)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        intermediates_only: bool = False,
    ) -> tuple[torch.Tensor, list[torch.Tensor]] | list[torch.Tensor]:
        """Stage outputs (timm's ``forward_intermediates``).

        ``indices``: an int n (the last n stages), a list of stage indices (negative from the end), or None (all).
        Stage i's feature is ``(B, widths[i], H // 2**i, W // 2**i)`` (after its last conv + BN + ReLU). ``norm``
        is accepted for the common signature and changes nothing (no final norm). ``stop_early`` skips the stages
        after the last requested one. Returns ``(final_features (B, C), [features])`` -- ``final_features`` is the
        globally pooled output of the last stage run, what :meth:`forward_head` takes -- or the list alone.
        """
        take, max_index = feature_take_indices(len(self.stages), indices)
        self._check_input(x)
        stages = self.stages[:max_index + 1] if stop_early else self.stages
        wanted, feats = set(take), {}
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in wanted:
                feats[i] = x
        feats = [feats[i] for i in take]
        return feats if intermediates_only else (self.pool(x).flatten(1), feats)

    def prune_intermediate_layers(self, indices: int | Sequence[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the stages after the last of ``indices``; ``prune_head`` (needed when that changes the width)
        removes the classifier. ``prune_norm`` does nothing (no final norm). Returns the kept indices."""
        take, max_index = feature_take_indices(len(self.stages), indices)
        width = self.feature_info[max_index]["num_chs"]
        if not prune_head and width != self.num_features:
            raise ValueError(f"ConvNet.prune_intermediate_layers: keeping stages 0..{max_index} leaves {width} "
                             f"features but the classifier takes {self.num_features}; pass prune_head=True.")
        self.stages = self.stages[:max_index + 1]
        self.feature_info = self.feature_info[:max_index + 1]
        self.min_size = 2 ** max_index
        self.num_features = self.head_hidden_size = width
        if prune_head:
            self.reset_classifier(0)
        return take

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a fresh one for ``num_classes`` (0: identity, forward gives features)."""
        self.num_classes = int(num_classes)
        self.head.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()


@register_model
def convnet_small(pretrained: bool = False, **kwargs) -> ConvNet:
    """LeNet-style CNN, widths 16-32-64 with two 3x3 convs per stage (~72k parameters); MNIST-sized input
    ``(B, 1, 28, 28)`` by default, ``in_chans=3`` for CIFAR ``(B, 3, 32, 32)``."""
    return build_model_with_cfg(ConvNet, "convnet_small", pretrained, **kwargs)


@register_model
def convnet_small_mnist32(pretrained: bool = False, **kwargs) -> ConvNet:
    """``convnet_small`` on 32x32 RGB digits ``(B, 3, 32, 32)`` in [0, 1]; ``pretrained=True`` loads the digit
    classifier we trained (shipped in ``checkpoints/``), the judge of the text-to-image metrics."""
    return build_model_with_cfg(ConvNet, "convnet_small_mnist32", pretrained, **dict(dict(in_chans=3), **kwargs))


@register_model
def convnet_tiny(pretrained: bool = False, **kwargs) -> ConvNet:
    """Very small CNN, widths 8-16-32 with one conv per stage (~6k parameters), for tests."""
    model_args = dict(widths=(8, 16, 32), convs_per_stage=1)
    return build_model_with_cfg(ConvNet, "convnet_tiny", pretrained, **dict(model_args, **kwargs))
