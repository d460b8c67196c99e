"""Image datasets for distillation: the real data (a registered dataset or an ``ImageFolder``), the targets and
stacked images of a dataset, and :class:`IndexedImages`, a fixed tensor image set that also yields each sample's
index (so a student can look up the stored label / view of that sample)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch.utils.data import Dataset

__all__ = ["IndexedImages", "image_dataset", "image_size_kwargs", "dataset_targets", "stack_images"]


class IndexedImages(Dataset):
    """``(image (C, H, W) float32, label int, index int)`` over tensors ``images (N, C, H, W)``, ``labels (N,)``."""

    classes: list[str] = []

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: Sequence[str] = ()):
        if len(images) != len(labels):
            raise ValueError(f"IndexedImages: {len(images)} images but {len(labels)} labels")
        self.images, self.labels = images.float(), labels.long()
        self.classes = list(classes)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], int(self.labels[i]), i


def image_dataset(name: str, split: str, *, root: str | None = None, image_size: int = 224) -> Dataset:
    """A dataset of ``(image (C, H, W) float in [0, 1], label)``: a registered one (``mnist``, ``cifar10`` ...,
    ``imagefolder``: :func:`zoo.data.images.folder.image_folder`, resized and centre-cropped to ``image_size``)."""
    from zoo.data import build_dataset

    return build_dataset(name, root=root, split=split, **image_size_kwargs(name, image_size))


def image_size_kwargs(name: str, image_size: int) -> dict[str, int]:
    """The dataset arguments a distillation's ``data.image_size`` becomes: ``image_size`` for ``imagefolder`` only."""
    return {"image_size": image_size} if name == "imagefolder" else {}


def dataset_targets(ds: Dataset) -> torch.Tensor:
    """The labels ``(N,)`` int64 of a dataset: its ``targets`` attribute, else read sample by sample."""
    t = getattr(ds, "targets", None)
    if t is None:
        t = [ds[i][1] for i in range(len(ds))]
    return torch.as_tensor(t).long()


def stack_images(ds: Dataset, indices: Sequence[int]) -> torch.Tensor:
    """The images of samples ``indices`` of ``ds`` stacked: ``(len(indices), C, H, W)`` float32."""
    return torch.stack([ds[int(i)][0] for i in indices]).float()
