"""Shared pieces of the point-cloud datasets: where data lives, the one-time cache, the base dataset class."""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = [
    "ArrayCache",
    "PointCloudClassification",
    "candidate_dirs",
    "dataset_not_found",
    "default_data_root",
    "natural_sorted",
    "normalize_unit_sphere_np",
    "subsample",
]

SPLITS = ("train", "test")


def default_data_root() -> Path | None:
    """``$ZOO_DATA`` if set, else ``<repo>/../shared/data`` when it exists, else ``None``."""
    env = os.environ.get("ZOO_DATA")
    if env:
        return Path(env).expanduser()
    guess = Path(__file__).resolve().parents[3].parent / "shared" / "data"
    return guess if guess.is_dir() else None


def candidate_dirs(root: str | os.PathLike | None, subdirs: Sequence[str]) -> list[Path]:
    """Folders to search: ``root`` and ``root/<sub>``; with no root, ``<default data root>/<sub>``."""
    if root is not None:
        base = Path(root).expanduser()
        return [base] + [base / s for s in subdirs]
    data = default_data_root()
    return [data / s for s in subdirs] if data is not None else []


def natural_sorted(items: Sequence[str | Path]) -> list:
    """Sort names so that ``x_2`` comes before ``x_10``."""

    def key(s):
        return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(s))]

    return sorted(items, key=key)


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
    return split


def dataset_not_found(
    name: str, split: str, looked_in: Sequence[Path], expected: Sequence[str], where: str
) -> FileNotFoundError:
    """A ``FileNotFoundError`` that lists the folders searched, the files expected and where to download them."""
    looked = (
        "\n".join(f"  - {p}" for p in looked_in)
        or "  (nowhere: root=None and neither $ZOO_DATA nor ../shared/data exists)"
    )
    exp = "\n".join(f"  - {e}" for e in expected)
    return FileNotFoundError(
        f"{name} ({split} split) not found.\nLooked in:\n{looked}\nExpected one of these layouts:\n{exp}\n"
        f"Pass root=<folder that holds them> (or set $ZOO_DATA). Get the data from:\n{where}"
    )


# ----------------------------------------------------------------------------------------------------- cache
def _default_cache_dir() -> Path:
    env = os.environ.get("ZOO_CACHE")
    if env:
        return Path(env).expanduser() / "pointcloud"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "zoo" / "pointcloud"


