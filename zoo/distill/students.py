"""What a distillation student learns from: the views it sees and the label of each view (one interface over the
label kinds of :mod:`zoo.distill.labels`).

:class:`StudentTeaching` gives, for a batch of a fixed image set, the augmented views (crop boxes a pure function of
``(seed, epoch, sample)``, :mod:`zoo.distill.views`; stored labels replay their stored boxes) and the loss of the
student's logits on them: ``hard`` -- cross-entropy; ``stored`` / ``stored_equal`` / ``projector`` -- Hinton's
``T^2 KL(soft || student)`` (:func:`zoo.losses.distillation_kl`) ``+ ce_weight * CE``, the soft labels read from the
stored tensors or asked of the projector on the fly. ``hard``, ``stored`` and ``projector`` see the same views, so
they differ only in their labels; ``stored_equal`` has labels for ``E`` epochs only and cycles through their views
(epoch ``e`` replays stored epoch ``e mod E``, views regenerated from the seed).

Reference: SRe2L / RDED's FKD-style relabelling (stored); HeLlO (Yu et al., ICCV 2025, arXiv 2408.08201) for the
projector labels.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from zoo.distill.labels import LABEL_KINDS
from zoo.distill.views import apply_views, view_params
from zoo.errors import ConfigError
from zoo.losses import distillation_kl

__all__ = ["StudentTeaching"]


class StudentTeaching:
    """Views and labels of a student trained on ``num_images`` fixed images with label kind ``labels``.

    Args:
        labels: ``hard | stored | stored_equal | projector``.
        num_images: ``N``, the size of the image set (stored tensors must cover it).
        epochs: the student's epochs (``stored`` tensors must cover them; ``stored_equal`` cycles through its ``E``).
        soft_labels, views: ``(E, N, K)`` logits and ``(E, N, 4)`` crop boxes, for ``stored``; ``stored_equal``
            takes ``soft_labels`` only (its views are ``view_params(N, e, view_seed)`` for ``e < E``).
        projector: the (stored, reloaded) projector, ``(B, C, H, W) -> (B, K)``, for ``projector``.
        view_seed: seed of the views (hard / projector; stored replays its stored boxes). augment: crop views or not.
        scale: crop area range. temperature, ce_weight: the soft-label loss ``T^2 KL + ce_weight * CE``.
    """

    def __init__(self, labels: str, num_images: int, epochs: int, *, soft_labels: torch.Tensor | None = None,
                 views: torch.Tensor | None = None, projector: nn.Module | None = None, view_seed: int = 0,
                 augment: bool = True, scale: Sequence[float] = (0.5, 1.0), temperature: float = 4.0,
                 ce_weight: float = 0.0):
        if labels not in LABEL_KINDS:
            raise ConfigError(f"students.labels: unknown label kind {labels!r}; use one of {LABEL_KINDS}")
        if labels == "stored":
            if soft_labels is None or views is None:
                raise ValueError("StudentTeaching: labels='stored' needs soft_labels (E, N, K) and views (E, N, 4)")
            if soft_labels.shape[0] < epochs or soft_labels.shape[1] != num_images:
                raise ValueError(f"StudentTeaching: stored soft labels {tuple(soft_labels.shape)} do not cover "
                                 f"{epochs} epochs x {num_images} images; regenerate them")
        if labels == "stored_equal":
            if soft_labels is None or soft_labels.shape[1] != num_images:
                raise ValueError("StudentTeaching: labels='stored_equal' needs soft_labels (E, N, K) for the "
                                 f"{num_images} images")
        if labels == "projector" and projector is None:
            raise ValueError("StudentTeaching: labels='projector' needs the projector")
        self.labels, self.num_images = labels, int(num_images)
        self.soft_labels, self.stored_views, self.projector = soft_labels, views, projector
        self.view_seed, self.augment, self.scale = view_seed, augment, tuple(scale)
        self.temperature, self.ce_weight = temperature, ce_weight
        self._epoch_views: tuple[int, torch.Tensor] | None = None

    def label_epoch(self, epoch: int) -> int:
        """The stored epoch whose views and labels the student's ``epoch`` uses (``stored_equal``: ``epoch mod E``)."""
        return epoch % self.soft_labels.shape[0] if self.labels == "stored_equal" else epoch

    def _boxes(self, epoch: int) -> torch.Tensor:
        """The ``(N, 4)`` crop boxes of ``epoch``."""
        if self.labels == "stored":
            return self.stored_views[epoch].float()
        epoch = self.label_epoch(epoch)
        if self._epoch_views is None or self._epoch_views[0] != epoch:
            self._epoch_views = (epoch, view_params(self.num_images, epoch, self.view_seed, self.scale))
        return self._epoch_views[1]

    def views(self, x: torch.Tensor, idx: torch.Tensor, epoch: int) -> torch.Tensor:
        """The views of images ``x (B, C, H, W)`` (samples ``idx (B,)`` of the set) at ``epoch`` (``x`` itself
        without augmentation)."""
        if not self.augment:
            return x
        return apply_views(x, self._boxes(epoch)[idx.cpu()].to(x.device))

    def loss(self, logits: torch.Tensor, views: torch.Tensor, target: torch.Tensor, idx: torch.Tensor,
             epoch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(loss, detached parts)`` of the student's ``logits (B, K)`` on ``views`` (samples ``idx``, classes
        ``target``) at ``epoch``: CE for hard labels, else ``T^2 KL(soft || student) (+ ce_weight * CE)``."""
        if self.labels == "hard":
            loss = F.cross_entropy(logits, target)
            return loss, {"loss": loss.detach()}
        if self.labels in ("stored", "stored_equal"):
            soft = self.soft_labels[self.label_epoch(epoch)][idx.cpu()].to(views.device).float()
        else:
            with torch.no_grad():
                self.projector.to(views.device).eval()
                soft = self.projector(views).float()
        kl = distillation_kl(logits, soft, self.temperature)
        loss = kl + self.ce_weight * F.cross_entropy(logits, target) if self.ce_weight else kl
        return loss, {"loss": loss.detach(), "kl": kl.detach()}
