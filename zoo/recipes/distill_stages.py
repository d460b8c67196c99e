"""The trainings nested inside a ``hello_distill`` run, each a :class:`~zoo.recipes.classify.ClassifyRecipe` on the
distill recipe's data section (registered datasets or ``imagefolder``):

* :class:`TeacherRecipe` -- the teacher, plain classification on ``data.train_split``;
* :class:`RotationPretrainRecipe` -- the projector's encoder, self-supervised 4-way rotation prediction (labels
  unused);
* :class:`ProjectorRecipe` -- the HeLlO projector's low-rank adapters, on the teachers' soft labels + CE;
* :class:`StudentRecipe` -- a student on a fixed image set, with hard, stored or projector labels
  (:mod:`zoo.distill.labels`). Soft-label loss: ``T^2 KL(soft || student) + ce_weight * CE``. All three label kinds
  see the same views (crop parameters are a function of ``(seed, epoch, sample)``, :mod:`zoo.distill.views`);
  students differ only in their initialisation seed.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from zoo.distill.data import IndexedImages, image_dataset
from zoo.distill.labels import LABEL_KINDS
from zoo.distill.views import apply_views, random_views, view_params
from zoo.engine.data import build_loader
from zoo.errors import ConfigError
from zoo.recipes.classify import ClassifyConfig, ClassifyRecipe
from zoo.registry import create_model

if TYPE_CHECKING:  # annotations only: zoo.recipes.distill imports this module
    from zoo.recipes.distill import DistillDataConfig, ProjectorSection

__all__ = ["TeacherRecipe", "RotationPretrainRecipe", "ProjectorRecipe", "StudentRecipe"]


class _DataMixin:
    """Datasets built by :func:`zoo.distill.data.image_dataset` (handles ``imagefolder``) from the distill recipe's
    data section."""

    distill_data: "DistillDataConfig"

    def _dataset(self, split, extra, transforms):  # overrides ClassifyRecipe._dataset
        d = self.distill_data
        return image_dataset(d.name, split, root=d.root, image_size=d.image_size)


class TeacherRecipe(_DataMixin, ClassifyRecipe):
    """The teacher: plain classification on ``data.train_split`` (one snapshot per epoch via a callback)."""

    def __init__(self, cfg: ClassifyConfig, data: "DistillDataConfig"):
        self.distill_data = data
        super().__init__(cfg)


class RotationPretrainRecipe(_DataMixin, ClassifyRecipe):
    """Self-supervised encoder pre-training: predict which of 0/90/180/270 degrees each image was rotated by
    (RotNet). Uses the images of ``data.train_split`` only, never their labels. ``top1`` = rotation accuracy."""

    def __init__(self, cfg: ClassifyConfig, data: "DistillDataConfig"):
        self.distill_data = data
        super().__init__(cfg)

    def build_model(self) -> nn.Module:
        kwargs = dict(self.cfg.model)
        return create_model(kwargs.pop("name"), **{**kwargs, "num_classes": 4})

    @staticmethod
    def rotate(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Rotate each image ``x[i] (C, H, W)`` by ``k[i] * 90`` degrees (square images)."""
        return torch.stack([torch.rot90(xi, int(ki), dims=(-2, -1)) for xi, ki in zip(x, k)])

    def training_step(self, model, batch):
        x, _ = batch
        k = torch.randint(0, 4, (len(x),), device=x.device)
        loss = F.cross_entropy(model(self.rotate(x, k)).float(), k)
        return {"loss": loss, "ce": loss.detach()}

    def evaluate(self, model, loader, accelerator, output_dir=None):
        correct = total = 0
        for x, _ in loader:
            for k in range(4):
                pred = model(torch.rot90(x, k, dims=(-2, -1))).argmax(1)
                correct += int((pred == k).sum())
                total += len(x)
        return {"top1": 100.0 * correct / max(total, 1)}


class ProjectorRecipe(_DataMixin, ClassifyRecipe):
    """Trains the HeLlO projector's adapters on ``data.train_split``: one augmented view per image per step,
    :func:`zoo.adapters.hello.projector_loss` against every teacher of ``teachers``. Checkpoints hold only the
    adapters. ``top1`` = the projector's held-out accuracy."""

    def __init__(self, cfg: ClassifyConfig, data: "DistillDataConfig", projector: nn.Module, teachers: list[nn.Module],
                 section: "ProjectorSection", scale: Sequence[float]):
        self.distill_data = data
        super().__init__(cfg)
        self.projector, self.teachers, self.section, self.scale = projector, teachers, section, tuple(scale)

    def build_model(self) -> nn.Module:
        return self.projector

    def checkpoint_state(self, model):
        from zoo.adapters.model import adapter_state_dict

        return adapter_state_dict(model)

    def load_checkpoint_state(self, model, state):
        from zoo.adapters.model import load_adapter_state_dict

        load_adapter_state_dict(model, state, strict=True)

    def training_step(self, model, batch):
        from zoo.adapters.hello import projector_loss

        x, y = batch
        if self.section.augment:
            x = random_views(x, self.scale)
        with torch.no_grad():
            teacher_logits = []
            for t in self.teachers:
                t.to(x.device).eval()
                teacher_logits.append(t(x).float())
        s = self.section
        loss, parts = projector_loss(model(x), teacher_logits, y, kind=s.loss, temperature=s.temperature,
                                     ce_weight=s.ce_weight)
        return {"loss": loss, **parts}


