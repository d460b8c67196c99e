"""PoinTramba part segmentation (ShapeNetPart): per-point part logits from a point cloud and its object category.

Official code: https://github.com/xiaoyao3302/PoinTramba (Apache-2.0), ``part_segmentation/models/pointramba.py``
``get_model`` run as its ``run.sh`` does (``main.py`` defaults + ``cfgs/config.yaml``): ``--mode_group Attention``,
the *full* score predictor ``CalImportance`` (``--use_simple_score_predictor`` is not passed), ``--mode_sort both``,
``--mode_map_feature all``, no ``--cat_group_token``, 128 groups x 32 neighbours, 4 attention blocks (6 heads,
drop-path 0.1), 12 Mamba layers (drop-path 0.2) fetched at layers 3, 7, 11; 2048 points without normals.

The encoder is the classifier's (:mod:`zoo.models.pointramba`: ``GroupTransformer``, ``ImportancePredictor``,
``sequence_order``, the Mamba ``MixerModel`` and its ``forward_intermediates``); this file adds the official
segmentation parts. ``(points (B, N, 3), category (B,) or one-hot (B, 16)) -> logits (B, N, num_classes)``::

    group_divider, pos_embed      as the classifier: (B, G, 3) centres, (B, G, D) group tokens, (B, G, D) positions
    importance_cal_block          CalImportance: feature_extractor1/2 (Conv-BN-ReLU-Conv twice) before the
                                  projection (256-d, unit norm) and the score head (the classifier's simple one
                                  skips the extractors; score_predictor="simple" selects it)
    (BIO ordering)                tokens, positions and centres sorted high->low, then low->high: L = 2G
    blocks                        the Mamba stack; features of the fetch_idx layers, each normed by ``norm``,
                                  concatenated along channels: (B, L, F*D), F = len(fetch_idx)
    global feature                [max over L, mean over L, label_conv(one-hot)]: (B, 2*F*D + 64)
    propagation_0                 PointNet++ feature propagation from the L sequence tokens (at their centres; each
                                  centre appears twice) to every point: 3 nearest tokens, weights
                                  1/(d^2 + 1e-8) normalised, concatenated with xyz, MLP (4D, 1024): (B, 1024, N)
    head                          [propagated, global] -> convs1-bns1-relu-dp1(0.5)-convs2-bns2-relu-convs3
    global_projection             Conv-BN-ReLU-Conv-L2 on the global feature (GLR / importance losses only)

Training losses (besides the per-point cross-entropy the recipe adds): the GLR contrastive loss and the importance
regression of the classifier, on ``importance_cal_block``'s group projections / scores and the projection of the
global feature; official weights 1 and 1. ``forward`` returns raw logits; the official model returns
``log_softmax`` of the same numbers (identical argmax, and ``cross_entropy(logits) == nll_loss(log_softmax)``).

Deviations, on purpose: distances of the 3-NN interpolation are exact ``dx*dx + dy*dy + dz*dz`` (the official
``square_distance`` uses ``|a|^2 + |b|^2 - 2ab``, whose rounding makes the weight of a point lying on a centre
differ in the ~6th digit); ties between the two copies of a centre go to the lower sequence position (the
official ``torch.sort`` leaves them unspecified on GPU). Official ``best_model.pth`` files (``{'model_state_dict':
..., 'epoch': ..., numpy-scalar metrics}``, as ``main.py`` saves) load with ``checkpoint_path=...``.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from zoo.data.pointcloud.shapenetpart import NUM_CATEGORIES, NUM_PARTS
from zoo.hub import PretrainedCfg, build_model_with_cfg
from zoo.layers.mamba import MixerModel
from zoo.models._contract import AuxiliaryLossMixin, feature_take_indices, tie_to_output
from zoo.models.pointramba import (
    ORDERINGS,
    GroupTransformer,
    ImportancePredictor,
    _conv_projection,
    _mlp3,
    _take,
    check_point_input,
    glr_loss,
    importance_loss,
    ordered_group_tokens,
)
from zoo.ops.pointcloud import interpolation_weights, three_interpolate, three_nn
from zoo.registry import register_model

__all__ = [
    "PoinTrambaPartSeg",
    "DeepImportancePredictor",
    "FeaturePropagation",
    "checkpoint_filter_fn",
]

_PAPER = "https://arxiv.org/abs/2405.15463"
_ORIGIN = "https://github.com/xiaoyao3302/PoinTramba"
MAP_FEATURES = ("all", "max", "ave")
SCORE_PREDICTORS = ("deep", "simple")


def _cfg(num_points: int = 2048, **kwargs: Any) -> PretrainedCfg:
    defaults = dict(num_classes=NUM_PARTS, classifier="convs3", input_size=(num_points, 3), num_points=num_points,
                    dataset="shapenetpart", frame="standard", normalization="unit_sphere", license="apache-2.0",
                    paper=_PAPER, origin_url=_ORIGIN)
    return PretrainedCfg(**{**defaults, **kwargs})


default_cfgs = {
    "pointramba_partseg": _cfg(
        notes="Official part-segmentation configuration (128 groups x 32, dim 384, 4 attention + 12 Mamba layers, "
        "features of layers 3/7/11, 50 parts, 16 categories, 2048 points); 25,236,659 parameters. Inputs: points "
        "(B, N, 3) and the object category (B,) / one-hot (B, 16). No official weights were released; official "
        "best_model.pth files load with checkpoint_path=... . Official log: instance mIoU 85.67, class mIoU 83.94.",
    ),
    "pointramba_partseg_small": _cfg(
        num_points=1024,
        notes="Same design sized for CPU training: 64 groups x 16, dim 64, 1 attention + 3 Mamba layers (all three "
        "fetched), propagation MLP (128, 128), head (128, 64).",
    ),
    "pointramba_partseg_tiny": _cfg(
        num_points=256,
        notes="Smallest configuration, for unit tests and smoke runs.",
    ),
}


# ---------------------------------------------------------------------------------------------------------------
# Segmentation modules
# ---------------------------------------------------------------------------------------------------------------
class DeepImportancePredictor(ImportancePredictor):
    """Official ``CalImportance``: two Conv-BN-ReLU-Conv feature extractors (``D -> 128 -> 256``, ``256 -> 512 -> D``)
    before the classifier's projection and score heads.

    ``forward(tokens (B, G, D)) -> (proj (B, G, proj_dim) unit-norm, score (B, G, 1))``.
    """

    def __init__(self, dim: int, proj_dim: int = 256, hidden: int = 128, mid: int = 256, wide: int = 512):
        super().__init__(dim, proj_dim, hidden)
        self.feature_extractor1 = _conv_projection(dim, hidden, mid, normalize=False)
        self.feature_extractor2 = _conv_projection(mid, wide, dim, normalize=False)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.feature_extractor2(self.feature_extractor1(tokens.transpose(1, 2)))  # (B, D, G)
        return self.projection(t).transpose(1, 2), self.cal_imp_score(t).transpose(1, 2)


class FeaturePropagation(nn.Module):
    """PointNet++ feature propagation (official ``PointNetFeaturePropagation``; keys ``mlp_convs.i``, ``mlp_bns.i``).

    ``forward(xyz1 (B, N, 3), xyz2 (B, S, 3), points1 (B, N, C1) or None, points2 (B, S, C2)) -> (B, C_out, N)``:
    ``points2`` is interpolated at ``xyz1`` from its 3 nearest ``xyz2`` (``zoo.ops.pointcloud.three_nn`` /
    ``three_interpolate``, weights ``1 / (d + eps)`` normalised with ``d`` the *squared* distance as in the
    official code, or the distance with ``squared=False``; S == 1 repeats the one feature), concatenated after
    ``points1`` and passed through kernel-1 Conv-BN-ReLU layers of widths ``mlp``. ``in_channel = C1 + C2``.
    """

    def __init__(self, in_channel: int, mlp: Sequence[int], eps: float = 1e-8, squared: bool = True):
        super().__init__()
        self.eps = eps
        self.squared = squared
        self.mlp_convs = nn.ModuleList()
        self.mlp_bns = nn.ModuleList()
        last = in_channel
        for out in mlp:
            self.mlp_convs.append(nn.Conv1d(last, out, 1))
            self.mlp_bns.append(nn.BatchNorm1d(out))
            last = out

    def interpolate(self, xyz1: torch.Tensor, xyz2: torch.Tensor, points2: torch.Tensor) -> torch.Tensor:
        """``points2 (B, S, C)`` at ``xyz1``: ``(B, N, C)``."""
        if xyz2.shape[1] == 1:
            return points2.expand(-1, xyz1.shape[1], -1)
        dist, idx = three_nn(xyz1, xyz2)
        weight = interpolation_weights(dist, self.eps, self.squared).to(points2.dtype)
        return three_interpolate(points2, idx, weight)

    def forward(self, xyz1: torch.Tensor, xyz2: torch.Tensor, points1: torch.Tensor | None,
                points2: torch.Tensor) -> torch.Tensor:
        x = self.interpolate(xyz1, xyz2, points2)
        if points1 is not None:
            x = torch.cat([points1.to(x.dtype), x], dim=-1)
        x = x.transpose(1, 2)  # (B, C1 + C2, N)
        for conv, bn in zip(self.mlp_convs, self.mlp_bns):
            x = F.relu(bn(conv(x)))
        return x


def category_one_hot(category: torch.Tensor, num_categories: int, batch: int, dtype: torch.dtype) -> torch.Tensor:
    """``(B,)`` integer categories or a ``(B, num_categories)`` one-hot / soft encoding -> ``(B, num_categories)``."""
    if not isinstance(category, torch.Tensor):
        raise TypeError(f"PoinTrambaPartSeg: the object category must be a tensor of shape (B,) or "
                        f"(B, {num_categories}), got {type(category).__name__}.")
    if category.ndim == 2 and category.shape[1] == 1 and not category.is_floating_point():
        category = category[:, 0]
    if category.ndim == 1 and not category.is_floating_point():
        if category.shape[0] != batch:
            raise ValueError(f"PoinTrambaPartSeg: {category.shape[0]} categories for a batch of {batch} clouds.")
        if category.numel() and (int(category.min()) < 0 or int(category.max()) >= num_categories):
            raise ValueError(f"PoinTrambaPartSeg: categories must be in [0, {num_categories}), got "
                             f"min {int(category.min())} max {int(category.max())}.")
        return F.one_hot(category.long(), num_categories).to(dtype)
    if category.ndim == 2 and category.shape == (batch, num_categories):
        return category.to(dtype)
    raise ValueError(f"PoinTrambaPartSeg: the object category must have shape (B={batch},) (integers) or "
                     f"(B={batch}, {num_categories}) (one-hot), got {tuple(category.shape)} {category.dtype}.")


# ---------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------
class PoinTrambaPartSeg(AuxiliaryLossMixin, nn.Module):
    """PoinTramba part segmentation (official ``get_model``): ``(B, N, 3), category -> (B, N, num_classes)``.

    Args:
        num_classes: part labels over all categories (ShapeNetPart: 50). num_categories: object categories (16).
        num_group / group_size / trans_dim / group_depth / group_num_heads / group_drop_path_rate / mlp_ratio /
            depth / d_state / d_conv / expand / rms_norm / ordering / glr_* / importance_weight /
            detach_importance_target / proj_dim / score_hidden / embed_hidden: as :class:`PoinTramba`.
        drop_path_rate: drop-path of every Mamba block (official config ``drop_path: 0.2``).
        fetch_idx: Mamba layers whose features are used (official 3, 7, 11).
        score_predictor: ``"deep"`` (official ``CalImportance``) or ``"simple"`` (``--use_simple_score_predictor``).
        map_feature: what the global projection sees: ``"all"`` (official: [max, mean, label]), ``"max"``, ``"ave"``.
        label_dim: width of the category embedding ``label_conv`` (64).
        fp_hidden / fp_out: widths of the propagation MLP (official ``4 * trans_dim`` and 1024).
        head_hidden: widths of ``convs1`` / ``convs2`` (512, 256). head_drop_rate: ``dp1`` (0.5).
        interpolation_eps / interpolation_squared: the propagation weights ``1 / (d + eps)``, ``d`` squared or not.

    ``forward`` returns logits in training and eval mode; after a training-mode forward, ``auxiliary_losses()``
    gives ``{"glr", "importance"}`` (weighted). ``forward_features`` gives the per-point features the head
    classifies, ``(B, N, num_features)``; ``forward_head(features, pre_logits)`` the ``(B, N, num_classes)``
    logits or the ``(B, N, head_hidden[-1])`` input of the classifier ``convs3`` (a kernel-1 ``Conv1d`` on
    ``(B, C, N)``, the official layout); ``forward_intermediates`` the per-layer Mamba tokens ``(B, L, D)``.
    """

    def __init__(
        self,
        num_classes: int = NUM_PARTS,
        num_categories: int = NUM_CATEGORIES,
        num_group: int = 128,
        group_size: int = 32,
        trans_dim: int = 384,
        group_depth: int = 4,
        group_num_heads: int = 6,
        group_drop_path_rate: float = 0.1,
        mlp_ratio: float = 4.0,
        depth: int = 12,
        fetch_idx: Sequence[int] = (3, 7, 11),
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        rms_norm: bool = False,
        drop_path_rate: float = 0.2,
        ordering: str = "bio",
        score_predictor: str = "deep",
        map_feature: str = "all",
        glr_weight: float = 1.0,
        importance_weight: float = 1.0,
        glr_scale: float = 64.0,
        detach_importance_target: bool = False,
        proj_dim: int = 256,
        score_hidden: int = 128,
        embed_hidden: int = 128,
        label_dim: int = 64,
        fp_hidden: int | None = None,
        fp_out: int = 1024,
        head_hidden: Sequence[int] = (512, 256),
        head_drop_rate: float = 0.5,
        interpolation_eps: float = 1e-8,
        interpolation_squared: bool = True,
    ):
        super().__init__()
        if ordering not in ORDERINGS:
            raise ValueError(f"Unknown ordering '{ordering}'; expected one of {ORDERINGS}.")
        if score_predictor not in SCORE_PREDICTORS:
            raise ValueError(f"Unknown score_predictor '{score_predictor}'; expected one of {SCORE_PREDICTORS}.")
        if map_feature not in MAP_FEATURES:
            raise ValueError(f"Unknown map_feature '{map_feature}'; expected one of {MAP_FEATURES}.")
        fetch_idx = tuple(int(i) for i in fetch_idx)
        take, _ = feature_take_indices(depth, list(fetch_idx))  # validates the indices against depth
        if len(head_hidden) != 2:
            raise ValueError(f"head_hidden must give the two widths of convs1 / convs2, got {tuple(head_hidden)}.")
        self.num_classes = num_classes
        self.num_categories = num_categories
        self.num_group = num_group
        self.group_size = group_size
        self.trans_dim = trans_dim
        self.fetch_idx = tuple(take)
        self.ordering = ordering
        self.map_feature = map_feature
        self.glr_weight = float(glr_weight)
        self.importance_weight = float(importance_weight)
        self.glr_scale = float(glr_scale)
        self.detach_importance_target = detach_importance_target
        self.head_hidden = tuple(int(h) for h in head_hidden)
        self.head_hidden_size = self.head_hidden[-1]
        fd = len(self.fetch_idx) * trans_dim
        self.global_dim = 2 * fd + label_dim
        self.num_features = fp_out + self.global_dim
        self.feature_info = [dict(module=f"blocks.layers.{i}", num_chs=trans_dim, fmt="NLC") for i in range(depth)]

        self.group_divider = GroupTransformer(
            num_group, group_size, trans_dim, depth=group_depth, num_heads=group_num_heads, mlp_ratio=mlp_ratio,
            drop_path_rate=group_drop_path_rate, embed_hidden=embed_hidden, use_cls_token=False,
        )
        predictor = DeepImportancePredictor if score_predictor == "deep" else ImportancePredictor
        self.importance_cal_block = predictor(trans_dim, proj_dim, score_hidden)
        self.pos_embed = _mlp3(trans_dim, embed_hidden)
        self.blocks = MixerModel(
            trans_dim, depth, ssm_cfg=dict(d_state=d_state, d_conv=d_conv, expand=expand), rms_norm=rms_norm,
            drop_path=drop_path_rate,
        )
        self.norm = nn.LayerNorm(trans_dim)
        self.label_conv = nn.Sequential(
            nn.Conv1d(num_categories, label_dim, kernel_size=1, bias=False), nn.BatchNorm1d(label_dim),
            nn.LeakyReLU(0.2),
        )
        self.propagation_0 = FeaturePropagation(
            fd + 3, [fp_hidden or 4 * trans_dim, fp_out], eps=interpolation_eps, squared=interpolation_squared
        )
        proj_in = self.global_dim if map_feature == "all" else fd
        self.global_projection = _conv_projection(proj_in, score_hidden, proj_dim, normalize=True)
        self.convs1 = nn.Conv1d(self.num_features, self.head_hidden[0], 1)
        self.dp1 = nn.Dropout(head_drop_rate)
        self.convs2 = nn.Conv1d(self.head_hidden[0], self.head_hidden[1], 1)
        self.convs3 = self._make_classifier(num_classes)
        self.bns1 = nn.BatchNorm1d(self.head_hidden[0])
        self.bns2 = nn.BatchNorm1d(self.head_hidden[1])
        self.relu = nn.ReLU()

    # -- classifier -------------------------------------------------------------------------------------------
    def _make_classifier(self, num_classes: int) -> nn.Module:
        return nn.Conv1d(self.head_hidden[1], num_classes, 1) if num_classes > 0 else nn.Identity()

    def get_classifier(self) -> nn.Module:
        """The per-point classifier ``convs3`` (kernel-1 ``Conv1d`` on ``(B, head_hidden[-1], N)``)."""
        return self.convs3

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh ``convs3`` with ``num_classes`` outputs (0: identity, the head returns its pre-logits)."""
        self.num_classes = num_classes
        self.convs3 = self._make_classifier(num_classes).to(self.convs2.weight.device)

    # -- forward ----------------------------------------------------------------------------------------------
    def _encode(self, points: torch.Tensor, category: torch.Tensor, take: Sequence[int], stop_early: bool = False):
        """Encoder pieces: ``parts`` dict (centres, projections, scores, order) and the Mamba features of ``take``
        (each ``(B, L, D)``, normed by ``blocks.norm_f`` only)."""
        check_point_input(self, points, "PoinTrambaPartSeg")
        one_hot = category_one_hot(category, self.num_categories, points.shape[0], points.dtype)
        parts, tokens, pos = ordered_group_tokens(self, points)
        feats = self.blocks.forward_intermediates(tokens, pos, indices=list(take), stop_early=stop_early,
                                                  intermediates_only=True)
        parts["one_hot"] = one_hot
        return parts, feats

    def _point_features(self, points: torch.Tensor, parts: dict, fetched: list[torch.Tensor]) -> torch.Tensor:
        """``(B, N, num_features)`` per-point features from the fetched Mamba features; adds ``global`` (the input
        of ``global_projection``) to ``parts``."""
        B, N, _ = points.shape
        x = torch.cat([self.norm(f) for f in fetched], dim=-1)  # (B, L, F*D)
        x_max, x_avg = x.max(dim=1)[0], x.mean(dim=1)
        label = self.label_conv(parts["one_hot"].unsqueeze(-1)).squeeze(-1)  # (B, label_dim)
        global_feat = torch.cat([x_max, x_avg, label], dim=-1)  # (B, 2*F*D + label_dim)
        parts["global"] = {"all": global_feat, "max": x_max, "ave": x_avg}[self.map_feature]
        center_seq = _take(parts["center"], parts["order"])  # (B, L, 3): each sequence token sits at its centre
        propagated = self.propagation_0(points, center_seq, points, x)  # (B, fp_out, N)
        return torch.cat([propagated.transpose(1, 2), global_feat[:, None, :].expand(B, N, -1)], dim=-1)

    def forward_features(self, points: torch.Tensor, category: torch.Tensor) -> torch.Tensor:
        """``points (B, N, 3)``, ``category (B,) / (B, num_categories)`` -> per-point features
        ``(B, N, num_features)`` (``[propagated (fp_out), max, mean, label]``, what ``convs1`` takes)."""
        parts, fetched = self._encode(points, category, self.fetch_idx)
        return self._point_features(points, parts, fetched)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """``(B, N, num_features) -> (B, N, num_classes)`` logits; ``pre_logits``: the ``(B, N, head_hidden[-1])``
        input of ``convs3``."""
        x = features.transpose(1, 2)
        x = self.dp1(self.relu(self.bns1(self.convs1(x))))
        x = self.relu(self.bns2(self.convs2(x)))
        if not pre_logits:
            x = self.convs3(x)
        return x.transpose(1, 2)

    def compute_losses(self, parts: dict) -> dict[str, torch.Tensor]:
        """Weighted ``{"glr", "importance"}`` from the parts of a forward; zero-weight losses are left out."""
        losses: dict[str, torch.Tensor] = {}
        if self.glr_weight == 0 and self.importance_weight == 0:
            return losses
        global_proj = self.global_projection(parts["global"].unsqueeze(-1)).squeeze(-1)  # (B, P)
        if self.glr_weight != 0:
            losses["glr"] = self.glr_weight * glr_loss(global_proj, parts["patch_proj"], self.glr_scale)
        if self.importance_weight != 0:
            losses["importance"] = self.importance_weight * importance_loss(
                parts["scores"], global_proj, parts["patch_proj"], self.detach_importance_target
            )
        return losses

    def forward_parts(self, points: torch.Tensor, category: torch.Tensor) -> dict[str, torch.Tensor]:
        """Everything of one forward: ``center (B, G, 3)``, ``group_tokens (B, G, D)``, ``patch_proj (B, G, P)``,
        ``scores (B, G)``, ``order (B, L)``, ``one_hot (B, num_categories)``, ``global`` (input of the global
        projection), ``features (B, N, num_features)``, ``logits (B, N, num_classes)``."""
        parts, fetched = self._encode(points, category, self.fetch_idx)
        parts["features"] = self._point_features(points, parts, fetched)
        parts["logits"] = self.forward_head(parts["features"])
        return parts

    def forward(self, points: torch.Tensor, category: torch.Tensor) -> torch.Tensor:
        """``points (B, N, 3)``, ``category (B,)`` integers or ``(B, num_categories)`` one-hot -> per-point logits
        ``(B, N, num_classes)`` over all parts (restrict the argmax to the category's parts at evaluation, see
        ``zoo.metrics.segmentation``). Training mode also keeps the weighted auxiliary losses."""
        parts = self.forward_parts(points, category)
        losses = self.compute_losses(parts) if self.training else {}
        self._set_auxiliary_losses(losses)
        return tie_to_output(parts["logits"], losses)

    def forward_intermediates(
        self,
        points: torch.Tensor,
        category: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        intermediates_only: bool = False,
    ) -> tuple[torch.Tensor, list[torch.Tensor]] | list[torch.Tensor]:
        """Per-layer Mamba tokens (timm's ``forward_intermediates``), each ``(B, L, D)`` in sequence order.

        ``indices``: an int n (the last n layers), a list (negative from the end) or None (all). ``norm`` also
        applies ``norm`` (what the segmentation head concatenates). Returns ``(features (B, N, num_features),
        [tokens])`` -- ``features`` is :meth:`forward_features`' output -- or the list alone with
        ``intermediates_only`` (``stop_early`` then runs only the layers up to the last requested one).
        """
        take, _ = feature_take_indices(len(self.blocks.layers), indices)
        need = sorted(set(take) | (set() if intermediates_only else set(self.fetch_idx)))
        parts, feats = self._encode(points, category, need, stop_early=stop_early or not intermediates_only)
        by_layer = dict(zip(need, feats))
        out = [self.norm(by_layer[i]) if norm else by_layer[i] for i in take]
        if intermediates_only:
            return out
        return self._point_features(points, parts, [by_layer[i] for i in self.fetch_idx]), out


