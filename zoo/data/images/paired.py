"""Paired (low-quality, ground-truth) image datasets for restoration.

* :class:`DegradedPatches` -- random patches cropped from clean images and degraded on the fly (PROD or one
  degradation): pre-training and few-shot adaptation data. Item ``i`` is a pure function of ``(seed, i)``.
* :class:`DegradedImages` -- whole clean images, each degraded once with a fixed per-image seed: evaluation sets.
* :class:`PairedFolder` -- real pairs on disk, ``root/lq/<name>`` and ``root/gt/<name>`` (SIDD-style), optionally
  cropped to random patches.

Items are ``{"lq": (3, H, W) float32 in [0, 1], "gt": (3, H, W) float32 in [0, 1], "name": str}``.
Registered datasets: ``degraded_patches``, ``degraded_images``, ``paired_folder``; their ``root`` is one folder or
a list of folders of clean images, each optionally sliced (``"McMaster[:6],Set5"``; ``None``: the sample data's
``images/McMaster``), and ``split`` selects files by a slice over the whole list: ``"all"``, ``"all[8:]"``,
``"[:8]"``.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from zoo.data.images.degradations import PROD, SingleDegradation
from zoo.data.registry import register_dataset

__all__ = ["IMAGE_EXTENSIONS", "load_rgb", "list_images", "select_split", "make_degradation", "random_patch",
           "DegradedPatches", "DegradedImages", "PairedFolder", "root_files",
           "collate_pairs", "collate_listed"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as RGB float32 ``(H, W, 3)`` in [0, 1] (grey images are replicated to 3 channels)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), np.float32) / 255.0


def list_images(roots: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Image files (sorted by name) in each folder of ``roots``, folders in the given order."""
    roots = [roots] if isinstance(roots, (str, os.PathLike)) else list(roots)
    out: list[Path] = []
    for r in roots:
        r = Path(r).expanduser()
        if not r.is_dir():
            raise FileNotFoundError(f"image folder not found: {r} (config key data.root)")
        files = sorted((p for p in r.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS), key=_natural_key)
        if not files:
            raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {r}")
        out += files
    return out


def _natural_key(p: Path):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]


def select_split(items: Sequence, split: str) -> list:
    """``items`` selected by ``split``: ``"all"`` / ``"train"`` / ``"test"`` (everything) optionally followed by a
    slice ``[a:b]``, or a bare slice ``"[a:b]"`` (deterministic: sorted order, no shuffling)."""
    m = re.fullmatch(r"(all|train|test|val)?(?:\[(-?\d*):(-?\d*)\])?", split.strip())
    if not m:
        raise ValueError(f"bad split {split!r}; use 'all', 'all[:8]', '[8:]' (a slice over the sorted files)")
    a = int(m.group(2)) if m.group(2) else None
    b = int(m.group(3)) if m.group(3) else None
    out = list(items)[a:b]
    if not out:
        raise ValueError(f"split {split!r} selects no image out of {len(items)}")
    return out


def make_degradation(degradation: str | Callable = "prod", max_degradations: int = 3,
                     pool: Sequence[str] | None = None) -> Callable:
    """``"prod"`` -> :class:`PROD`; a degradation name -> :class:`SingleDegradation`; a callable is kept."""
    if callable(degradation):
        return degradation
    if degradation == "prod":
        return PROD(max_degradations=max_degradations, pool=pool)
    return SingleDegradation(degradation)


def random_patch(img: np.ndarray, size: int, rng: np.random.Generator, augment: bool = True) -> np.ndarray:
    """A random ``(size, size, 3)`` crop (reflect-padded if the image is smaller), with a random flip / 90° rotation
    when ``augment``."""
    h, w = img.shape[:2]
    if h < size or w < size:
        img = np.pad(img, ((0, max(0, size - h)), (0, max(0, size - w)), (0, 0)), mode="reflect")
        h, w = img.shape[:2]
    y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
    p = img[y:y + size, x:x + size]
    if augment:
        if rng.random() < 0.5:
            p = p[:, ::-1]
        p = np.rot90(p, int(rng.integers(4)))
    return np.ascontiguousarray(p)


