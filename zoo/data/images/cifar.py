"""CIFAR-10 / CIFAR-100 from the python-pickle archives as distributed (``cifar-10-python.tar.gz`` /
``cifar-100-python.tar.gz``, unpacked).

Layouts looked for under ``root`` (or ``root/cifar-10-batches-py`` / ``root/cifar-100-python``)::

    CIFAR-10:  data_batch_1 .. data_batch_5, test_batch, batches.meta   keys b"data" (N, 3072) uint8, b"labels"
    CIFAR-100: train, test, meta                                         keys b"data", b"fine_labels", b"coarse_labels"

``data`` rows are 1024 red, then 1024 green, then 1024 blue values of a 32×32 image (row-major). Items are
``(image (3, 32, 32) float32 in [0, 1], label)``, as the ``-C`` readers give (:mod:`zoo.data.images.cifar_c`), so
a source model trained on these evaluates on CIFAR-10-C unchanged. The pickles are read with
``encoding="bytes"``: they hold only numpy arrays, lists and bytes.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from zoo.data.images.cifar_c import ArrayImageDataset
from zoo.data.registry import register_dataset

__all__ = ["CIFAR", "read_cifar_batch", "cifar10", "cifar100"]

_LAYOUTS = {
    "cifar10": {"folder": "cifar-10-batches-py", "train": [f"data_batch_{i}" for i in range(1, 6)],
                "test": ["test_batch"], "meta": "batches.meta", "names": b"label_names"},
    "cifar100": {"folder": "cifar-100-python", "train": ["train"], "test": ["test"], "meta": "meta",
                 "names": b"fine_label_names"},
}


def read_cifar_batch(path: str | Path, label_key: bytes = b"labels") -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 (N, 32, 32, 3), labels int64 (N,))`` of one pickled CIFAR batch file.

    Raises ``ValueError`` naming the file when it is truncated, not a CIFAR batch, or lacks ``label_key``.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
    except (pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable CIFAR batch (truncated or corrupt? {exc}); download the archive "
                         "again from https://www.cs.toronto.edu/~kriz/cifar.html") from exc
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise ValueError(f"{path}: expected a CIFAR batch with b'data' and {label_key!r}, found {keys}")
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"{path}: b'data' has shape {data.shape}, expected (N, 3072)")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if len(labels) != len(images):
        raise ValueError(f"{path}: {len(images)} images but {len(labels)} labels")
    return np.ascontiguousarray(images), labels


class CIFAR(ArrayImageDataset):
    """CIFAR-10 (``variant="cifar10"``) or CIFAR-100 (``"cifar100"``, fine labels; ``coarse=True`` for the 20
    superclasses), split ``"train"`` (50,000) or ``"test"`` (10,000), from the python-pickle archive in ``root``."""

    def __init__(self, root: str | Path | None, split: str = "train", variant: str = "cifar10", coarse: bool = False):
        if variant not in _LAYOUTS:
            raise ValueError(f"variant must be one of {sorted(_LAYOUTS)}, got {variant!r}")
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        layout = _LAYOUTS[variant]
        if root is None:
            raise ValueError(f"{variant} needs data.root: the folder holding {layout['folder']}/ (or its files)")
        base = Path(root).expanduser()
        folder = next((d for d in (base / layout["folder"], base) if (d / layout[split][0]).is_file()), None)
        if folder is None:
            raise FileNotFoundError(
                f"{variant} ({split} split) not found: looked for {layout[split][0]} in {base / layout['folder']} and "
                f"{base}. Unpack {layout['folder'].replace('-batches-py', '-python')}.tar.gz from "
                "https://www.cs.toronto.edu/~kriz/cifar.html there, and pass data.root=<that folder>")
        label_key = b"coarse_labels" if coarse else (b"labels" if variant == "cifar10" else b"fine_labels")
        parts = [read_cifar_batch(folder / name, label_key) for name in layout[split]]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        super().__init__(images, labels, classes=self._class_names(folder / layout["meta"], layout, coarse, labels))
        self.root, self.split, self.variant = folder, split, variant

    @staticmethod
    def _class_names(meta: Path, layout: dict, coarse: bool, labels: np.ndarray) -> list[str]:
        key = b"coarse_label_names" if coarse else layout["names"]
        if meta.is_file():
            with open(meta, "rb") as f:
                names = pickle.load(f, encoding="bytes").get(key)
            if names:
                return [n.decode() if isinstance(n, bytes) else str(n) for n in names]
        return [str(i) for i in range(int(labels.max()) + 1)]


@register_dataset("cifar10")
def cifar10(root: str | None = None, split: str = "train") -> CIFAR:
    """CIFAR-10 from ``cifar-10-batches-py`` (python pickles)."""
    return CIFAR(root, split, "cifar10")


@register_dataset("cifar100")
def cifar100(root: str | None = None, split: str = "train", coarse: bool = False) -> CIFAR:
    """CIFAR-100 from ``cifar-100-python`` (python pickles); fine labels, or the 20 coarse ones."""
    return CIFAR(root, split, "cifar100", coarse=coarse)
