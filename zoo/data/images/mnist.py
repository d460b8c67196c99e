"""MNIST from its original IDX files (gzipped or not), with deterministic slicing of a file set.

Files looked for under ``root`` (or ``root/raw``, or torchvision's ``root/MNIST/raw``)::

    train-images-idx3-ubyte[.gz]   train-labels-idx1-ubyte[.gz]   (60,000 digits)
    t10k-images-idx3-ubyte[.gz]    t10k-labels-idx1-ubyte[.gz]    (10,000 digits)

Splits: ``"train"``, ``"test"`` (alias ``"t10k"``), each optionally sliced Python-style by sample index, e.g.
``"test[:5000]"`` (the first half of t10k) and ``"test[5000:]"`` (the rest). The zoo uses this to train a source
model on one part of the t10k file and adapt/evaluate on the other, since the shared sample data only has t10k.
The same slice can be given as ``subset=(start, stop)``.
"""
from __future__ import annotations

import gzip
import re
import struct
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from zoo.data.registry import register_dataset

__all__ = ["MNIST", "read_idx", "write_idx", "parse_split", "find_mnist_files"]

# IDX type code -> big-endian numpy dtype (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT").
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_FILE_PREFIX = {"train": "train", "test": "t10k", "t10k": "t10k"}
_SPLIT_RE = re.compile(r"^\s*(?P<name>\w+)\s*(?:\[\s*(?P<start>-?\d*)\s*:\s*(?P<stop>-?\d*)\s*\])?\s*$")


# --------------------------------------------------------------------------------------------------------------
# IDX format
# --------------------------------------------------------------------------------------------------------------