def _chw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))).float()


def _as_images(images: Sequence[np.ndarray | str | os.PathLike]) -> tuple[list[np.ndarray], list[str]]:
    arrs, names = [], []
    for i, im in enumerate(images):
        if isinstance(im, np.ndarray):
            arr = im.astype(np.float32) / (255.0 if im.dtype == np.uint8 else 1.0)
            if arr.ndim == 2:
                arr = np.repeat(arr[..., None], 3, axis=2)
            arrs.append(arr[..., :3].astype(np.float32))
            names.append(f"image{i}")
        else:
            arrs.append(load_rgb(im))
            names.append(Path(im).stem)
    if not arrs:
        raise ValueError("no images given")
    return arrs, names


class DegradedPatches(Dataset):
    """``num_samples`` random patches of the clean ``images``, degraded on the fly.

    Args:
        images: clean images (paths, or arrays ``(H, W[, 3])`` uint8 / float in [0, 1]).
        patch_size: side of the square patches.
        degradation: ``(img, rng) -> (lq, names)`` (e.g. :class:`PROD`) or a name for :func:`make_degradation`.
        num_samples: dataset length (each index is a different patch).
        seed: item ``i`` uses ``numpy.random.default_rng([seed, i])``: the same index gives the same pair.
        augment: random flips / rotations.
    """

    def __init__(self, images: Sequence, patch_size: int = 64, degradation: str | Callable = "prod",
                 num_samples: int = 1000, seed: int = 0, augment: bool = True, max_degradations: int = 3):
        self.images, self.names = _as_images(images)
        self.patch_size, self.num_samples, self.seed = int(patch_size), int(num_samples), int(seed)
        self.augment = augment
        self.degradation = make_degradation(degradation, max_degradations)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.num_samples:
            raise IndexError(f"index {i} out of range for {self.num_samples} patches")
        rng = np.random.default_rng([self.seed, int(i)])
        k = int(rng.integers(len(self.images)))
        gt = random_patch(self.images[k], self.patch_size, rng, self.augment)
        lq, applied = self.degradation(gt, rng)
        return {"lq": _chw(lq), "gt": _chw(gt), "name": f"{self.names[k]}:{'+'.join(applied)}"}