class StudentRecipe(_DataMixin, ClassifyRecipe):
    """A student trained on a fixed image set with ``labels`` in ``hard | stored | projector`` (:mod:`zoo.distill.labels`).

    Args:
        cfg: the student's classify config (model, trainer = its epochs, optim).
        data: the distill data section (the held-out evaluation split).
        images, targets: ``(N, C, H, W)`` in [0, 1] and ``(N,)``.
        labels: the label kind. soft_labels, views: ``(E, N, K)`` / ``(E, N, 4)`` for ``stored``.
        projector: the (stored, reloaded) projector for ``projector``.
        view_seed: seed of the views (hard / projector; stored uses the stored views). augment: crop views or not.
        temperature, ce_weight: soft-label loss ``T^2 KL + ce_weight * CE``.
    """

    def __init__(self, cfg: ClassifyConfig, data: "DistillDataConfig", images: torch.Tensor, targets: torch.Tensor,
                 labels: str, *, soft_labels: torch.Tensor | None = None, views: torch.Tensor | None = None,
                 projector: nn.Module | None = None, view_seed: int = 0, augment: bool = True,
                 scale: Sequence[float] = (0.5, 1.0), temperature: float = 4.0, ce_weight: float = 0.0,
                 classes: Sequence[str] = ()):
        self.distill_data = data
        super().__init__(cfg)
        if labels not in LABEL_KINDS:
            raise ConfigError(f"students.labels: unknown label kind {labels!r}; use one of {LABEL_KINDS}")
        if labels == "stored":
            if soft_labels is None or views is None:
                raise ValueError("StudentRecipe: labels='stored' needs soft_labels (E, N, K) and views (E, N, 4)")
            if soft_labels.shape[0] < cfg.trainer.epochs or soft_labels.shape[1] != len(images):
                raise ValueError(f"StudentRecipe: stored soft labels {tuple(soft_labels.shape)} do not cover "
                                 f"{cfg.trainer.epochs} epochs x {len(images)} images; regenerate them")
        if labels == "projector" and projector is None:
            raise ValueError("StudentRecipe: labels='projector' needs the projector")
        self.images, self.targets, self.labels = images, targets, labels
        self.soft_labels, self.views, self.projector = soft_labels, views, projector
        self.view_seed, self.augment, self.scale = view_seed, augment, tuple(scale)
        self.temperature, self.ce_weight = temperature, ce_weight
        self._classes = list(classes)
        self._epoch_views: tuple[int, torch.Tensor] | None = None

    @property
    def train_dataset(self):  # type: ignore[override]
        return IndexedImages(self.images, self.targets, self._classes)

    @property
    def class_names(self):  # type: ignore[override]
        return self._classes or [str(i) for i in range(int(self.targets.max()) + 1)]

    def build_dataloaders(self):
        d = self.cfg.data
        ds = self.train_dataset
        train = build_loader(ds, min(d.batch_size, len(ds)), shuffle=True, seed=self.cfg.seed, num_workers=0)
        return train, self.build_eval_loader()

    def _views(self, epoch: int) -> torch.Tensor:
        if self.labels == "stored":
            return self.views[epoch].float()
        if self._epoch_views is None or self._epoch_views[0] != epoch:
            self._epoch_views = (epoch, view_params(len(self.images), epoch, self.view_seed, self.scale))
        return self._epoch_views[1]

    def train_step(self, model, batch, ctx):
        x, y, idx = batch
        epoch = int(ctx.epoch)
        if self.augment:
            x = apply_views(x, self._views(epoch)[idx.cpu()].to(x.device))
        logits = model(x).float()
        if self.labels == "hard":
            loss = F.cross_entropy(logits, y)
            ctx.backward(loss)
            return {"loss": loss.detach()}
        if self.labels == "stored":
            soft = self.soft_labels[epoch][idx.cpu()].to(x.device).float()
        else:
            with torch.no_grad():
                self.projector.to(x.device).eval()
                soft = self.projector(x).float()
        T = self.temperature
        kl = F.kl_div(F.log_softmax(logits / T, -1), F.softmax(soft / T, -1), reduction="batchmean") * T * T
        loss = kl + self.ce_weight * F.cross_entropy(logits, y) if self.ce_weight else kl
        ctx.backward(loss)
        return {"loss": loss.detach(), "kl": kl.detach()}