def _open(path: Path):
    """Open ``path`` for binary reading, transparently gunzipping ``*.gz``."""
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally ``.gz``) into an array of its declared dtype and shape.

    Header: two zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32,
    0x0E float64), the number of dimensions, then one big-endian uint32 per dimension.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a truncated or corrupt ``.gz``, bad magic number, unknown type code, or a data size that does
            not match the header; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No such file: {path}")
    try:
        with _open(path) as f:
            raw = f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise ValueError(
            f"{path}: cannot decompress this gzip file; it is truncated or corrupt (an interrupted download?). "
            f"Delete it and download it again from https://yann.lecun.com/exdb/mnist/ (or a mirror).\n"
            f"({type(e).__name__}: {e})"
        ) from e
    if len(raw) < 4:
        raise ValueError(f"{path}: not an IDX file (only {len(raw)} bytes)")
    zero, code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or code not in _IDX_DTYPES:
        raise ValueError(
            f"{path}: bad IDX magic number 0x{int.from_bytes(raw[:4], 'big'):08X}; expected 0x0000TTDD with type code "
            f"TT in {[f'{c:02X}' for c in _IDX_DTYPES]} (e.g. 0x00000803 for MNIST images, 0x00000801 for labels). "
            "Is this an MNIST IDX file (not HTML from a failed download, not a double-gzipped file)?"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes, {ndim} dims declared)")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"{path}: IDX header declares shape {shape} of {dtype} ({expected} bytes) but the file holds "
            f"{len(raw) - header} data bytes; the file is truncated or corrupt."
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray) -> Path:
    """Write ``array`` as an IDX file (gzipped when ``path`` ends in ``.gz``); returns ``path``.

    The type code is taken from the array's dtype (uint8, int8, int16, int32, float32 or float64).
    """
    path = Path(path)
    array = np.asarray(array)
    codes = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_DTYPES.items()}
    native = array.dtype.newbyteorder("=")
    if native not in codes:
        raise TypeError(f"IDX cannot store dtype {array.dtype}; use one of {sorted(str(d) for d in codes)}")
    header = struct.pack(">HBB", 0, codes[native], array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(_IDX_DTYPES[codes[native]]).tobytes()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(data)
    return path


# --------------------------------------------------------------------------------------------------------------
# Split specs and file lookup
# --------------------------------------------------------------------------------------------------------------

def parse_split(split: str) -> tuple[str, slice]:
    """``"test[:5000]" -> ("t10k", slice(None, 5000))``; ``"train" -> ("train", slice(None))``.

    Raises:
        ValueError: unknown split name or malformed slice; the message shows valid examples.
    """
    m = _SPLIT_RE.match(split) if isinstance(split, str) else None
    if m is None or m.group("name") not in _FILE_PREFIX:
        raise ValueError(
            f"Bad MNIST split {split!r}: use 'train', 'test' (alias 't10k'), optionally sliced by sample index, "
            "e.g. 'test[:5000]', 'test[5000:]', 'train[-10000:]'."
        )
    start, stop = m.group("start"), m.group("stop")
    return _FILE_PREFIX[m.group("name")], slice(int(start) if start else None, int(stop) if stop else None)


def _candidate_dirs(root: Path) -> list[Path]:
    return [root, root / "raw", root / "MNIST" / "raw", root / "mnist"]


def find_mnist_files(root: str | Path, prefix: str) -> tuple[Path, Path]:
    """The ``(images, labels)`` IDX files for ``prefix`` (``"train"`` or ``"t10k"``) under ``root``.

    Each candidate folder (``root``, ``root/raw``, ``root/MNIST/raw``, ``root/mnist``) is searched for the raw
    file, then the ``.gz``; both files must be in the same folder.

    Raises:
        FileNotFoundError: listing the files expected and every folder searched.
    """
    root = Path(root).expanduser()
    names = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
    for d in _candidate_dirs(root):
        found = []
        for name in names:
            path = next((p for p in (d / name, d / f"{name}.gz") if p.is_file()), None)
            found.append(path)
        if all(found):
            return found[0], found[1]
    searched = "\n  ".join(str(d) for d in _candidate_dirs(root))
    raise FileNotFoundError(
        f"MNIST files not found: expected {names[0]}[.gz] and {names[1]}[.gz] in one of:\n  {searched}\n"
        "Download them from https://yann.lecun.com/exdb/mnist/ (or a mirror) into one of these folders, "
        "or pass root=<folder holding them>."
    )


def _default_root() -> Path:
    from zoo.data.paths import data_dir

    return data_dir("mnist")


# --------------------------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------------------------

@register_dataset("mnist")
class MNIST(Dataset):
    """MNIST handwritten digits read from the original IDX files.

    Args:
        root: folder holding the IDX files (also searched: ``root/raw``, ``root/MNIST/raw`` as torchvision lays them
            out, ``root/mnist``). ``None`` uses the sample-data folder (``$ZOO_DATA/mnist`` or ``../shared/data/mnist``).
        split: ``"train"`` (60k), ``"test"`` / ``"t10k"`` (10k), optionally sliced by sample index in file order:
            ``"test[:5000]"``, ``"test[5000:]"``. Slices are deterministic (no shuffling), so two slices that do
            not overlap never share a digit.
        transform: callable applied to the image: the ``(1, 28, 28)`` float32 tensor in [0, 1], or a PIL ``"L"``
            image when ``pil=True`` (for torchvision transforms that expect PIL).
        target_transform: callable applied to the ``int`` label.
        subset: ``(start, stop)`` sample-index slice, the same as ``split="test[start:stop]"``; either may be
            ``None``. Not combinable with a slice inside ``split``.
        pil: hand PIL images to ``transform`` instead of tensors.

    Items are ``(image, label)``: image ``(1, 28, 28)`` float32 in [0, 1] (or whatever ``transform`` returns),
    label an ``int`` in 0..9. ``data`` holds the selected images as a ``(S, 28, 28)`` uint8 tensor and
    ``targets`` the labels as ``(S,)`` int64, like torchvision's MNIST.

    Raises:
        FileNotFoundError: files missing (the message lists the files and folders tried).
        ValueError: malformed IDX file, image/label count mismatch, bad split or subset.
    """

    classes = [str(i) for i in range(10)]

    def __init__(
        self,
        root: str | Path | None = None,
        split: str = "train",
        transform: Callable[[Any], Any] | None = None,
        target_transform: Callable[[int], Any] | None = None,
        subset: tuple[int | None, int | None] | None = None,
        pil: bool = False,
    ):
        prefix, sl = parse_split(split)
        if subset is not None:
            if sl != slice(None):
                raise ValueError(f"Give the slice either in split ({split!r}) or as subset={subset}, not both.")
            if len(subset) != 2:
                raise ValueError(f"subset must be (start, stop), got {subset!r}")
            sl = slice(*subset)
        self.root = Path(root).expanduser() if root is not None else _default_root()
        self.split = split
        self.transform = transform
        self.target_transform = target_transform
        self.pil = pil

        self.image_file, self.label_file = find_mnist_files(self.root, prefix)
        images = read_idx(self.image_file)
        labels = read_idx(self.label_file)
        if images.ndim != 3 or images.dtype != np.uint8:
            raise ValueError(f"{self.image_file}: expected uint8 images of shape (N, 28, 28), got {images.dtype} {images.shape}")
        if labels.ndim != 1 or labels.dtype != np.uint8:
            raise ValueError(f"{self.label_file}: expected uint8 labels of shape (N,), got {labels.dtype} {labels.shape}")
        if len(images) != len(labels):
            raise ValueError(f"{self.image_file} holds {len(images)} images but {self.label_file} holds {len(labels)} labels")
        if labels.size and labels.max() > 9:
            raise ValueError(f"{self.label_file}: labels must be 0..9, found {int(labels.max())}")

        self.indices = np.arange(len(images))[sl]  # positions in the file, for provenance
        if len(self.indices) == 0:
            raise ValueError(f"MNIST split {split!r} (slice {sl}) selects no samples from {len(images)} in {self.image_file}")
        self.data = torch.from_numpy(images[sl].copy())
        self.targets = torch.from_numpy(labels[sl].astype(np.int64))

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        """``(image (1, 28, 28) float32 in [0, 1] or transform(image), label int or target_transform(label))``."""
        img = self.data[index]
        if self.pil:
            from PIL import Image

            img = Image.fromarray(img.numpy())  # 2-D uint8 -> mode "L"
        else:
            img = img.unsqueeze(0).float().div_(255.0)
        if self.transform is not None:
            img = self.transform(img)
        target = int(self.targets[index])
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target

    @property
    def num_classes(self) -> int:
        """Always 10."""
        return 10

    def __repr__(self) -> str:
        return f"MNIST(split={self.split!r}, samples={len(self)}, images={str(self.image_file)!r})"
