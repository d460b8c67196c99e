"""Image and point-cloud classification: cross-entropy (+ the model's auxiliary losses), top-k / per-class accuracy."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from zoo.adapters.base import build_adapter
from zoo.data.registry import DataSection
from zoo.errors import ConfigError
from zoo.metrics.classification import ClassificationMetric, save_confusion_matrix
from zoo.models._contract import loss_with_auxiliary, split_model_output
from zoo.recipes.base import Recipe, RecipeConfig, register_recipe
from zoo.registry import create_model

__all__ = ["ClassifyDataConfig", "ClassifyConfig", "ClassifyRecipe"]

_logger = logging.getLogger("zoo")


@dataclass
class ClassifyDataConfig(DataSection):
    """Config section ``data``: which dataset, its arguments, transforms and loader settings."""

    train_transforms: list[Any] = field(default_factory=list)  # per-sample, by name (see the dataset's transforms)
    eval_transforms: list[Any] = field(default_factory=list)
    batch_transforms: list[Any] = field(default_factory=list)  # per-batch on the device, training
    eval_batch_transforms: list[Any] = field(default_factory=list)  # per-batch on the device, evaluation (before voting)


@dataclass
class LossConfig:
    """Config section ``loss``."""

    label_smoothing: float = 0.0


@dataclass
class EvalConfig:
    """Config section ``eval``."""

    topk: list[int] = field(default_factory=lambda: [1, 5])
    num_votes: int = 1  # > 1: average logits over augmented views (point-cloud test-time voting, seeded)
    vote_num_points: int | None = None  # points per view (random subsets of an FPS pool); None: all
    vote_transforms: list[Any] = field(default_factory=list)  # view augmentation; [] = official scale-translate
    # > 0: before each evaluation in training, recompute BatchNorm running statistics over this many training
    # batches (fixed seeded subset, eval transforms, no augmentation); they are saved with the checkpoint
    bn_recalibration_batches: int = 0


@dataclass
class ClassifyConfig(RecipeConfig):
    """Config of the ``classify`` recipe. ``model`` holds ``name`` plus constructor arguments for ``create_model``."""

    recipe: str = "classify"
    model: dict[str, Any] = field(default_factory=lambda: {"name": "pointnet"})
    data: ClassifyDataConfig = field(default_factory=ClassifyDataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    # an adaptation method (zoo/adapters; e.g. {name: lora, rank: 4}): the model is frozen but what the method
    # trains; checkpoints hold only that, and the final evaluation saves it into <run>/adapter/. Empty: train all.
    adapter: dict[str, Any] = field(default_factory=dict)


def _point_transforms(specs: list[Any]) -> Callable | None:
    """Point-cloud transforms by name; each works on one ``(N, C)`` cloud or a ``(B, N, C)`` batch."""
    if not specs:
        return None
    from zoo.data.pointcloud.transforms import build_transforms

    return build_transforms(specs)


@register_recipe("classify")
class ClassifyRecipe(Recipe):
    """Supervised classification of images ``(B, C, H, W)`` or point clouds ``(B, N, 3)``.

    Loss: cross-entropy (optional label smoothing) plus the auxiliary losses the model keeps after a training-mode
    forward (``model.auxiliary_losses()``, see ``zoo/models/_contract.py``). Metrics: ``top1``, ``top5``, ``mean_class_acc`` (percent); the final evaluation also writes the
    confusion matrix (CSV + PNG) and per-class accuracy into the run directory.
    """

    Config = ClassifyConfig
    main_metric = "top1"

    def __init__(self, cfg: ClassifyConfig):
        super().__init__(cfg)
        if "name" not in cfg.model:
            raise ValueError("config section 'model' needs a 'name' (a registered model, see zoo.list_models())")
        num_classes = cfg.model.get("num_classes")
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0):
                raise ConfigError(f"model.num_classes must be a non-negative integer, got {num_classes!r} "
                              f"({type(num_classes).__name__}); write e.g. model.num_classes=10 without quotes")
        if cfg.eval.num_votes < 1:
                raise ConfigError(f"eval.num_votes must be >= 1, got {cfg.eval.num_votes!r}")
        self.adapter = build_adapter(cfg.adapter) if cfg.adapter else None

    # ---------------------------------------------------------------- data
    def _dataset(self, split: str, extra: dict, transforms: list) -> Any:
        return self.cfg.data.build(split, extra, _point_transforms(transforms))

    @cached_property
    def train_dataset(self):
        d = self.cfg.data
        return self._dataset(d.train_split, d.train_kwargs, d.train_transforms)

    @cached_property
    def eval_dataset(self):
        d = self.cfg.data
        return self._dataset(d.eval_split, d.eval_kwargs, d.eval_transforms)

    @cached_property
    def class_names(self) -> list[str]:
        return list(getattr(self.eval_dataset, "classes", []))

    @cached_property
    def _batch_transform(self) -> Callable | None:
        return _point_transforms(self.cfg.data.batch_transforms)

    @cached_property
    def _eval_batch_transform(self) -> Callable | None:
        return _point_transforms(self.cfg.data.eval_batch_transforms)

    def build_dataloaders(self):
        return self.cfg.data.train_loader(self.train_dataset, self.cfg.seed), self.build_eval_loader()

    def build_eval_loader(self):
        return self.cfg.data.eval_loader(self.eval_dataset)

    @cached_property
    def calibration_dataset(self):
        """The training split with the eval transforms (BatchNorm recalibration sees what evaluation sees)."""
        d = self.cfg.data
        return self._dataset(d.train_split, d.train_kwargs, d.eval_transforms)

    def before_evaluate(self, model: nn.Module, accelerator: Any) -> None:
        """Recalibrate BatchNorm statistics when ``eval.bn_recalibration_batches > 0`` (same batches every time
        and on every process, so the statistics are reproducible and identical across ranks)."""
        n = self.cfg.eval.bn_recalibration_batches
        if n <= 0:
            return
        from zoo.engine.batchnorm import recalibrate_batchnorm

        loader = self.cfg.data.eval_loader(self.calibration_dataset, shuffle=True, seed=self.cfg.seed)

        def forward(m: nn.Module, batch: Any) -> None:
            inputs = batch[0].to(accelerator.device)
            if self._eval_batch_transform is not None:
                inputs = self._eval_batch_transform(inputs)
            m(inputs)

        recalibrate_batchnorm(model, loader, n, forward)

    # ---------------------------------------------------------------- model
    def build_model(self) -> nn.Module:
        model = self._create_model(dict(self.cfg.model))
        return self.adapter.apply(model) if self.adapter is not None else model

    def optimizer_params(self, model: nn.Module) -> nn.Module | list:
        """The whole model (grouped for weight decay), or with an ``adapter`` what the method trains."""
        if self.adapter is None:
            return model
        return self.adapter.param_groups(model, lr=self.cfg.optim.lr, weight_decay=self.cfg.optim.weight_decay)

    def build_eval_model(self, model_name: str | None = None, pretrained: bool = False,
                         checkpoint_path: str | None = None) -> nn.Module:
        """The model ``tools/eval.py`` evaluates. With an ``adapter`` section, ``checkpoint_path`` is the adapter
        run's checkpoint (adapter weights only): the base model comes from the config (``model.checkpoint_path`` /
        ``pretrained``), the method is applied and the checkpoint loaded into it."""
        kwargs = dict(self.cfg.model)
        if model_name:  # another model than the config's: keep only the class count
            kwargs = {"name": model_name, **{k: v for k, v in kwargs.items() if k == "num_classes"}}
        if self.adapter is not None:
            model = self.adapter.apply(self._create_model(kwargs, pretrained=pretrained, allow_head_reinit=False))
            if checkpoint_path is not None:
                from zoo.hub import clean_state_dict
                from zoo.engine.checkpoint import read_checkpoint

                state = read_checkpoint(checkpoint_path, what="the adapter run's checkpoint (--checkpoint)")
                self.adapter.load_state_dict(model, clean_state_dict(state))
            return model
        # evaluating a randomly re-initialised head (checkpoint with another class count) is an error, not a warning
        model = self._create_model(kwargs, pretrained=pretrained, checkpoint_path=checkpoint_path,
                                   allow_head_reinit=False)
        if pretrained and checkpoint_path is None:  # shipped weights: their point-cloud frame must match the data's
            from zoo.data.pointcloud.frames import check_pretrained_against_data

            check_pretrained_against_data(model, self.eval_dataset, model_name or self.cfg.model.get("name"))
        return model

    def _create_model(self, kwargs: dict[str, Any], **load: Any) -> nn.Module:
        """``create_model`` from a ``model`` section; ``num_classes`` defaults to the dataset's class count."""
        name = kwargs.pop("name")
        if "num_classes" not in kwargs and self.class_names:
            kwargs["num_classes"] = len(self.class_names)
        return create_model(name, **kwargs, **load)

    # ---------------------------------------------------------------- steps
    def training_step(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        inputs, target = batch
        if self._batch_transform is not None:
            inputs = self._batch_transform(inputs)
        logits, aux = split_model_output(model(inputs), model)
        ce = F.cross_entropy(logits.float(), target, label_smoothing=self.cfg.loss.label_smoothing)
        return loss_with_auxiliary(ce, aux)

    def predict(self, model: nn.Module, inputs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Logits ``(B, C)``; averaged over ``eval.num_votes`` augmented views when voting is on."""
        ev = self.cfg.eval
        if ev.num_votes > 1:
            from zoo.data.pointcloud.voting import predict_with_votes

            return predict_with_votes(model, inputs, ev.num_votes, _point_transforms(ev.vote_transforms),
                                      num_points=ev.vote_num_points, generator=generator)
        logits, _ = split_model_output(model(inputs), model)  # drops any losses a train-mode forward kept
        return logits

    def save_outputs(self, model: nn.Module, output_dir: Any) -> dict[str, Any]:
        """With an ``adapter`` section, the final evaluation saves the adapter (``<run>/adapter/``)."""
        if self.cfg.adapter:
            self.adapter.save(model, Path(output_dir) / "adapter")
        return {}

    def eval_step(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        inputs, target = batch
        if self._eval_batch_transform is not None:
            inputs = self._eval_batch_transform(inputs)
        generator = self.eval_generator(inputs.device) if self.cfg.eval.num_votes > 1 else None
        return {"logits": self.predict(model, inputs, generator).float(), "target": target}

    def build_metrics(self, kind: str = "eval") -> list:
        return [ClassificationMetric(self.cfg.eval.topk)]

    def after_evaluate(self, metrics: Any, values: dict[str, Any], output_dir: Any) -> None:
        """The confusion matrix (CSV + PNG), per-class accuracy and ``per_example.npz`` (``top1`` per example, for a
        study's paired bootstrap)."""
        from zoo.studies.per_example import save_per_example

        metric = metrics.metrics[0]
        save_confusion_matrix(metric.confusion_matrix(), self.class_names, output_dir)
        seen = metric.per_example()
        save_per_example(output_dir, {"top1": 100.0 * (seen["logits"].argmax(1) == seen["target"]).double()})
