"""The label side of dataset distillation: the label kinds a student can learn from, and FKD-style stored soft
labels.

* ``hard`` -- cross-entropy on the class of each distilled image;
* ``stored`` -- SRe2L / RDED's FKD-style relabelling: before training, the teacher labels every augmented view of
  every epoch (``epochs x N x K`` logits, stored in one of :data:`LABEL_DTYPES`), and the crop of each view is
  stored too (:func:`generate_soft_labels`); the student replays those views with those labels;
* ``stored_equal`` -- stored soft labels cut to the bytes the projector side ships (projector + encoder): the teacher
  labels the views of only the first ``E`` epochs (:func:`epochs_within_bytes`), the views are regenerated from
  their seed (0 bytes: a pure function of ``(seed, epoch, sample)``), and the student cycles through those ``E``
  epochs -- the comparison at equal label-side bytes;
* ``projector`` -- HeLlO: a stored low-rank projector labels each view on the fly.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from zoo.distill.logits import batched_logits
from zoo.distill.views import apply_views, view_params

__all__ = ["LABEL_KINDS", "SOFT_LABEL_KINDS", "LABEL_DTYPES", "generate_soft_labels", "epochs_within_bytes"]

LABEL_KINDS = ("hard", "stored", "stored_equal", "projector")
#: the kinds that learn from soft labels (a KL term, plus a cross-entropy weight chosen on validation)
SOFT_LABEL_KINDS = ("stored", "stored_equal", "projector")
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


def epochs_within_bytes(budget_bytes: int, num_images: int, num_classes: int, dtype: str = "float16",
                        header_bytes: int = 256) -> int:
    """How many epochs of stored soft labels (``E x N x K`` numbers of ``dtype``, one safetensors file whose header
    takes at most ``header_bytes``) fit in ``budget_bytes``; at least 1 (one epoch is the least a stored-label
    student can have; the caller reports the actual bytes)."""
    per_epoch = num_images * num_classes * LABEL_DTYPES[dtype].itemsize
    return max(1, (int(budget_bytes) - header_bytes) // per_epoch)
