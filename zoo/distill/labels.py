"""The label side of dataset distillation: the three label kinds a student can learn from, and FKD-style stored
soft labels.

* ``hard`` -- cross-entropy on the class of each distilled image;
* ``stored`` -- SRe2L / RDED's FKD-style relabelling: before training, the teacher labels every augmented view of
  every epoch (``epochs x N x K`` logits, stored in one of :data:`LABEL_DTYPES`), and the crop of each view is
  stored too (:func:`generate_soft_labels`); the student replays those views with those labels;
* ``projector`` -- HeLlO: a stored low-rank projector labels each view on the fly.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from zoo.distill.logits import batched_logits
from zoo.distill.views import apply_views, view_params

__all__ = ["LABEL_KINDS", "LABEL_DTYPES", "generate_soft_labels"]

LABEL_KINDS = ("hard", "stored", "projector")
#: the dtypes stored soft labels (and the projector) may be written in, by name
LABEL_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@torch.no_grad()
def generate_soft_labels(teacher: nn.Module, images: torch.Tensor, epochs: int, seed: int, *,
                         scale: Sequence[float] = (0.5, 1.0), dtype: str = "float16", batch_size: int = 256,
                         augment: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """FKD-style relabelling: the teacher's logits of every augmented view of every epoch.

    ``images (N, C, H, W)`` -> ``(labels (epochs, N, K) in dtype, views (epochs, N, 4) float16)``; view ``(e, i)`` is
    ``view_params(N, e, seed)[i]`` (what the student replays)."""
    labels, views = [], []
    for e in range(epochs):
        p = view_params(len(images), e, seed, scale)
        x = apply_views(images, p.to(images.device)) if augment else images
        labels.append(batched_logits(teacher, x, batch_size).to(LABEL_DTYPES[dtype]).cpu())
        views.append(p.half())
    return torch.stack(labels), torch.stack(views)
