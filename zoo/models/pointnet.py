"""PointNet classifier (Qi et al., "PointNet: Deep Learning on Point Sets for 3D Classification and Segmentation",
CVPR 2017), following the official TensorFlow code (charlesq34/pointnet, ``models/pointnet_cls.py``).

Architecture (defaults = the paper's): optional input T-Net (3x3) -> shared MLP 64-64 -> optional feature T-Net
(64x64) -> shared MLP 64-128-1024 (1x1 convs, each with BN + ReLU) -> max pool over points -> head
512-256-classes (Linear + BN + ReLU + dropout 0.3, i.e. keep probability 0.7 as in the paper).

``forward`` returns logits in training and eval mode. In training mode with the feature T-Net on, it also computes
the regulariser ``0.001 * mean_b ||I - A_b A_b^T||_F^2`` and keeps it for ``model.auxiliary_losses()``
(``{"feat_transform_reg"}``), which the zoo's classify recipe adds to the cross-entropy (contract:
``zoo/models/_contract.py``).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from zoo.hub import PretrainedCfg, build_model_with_cfg
from zoo.models._contract import (
    AuxiliaryLossMixin,
    check_finite_points,
    check_input_dtype,
    feature_take_indices,
    tie_to_output,
)
from zoo.registry import register_model

__all__ = ["PointNet", "TNet", "PointNetHead", "feature_transform_regularizer", "pointnet", "pointnet_tiny"]

_PAPER = "Qi et al., PointNet: Deep Learning on Point Sets for 3D Classification and Segmentation, CVPR 2017"

default_cfgs = {
    "pointnet": PretrainedCfg(
        num_classes=40, classifier="head.fc3", num_points=1024, input_size=(1024, 3), frame="standard",
        license="apache-2.0",
        paper=_PAPER + " (arXiv:1612.00593)", origin_url="https://github.com/charlesq34/pointnet",
        notes="No weights shipped yet.",
    ),
    "pointnet_tiny": PretrainedCfg(
        num_classes=10, classifier="head.fc3", num_points=512, input_size=(512, 3), license="apache-2.0",
        paper=_PAPER + " (arXiv:1612.00593)", origin_url="https://github.com/charlesq34/pointnet",
        notes="Narrow PointNet without T-Nets for tests and the quick-start demo (synthetic_shapes). No weights shipped yet.",
    ),
}


def _conv_bn_relu(in_dim: int, out_dim: int) -> nn.Sequential:
    """Shared per-point MLP layer: 1x1 conv + BN + ReLU, ``(B, in_dim, N) -> (B, out_dim, N)``."""
    return nn.Sequential(nn.Conv1d(in_dim, out_dim, 1, bias=False), nn.BatchNorm1d(out_dim), nn.ReLU(inplace=True))


def _shared_mlp(in_dim: int, dims: Sequence[int]) -> nn.Sequential:
    """Stack of :func:`_conv_bn_relu` layers ``in_dim -> dims[0] -> ... -> dims[-1]``."""
    layers = []
    for d in dims:
        layers.append(_conv_bn_relu(in_dim, d))
        in_dim = d
    return nn.Sequential(*layers)


def feature_transform_regularizer(transform: torch.Tensor) -> torch.Tensor:
    """Orthogonality penalty ``mean_b ||I - A_b A_b^T||_F^2`` of transforms ``(B, K, K) -> ()``.

    The official TF code uses ``tf.nn.l2_loss`` (half the squared norm, summed over the batch); we average over
    the batch so the weight does not depend on the batch size (with batch 32 the TF value is 16x ours).
    """
    k = transform.shape[-1]
    eye = torch.eye(k, device=transform.device, dtype=transform.dtype)
    diff = torch.bmm(transform, transform.transpose(1, 2)) - eye
    return diff.pow(2).sum(dim=(1, 2)).mean()


class TNet(nn.Module):
    """Transformation network: predicts a ``(B, k, k)`` matrix from per-point features ``(B, in_dim, N)``.

    Shared MLP 64-128-1024, max pool, FC 512-256 (BN + ReLU), then a linear layer initialised to output the
    identity (zero weight, identity bias), as in the official code.
    """

    def __init__(self, k: int, in_dim: int | None = None, mlp_dims: Sequence[int] = (64, 128, 1024),
                 fc_dims: Sequence[int] = (512, 256)):
        super().__init__()
        self.k = k
        self.mlp = _shared_mlp(in_dim or k, mlp_dims)
        fc, d = [], mlp_dims[-1]
        for h in fc_dims:
            fc += [nn.Linear(d, h, bias=False), nn.BatchNorm1d(h), nn.ReLU(inplace=True)]
            d = h
        self.fc = nn.Sequential(*fc)
        self.transform = nn.Linear(d, k * k)
        nn.init.zeros_(self.transform.weight)
        with torch.no_grad():
            self.transform.bias.copy_(torch.eye(k).flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_dim, N) -> (B, k, k)``."""
        x = self.mlp(x).amax(dim=2)
        return self.transform(self.fc(x)).view(-1, self.k, self.k)