class ArrayCache:
    """A one-time ``.npy`` cache of a stacked ``(S, P, C)`` float32 array plus labels, keyed by its parameters.

    The file name holds a hash of ``params`` (which include the source files' names, sizes and mtimes), so any
    change of parameters or data makes a new cache instead of reading a stale one. The array is memory-mapped on
    load (cheap, and shared between DataLoader workers). Writes go to a temporary file renamed into place.
    Default location: ``$ZOO_CACHE/pointcloud``, else ``~/.cache/zoo/pointcloud`` (never inside the data folder,
    which may be shared or read-only).
    """

    def __init__(self, stem: str, params: dict[str, Any], cache_dir: str | os.PathLike | None = None):
        digest = hashlib.sha1(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:16]
        self.dir = Path(cache_dir).expanduser() if cache_dir is not None else _default_cache_dir()
        self.array_path = self.dir / f"{stem}_{digest}.npy"
        self.meta_path = self.dir / f"{stem}_{digest}.json"
        self.params = params

    def load(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(points (S, P, C) memmap, labels (S,))`` or ``None`` when there is no complete cache."""
        if not (self.array_path.is_file() and self.meta_path.is_file()):
            return None
        meta = json.loads(self.meta_path.read_text())
        return np.load(self.array_path, mmap_mode="r"), np.asarray(meta["labels"], dtype=np.int64)

    def save(self, points: np.ndarray, labels: np.ndarray) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        for path, write in (
            (self.array_path, lambda f: np.save(f, np.ascontiguousarray(points, dtype=np.float32))),
            (
                self.meta_path,
                lambda f: f.write(json.dumps({"labels": [int(x) for x in labels], "params": self.params}).encode()),
            ),
        ):
            fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=path.name, suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as f:
                    write(f)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise


def file_signature(paths: Sequence[Path], base: Path) -> list:
    """``[(relative path, size, mtime_ns)]`` of the files: part of a cache key."""
    out = []
    for p in paths:
        st = p.stat()
        out.append((p.relative_to(base).as_posix(), st.st_size, st.st_mtime_ns))
    return out


# ----------------------------------------------------------------------------------------------------- samples
def normalize_unit_sphere_np(xyz: np.ndarray) -> np.ndarray:
    """Centre ``(N, 3)`` on its centroid and scale into the unit sphere (PointMamba's ``pc_normalize``)."""
    xyz = xyz - xyz.mean(axis=0)
    m = float(np.sqrt((xyz**2).sum(axis=1)).max())
    return xyz / m if m > 0 else xyz


def subsample(points: torch.Tensor, num_points: int | None, method: str) -> torch.Tensor:
    """``(P, C) -> (num_points, C)``: ``"first"`` rows, a ``"random"`` subset (torch RNG) or ``"fps"`` (start 0)."""
    P = points.shape[0]
    if num_points is None or num_points == P:
        return points
    if num_points > P:
        raise ValueError(
            f"num_points={num_points} but the stored clouds have {P} points; use num_points <= {P} "
            f"(or num_points=None), or add the 'resample' transform to pad."
        )
    if method == "first":
        return points[:num_points]
    if method == "random":
        return points[torch.randperm(P)[:num_points]]
    if method == "fps":
        from zoo.ops.pointcloud import furthest_point_sample

        return points[furthest_point_sample(points[None, :, :3], num_points)[0]]
    raise ValueError(f"sampling must be 'first', 'random' or 'fps', got {method!r}")


class PointCloudClassification(Dataset):
    """Base of the classification datasets: items are ``(points (num_points, C) float32 tensor, label int)``.

    Subclasses fill ``classes`` (names, index = label), ``labels`` ``(S,)`` int64, and either ``_array``
    (``(S, P, C)`` array, possibly memory-mapped, or a list of ``(P, C)`` arrays) or ``_loader`` + ``_paths``
    (read one file per item).
    """

    classes: list[str]
    labels: np.ndarray

    def __init__(
        self,
        num_points: int | None,
        transform: Callable | None,
        use_normals: bool,
        normalize: bool,
        sampling: str,
    ):
        if sampling not in ("first", "random", "fps"):
            raise ValueError(f"sampling must be 'first', 'random' or 'fps', got {sampling!r}")
        if num_points is not None and num_points < 1:
            raise ValueError(f"num_points must be >= 1 or None, got {num_points}")
        self.num_points = num_points
        self.transform = transform
        self.use_normals = use_normals
        self.normalize = normalize
        self.sampling = sampling
        self._array: np.ndarray | list | None = None
        self._loader: Callable[[Path], np.ndarray] | None = None
        self._paths: list[Path] = []

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.labels)

    def raw_points(self, index: int) -> np.ndarray:
        """The stored cloud ``(P, C)`` of item ``index`` before normalisation, sampling and transform."""
        if self._array is not None:
            return np.asarray(self._array[index])
        return self._loader(self._paths[index])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        pts = np.array(self.raw_points(index), dtype=np.float32)  # a writable copy
        pts = pts[:, :6] if self.use_normals else pts[:, :3]
        if self.normalize:
            pts[:, :3] = normalize_unit_sphere_np(pts[:, :3])
        out = subsample(torch.from_numpy(pts), self.num_points, self.sampling)
        if self.transform is not None:
            out = self.transform(out)
        return out, int(self.labels[index])

    def __getstate__(self) -> dict:
        # a memory-mapped cache travels to spawned DataLoader workers as its path, not as a copy of the data
        state = dict(self.__dict__)
        if isinstance(self._array, np.memmap) and getattr(self, "cache_path", None) is not None:
            state["_array"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self._array is None and getattr(self, "cache_path", None) is not None:
            self._array = np.load(self.cache_path, mmap_mode="r")

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(split={getattr(self, 'split', '?')!r}, size={len(self)}, "
            f"classes={len(self.classes)}, num_points={self.num_points}{self.extra_repr()})"
        )
