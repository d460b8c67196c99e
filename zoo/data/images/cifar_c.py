"""Corrupted-image datasets in the released CIFAR-10-C / CIFAR-100-C ``.npy`` layout (Hendrycks & Dietterich 2019).

Layout of a ``-C`` directory (zenodo 2535967 / 3555552, and what ``tools/make_corrupted.py`` writes)::

    <root>/<corruption>.npy   uint8 (5·N, H, W, 3): severities 1..5 stacked, N images each, in the clean order
    <root>/labels.npy         uint8/int (5·N,): the labels, repeated 5 times

Severity ``s`` of a corruption is rows ``[(s-1)·N, s·N)``; ``num_examples`` keeps the first ones of that block.
``N`` is ``len(labels) // 5`` (10,000 for CIFAR).

Also here: :class:`ArrayImageDataset` (uint8 HWC arrays as ``(C, H, W)`` float tensors) and
:func:`images_as_uint8_rgb` (any image dataset -> uint8 RGB arrays of one size, e.g. MNIST padded to 32×32).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from zoo.data.images.corruptions import CORRUPTIONS, corrupt
from zoo.data.registry import register_dataset

__all__ = ["CorruptedImages", "ArrayImageDataset", "images_as_uint8_rgb", "write_corrupted", "load_corruption"]


class ArrayImageDataset(Dataset):
    """Items ``(image (C, H, W) float32 in [0, 1], label int)`` from ``images`` uint8 ``(N, H, W, C)`` and
    ``labels (N,)``; optional ``domains (N,)`` ints are returned as a third item (mixed-domain streams)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, domains: np.ndarray | None = None,
                 classes: Sequence[str] | None = None):
        if images.ndim != 4 or images.dtype != np.uint8:
            raise ValueError(f"ArrayImageDataset expects uint8 images (N, H, W, C), got {images.dtype} {images.shape}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = np.asarray(labels).astype(np.int64)
        self.domains = None if domains is None else np.asarray(domains).astype(np.int64)
        self.classes = list(classes) if classes is not None else [str(i) for i in range(int(self.labels.max()) + 1)]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        x = torch.from_numpy(np.ascontiguousarray(self.images[i])).permute(2, 0, 1).float().div_(255.0)
        if self.domains is None:
            return x, int(self.labels[i])
        return x, int(self.labels[i]), int(self.domains[i])


def load_corruption(root: str | Path, corruption: str, severity: int = 5,
                    num_examples: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 (n, H, W, 3), labels int64 (n,))`` of one corruption and severity from a ``-C`` directory."""
    root = Path(root)
    img_path, lab_path = root / f"{corruption}.npy", root / "labels.npy"
    for p in (img_path, lab_path):
        if not p.is_file():
            raise FileNotFoundError(
                f"{p} not found: a CIFAR-10-C style directory holds <corruption>.npy and labels.npy (download "
                "CIFAR-10-C from zenodo record 2535967, or write one with tools/make_corrupted.py)")
    if not 1 <= int(severity) <= 5:
        raise ValueError(f"severity must be in 1..5, got {severity!r}")
    labels = np.load(lab_path)
    images = np.load(img_path, mmap_mode="r")
    if len(images) != len(labels) or len(labels) % 5:
        raise ValueError(f"{img_path}: {len(images)} images and {len(labels)} labels; expected 5 severities × N "
                         "images with one label each")
    n = len(labels) // 5
    k = n if num_examples is None else min(int(num_examples), n)
    lo = (int(severity) - 1) * n
    return np.array(images[lo:lo + k]), labels[lo:lo + k].astype(np.int64)  # a writable copy


class CorruptedImages(ArrayImageDataset):
    """One corruption at one severity of a ``-C`` directory (``split`` = the corruption name, e.g.
    ``"gaussian_noise"``; ``severity`` 1-5; ``num_examples`` the first ones only)."""

    def __init__(self, root: str | Path, split: str = "gaussian_noise", severity: int = 5,
                 num_examples: int | None = None, classes: Sequence[str] | None = None):
        if root is None:
            raise ValueError("the corrupted-image datasets need data.root (the -C directory)")
        images, labels = load_corruption(root, split, severity, num_examples)
        super().__init__(images, labels, classes=classes)
        self.root, self.split, self.severity = Path(root), split, severity


@register_dataset("cifar10_c")
def cifar10_c(root: str | None = None, split: str = "gaussian_noise", severity: int = 5,
              num_examples: int | None = None) -> CorruptedImages:
    """CIFAR-10-C (or any directory in its layout, e.g. MNIST-C written by ``tools/make_corrupted.py``)."""
    return CorruptedImages(root, split, severity, num_examples)


@register_dataset("cifar100_c")
def cifar100_c(root: str | None = None, split: str = "gaussian_noise", severity: int = 5,
               num_examples: int | None = None) -> CorruptedImages:
    """CIFAR-100-C (same layout, 100 classes)."""
    return CorruptedImages(root, split, severity, num_examples, classes=[str(i) for i in range(100)])


def images_as_uint8_rgb(dataset: Dataset, size: int | None = 32) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 (N, size, size, 3), labels (N,))`` from a dataset of ``(image (C, H, W) float [0, 1], label)``:
    grey images are replicated to RGB; smaller images are zero-padded centrally to ``size`` (MNIST 28 -> 32, no
    resampling), larger ones are rejected (resize them first)."""
    xs, ys = [], []
    for i in range(len(dataset)):
        x, y = dataset[i][:2]
        x = torch.as_tensor(x)
        if x.dim() == 2:
            x = x[None]
        if x.shape[0] == 1:
            x = x.expand(3, -1, -1)
        if size is not None and tuple(x.shape[1:]) != (size, size):
            h, w = x.shape[1:]
            if h > size or w > size:
                raise ValueError(f"image {i} is {h}×{w}, larger than size={size}; resize the dataset first")
            top, left = (size - h) // 2, (size - w) // 2
            x = torch.nn.functional.pad(x, (left, size - w - left, top, size - h - top))
        xs.append((x.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).numpy())
        ys.append(int(y))
    return np.stack(xs), np.asarray(ys, dtype=np.int64)


def write_corrupted(images: np.ndarray, labels: np.ndarray, out_dir: str | Path,
                    corruptions: Sequence[str] = CORRUPTIONS, severities: Sequence[int] = (1, 2, 3, 4, 5),
                    seed: int = 0, progress: Callable[[str], None] | None = None) -> Path:
    """Write ``<out_dir>/<corruption>.npy`` (uint8 ``(5·N, H, W, 3)``) and ``labels.npy`` in the released layout.

    Severities not in ``severities`` are left as the clean images (the layout always has 5 blocks). Randomness:
    one ``numpy`` generator per (corruption, severity), seeded from ``(seed, corruption index, severity)``, used
    image after image in order, so a file is reproducible and independent of which other corruptions are written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n = len(images)
    for name in corruptions:
        if name not in CORRUPTIONS:
            raise KeyError(f"unknown corruption '{name}'; choose from {', '.join(CORRUPTIONS)}")
        block = np.empty((5 * n, *images.shape[1:3], 3), dtype=np.uint8)
        for s in range(1, 6):
            if s not in severities:
                block[(s - 1) * n:s * n] = images if images.shape[-1] == 3 else np.repeat(images, 3, -1)
                continue
            rng = np.random.default_rng([seed, CORRUPTIONS.index(name), s])
            for i in range(n):
                block[(s - 1) * n + i] = corrupt(images[i], name, s, rng)
        tmp = out / f"{name}.tmp.npy"
        np.save(tmp, block)
        tmp.replace(out / f"{name}.npy")
        if progress is not None:
            progress(name)
    np.save(out / "labels.npy", np.tile(np.asarray(labels).astype(np.uint8), 5))
    return out