class PointNetHead(nn.Module):
    """Classification head ``(B, in_dim) -> (B, num_classes)``: [Linear, BN, ReLU, Dropout] per hidden dim, then ``fc3``.

    Module names (``fc1, bn1, fc2, bn2, fc3``) follow the official code; ``fc3`` is the classifier.
    The official TF code applies dropout after both hidden layers, the popular PyTorch ports only after the
    second; we follow the official code.
    """

    def __init__(self, in_dim: int, num_classes: int, hidden_dims: Sequence[int] = (512, 256), drop_rate: float = 0.3):
        super().__init__()
        if len(hidden_dims) != 2:
            raise ValueError(f"PointNetHead takes exactly two hidden dims (fc1, fc2), got {tuple(hidden_dims)}")
        h1, h2 = hidden_dims
        self.fc1 = nn.Linear(in_dim, h1, bias=False)
        self.bn1 = nn.BatchNorm1d(h1)
        self.fc2 = nn.Linear(h1, h2, bias=False)
        self.bn2 = nn.BatchNorm1d(h2)
        self.act = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(drop_rate)
        self.fc3 = nn.Linear(h2, num_classes) if num_classes > 0 else nn.Identity()
        self.out_dim = num_classes if num_classes > 0 else h2

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """``(B, in_dim) -> (B, num_classes)`` (or ``(B, hidden_dims[-1])`` with ``pre_logits``)."""
        x = self.drop(self.act(self.bn1(self.fc1(x))))
        x = self.drop(self.act(self.bn2(self.fc2(x))))
        return x if pre_logits else self.fc3(x)


