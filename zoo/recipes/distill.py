"""The ``hello_distill`` recipe: HeLlO dataset distillation with label-space lightening and its stored-soft-label /
hard-label baselines (``tools/train.py configs/hello/mnist.yaml``).

A study (owns its run): :class:`zoo.distill.pipeline.HelloPipeline` runs the stages (teacher, encoder, projector,
image sets, stored labels, students, report; the run directory's layout is described there) with the settings of
:mod:`zoo.distill.config`. This file holds the config, the nested trainings (each a ``classify`` training on the
distill data section) and the wiring between them.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from zoo.distill.config import (RENAMED_KEYS, DistillDataConfig, EncoderSection, ImagesSection, ProjectorSection,
                                StudentsSection, TeacherSection)
from zoo.distill.data import IndexedImages, image_size_kwargs
from zoo.distill.pipeline import HelloPipeline
from zoo.distill.projector import projector_training_loss
from zoo.distill.rotation import NUM_ROTATIONS, random_rotations, rotation_hits
from zoo.distill.students import StudentTeaching
from zoo.data.loader import build_loader
from zoo.engine.optim import OptimConfig, ScheduleConfig
from zoo.engine.trainer import TrainerConfig
from zoo.metrics.base import MeanMetric
from zoo.recipes.base import Recipe, RecipeConfig, register_recipe
from zoo.recipes.classify import ClassifyConfig, ClassifyDataConfig, ClassifyRecipe, EvalConfig, LossConfig
from zoo.registry import create_model

__all__ = ["HelloDistillConfig", "HelloDistillRecipe", "TeacherRecipe", "RotationPretrainRecipe", "ProjectorRecipe",
           "StudentRecipe", "DistillDataConfig"]


@dataclass
class HelloDistillConfig(RecipeConfig):
    """Config of the ``hello_distill`` recipe. Of the shared sections only ``seed`` and ``trainer.cpu`` are read:
    each nested training has its own settings in its section (see ``HelloDistillRecipe.unread_keys``)."""

    recipe: str = "hello_distill"
    prepare_from: str | None = None  # a finished run whose teacher, encoder, projector and image sets this run copies
    data: DistillDataConfig = field(default_factory=DistillDataConfig)
    teacher: TeacherSection = field(default_factory=TeacherSection)
    encoder: EncoderSection = field(default_factory=EncoderSection)
    projector: ProjectorSection = field(default_factory=ProjectorSection)
    images: ImagesSection = field(default_factory=ImagesSection)
    students: StudentsSection = field(default_factory=StudentsSection)


def _classify_cfg(model: dict, data: DistillDataConfig, *, epochs: int, lr: float, seed: int,
                  batch_size: int | None = None, weight_decay: float = 0.0, save_every: int | None = None,
                  cpu: bool = False, eval_split: str | None = None) -> ClassifyConfig:
    """A ``classify`` config for the nested runs (AdamW, cosine schedule; no tensorboard, no bars, evaluation at the
    end only, on ``eval_split`` -- by default ``data.val_split``: a nested run never reads the reported split; no
    checkpoint is selected)."""
    d = ClassifyDataConfig(name=data.name, root=data.root, batch_size=batch_size or data.batch_size,
                           eval_batch_size=data.eval_batch_size, num_workers=data.num_workers,
                           train_split=data.train_split, eval_split=eval_split or data.val_split,
                           kwargs=image_size_kwargs(data.name, data.image_size))
    trainer = TrainerConfig(epochs=epochs, eval_every=epochs, save_every=save_every or epochs, log_every=50,
                            tensorboard=False, progress=False, cpu=cpu, save_best=False)
    return ClassifyConfig(recipe="classify", seed=seed, model=dict(model), data=d, loss=LossConfig(),
                          eval=EvalConfig(topk=[1]), trainer=trainer,
                          optim=OptimConfig(name="adamw", lr=lr, weight_decay=weight_decay),
                          schedule=ScheduleConfig(name="cosine"))


# ================================================================================================ nested stages
class TeacherRecipe(ClassifyRecipe):
    """The teacher: plain classification on ``data.train_split`` (one snapshot per epoch via a callback)."""


class RotationPretrainRecipe(ClassifyRecipe):
    """Self-supervised encoder pre-training (:mod:`zoo.distill.rotation`): predict which of 0/90/180/270 degrees
    each image of ``data.train_split`` was rotated by (never its label). ``top1`` = rotation accuracy over the 4
    rotations of every held-out image (the one evaluation loop, gathered across processes)."""

    def build_model(self) -> nn.Module:
        kwargs = dict(self.cfg.model)
        return create_model(kwargs.pop("name"), **{**kwargs, "num_classes": NUM_ROTATIONS})

    def training_step(self, model, batch):
        x, k = random_rotations(batch[0])
        loss = F.cross_entropy(model(x).float(), k)
        return {"loss": loss, "ce": loss.detach()}

    def eval_step(self, model, batch):
        """``{"rotation_hits": (B,)}``: per image, the fraction of its 4 rotations predicted right."""
        return {"rotation_hits": rotation_hits(model, batch[0])}

    def build_metrics(self, kind="eval"):
        """``top1``: the mean of ``rotation_hits`` in percent (correct rotations / all rotations)."""
        return [MeanMetric("rotation_hits", name="top1", scale=100.0)]

    def after_evaluate(self, metrics, values, output_dir):
        """Nothing: no class confusion matrix for rotation classes."""


class ProjectorRecipe(ClassifyRecipe):
    """Trains the HeLlO projector's adapters (``method``, a ``hello_projector`` adaptation method already applied to
    ``projector``) on ``data.train_split`` against ``teachers`` (:func:`zoo.distill.projector_training_loss`).
    Checkpoints hold only the adapters. ``top1`` = the projector's held-out accuracy."""

    def __init__(self, cfg: ClassifyConfig, projector: nn.Module, method: Any, teachers: list[nn.Module],
                 section: ProjectorSection, scale: Sequence[float]):
        super().__init__(cfg)
        self.projector, self.adapter, self.teachers = projector, method, teachers
        self.section, self.scale = section, tuple(scale)

    def build_model(self) -> nn.Module:
        return self.projector

    def training_step(self, model, batch):
        x, y = batch
        s = self.section
        loss, parts = projector_training_loss(model, self.teachers, x, y, augment=s.augment, scale=self.scale,
                                              kind=s.loss, temperature=s.temperature, ce_weight=s.ce_weight)
        return {"loss": loss, **parts}


