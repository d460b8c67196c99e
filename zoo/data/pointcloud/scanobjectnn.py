"""ScanObjectNN (real scanned objects, 15 classes) from the official h5 files.

Variants and files (under ``root`` or ``root/h5_files``, as in the official download):

======================  ==========================================================================  ===========
variant                 files                                                                       train/test
======================  ==========================================================================  ===========
``obj_bg``              ``main_split/{training,test}_objectdataset.h5``                             2309 / 581
``obj_only``            ``main_split_nobg/{training,test}_objectdataset.h5``                        2309 / 581
``pb_t50_rs`` (hardest) ``main_split/{training,test}_objectdataset_augmentedrot_scale75.h5``        11416 / 2882
======================  ==========================================================================  ===========

Each file has ``data`` (n, 2048, 3) float32, ``label`` (n,) and ``mask`` (n, 2048; -1 = background). Labels
follow the official ``shape_names_ext.txt`` order (``SCANOBJECTNN_CLASSES``). Like PointMamba, clouds are not
re-normalised (``normalize=False``) and all 2048 points are returned by default.

Frame: the h5 files are in the standard frame (y up, ``zoo.data.pointcloud.frames``): the official
``evaluate_real_trained_on_synthetic.py`` feeds them unchanged to models trained on ModelNet40's
``modelnet40_ply_hdf5_2048``, and PointMamba / PoinTramba augment them with a rotation about y (``PointcloudRotate``).
``frame=`` declares another frame for re-exported files; items are converted to the standard one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from zoo.data.pointcloud._common import (
    PointCloudClassification,
    candidate_dirs,
    check_split,
    dataset_not_found,
    read_h5_arrays,
)
from zoo.data.registry import register_dataset

__all__ = [
    "SCANOBJECTNN_CLASSES",
    "VARIANTS",
    "ScanObjectNN",
    "ScanObjectNNHardest",
    "ScanObjectNNObjBg",
    "ScanObjectNNObjOnly",
]

SCANOBJECTNN_CLASSES = [
    "bag", "bin", "box", "cabinet", "chair", "desk", "display", "door", "shelf", "table",
    "bed", "pillow", "sink", "sofa", "toilet",
]  # fmt: skip

VARIANTS = {
    "obj_bg": ("main_split", ""),
    "obj_only": ("main_split_nobg", ""),
    "pb_t50_rs": ("main_split", "_augmentedrot_scale75"),
}
_ALIASES = {"objectdataset": "obj_bg", "hardest": "pb_t50_rs", "objbg": "obj_bg", "objonly": "obj_only"}
_SPLIT_WORD = {"train": "training", "test": "test"}
_WHERE = (
    "  - https://hkust-vgd.github.io/scanobjectnn/ (request form; the download is h5_files.zip with main_split/ "
    "and main_split_nobg/)"
)


def _variant(name: str) -> str:
    key = name.lower().replace("-", "_")
    key = _ALIASES.get(key.replace("_", ""), _ALIASES.get(key, key))
    if key not in VARIANTS:
        raise ValueError(f"ScanObjectNN variant must be one of {sorted(VARIANTS)} (or 'hardest'), got {name!r}")
    return key


def scanobjectnn_file(variant: str, split: str) -> str:
    """Relative path of the h5 file of ``variant`` and ``split``, e.g. ``main_split_nobg/test_objectdataset.h5``."""
    folder, suffix = VARIANTS[_variant(variant)]
    return f"{folder}/{_SPLIT_WORD[check_split(split)]}_objectdataset{suffix}.h5"


@register_dataset("scanobjectnn")
class ScanObjectNN(PointCloudClassification):
    """ScanObjectNN classification: items ``(points (num_points, 3) float32 tensor, label int)``.

    Args:
        root: folder holding ``main_split/`` and ``main_split_nobg/`` (or their parent ``h5_files/``);
            ``None``: ``$ZOO_DATA/ScanObjectNN`` or ``../shared/data/ScanObjectNN``.
        split: ``"train"`` or ``"test"``.
        num_points: points per item (``None`` or 2048: all).
        transform: callable on the ``(num_points, 3)`` tensor.
        variant: ``"obj_bg"``, ``"obj_only"`` or ``"pb_t50_rs"`` (alias ``"hardest"``).
        normalize: centre/scale each cloud into the unit sphere (off, as in the official code).
        sampling: ``"first"``, ``"random"`` or ``"fps"`` when ``num_points < 2048``.
        return_mask: also return the per-point foreground mask: items become ``(points, label, mask (P,))``
            (only with ``sampling="first"``; the mask is not transformed).
        drop_nonfinite: drop clouds with NaN/inf coordinates (count logged on the ``"zoo"`` logger, samples
            listed in ``dropped_nonfinite``) instead of raising an error that names the file and sample.
        frame: the frame of the files (``None``: ``"standard"``, the official files' own).

    A corrupt or truncated h5 file is an ``OSError`` that names it and says to download it again.
    """

    def __init__(
        self,
        root: str | Path | None = None,
        split: str = "train",
        num_points: int | None = 2048,
        transform: Callable | None = None,
        variant: str = "obj_bg",
        normalize: bool = False,
        sampling: str = "first",
        return_mask: bool = False,
        drop_nonfinite: bool = False,
        frame: str | None = None,
    ):
        super().__init__(num_points, transform, False, normalize, sampling, drop_nonfinite)
        self.set_source_frame(frame if frame is not None else "standard")
        self.split = check_split(split)
        self.variant = _variant(variant)
        self.return_mask = return_mask
        if return_mask and sampling != "first":
            raise ValueError("return_mask=True needs sampling='first' (the mask rows must match the points)")
        rel = scanobjectnn_file(self.variant, split)
        looked = candidate_dirs(root, ["h5_files", "ScanObjectNN", "ScanObjectNN/h5_files", "scanobjectnn"])
        path = next((d / rel for d in looked if (d / rel).is_file()), None)
        if path is None:
            expected = [f"{v}: {scanobjectnn_file(v, split)}" for v in VARIANTS]
            raise dataset_not_found(f"ScanObjectNN {self.variant}", split, looked, expected, _WHERE)
        h = read_h5_arrays(path, ["data", "label"], optional=["mask"] if return_mask else [], where=_WHERE)
        self._array = h["data"].astype(np.float32)
        self.labels = h["label"].reshape(-1).astype(np.int64)
        self.masks = h.get("mask")
        if return_mask and self.masks is None:
            raise KeyError(f"{path} has no 'mask' dataset; use return_mask=False")
        self.path, self.root = path, path.parent.parent
        self._blocks = [(path, 0, len(self._array))]
        self.classes = list(SCANOBJECTNN_CLASSES)
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.classes)):
            raise ValueError(f"{path}: labels outside [0, 15): min {self.labels.min()} max {self.labels.max()}")
        self._check_clouds()

    def __getitem__(self, index: int):
        points, label = super().__getitem__(index)
        if self.return_mask:
            return points, label, torch.as_tensor(self.masks[self._row(index)][: points.shape[0]])
        return points, label

    def extra_repr(self) -> str:
        return f", variant={self.variant!r}, file='{self.path}'"


def _fixed(variant: str, title: str) -> type:
    """A ScanObjectNN subclass with ``variant`` fixed, so configs can name it directly."""

    def __init__(
        self,
        root: str | Path | None = None,
        split: str = "train",
        num_points: int | None = 2048,
        transform: Callable | None = None,
        normalize: bool = False,
        sampling: str = "first",
        return_mask: bool = False,
        drop_nonfinite: bool = False,
        frame: str | None = None,
    ):
        ScanObjectNN.__init__(
            self, root, split, num_points, transform, variant, normalize, sampling, return_mask, drop_nonfinite, frame
        )

    doc = f"ScanObjectNN {title} (``variant={variant!r}``); same arguments as ``ScanObjectNN`` without ``variant``."
    return type(f"ScanObjectNN_{variant}", (ScanObjectNN,), {"__init__": __init__, "__doc__": doc})


ScanObjectNNObjBg = register_dataset("scanobjectnn_obj_bg")(_fixed("obj_bg", "OBJ_BG"))
ScanObjectNNObjOnly = register_dataset("scanobjectnn_obj_only")(_fixed("obj_only", "OBJ_ONLY"))
ScanObjectNNHardest = register_dataset("scanobjectnn_pb_t50_rs")(_fixed("pb_t50_rs", "PB_T50_RS (hardest)"))