class DegradedImages(Dataset):
    """Whole clean images, image ``i`` degraded with ``default_rng([seed, i])`` (a fixed evaluation set).
    ``crop_multiple``: crop each image to a multiple of this (e.g. 8), top-left anchored (0: keep sizes)."""

    def __init__(self, images: Sequence, degradation: str | Callable = "prod", seed: int = 0,
                 max_degradations: int = 3, crop_multiple: int = 0, max_side: int = 0):
        self.images, self.names = _as_images(images)
        if max_side:
            self.images = [im[:max_side, :max_side] for im in self.images]
        if crop_multiple:
            m = int(crop_multiple)
            self.images = [im[:im.shape[0] // m * m, :im.shape[1] // m * m] for im in self.images]
        self.degradation = make_degradation(degradation, max_degradations)
        self.seed = int(seed)
        self._cache: dict[int, dict] = {}

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        if i not in self._cache:
            lq, applied = self.degradation(self.images[i], np.random.default_rng([self.seed, int(i)]))
            self._cache[i] = {"lq": _chw(lq), "gt": _chw(self.images[i]), "name": self.names[i]}
        return self._cache[i]


class PairedFolder(Dataset):
    """Real pairs: ``root/lq/<name>`` and ``root/gt/<name>`` with the same file names (SIDD-style folders).

    ``patch_size``: random aligned crops of that size (training; item ``i`` seeded by ``(seed, i, epoch)`` with
    :meth:`set_epoch`); None: whole images. Raises ``FileNotFoundError`` naming the folder or the unmatched files.
    """

    def __init__(self, root: str | os.PathLike, patch_size: int | None = None, seed: int = 0, augment: bool = True,
                 split: str = "all"):
        root = Path(root).expanduser()
        lq_dir, gt_dir = root / "lq", root / "gt"
        for d in (lq_dir, gt_dir):
            if not d.is_dir():
                raise FileNotFoundError(f"paired folder needs {d} (layout: root/lq/<name>, root/gt/<name>)")
        lq = {p.name: p for p in list_images(lq_dir)}
        gt = {p.name: p for p in list_images(gt_dir)}
        if set(lq) != set(gt):
            only = sorted(set(lq) ^ set(gt))[:10]
            raise FileNotFoundError(f"{root}: lq/ and gt/ must hold the same file names; unmatched: {only}")
        self.names = select_split(sorted(lq, key=lambda n: _natural_key(Path(n))), split)
        self.lq, self.gt = lq, gt
        self.patch_size, self.seed, self.augment, self.epoch = patch_size, int(seed), augment, 0

    def set_epoch(self, epoch: int) -> None:
        """Change the random crops (training)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> dict:
        name = self.names[i]
        lq, gt = load_rgb(self.lq[name]), load_rgb(self.gt[name])
        if lq.shape != gt.shape:
            raise ValueError(f"{name}: lq {lq.shape} and gt {gt.shape} differ in size")
        if self.patch_size:
            rng = np.random.default_rng([self.seed, int(i), self.epoch])
            both = random_patch(np.concatenate([lq, gt], axis=2), self.patch_size, rng, False)
            if self.augment:
                if rng.random() < 0.5:
                    both = both[:, ::-1]
                both = np.ascontiguousarray(np.rot90(both, int(rng.integers(4))))
            lq, gt = both[..., :3], both[..., 3:]
        return {"lq": _chw(lq), "gt": _chw(gt), "name": Path(name).stem}


def root_files(root) -> list[Path]:
    """Image files of ``root``: a folder, a list of folders or ``"a,b"``; each entry may end in a slice of its
    sorted files, ``".../McMaster[:6]"``. ``None``: the sample data's ``images/McMaster``."""
    if root is None:
        from zoo.data.paths import data_dir

        root = [data_dir("images", "McMaster")]
    elif isinstance(root, str) and "," in root:
        root = [r.strip() for r in root.split(",") if r.strip()]
    elif not isinstance(root, (list, tuple)):
        root = [root]
    files: list[Path] = []
    for entry in root:
        m = re.fullmatch(r"(.*?)(\[-?\d*:-?\d*\])", str(entry))
        folder, piece = (m.group(1), m.group(2)) if m else (str(entry), None)
        found = list_images(folder)
        files += select_split(found, piece) if piece else found
    return files


@register_dataset("degraded_patches")
def degraded_patches(root=None, split: str = "all", **kwargs) -> DegradedPatches:
    """Patches of the clean images under ``root`` (folders, comma-separated or a list), degraded on the fly."""
    return DegradedPatches(select_split(root_files(root), split), **kwargs)


@register_dataset("degraded_images")
def degraded_images(root=None, split: str = "all", **kwargs) -> DegradedImages:
    """Whole clean images under ``root``, each degraded once (evaluation)."""
    return DegradedImages(select_split(root_files(root), split), **kwargs)


@register_dataset("paired_folder")
def paired_folder(root=None, split: str = "all", **kwargs) -> PairedFolder:
    """Real pairs in ``root/lq`` and ``root/gt``."""
    if root is None:
        raise ValueError("paired_folder needs root= a folder holding lq/ and gt/ (config key data.root)")
    return PairedFolder(root, split=split, **kwargs)


def collate_pairs(items: list[dict]) -> dict[str, Any]:
    """A training batch of pairs of one size: ``lq``, ``gt`` ``(B, C, H, W)`` and their names."""
    return {"lq": torch.stack([i["lq"] for i in items]), "gt": torch.stack([i["gt"] for i in items]),
            "name": [i["name"] for i in items]}


def collate_listed(items: list[dict]) -> dict[str, Any]:
    """An evaluation batch of whole images: ``lq``, ``gt`` lists of ``(C, H, W)`` images (sizes may differ) and
    their names."""
    return {"lq": [i["lq"] for i in items], "gt": [i["gt"] for i in items], "name": [i["name"] for i in items]}