class StudentRecipe(ClassifyRecipe):
    """A student trained on a fixed image set ``images (N, C, H, W)`` in [0, 1] with classes ``targets (N,)``; what it
    sees and learns from is ``teaching`` (:class:`zoo.distill.students.StudentTeaching`: views and hard / stored /
    projector labels); evaluated on the held-out split."""

    def __init__(self, cfg: ClassifyConfig, images: torch.Tensor, targets: torch.Tensor, teaching: StudentTeaching,
                 classes: Sequence[str] = ()):
        super().__init__(cfg)
        if len(images) != teaching.num_images:
            raise ValueError(f"StudentRecipe: {len(images)} images but the teaching covers {teaching.num_images}")
        self.images, self.targets, self.teaching = images, targets, teaching
        self._classes = list(classes)

    @property
    def train_dataset(self):  # type: ignore[override]
        return IndexedImages(self.images, self.targets, self._classes)

    @property
    def class_names(self):  # type: ignore[override]
        return self._classes or [str(i) for i in range(int(self.targets.max()) + 1)]

    def build_dataloaders(self):
        ds = self.train_dataset
        train = build_loader(ds, min(self.cfg.data.batch_size, len(ds)), shuffle=True, seed=self.cfg.seed,
                             num_workers=0)
        return train, self.build_eval_loader()

    def train_step(self, model, batch, ctx):
        x, y, idx = batch
        epoch = int(ctx.epoch)
        x = self.teaching.views(x, idx, epoch)
        loss, parts = self.teaching.loss(model(x).float(), x, y, idx, epoch)
        ctx.backward(loss)
        return parts


