"""PoinTramba: a hybrid Transformer-Mamba point-cloud classifier.

Paper: Wang et al., "PoinTramba: A Hybrid Transformer-Mamba Framework for Point Cloud Analysis", 2024
(arXiv:2405.15463). Official code: https://github.com/xiaoyao3302/PoinTramba (Apache-2.0), class
``PointMambaFormer`` in ``models/point_mamba.py`` run with the flags of its ``run.sh``:
``--mode_group Attention --use_simple_score_predictor --type_pooling important --type_weighting drop_neg
--mode_sort both --attention_depth 4`` (``--attention_use_cls_token`` is *not* passed).

Pipeline, ``(B, N, 3) -> (B, num_classes)``, with the official module names::

    group_divider.set_group      FPS picks G centres (start index 0), KNN takes K neighbours, coordinates centred
    group_divider.embedding      MLP 3 -> 128 -> D on every neighbour            (B*G, K, D)
    group_divider.pos_embed      MLP 3 -> 128 -> D on the same centred coordinates, re-added before every block
    group_divider.blocks.blocks  4 pre-norm Transformer blocks (D, 6 heads, MLP 4D, no qkv bias, drop-path 0->0.1)
    group_divider.norm           LayerNorm, then max over the K neighbours       (B, G, D)
    importance_cal_block         projection: Conv-BN-ReLU-Conv to 256-d, L2-normalised (for the GLR loss);
                                 cal_imp_score: Conv(D->128)-BN-ReLU-Conv(128->1) (B, G) importance score
    pos_embed                    MLP 3 -> 128 -> D on the centres
    (BIO ordering)               groups sorted by score high->low, then low->high, concatenated: (B, 2G, D)
    blocks.layers.N              12 Mamba blocks (mamba-ssm Block: add -> LN -> Mamba, drop-path 0.3/0.1)
    blocks.norm_f, norm          two final LayerNorms
    (pooling)                    sum over the 2G tokens weighted by the score clamped to [0, 1]   (B, D)
    cls_head_finetune            Linear(D,256)-BN-ReLU-Drop(0.5)-Linear(256,256)-BN-ReLU-Drop(0.5)-Linear(256,C)
    global_projection            Conv-BN-ReLU-Conv to 256-d, L2-normalised (GLR loss / score target only)

Training losses (besides cross-entropy, which the recipe adds): the group-to-global contrastive loss (GLR, scale
64) and the SmoothL1 regression of the predicted score on the cosine similarity between each group's projection
and the global projection (summed over groups, averaged over the batch). Official weights are all 1. ``forward``
returns logits in training mode too; it computes these two losses (already weighted) and keeps them for
``model.auxiliary_losses()``, which the recipe calls through ``zoo.models._contract.pop_auxiliary_losses``.
Per-layer Mamba features (part segmentation): ``forward_intermediates``.

The official parameter count (19,501,072 with 15 classes) includes ``group_divider.cls_token``,
``group_divider.cls_pos`` and ``group_divider.reduce_dim``, which the official configuration never uses. They are
kept (so official checkpoints load with no unexpected keys) but frozen (``requires_grad=False``) unless
``group_use_cls_token=True``: the official optimiser never updates them either (they never receive a gradient),
and frozen they do not trip DDP's unused-parameter check.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from zoo.data.pointcloud.modelnet import MODELNET10_CLASSES
from zoo.hub import PretrainedCfg, build_model_with_cfg
from zoo.layers.mamba import MixerModel
from zoo.layers.transformer import TransformerEncoder
from zoo.models._contract import (
    AuxiliaryLossMixin,
    check_finite_points,
    check_input_dtype,
    feature_take_indices,
    tie_to_output,
)
from zoo.ops.pointcloud import fps_knn_group
from zoo.registry import register_model

__all__ = [
    "PoinTramba",
    "PointGrouper",
    "GroupTransformer",
    "ImportancePredictor",
    "L2Normalize",
    "sequence_order",
    "importance_pool",
    "glr_loss",
    "importance_loss",
    "checkpoint_filter_fn",
    "check_point_input",
]

_PAPER = "https://arxiv.org/abs/2405.15463"
_ORIGIN = "https://github.com/xiaoyao3302/PoinTramba"
_CLASSIFIER = "cls_head_finetune.8"


def _cfg(num_points: int = 1024, **kwargs: Any) -> PretrainedCfg:
    """A PoinTramba pretrained cfg: the fields every variant shares, plus ``kwargs``."""
    defaults = dict(num_classes=40, classifier=_CLASSIFIER, input_size=(num_points, 3), num_points=num_points,
                    frame="standard", license="apache-2.0", paper=_PAPER, origin_url=_ORIGIN)
    return PretrainedCfg(**{**defaults, **kwargs})


default_cfgs = {
    "pointramba": _cfg(
        dataset="modelnet40",
        notes="Official configuration (256 groups x 16 neighbours, dim 384, 4 attention + 12 Mamba layers); "
        "19,507,497 parameters with 40 classes, 19,501,072 with 15. ModelNet40: 1024 points, drop_path_rate 0.3. "
        "ScanObjectNN: 2048 points, num_classes=15, drop_path_rate=0.1. No official weights were released; "
        "official checkpoints ({'base_model': ...}) load with checkpoint_path=... .",
    ),
    "pointramba_small": _cfg(
        notes="Same design, sized for CPU training (32 groups x 32, dim 64, 1 attention + 2 Mamba layers).",
    ),
    "pointramba_small.modelnet10": _cfg(  # create_model("pointramba_small.modelnet10"); the older name is an alias
        aliases=("pointramba_small_modelnet10",),
        num_classes=10,
        label_names=tuple(MODELNET10_CLASSES),
        file="pointramba_small_modelnet10.safetensors",
        sha256="9143e72ed73f6a1e315584946d13f3c95b1ecc6a46b3f6f357c2c6f98eb33e0b",
        metrics={"top1": 91.08, "mean_class_acc": 90.69},
        normalization="unit_sphere",
        train_command="python tools/train.py configs/pointramba/modelnet10_small_pipeline.yaml && "
        "python tools/export_weights.py runs/modelnet10_small_pipeline/refine/last.pt --name pointramba_small_modelnet10",
        eval_command="python tools/eval.py --config configs/pointramba/modelnet10_small.yaml "
        "--model pointramba_small_modelnet10 --pretrained",
        dataset="modelnet10",
        train_time_s=3393,
        notes="pointramba_small trained by us on the ModelNet10 train split (3991 shapes) on a CPU: 30 epochs, then a "
        "10-epoch warm restart at lr 3e-4; metrics on the 908-shape test split, one view (no voting), final epoch "
        "(no checkpoint selection on the test split). Trained in the standard frame (y up, as the "
        "modelnet40_normal_resampled txt / modelnet40_ply_hdf5_2048 h5 / Point-BERT .dat files; the PCDs of "
        "../shared/data/modelnet10, sampled from the z-up OFF meshes, are converted by the reader), unit-sphere "
        "normalised. The earlier weights (sha256 36378b6c..., trained on the unconverted z-up PCDs) scored 91.63 / "
        "91.37 there and 34.4 % on real resampled-txt shapes. train_time_s: 30-epoch run 2718 s + refine 675 s, 1 "
        "thread, 2-core CPU shared with other runs.",
    ),
    "pointramba_tiny": _cfg(
        num_points=256,
        notes="Smallest configuration, for unit tests and smoke runs.",
    ),
}

ORDERINGS = ("bio", "importance", "random", "none")
POOLINGS = ("importance", "mean", "max")


# ---------------------------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------------------------
def _mlp3(out_dim: int, hidden: int = 128, in_dim: int = 3) -> nn.Sequential:
    """``Linear(in, hidden) -> GELU -> Linear(hidden, out)``, the official coordinate embedding (keys ``0.*``,
    ``2.*``)."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))


