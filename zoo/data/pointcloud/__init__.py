"""Point-cloud datasets (ModelNet, ScanObjectNN, synthetic shapes) and their transforms.

Every reader returns clouds in the standard frame (y up, the community files' frame); ``frames`` holds the frame
names, the axis maps between formats and the checkpoint/data check.

Modules: ``io`` (PCD/PLY/OFF/txt readers and writers), ``frames``, ``mesh`` (surface sampling), ``modelnet``
(``modelnet40``, ``modelnet10``), ``scanobjectnn`` (``scanobjectnn``, ``scanobjectnn_obj_bg``, ...),
``transforms`` (``build_transforms``), ``voting`` (``predict_with_votes``). Names below are imported lazily,
so importing this package stays cheap.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "ModelNet40": "modelnet", "ModelNet10": "modelnet", "MODELNET40_CLASSES": "modelnet",
    "MODELNET10_CLASSES": "modelnet", "ScanObjectNN": "scanobjectnn", "SCANOBJECTNN_CLASSES": "scanobjectnn",
    "build_transforms": "transforms", "build_transform": "transforms", "list_transforms": "transforms",
    "predict_with_votes": "voting", "read_points": "io",
    "check_frame": "frames", "parse_frame": "frames", "to_standard": "frames",
}  # fmt: skip

__all__ = [  # noqa: RUF022  (grouped by module, like _LAZY)
    "MODELNET10_CLASSES", "MODELNET40_CLASSES", "ModelNet10", "ModelNet40", "SCANOBJECTNN_CLASSES", "ScanObjectNN",
    "build_transform", "build_transforms", "list_transforms", "predict_with_votes", "read_points",
    "check_frame", "parse_frame", "to_standard",
]  # fmt: skip


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