# ---------------------------------------------------------------------------------------------------------------
# Official checkpoints
# ---------------------------------------------------------------------------------------------------------------
def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Official part-segmentation keys -> ours: the module names are the official ones; only a ``base_model.``
    prefix (checkpoints saved from a wrapper) is stripped (``module.`` is stripped by ``zoo.hub``)."""
    return {(k[len("base_model."):] if k.startswith("base_model.") else k): v for k, v in state_dict.items()}


def _create(variant: str, pretrained: bool, model_args: dict[str, Any], kwargs: dict[str, Any]) -> PoinTrambaPartSeg:
    """Build ``variant``; ``checkpoint_path`` reads an official ``best_model.pth`` too (``zoo.hub`` unwraps
    ``model_state_dict``; ``zoo.files`` allows its numpy-scalar metrics)."""
    return build_model_with_cfg(PoinTrambaPartSeg, variant, pretrained, checkpoint_filter_fn=checkpoint_filter_fn,
                                **dict(model_args, **kwargs))


@register_model
def pointramba_partseg(pretrained: bool = False, **kwargs: Any) -> PoinTrambaPartSeg:
    """PoinTramba part segmentation, the official configuration: 128 groups x 32, dim 384, 4 Transformer blocks,
    12 Mamba layers fetched at 3/7/11, full score predictor, BIO ordering; 50 parts / 16 categories."""
    return _create("pointramba_partseg", pretrained, {}, kwargs)


@register_model
def pointramba_partseg_small(pretrained: bool = False, **kwargs: Any) -> PoinTrambaPartSeg:
    """PoinTramba part segmentation for CPU training: 64 groups x 16, dim 64, 1 Transformer block (2 heads),
    3 Mamba layers (d_state 8, all fetched), propagation MLP (128, 128), head (128, 64)."""
    model_args = dict(
        num_group=64, group_size=16, trans_dim=64, group_depth=1, group_num_heads=2, depth=3, fetch_idx=(0, 1, 2),
        d_state=8, embed_hidden=64, group_drop_path_rate=0.0, drop_path_rate=0.1, proj_dim=64, score_hidden=64,
        label_dim=32, fp_hidden=128, fp_out=128, head_hidden=(128, 64), head_drop_rate=0.3,
    )
    return _create("pointramba_partseg_small", pretrained, model_args, kwargs)


@register_model
def pointramba_partseg_tiny(pretrained: bool = False, **kwargs: Any) -> PoinTrambaPartSeg:
    """The smallest part-segmentation configuration (tests): 16 groups x 8, dim 32, 1 Transformer block, 3 Mamba
    layers (all fetched), small head."""
    model_args = dict(
        num_group=16, group_size=8, trans_dim=32, group_depth=1, group_num_heads=2, depth=3, fetch_idx=(0, 1, 2),
        d_state=8, group_drop_path_rate=0.0, drop_path_rate=0.0, proj_dim=32, score_hidden=16, embed_hidden=16,
        label_dim=16, fp_hidden=64, fp_out=64, head_hidden=(64, 32),
    )
    return _create("pointramba_partseg_tiny", pretrained, model_args, kwargs)