class L2Normalize(nn.Module):
    """Unit L2 norm along ``dim``.

    The official ``Normalize`` divides by the norm with no epsilon (NaN on an all-zero vector, possible after a
    ReLU); ``F.normalize`` clamps the norm at 1e-12, identical otherwise.
    """

    def __init__(self, dim: int = 1):
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, p=2.0, dim=self.dim)


def _conv_projection(in_dim: int, hidden: int, out_dim: int, normalize: bool) -> nn.Sequential:
    """``Conv1d-BN-ReLU-Conv1d`` (+ L2 norm) on ``(B, C, L)``; kernel-1 convs keep the official key/shape layout."""
    layers: list[nn.Module] = [
        nn.Conv1d(in_dim, hidden, 1),
        nn.BatchNorm1d(hidden),
        nn.ReLU(inplace=True),
        nn.Conv1d(hidden, out_dim, 1),
    ]
    if normalize:
        layers.append(L2Normalize(dim=1))
    return nn.Sequential(*layers)


class PointGrouper(nn.Module):
    """FPS centres + KNN neighbourhoods (official ``Group``).

    ``forward(xyz (B, N, 3)) -> (neighborhood (B, G, K, 3) centred on its centre, center (B, G, 3))``.
    FPS starts from point 0 like ``pointnet2_ops``; neighbours are the K nearest points (the centre included).
    """

    def __init__(self, num_group: int, group_size: int):
        super().__init__()
        self.num_group = num_group
        self.group_size = group_size

    def forward(self, xyz: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return fps_knn_group(xyz, self.num_group, self.group_size)

    def extra_repr(self) -> str:
        return f"num_group={self.num_group}, group_size={self.group_size}"


class GroupTransformer(nn.Module):
    """Intra-group Transformer that turns each neighbourhood into one token (official ``Attention``).

    ``forward(xyz (B, N, 3)) -> (center (B, G, 3), group_tokens (B, G, D))``.

    Every neighbour is embedded by ``embedding`` (3 -> 128 -> D); ``pos_embed`` embeds the same centred
    coordinates and is re-added before each of the ``depth`` pre-norm blocks; after ``norm`` the group token is
    the max over neighbours. With ``use_cls_token`` a learned token joins each group and the token becomes
    ``reduce_dim([max, cls])``.
    """

    def __init__(
        self,
        num_group: int,
        group_size: int,
        dim: int,
        depth: int = 4,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.1,
        embed_hidden: int = 128,
        use_cls_token: bool = False,
    ):
        super().__init__()
        self.num_group = num_group
        self.group_size = group_size
        self.use_cls_token = use_cls_token
        self.set_group = PointGrouper(num_group, group_size)
        self.embedding = _mlp3(dim, embed_hidden)
        # cls_token / cls_pos / reduce_dim exist in the official model whatever the flag (they are part of its
        # parameter count and of its checkpoints); without the cls token they are unused and frozen.
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.cls_pos = nn.Parameter(torch.randn(1, 1, dim))  # official init: randn, not trunc_normal
        self.pos_embed = _mlp3(dim, embed_hidden)
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = TransformerEncoder(
            embed_dim=dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, drop_path_rate=dpr
        )
        self.norm = nn.LayerNorm(dim)
        self.reduce_dim = nn.Linear(2 * dim, dim)
        if not use_cls_token:
            for p in (self.cls_token, self.cls_pos, *self.reduce_dim.parameters()):
                p.requires_grad_(False)

    def forward(self, xyz: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B = xyz.shape[0]
        neighborhood, center = self.set_group(xyz)  # (B, G, K, 3), (B, G, 3)
        nb = neighborhood.reshape(B * self.num_group, self.group_size, 3)
        x = self.embedding(nb)  # (B*G, K, D)
        pos = self.pos_embed(nb)  # (B*G, K, D)
        if self.use_cls_token:
            x = torch.cat([x, self.cls_token.expand(x.shape[0], -1, -1)], dim=1)
            pos = torch.cat([pos, self.cls_pos.expand(pos.shape[0], -1, -1)], dim=1)
        x = self.norm(self.blocks(x, pos))
        if self.use_cls_token:
            # Official bug fixed: the official code appends the cls token *last* but reads index 0 (the first
            # neighbour, i.e. the centre point). We read the cls token itself (the last position).
            x = self.reduce_dim(torch.cat([x.max(dim=1)[0], x[:, -1]], dim=-1))
        else:
            x = x.max(dim=1)[0]
        return center, x.reshape(B, self.num_group, -1)


class ImportancePredictor(nn.Module):
    """Per-group projection and importance score (official ``CalImportanceSimple``).

    ``forward(tokens (B, G, D)) -> (proj (B, G, proj_dim) unit-norm, score (B, G, 1))``.
    """

    def __init__(self, dim: int, proj_dim: int = 256, hidden: int = 128):
        super().__init__()
        self.projection = _conv_projection(dim, hidden, proj_dim, normalize=True)
        self.cal_imp_score = _conv_projection(dim, hidden, 1, normalize=False)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = tokens.transpose(1, 2)  # (B, D, G)
        return self.projection(t).transpose(1, 2), self.cal_imp_score(t).transpose(1, 2)


# ---------------------------------------------------------------------------------------------------------------
# Ordering, pooling, losses
# ---------------------------------------------------------------------------------------------------------------
def sequence_order(scores: torch.Tensor, ordering: str = "bio") -> torch.Tensor:
    """Indices of the groups fed to the Mamba stack, ``scores (B, G) -> idx (B, L)``.

    * ``"bio"``: bi-directional importance-aware ordering, groups by score high->low then low->high (L = 2G);
    * ``"importance"``: high->low only (official ``--mode_sort max``; L = G);
    * ``"random"``: a fresh random permutation per sample, in training and evaluation alike (L = G);
    * ``"none"``: the FPS order (L = G).

    Sorts are stable, so tied scores keep their FPS order (the official ``argsort`` leaves ties unspecified).
    """
    B, G = scores.shape
    if ordering == "bio":
        desc = torch.sort(scores, dim=1, descending=True, stable=True)[1]
        asc = torch.sort(scores, dim=1, descending=False, stable=True)[1]
        return torch.cat([desc, asc], dim=1)
    if ordering == "importance":
        return torch.sort(scores, dim=1, descending=True, stable=True)[1]
    if ordering == "random":
        return torch.rand(B, G, device=scores.device).argsort(dim=1)
    if ordering == "none":
        return torch.arange(G, device=scores.device).expand(B, G)
    raise ValueError(f"Unknown ordering '{ordering}'; expected one of {ORDERINGS}.")


def _take(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``x (B, G, C)``, ``idx (B, L)`` -> ``(B, L, C)``."""
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def ordered_group_tokens(model: nn.Module, points: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor,
                                                                             torch.Tensor]:
    """The encoder front shared by the classifier and the part-segmentation model (their official module names:
    ``group_divider``, ``pos_embed``, ``importance_cal_block``, ``ordering``): groups, importance scores and the
    sequence order. Returns ``parts`` (``center (B, G, 3)``, ``group_tokens (B, G, D)``, ``patch_proj (B, G, P)``,
    ``scores (B, G)``, ``order (B, L)``) and the ordered ``tokens`` / ``pos`` ``(B, L, D)`` the Mamba stack takes."""
    center, group_tokens = model.group_divider(points)  # (B, G, 3), (B, G, D)
    pos = model.pos_embed(center)  # (B, G, D)
    patch_proj, score = model.importance_cal_block(group_tokens)  # (B, G, P), (B, G, 1)
    scores = score.squeeze(-1)
    order = sequence_order(scores, model.ordering)  # (B, L)
    parts = dict(center=center, group_tokens=group_tokens, patch_proj=patch_proj, scores=scores, order=order)
    return parts, _take(group_tokens, order), _take(pos, order)


def importance_pool(x: torch.Tensor, scores: torch.Tensor, pooling: str = "importance") -> torch.Tensor:
    """Pool tokens ``x (B, L, D)`` into ``(B, D)``.

    ``"importance"``: ``sum_l clamp(score_l, 0, 1) * x_l`` (official ``type_weighting drop_neg``: negative scores
    contribute nothing, and note it is a sum, not a mean); ``"mean"`` / ``"max"`` ignore ``scores (B, L)``.
    """
    if pooling == "importance":
        return (x * scores.clamp(0, 1).unsqueeze(-1)).sum(dim=1)
    if pooling == "mean":
        return x.mean(dim=1)
    if pooling == "max":
        return x.max(dim=1)[0]
    raise ValueError(f"Unknown pooling '{pooling}'; expected one of {POOLINGS}.")


def glr_loss(global_feat: torch.Tensor, patch_feat: torch.Tensor, scale: float = 64.0) -> torch.Tensor:
    """Group-to-global contrastive loss (official ``GLR_loss``).

    Every group projection ``patch_feat (B, G, P)`` must pick its own shape's global projection among the batch's
    ``global_feat (B, P)``: cross-entropy over ``scale * <patch, global_j>`` with label = its sample index,
    averaged over the B*G groups. Both inputs are expected unit-norm.
    """
    B, G, _ = patch_feat.shape
    logits = torch.einsum("bgp,jp->bgj", patch_feat, global_feat) * scale  # (B, G, B)
    labels = torch.arange(B, device=patch_feat.device).repeat_interleave(G)
    return F.cross_entropy(logits.reshape(B * G, B), labels)


def importance_loss(
    pred_score: torch.Tensor,
    global_feat: torch.Tensor,
    patch_feat: torch.Tensor,
    detach_target: bool = False,
) -> torch.Tensor:
    """Importance regression: SmoothL1(pred_score (B, G), cos(patch_feat (B, G, P), global_feat (B, P))).

    Summed over groups and averaged over the batch, as the official ``loss_importance(...).sum(-1).mean()``.
    The official target is *not* detached (gradients reach both projections through it); ``detach_target=True``
    treats it as a fixed target instead.
    """
    target = F.cosine_similarity(global_feat.unsqueeze(1).expand_as(patch_feat), patch_feat, dim=-1)
    if detach_target:
        target = target.detach()
    return F.smooth_l1_loss(pred_score, target, reduction="none").sum(dim=-1).mean()


def check_point_input(model: nn.Module, points: torch.Tensor, name: str = "PoinTramba") -> None:
    """Refuse what a PoinTramba-family ``model`` cannot take as ``points (B, N, 3)``, naming the fix.

    Checks the type and shape (channels-first, missing batch dim, extra channels), dtype (float, same as the
    weights), finiteness, ``N >= max(num_group, group_size)`` and, in training mode, ``B >= 2`` (BatchNorm).
    Used by the classifier and the part-segmentation model.
    """
    if not isinstance(points, torch.Tensor):
        raise TypeError(f"{name} expects a torch.Tensor of shape (B, N, 3), got {type(points).__name__}.")
    if points.ndim != 3 or points.shape[-1] != 3:
        hint = ""
        if points.ndim == 3 and points.shape[1] == 3:
            hint = " It looks channels-first: pass points.transpose(1, 2)."
        elif points.ndim == 2 and points.shape[-1] == 3:
            hint = " Add a batch dimension: points.unsqueeze(0)."
        elif points.ndim == 3 and points.shape[-1] > 3:
            hint = " Only xyz is used: pass points[..., :3]."
        raise ValueError(f"{name} expects points of shape (B, N, 3), got {tuple(points.shape)}.{hint}")
    if not points.is_floating_point():
        raise TypeError(f"{name} expects floating-point points, got dtype {points.dtype}.")
    check_input_dtype(points, model, name)
    check_finite_points(points, name)
    n, need = points.shape[1], max(model.num_group, model.group_size)
    if n < need:
        raise ValueError(
            f"{name} needs at least {need} points per cloud (num_group={model.num_group}, "
            f"group_size={model.group_size}), got N={n}. Sample more points or build the model with smaller "
            "num_group / group_size."
        )
    if model.training and points.shape[0] < 2:
        raise ValueError(
            f"{name} in training mode needs a batch of at least 2 clouds (BatchNorm in the head), got "
            f"B={points.shape[0]}. Use a larger batch or model.eval()."
        )


# ---------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------
class PoinTramba(AuxiliaryLossMixin, nn.Module):
    """PoinTramba classifier (official ``PointMambaFormer``), ``(B, N, 3) -> (B, num_classes)``.

    Args:
        num_classes: output classes (ModelNet40: 40, ScanObjectNN: 15).
        num_group: FPS centres G. group_size: KNN neighbours K.
        trans_dim: token width D of both the intra-group Transformer and the Mamba stack (the official
            ``encoder_dims`` must equal ``trans_dim``, so there is one argument).
        group_depth / group_num_heads / group_drop_path_rate / mlp_ratio: intra-group Transformer
            (official ``--attention_depth 4``, 6 heads, 0.1, 4).
        group_use_cls_token: official ``--attention_use_cls_token`` (off in the paper's run; see the bug note).
        depth: Mamba layers. d_state / d_conv / expand: Mamba-1 mixer. rms_norm: RMSNorm instead of LayerNorm.
        drop_path_rate: drop-path of every Mamba block (official: 0.3 ModelNet40, 0.1 ScanObjectNN).
        ordering: ``"bio"`` (paper) | ``"importance"`` | ``"random"`` | ``"none"``, see :func:`sequence_order`.
        pooling: ``"importance"`` (paper, negatives dropped) | ``"mean"`` | ``"max"``.
        glr_weight / importance_weight: weights of the two auxiliary losses (official: 1.0 and 1.0).
        glr_scale: logit scale of the contrastive loss (official 64).
        detach_importance_target: stop gradients through the score target (official: False).
        proj_dim / score_hidden / embed_hidden / head_hidden / head_drop_rate: fixed widths of the official heads.

    ``forward`` returns logits ``(B, num_classes)`` in training and eval mode. After a training-mode forward,
    :meth:`auxiliary_losses` returns ``{"glr": glr_weight * L_glr, "importance": importance_weight * L_imp}``
    (zero-weight losses left out); see ``zoo/models/_contract.py`` for the whole contract.
    """

    def __init__(
        self,
        num_classes: int = 40,
        num_group: int = 256,
        group_size: int = 16,
        trans_dim: int = 384,
        group_depth: int = 4,
        group_num_heads: int = 6,
        group_drop_path_rate: float = 0.1,
        group_use_cls_token: bool = False,
        mlp_ratio: float = 4.0,
        depth: int = 12,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        rms_norm: bool = False,
        drop_path_rate: float = 0.3,
        ordering: str = "bio",
        pooling: str = "importance",
        glr_weight: float = 1.0,
        importance_weight: float = 1.0,
        glr_scale: float = 64.0,
        detach_importance_target: bool = False,
        proj_dim: int = 256,
        score_hidden: int = 128,
        embed_hidden: int = 128,
        head_hidden: int = 256,
        head_drop_rate: float = 0.5,
    ):
        super().__init__()
        if ordering not in ORDERINGS:
            raise ValueError(f"Unknown ordering '{ordering}'; expected one of {ORDERINGS}.")
        if pooling not in POOLINGS:
            raise ValueError(f"Unknown pooling '{pooling}'; expected one of {POOLINGS}.")
        if num_group < 1 or group_size < 1:
            raise ValueError(f"num_group and group_size must be >= 1, got {num_group} and {group_size}.")
        self.num_classes = num_classes
        self.num_group = num_group
        self.group_size = group_size
        self.trans_dim = trans_dim
        self.num_features = trans_dim
        self.ordering = ordering
        self.pooling = pooling
        self.glr_weight = float(glr_weight)
        self.importance_weight = float(importance_weight)
        self.glr_scale = float(glr_scale)
        self.detach_importance_target = detach_importance_target
        self.head_hidden = head_hidden
        self.head_hidden_size = head_hidden
        self.feature_info = [dict(module=f"blocks.layers.{i}", num_chs=trans_dim, fmt="NLC") for i in range(depth)]

        self.group_divider = GroupTransformer(
            num_group, group_size, trans_dim, depth=group_depth, num_heads=group_num_heads, mlp_ratio=mlp_ratio,
            drop_path_rate=group_drop_path_rate, embed_hidden=embed_hidden, use_cls_token=group_use_cls_token,
        )
        self.importance_cal_block = ImportancePredictor(trans_dim, proj_dim, score_hidden)
        self.pos_embed = _mlp3(trans_dim, embed_hidden)
        # mamba-ssm stack (official ``MixerModel``): ``pos`` is added once at its input; every block has the same
        # drop-path rate (the official choice, not a linear schedule); mamba-ssm's GPT-2 style init.
        self.blocks = MixerModel(
            trans_dim, depth, ssm_cfg=dict(d_state=d_state, d_conv=d_conv, expand=expand), rms_norm=rms_norm,
            drop_path=drop_path_rate,
        )
        self.norm = nn.LayerNorm(trans_dim)
        self.cls_head_finetune = nn.Sequential(
            nn.Linear(trans_dim, head_hidden),
            nn.BatchNorm1d(head_hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(head_drop_rate),
            nn.Linear(head_hidden, head_hidden),
            nn.BatchNorm1d(head_hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(head_drop_rate),
            self._make_classifier(num_classes),
        )
        self.global_projection = _conv_projection(trans_dim, score_hidden, proj_dim, normalize=True)

    # -- classifier -------------------------------------------------------------------------------------------
    def _make_classifier(self, num_classes: int) -> nn.Module:
        return nn.Linear(self.head_hidden, num_classes) if num_classes > 0 else nn.Identity()

    def get_classifier(self) -> nn.Module:
        """The final layer of the head (``cls_head_finetune.8``)."""
        return self.cls_head_finetune[8]

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the final Linear by a freshly initialised one with ``num_classes`` outputs (0: identity, the
        head then returns its 256-d hidden features)."""
        self.num_classes = num_classes
        device = self.cls_head_finetune[4].weight.device
        self.cls_head_finetune[8] = self._make_classifier(num_classes).to(device)

    # -- forward ----------------------------------------------------------------------------------------------
    def _check_input(self, points: torch.Tensor) -> None:
        check_point_input(self, points)

    def _parts(self, points: torch.Tensor, take: Sequence[int] | None = None, stop_early: bool = False,
               intermediates_only: bool = False) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
        """The pieces of the forward pass, and the Mamba-layer features of layers ``take`` (none when None)."""
        self._check_input(points)
        parts, tokens, pos_seq = ordered_group_tokens(self, points)
        if take is None:
            return self._pool(parts, self.blocks(tokens, pos_seq)), []
        out = self.blocks.forward_intermediates(tokens, pos_seq, indices=take, stop_early=stop_early,
                                                intermediates_only=intermediates_only)
        if intermediates_only:
            return parts, out
        return self._pool(parts, out[0]), out[1]

    def _pool(self, parts: dict[str, torch.Tensor], x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Adds ``tokens`` (``norm`` of the stack output) and ``pooled`` to ``parts``."""
        x = self.norm(x)
        seq_scores = torch.gather(parts["scores"], 1, parts["order"])
        parts.update(tokens=x, pooled=importance_pool(x, seq_scores, self.pooling))
        return parts

    def forward_parts(self, points: torch.Tensor) -> dict[str, torch.Tensor]:
        """Everything up to the pooled feature, as a dict (what the auxiliary losses and the tests use).

        ``center (B, G, 3)``, ``group_tokens (B, G, D)``, ``patch_proj (B, G, P)`` (unit-norm), ``scores (B, G)``
        (predicted importance, FPS order), ``order (B, L)`` (group index of each sequence position; L = 2G for
        ``"bio"``), ``tokens (B, L, D)`` (after the Mamba stack and both final norms), ``pooled (B, D)``.
        """
        return self._parts(points)[0]

    def forward_intermediates(
        self,
        points: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        intermediates_only: bool = False,
    ) -> tuple[torch.Tensor, list[torch.Tensor]] | list[torch.Tensor]:
        """Per-layer token features of the Mamba stack (timm's ``forward_intermediates``).

        Args:
            points: ``(B, N, 3)``.
            indices: an int n (the last n Mamba layers), a list of layer indices (negative from the end), or
                None (all ``depth`` layers).
            norm: also apply the model's final ``norm`` (the LayerNorm after the stack) to each feature: the
                tensor the official part-segmentation head consumes.
            stop_early: run the Mamba layers only up to the last requested one (``final_features`` then comes
                from that truncated stack).
            intermediates_only: return only the list.

        Returns ``(final_features (B, D), [features (B, L, D)])`` -- ``final_features`` is
        :meth:`forward_features`' pooled feature, what :meth:`forward_head` takes -- or the list alone. The
        feature of layer i is ``blocks.norm_f(hidden_states + residual)`` after layer i: the residual stream
        (mixer output added), normed by the stack's final norm, not yet by ``norm`` (unless ``norm=True``), in
        sequence order (for ``"bio"`` L = 2G: groups by score high->low, then low->high; ``forward_parts(x)
        ["order"]`` maps positions to groups). This is exactly what the official ``MixerModelForSegmentation``
        collects at its ``fetch_idx`` layers (3, 7, 11 of 12): ``forward_intermediates(x, [3, 7, 11],
        norm=True)`` gives the three tensors its segmentation head concatenates.
        """
        take, _ = feature_take_indices(len(self.blocks.layers), indices)
        parts, feats = self._parts(points, take, stop_early=stop_early, intermediates_only=intermediates_only)
        if norm:
            feats = [self.norm(f) for f in feats]
        if intermediates_only:
            return feats
        return parts["pooled"], feats

    def prune_intermediate_layers(self, indices: int | Sequence[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the Mamba layers after the last of ``indices`` (a feature extractor for those layers).

        ``prune_norm`` replaces the final ``norm`` by an identity; ``prune_head`` removes the classifier
        (``reset_classifier(0)``: the head then returns its ``head_hidden``-d features). Returns the kept indices.
        """
        take, max_index = feature_take_indices(len(self.blocks.layers), indices)
        self.blocks.layers = self.blocks.layers[:max_index + 1]
        self.feature_info = self.feature_info[:max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0)
        return take

    def forward_features(self, points: torch.Tensor) -> torch.Tensor:
        """``(B, N, 3) -> (B, D)``: the pooled feature the head classifies."""
        return self.forward_parts(points)["pooled"]

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """``(B, D) -> (B, num_classes)``; with ``pre_logits`` the head's ``(B, head_hidden)`` features before the
        final Linear (``cls_head_finetune.8``)."""
        head = self.cls_head_finetune
        for i in range(len(head) - 1):
            features = head[i](features)
        return features if pre_logits else head[-1](features)

    def compute_losses(self, parts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The weighted auxiliary losses ``{"glr", "importance"}`` from :meth:`forward_parts`' output; a loss whose
        weight is zero is left out (and not computed)."""
        losses: dict[str, torch.Tensor] = {}
        if self.glr_weight == 0 and self.importance_weight == 0:
            return losses
        global_proj = self.global_projection(parts["pooled"].unsqueeze(-1)).squeeze(-1)  # (B, P)
        if self.glr_weight != 0:
            losses["glr"] = self.glr_weight * glr_loss(global_proj, parts["patch_proj"], self.glr_scale)
        if self.importance_weight != 0:
            losses["importance"] = self.importance_weight * importance_loss(
                parts["scores"], global_proj, parts["patch_proj"], self.detach_importance_target
            )
        return losses

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """``points (B, N, 3)`` -> logits ``(B, num_classes)``, in training and eval mode.

        In training mode the weighted auxiliary losses are computed here too (so that, under DDP, the parameters
        they use take part in the wrapped forward) and kept for :meth:`auxiliary_losses`.
        """
        parts = self.forward_parts(points)
        logits = self.forward_head(parts["pooled"])
        losses = self.compute_losses(parts) if self.training else {}
        self._set_auxiliary_losses(losses)
        return tie_to_output(logits, losses)


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Convert an official PoinTramba checkpoint to this model's keys.

    ``zoo.hub.load_weights`` has already unwrapped ``{'base_model': ...}`` and stripped ``module.``; our module and
    parameter names are the official ones, so the only change left is the ``base_model.`` prefix that the
    official ``load_model_from_ckpt`` also strips (checkpoints saved from a wrapper model).
    """
    out = {}
    for k, v in state_dict.items():
        if k.startswith("base_model."):
            k = k[len("base_model."):]
        out[k] = v
    return out


# ---------------------------------------------------------------------------------------------------------------
# Registered variants
# ---------------------------------------------------------------------------------------------------------------
def _create(variant: str, pretrained: bool, model_args: dict[str, Any], kwargs: dict[str, Any]) -> PoinTramba:
    return build_model_with_cfg(
        PoinTramba, variant, pretrained, checkpoint_filter_fn=checkpoint_filter_fn, **dict(model_args, **kwargs)
    )


@register_model
def pointramba(pretrained: bool = False, **kwargs: Any) -> PoinTramba:
    """PoinTramba, the paper's configuration: 256 groups x 16 neighbours, dim 384, 4 intra-group Transformer
    blocks (6 heads), 12 Mamba layers, BIO ordering, importance pooling. 19.5M parameters."""
    return _create("pointramba", pretrained, {}, kwargs)


_SMALL_ARGS = dict(
    num_group=32, group_size=32, trans_dim=64, group_depth=1, group_num_heads=2, depth=2, d_state=8,
    embed_hidden=64, group_drop_path_rate=0.0, drop_path_rate=0.1,
)


@register_model
def pointramba_small(pretrained: bool = False, **kwargs: Any) -> PoinTramba:
    """PoinTramba-S for CPU training: 32 groups x 32 neighbours, dim 64, 1 Transformer block (2 heads),
    2 Mamba layers (d_state 8); same design otherwise. 0.31M parameters."""
    return _create("pointramba_small", pretrained, _SMALL_ARGS, kwargs)


@register_model
def pointramba_small_modelnet10(pretrained: bool = False, **kwargs: Any) -> PoinTramba:
    """``pointramba_small`` for ModelNet10 (10 classes, 1024 points). ``pretrained=True`` loads the weights we
    trained (shipped in ``checkpoints/``; the cfg holds their test accuracy and the train / eval commands)."""
    return _create("pointramba_small_modelnet10", pretrained, dict(_SMALL_ARGS, num_classes=10), kwargs)  # alias


@register_model
def pointramba_tiny(pretrained: bool = False, **kwargs: Any) -> PoinTramba:
    """PoinTramba-T, the smallest configuration (unit tests): 16 groups x 8 neighbours, dim 32, 1 Transformer
    block (2 heads), 2 Mamba layers (d_state 8)."""
    model_args = dict(
        num_group=16, group_size=8, trans_dim=32, group_depth=1, group_num_heads=2, depth=2, d_state=8,
        group_drop_path_rate=0.0, drop_path_rate=0.0, proj_dim=32, score_hidden=16, embed_hidden=16,
        head_hidden=32,
    )
    return _create("pointramba_tiny", pretrained, model_args, kwargs)
