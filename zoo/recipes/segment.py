"""Part segmentation (ShapeNetPart): per-point cross-entropy (+ the model's auxiliary losses), instance / class mIoU.

One training step (the official ``main.py``): the official augmentation (per-cloud scale U(0.8, 1.2), then shift
U(-0.1, 0.1)^3 on xyz), ``logits = model(points, category)`` ``(B, N, parts)``, cross-entropy over all points and
all 50 parts (the official NLL of ``log_softmax``), plus the GLR and importance losses the model keeps
(``model.auxiliary_losses()``; official weights 1 and 1).

Evaluation (:mod:`zoo.metrics.segmentation`): the argmax over the shape's own category's parts, instance mIoU (the
main metric, which picks ``best.pt``), class mIoU, point accuracy, class-average accuracy and the per-category IoU
(``per_category/<name>``); the final evaluation also writes ``part_iou_table.txt``. ``eval.num_votes > 1`` averages
the softmax over that many scale-augmented copies of each cloud (seeded), as Point-BERT's voting.

Splits: unlike the official code, which trains on ``trainval`` and selects its best checkpoint on ``test``, the
configs train on ``train``, select on ``val`` (``data.eval_split``) and report ``test`` once, with the selected
checkpoint: ``tools/eval.py --config CONFIG --checkpoint RUN/best.pt data.eval_split=test``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from zoo.data.registry import DataSection
from zoo.errors import ConfigError
from zoo.data.pointcloud.shapenetpart import seg_classes_of, shape_part_labels
from zoo.data.pointcloud.voting import predict_parts_with_votes
from zoo.metrics.segmentation import keep_shapes, restricted_argmax, save_part_figure
from zoo.models._contract import loss_with_auxiliary, pop_auxiliary_losses
from zoo.recipes.base import Recipe, RecipeConfig, register_recipe
from zoo.registry import create_model

__all__ = ["SegmentConfig", "SegmentDataConfig", "SegmentEvalConfig", "SegmentRecipe"]


@dataclass
class SegmentDataConfig(DataSection):
    """Config section ``data``."""

    name: str = "shapenetpart"
    batch_size: int = 16
    drop_last: bool = True  # training only (the official loader drops the last batch)
    eval_split: str = "val"  # selection split; report test with tools/eval.py ... data.eval_split=test
    kwargs: dict[str, Any] = field(default_factory=dict)  # dataset arguments for every split (num_points, ...)
    eval_kwargs: dict[str, Any] = field(default_factory=lambda: {"seed": 0})  # fixed point draws: reproducible
    augment: bool = True  # the official scale + shift, per batch
    scale_low: float = 0.8
    scale_high: float = 1.2
    shift_range: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.scale_low <= self.scale_high:
            raise ConfigError(f"data.scale_low / data.scale_high must satisfy 0 < low <= high, got "
                              f"{self.scale_low!r}, {self.scale_high!r}")
        if self.shift_range < 0:
            raise ConfigError(f"data.shift_range must be >= 0, got {self.shift_range!r}")


@dataclass
class SegmentEvalConfig:
    """Config section ``eval``."""

    num_votes: int = 1  # > 1: mean softmax over scale-augmented copies (seeded)
    vote_scale_low: float = 0.87
    vote_scale_high: float = 1.15
    # also score the per-category majority-part baseline (the most frequent part of each category in the
    # training split, predicted for every point): metrics baseline_instance_miou / baseline_class_miou. Reads the
    # training split's labels once.
    majority_baseline: bool = False
    figure_shapes: int = 0  # > 0: the evaluation with an output folder draws that many shapes (truth | prediction)

    def __post_init__(self) -> None:
        if isinstance(self.num_votes, bool) or not isinstance(self.num_votes, int) or self.num_votes < 1:
            raise ConfigError(f"eval.num_votes must be an integer >= 1, got {self.num_votes!r}")


@dataclass
class SegmentConfig(RecipeConfig):
    """Config of the ``segment`` recipe; ``model`` holds ``name`` plus constructor arguments."""

    recipe: str = "segment"
    model: dict[str, Any] = field(default_factory=lambda: {"name": "pointramba_partseg"})
    data: SegmentDataConfig = field(default_factory=SegmentDataConfig)
    eval: SegmentEvalConfig = field(default_factory=SegmentEvalConfig)


@register_recipe("segment")
class SegmentRecipe(Recipe):
    """Part segmentation of point clouds with an object category: batches ``(points (B, N, C), category (B,),
    parts (B, N))``; the model maps ``(points[..., :3], category)`` to ``(B, N, num_parts)`` logits."""

    Config = SegmentConfig
    main_metric = "instance_miou"

    def __init__(self, cfg: SegmentConfig):
        super().__init__(cfg)
        if "name" not in cfg.model:
            raise ConfigError("config section 'model' needs a 'name' (a registered model, see zoo.list_models())")

    # ---------------------------------------------------------------- data
    @cached_property
    def train_dataset(self):
        return self.cfg.data.build(self.cfg.data.train_split, self.cfg.data.train_kwargs)

    @cached_property
    def eval_dataset(self):
        return self.cfg.data.build(self.cfg.data.eval_split, self.cfg.data.eval_kwargs)

    def build_dataloaders(self):
        return self.cfg.data.train_loader(self.train_dataset, self.cfg.seed), self.build_eval_loader()

    def build_eval_loader(self):
        return self.cfg.data.eval_loader(self.eval_dataset)

    # ---------------------------------------------------------------- model
    def build_model(self) -> nn.Module:
        kwargs = dict(self.cfg.model)
        return create_model(kwargs.pop("name"), **kwargs)

    def build_eval_model(self, model_name: str | None = None, pretrained: bool = False,
                         checkpoint_path: str | None = None) -> nn.Module:
        kwargs = dict(self.cfg.model)
        name = kwargs.pop("name")
        if model_name:
            name, kwargs = model_name, {k: v for k, v in kwargs.items() if k == "num_classes"}
        model = create_model(name, **kwargs, pretrained=pretrained, checkpoint_path=checkpoint_path,
                             allow_head_reinit=False)
        if pretrained and checkpoint_path is None:  # shipped weights: their point-cloud frame must match the data's
            from zoo.data.pointcloud.frames import check_pretrained_against_data

            check_pretrained_against_data(model, self.eval_dataset, name)
        return model

    # ---------------------------------------------------------------- steps
    def augment(self, points: torch.Tensor) -> torch.Tensor:
        """The official per-cloud scale + shift of ``points (B, N, C)`` (xyz only), when ``data.augment``."""
        d = self.cfg.data
        if not d.augment:
            return points
        from zoo.data.pointcloud.shapenetpart import scale_shift

        return scale_shift(points, d.scale_low, d.scale_high, d.shift_range)

    def training_step(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        points, category, target = batch
        points = self.augment(points)
        logits = model(points[..., :3].contiguous(), category)
        ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), target.reshape(-1))
        return loss_with_auxiliary(ce, pop_auxiliary_losses(model))

    def predict(self, model: nn.Module, points: torch.Tensor, category: torch.Tensor,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """``(B, N, parts)`` scores: logits, or with voting the mean softmax over scaled copies
        (:func:`zoo.data.pointcloud.voting.predict_parts_with_votes`)."""
        ev = self.cfg.eval
        return predict_parts_with_votes(model, points[..., :3].contiguous(), category, ev.num_votes,
                                        ev.vote_scale_low, ev.vote_scale_high, generator,
                                        after_forward=lambda: pop_auxiliary_losses(model))

    def evaluate(self, model: nn.Module, loader: Any, accelerator: Any, output_dir: Any = None) -> dict[str, Any]:
        """Metrics over the eval loader (the one evaluation loop); votes are seeded per process, and a few shapes
        of every category (from this process) are kept for the figure."""
        self._shown: list = []
        return super().evaluate(model, loader, accelerator, output_dir)

    def eval_step(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        points, category, target = batch
        ev = self.cfg.eval
        scores = self.predict(model, points, category, self.eval_generator(points.device) if ev.num_votes > 1 else None)
        pred = restricted_argmax(scores, category, self._parts_of)
        out = {"pred": pred, "category": category, "target": target}
        if ev.num_votes == 1:  # per-shape mean cross-entropy (every shape has the same number of points)
            ce = F.cross_entropy(scores.reshape(-1, scores.shape[-1]), target.reshape(-1), reduction="none")
            out["loss"] = ce.reshape(target.shape).mean(1)
        keep_shapes(self._shown, self.cfg.eval.figure_shapes, len(getattr(self.eval_dataset, "categories", [])),
                    points, category, target, pred)  # a few of every category for the figure
        return out

    @cached_property
    def _parts_of(self) -> list[list[int]]:
        return [list(p) for p in seg_classes_of(self.eval_dataset).values()]

    def build_metrics(self, kind: str = "eval") -> list:
        from zoo.metrics.base import MeanMetric
        from zoo.metrics.segmentation import PartSegmentationMetric

        seg_classes = seg_classes_of(self.eval_dataset)
        metrics: list = [PartSegmentationMetric(seg_classes)]
        if self.cfg.eval.num_votes == 1:
            metrics.append(MeanMetric("loss"))
        if self.cfg.eval.majority_baseline:
            metrics.append(PartSegmentationMetric(seg_classes, majority=self.majority_parts, prefix="baseline_"))
        return metrics

    def after_evaluate(self, metrics: Any, values: dict[str, Any], output_dir: Any) -> None:
        """``part_iou_table.txt`` (per-category IoU, percent; with the majority baseline when on) and
        ``partseg_predictions.png``."""
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        seg = metrics.metrics[0].meter
        table = seg.table() + "\n"
        if self.cfg.eval.majority_baseline:
            table += "\nper-category majority-part baseline:\n" + metrics.metrics[-1].meter.table() + "\n"
        (out / "part_iou_table.txt").write_text(table)
        if self._shown:
            save_part_figure(self._shown, seg.names, out / "partseg_predictions.png")

    @cached_property
    def majority_parts(self) -> dict[int, int]:
        """``{category: most frequent part}`` over the training split (``eval.majority_baseline``)."""
        from zoo.metrics.segmentation import majority_part_by_category

        return majority_part_by_category(shape_part_labels(self.train_dataset))