class PointNet(AuxiliaryLossMixin, nn.Module):
    """PointNet classifier, ``(B, N, in_chans) -> (B, num_classes)``.

    Args:
        num_classes: output classes; 0 gives a model whose ``forward`` returns the pre-logits ``(B, head_dims[-1])``.
        in_chans: channels per point, ``>= 3``; the first three are xyz (the only ones the input T-Net rotates),
            the rest (normals, colours, ...) pass through untransformed.
        embed_dims: widths of the shared per-point MLP; the feature T-Net sits after the first two layers
            (paper: 64-64 | 64-128-1024). ``num_features = embed_dims[-1]``.
        head_dims: the two hidden widths of the classification head (paper: 512, 256).
        drop_rate: dropout probability in the head (paper: keep probability 0.7 -> 0.3).
        use_tnet: use the input (3x3) and feature T-Nets (paper: yes).
        use_feature_tnet: override for the feature T-Net alone (default: same as ``use_tnet``).
        feat_transform_reg: weight of the feature-transform orthogonality regulariser (paper: 0.001); after a
            training-mode forward, ``auxiliary_losses()`` returns it (already weighted) as ``feat_transform_reg``.

    ``forward(x)`` returns logits ``(B, num_classes)`` in training and eval mode. ``forward_intermediates`` gives
    the per-point features of the shared-MLP layers, ``(B, N, embed_dims[i])``.
    """

    def __init__(
        self,
        num_classes: int = 40,
        in_chans: int = 3,
        embed_dims: Sequence[int] = (64, 64, 64, 128, 1024),
        head_dims: Sequence[int] = (512, 256),
        drop_rate: float = 0.3,
        use_tnet: bool = True,
        use_feature_tnet: bool | None = None,
        feat_transform_reg: float = 0.001,
    ):
        super().__init__()
        if in_chans < 3:
            raise ValueError(f"PointNet needs in_chans >= 3 (xyz first), got {in_chans}")
        embed_dims = tuple(int(d) for d in embed_dims)
        use_feature_tnet = use_tnet if use_feature_tnet is None else use_feature_tnet
        if len(embed_dims) < 3 and use_feature_tnet:
            raise ValueError(f"embed_dims needs >= 3 layers when the feature T-Net is used, got {embed_dims}")
        self.num_classes = int(num_classes)
        self.in_chans = int(in_chans)
        self.num_features = embed_dims[-1]
        self.feat_transform_reg = float(feat_transform_reg)

        split = 2 if len(embed_dims) >= 3 else len(embed_dims)  # feature T-Net position: after the first two layers
        self.input_tnet = TNet(3) if use_tnet else None
        self.mlp1 = _shared_mlp(in_chans, embed_dims[:split])
        self.feature_tnet = TNet(embed_dims[split - 1]) if use_feature_tnet else None
        self.mlp2 = _shared_mlp(embed_dims[split - 1], embed_dims[split:])
        self.head = PointNetHead(self.num_features, self.num_classes, head_dims, drop_rate)
        self.head_hidden_size = int(head_dims[-1])
        self.feature_info = [
            dict(module=f"mlp1.{i}" if i < split else f"mlp2.{i - split}", num_chs=d, fmt="NLC")
            for i, d in enumerate(embed_dims)
        ]

    # -- input checks -------------------------------------------------------------------------------------------
    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.ndim != 3 or x.shape[-1] != self.in_chans or x.shape[1] < 1:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            hint = ""
            if isinstance(x, torch.Tensor) and x.ndim == 3 and x.shape[1] == self.in_chans:
                hint = " It looks channels-first: pass x.transpose(1, 2)."
            raise ValueError(f"PointNet expects points of shape (B, N, {self.in_chans}) (in_chans={self.in_chans}), "
                             f"got {got}.{hint}")
        if not x.is_floating_point():
            raise TypeError(f"PointNet expects floating-point points, got dtype {x.dtype}; use x.float().")
        check_input_dtype(x, self, "PointNet")
        check_finite_points(x, "PointNet")

    # -- forward pieces -----------------------------------------------------------------------------------------
    def _features(self, x: torch.Tensor, take: Sequence[int] = (), stop_early: bool = False
                  ) -> tuple[torch.Tensor, torch.Tensor | None, list[torch.Tensor]]:
        """``(B, N, C) ->`` (features ``(B, num_features)``, feature transform ``(B, K, K)`` or None, the outputs
        ``(B, N, embed_dims[i])`` of shared-MLP layers ``take``)."""
        self._check_input(x)
        if self.input_tnet is not None:
            xyz = x[..., :3]
            xyz = torch.bmm(xyz, self.input_tnet(xyz.transpose(1, 2)))  # row vectors times A, as in the TF code
            x = torch.cat([xyz, x[..., 3:]], dim=-1) if self.in_chans > 3 else xyz
        x = x.transpose(1, 2)  # (B, C, N)
        layers = [*self.mlp1, *self.mlp2]
        if stop_early and take:
            layers = layers[:max(take) + 1]
        wanted, feats = set(take), {}
        trans_feat = None
        for i, layer in enumerate(layers):
            x = layer(x)
            if i == len(self.mlp1) - 1 and self.feature_tnet is not None:
                trans_feat = self.feature_tnet(x)
                x = torch.bmm(x.transpose(1, 2), trans_feat).transpose(1, 2)
            if i in wanted:
                feats[i] = x.transpose(1, 2)
        return x.amax(dim=2), trans_feat, [feats[i] for i in take]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Global feature ``(B, N, in_chans) -> (B, num_features)`` (max-pooled)."""
        return self._features(x)[0]

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        intermediates_only: bool = False,
    ) -> tuple[torch.Tensor, list[torch.Tensor]] | list[torch.Tensor]:
        """Per-point features of the shared-MLP layers (timm's ``forward_intermediates``).

        ``indices``: an int n (the last n layers), a list of layer indices (negative from the end), or None (all
        ``len(embed_dims)`` layers). Layer i's feature is its output (conv + BN + ReLU), ``(B, N, embed_dims[i])``,
        points in input order; the output of the layer before the feature T-Net is taken after the transform
        (what the next layer sees). ``norm`` is accepted for the common signature and changes nothing (PointNet
        has no final norm). ``stop_early`` skips the layers after the last requested one (``final_features`` is
        then the max over that layer). Returns ``(final_features (B, num_features), [features])``, or the list
        alone with ``intermediates_only``.
        """
        take, _ = feature_take_indices(len(self.mlp1) + len(self.mlp2), indices)
        pooled, _, feats = self._features(x, take, stop_early)
        return feats if intermediates_only else (pooled, feats)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """``(B, num_features) -> (B, num_classes)``; with ``pre_logits`` the ``(B, head_dims[-1])`` features."""
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, N, in_chans) ->`` logits ``(B, num_classes)``; in training mode the weighted feature-transform
        regulariser is kept for :meth:`auxiliary_losses`."""
        feats, trans_feat, _ = self._features(x)
        logits = self.forward_head(feats)
        losses = {}
        if self.training and trans_feat is not None and self.feat_transform_reg > 0:
            losses["feat_transform_reg"] = self.feat_transform_reg * feature_transform_regularizer(trans_feat)
        self._set_auxiliary_losses(losses)
        return tie_to_output(logits, losses)

    def get_classifier(self) -> nn.Module:
        """The final linear layer (``head.fc3``)."""
        return self.head.fc3

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a fresh one for ``num_classes`` (0: identity, forward gives pre-logits)."""
        self.num_classes = int(num_classes)
        in_dim = self.head.fc2.out_features
        self.head.fc3 = nn.Linear(in_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.head.out_dim = num_classes if num_classes > 0 else in_dim


@register_model
def pointnet(pretrained: bool = False, **kwargs) -> PointNet:
    """PointNet classifier (Qi et al., CVPR 2017): input and feature T-Nets, MLP 64-64-64-128-1024, head 512-256.

    Input ``(B, N, 3)``; 3.5M parameters; 40 classes (ModelNet40) by default.
    """
    return build_model_with_cfg(PointNet, "pointnet", pretrained, **kwargs)


@register_model
def pointnet_tiny(pretrained: bool = False, **kwargs) -> PointNet:
    """Narrow PointNet without T-Nets or dropout (MLP 32-64-128, head 64-32; ~22k parameters) for tests and the demo.

    Input ``(B, N, 3)``; 10 classes (synthetic_shapes) by default. Dropout is off: with a 64-32 head it mostly
    slows training (synthetic_shapes, 512 points, 15 epochs: 90% test accuracy without, 84% with 0.3).
    """
    model_args = dict(num_classes=10, embed_dims=(32, 64, 128), head_dims=(64, 32), drop_rate=0.0, use_tnet=False)
    return build_model_with_cfg(PointNet, "pointnet_tiny", pretrained, **dict(model_args, **kwargs))
