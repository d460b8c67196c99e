"""Tiny data in the real on-disk formats, for tests that must not depend on the shared data."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from zoo.data.images.mnist import write_idx


def fake_mnist(folder: Path, n: int = 40) -> Path:
    """MNIST's t10k IDX files in ``folder`` with ``n`` 28×28 'digits' (a bright vertical bar whose position
    encodes the label ``i % 10``), readable by :class:`zoo.data.images.mnist.MNIST`. Returns ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    labels = (np.arange(n) % 10).astype(np.uint8)
    images = np.zeros((n, 28, 28), np.uint8)
    for i, y in enumerate(labels):
        images[i, 4:24, 2 + 2 * y:5 + 2 * y] = 255
    write_idx(folder / "t10k-images-idx3-ubyte", images)
    write_idx(folder / "t10k-labels-idx1-ubyte", labels)
    return folder