# ================================================================================================ the recipe
_NESTED = "each nested training takes its settings from its own section: teacher, encoder, projector, students"


@register_recipe("hello_distill")
class HelloDistillRecipe(Recipe):
    """HeLlO dataset distillation end to end (teacher, encoder, projector, distilled sets, students, report); see
    the module docstring. A study: owns its run."""

    Config = HelloDistillConfig
    main_metric = None
    run_shape = "study"
    unread_keys = {
        **{f"trainer.{f.name}": _NESTED for f in fields(TrainerConfig) if f.name != "cpu"},
        "optim": f"{_NESTED}; they use AdamW with the lr / weight_decay set there",
        "schedule": f"{_NESTED}; they use a cosine schedule",
        **RENAMED_KEYS,
    }

    @cached_property
    def pipeline(self) -> HelloPipeline:
        """The stages of this run (:class:`zoo.distill.pipeline.HelloPipeline`), with this recipe's nested trainings."""
        return HelloPipeline(self.cfg, self, cpu=self.cfg.trainer.cpu)

    def run(self, ctx: Any) -> dict[str, Any]:
        """Every stage in order (finished ones reused): :meth:`zoo.distill.pipeline.HelloPipeline.run`."""
        return self.pipeline.run(ctx)

    def report(self, summary: dict[str, Any], run_dir: Any) -> None:
        """``results.csv``, ``storage.json`` and the figures: :meth:`zoo.distill.pipeline.HelloPipeline.report`."""
        self.pipeline.report(summary, run_dir)

    # ------------------------------------------------------------------ the nested trainings (NestedRecipes)
    def _nested(self, model: dict, seed: int | None = None, **kwargs: Any) -> ClassifyConfig:
        return _classify_cfg(model, self.cfg.data, seed=self.cfg.seed if seed is None else seed,
                             cpu=self.cfg.trainer.cpu, **kwargs)

    def teacher(self, model: dict[str, Any]) -> TeacherRecipe:
        """The teacher run: ``teacher.epochs`` / ``lr`` / ``weight_decay``, evaluated and saved every epoch."""
        t = self.cfg.teacher
        cfg = self._nested(model, epochs=t.epochs, lr=t.lr, weight_decay=t.weight_decay, save_every=1)
        cfg.trainer.eval_every = 1
        return TeacherRecipe(cfg)

    def rotation(self, model: dict[str, Any]) -> RotationPretrainRecipe:
        """The encoder's rotation pre-training: ``encoder.epochs`` / ``lr``."""
        e = self.cfg.encoder
        return RotationPretrainRecipe(self._nested(model, epochs=e.epochs, lr=e.lr))

    def projector(self, projector: nn.Module, method: Any, teachers: list[nn.Module]) -> ProjectorRecipe:
        """The projector's adapter training: ``projector.epochs`` / ``lr``, views cropped by ``images.crop_scale``."""
        p = self.cfg.projector
        cfg = self._nested({"name": "hello_projector"}, epochs=p.epochs, lr=p.lr)
        return ProjectorRecipe(cfg, projector, method, teachers, p, self.cfg.images.crop_scale)

    def student(self, model: dict[str, Any], images: torch.Tensor, targets: torch.Tensor, teaching: StudentTeaching,
                classes: Sequence[str], *, seed: int, epochs: int, eval_split: str | None) -> StudentRecipe:
        """A student run: ``students.lr`` / ``batch_size`` / ``weight_decay``, 4 checkpoints over ``epochs``."""
        s = self.cfg.students
        cfg = self._nested(model, epochs=epochs, lr=s.lr, batch_size=s.batch_size, seed=seed,
                           weight_decay=s.weight_decay, save_every=max(1, epochs // 4), eval_split=eval_split)
        return StudentRecipe(cfg, images, targets, teaching, classes=classes)
