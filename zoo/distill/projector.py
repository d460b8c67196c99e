"""One training step's loss of HeLlO's projector: a fresh augmented view of each image, labelled by every
(frozen) teacher, matched by the projector (:func:`zoo.adapters.hello.projector_loss`)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from zoo.adapters.hello import projector_loss
from zoo.distill.views import random_views

__all__ = ["projector_training_loss"]


def projector_training_loss(projector: nn.Module, teachers: Sequence[nn.Module], x: torch.Tensor, y: torch.Tensor, *,
                            augment: bool = True, scale: Sequence[float] = (0.5, 1.0), kind: str = "kl",
                            temperature: float = 1.0, ce_weight: float = 0.0) -> tuple[torch.Tensor, dict]:
    """``(loss, detached parts)`` on images ``x (B, C, H, W)`` with classes ``y (B,)``: one random view per image
    (crop area in ``scale``) when ``augment``, the teachers' logits on it (eval mode, no gradient; moved to ``x``'s
    device), then ``mean_t D(projector, teacher_t) + ce_weight * CE`` (``kind``: ``kl`` | ``mse``)."""
    if augment:
        x = random_views(x, scale)
    with torch.no_grad():
        teacher_logits = []
        for t in teachers:
            t.to(x.device).eval()
            teacher_logits.append(t(x).float())
    return projector_loss(projector(x), teacher_logits, y, kind=kind, temperature=temperature, ce_weight=ce_weight)
