"""Shared pieces of the point-cloud datasets: where data lives, the one-time cache, the base dataset class."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from zoo.data.pointcloud.frames import canonical_frame, parse_frame

__all__ = [
    "ArrayCache",
    "PointCloudClassification",
    "candidate_dirs",
    "dataset_not_found",
    "default_data_root",
    "natural_sorted",
    "nonfinite_rows",
    "normalize_unit_sphere_np",
    "read_h5_arrays",
    "subsample",
]

SPLITS = ("train", "test")
_logger = logging.getLogger("zoo")


def default_data_root() -> Path | None:
    """``$ZOO_DATA`` if set, else the default data folder when it exists, else ``None`` (see ``zoo.data.paths``)."""
    from zoo.data.paths import data_root

    return data_root()


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
        or "  (nowhere: no root was given and there is no default data folder: $ZOO_DATA is unset and "
        "there is no shared/data beside the checkout)"
    )
    exp = "\n".join(f"  - {e}" for e in expected)
    return FileNotFoundError(
        f"{name} ({split} split) not found.\nLooked in:\n{looked}\nExpected one of these layouts:\n{exp}\n"
        f"On the command line add data.root=<folder that holds them> (in Python: root=...), or set $ZOO_DATA. "
        f"Get the data from:\n{where}"
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
        """``(points (S, P, C) memmap, labels (S,))`` or ``None`` when there is no complete cache.

        An unreadable cache (cut by a full disk, edited, another version) is ignored with a warning naming it,
        so the caller rebuilds it.
        """
        if not (self.array_path.is_file() and self.meta_path.is_file()):
            return None
        try:
            labels = np.asarray(json.loads(self.meta_path.read_text())["labels"], dtype=np.int64)
            points = np.load(self.array_path, mmap_mode="r")
            if points.ndim != 3 or len(points) != len(labels):
                raise ValueError(f"array shape {points.shape} does not match {len(labels)} labels")
        except (ValueError, KeyError, TypeError, OSError) as e:
            _logger.warning("ignoring the unreadable dataset cache %s (%s); rebuilding it", self.array_path, e)
            return None
        return points, labels

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


def read_h5_arrays(
    path: Path, keys: Sequence[str], optional: Sequence[str] = (), where: str = ""
) -> dict[str, np.ndarray]:
    """The datasets ``keys`` (required) and ``optional`` (when present) of an HDF5 file, as numpy arrays.

    h5py reports a corrupt or truncated file as ``OSError: Unable to synchronously open file`` without the path;
    this raises an ``OSError`` that names the file, says it is corrupt or truncated and to download it again
    (``where``: the download hint). A missing dataset is a ``KeyError`` that names the file and its keys.
    """
    import h5py

    try:
        with h5py.File(path, "r") as h:
            missing = [k for k in keys if k not in h]
            if missing:
                raise KeyError(f"{path} has no dataset(s) {missing}; it has {sorted(h.keys())}")
            return {k: np.asarray(h[k]) for k in [*keys, *(k for k in optional if k in h)]}
    except OSError as e:
        hint = f" Get it from:\n{where}" if where else ""
        raise OSError(
            f"{path}: cannot read this HDF5 file; it is corrupt or truncated (an interrupted download or copy?). "
            f"Delete it and download it again.{hint}\n(h5py: {e})"
        ) from e


def nonfinite_rows(clouds: np.ndarray | Sequence[np.ndarray], columns: int, chunk: int = 256) -> np.ndarray:
    """Indices ``(K,)`` int64 of the clouds with a NaN/inf among their first ``columns`` columns.

    ``clouds``: a ``(S, P, C)`` array (memory-mapped is fine: read ``chunk`` clouds at a time) or a list of
    ``(P_i, C)`` arrays.
    """
    if isinstance(clouds, np.ndarray) and clouds.ndim == 3:
        bad = [
            s + np.flatnonzero(~np.isfinite(clouds[s : s + chunk, :, :columns]).all(axis=(1, 2)))
            for s in range(0, len(clouds), chunk)
        ]
        return np.concatenate(bad).astype(np.int64) if bad else np.zeros(0, np.int64)
    return np.array([i for i, c in enumerate(clouds) if not np.isfinite(c[:, :columns]).all()], dtype=np.int64)


def nonfinite_error(dataset: str, sources: Sequence[str], total: int | None = None) -> ValueError:
    """The error for clouds with NaN/inf coordinates: names the files (or samples) and the ``drop_nonfinite`` fix.

    ``total``: how many clouds were checked (``None``: one cloud found while reading it).
    """
    shown = "\n".join(f"  - {s}" for s in sources[:5])
    if len(sources) > 5:
        shown += f"\n  ... and {len(sources) - 5} more"
    count = f"{len(sources)} of {total} clouds have" if total is not None else "this cloud has"
    return ValueError(
        f"{dataset}: {count} NaN/inf coordinates (a model gives non-finite logits for them):\n{shown}\n"
        f"Fix or remove these files, or drop such clouds with drop_nonfinite=True "
        f"(config: data.kwargs.drop_nonfinite=true)."
    )


# ----------------------------------------------------------------------------------------------------- samples
def normalize_unit_sphere_np(xyz: np.ndarray) -> np.ndarray:
    """Centre ``(N, 3)`` on its centroid and scale into the unit sphere (PointMamba's ``pc_normalize``)."""
    xyz = xyz - xyz.mean(axis=0)
    m = float(np.sqrt((xyz**2).sum(axis=1)).max())
    return xyz / m if m > 0 else xyz


def too_few_points_error(source: str, have: int, num_points: int, every: bool = False) -> ValueError:
    """The error for a stored cloud with fewer points than ``num_points``: names the file and both fixes.

    ``every``: ``source`` names several files whose clouds all have ``have`` points.
    """
    what = "every stored cloud there has" if every else "this cloud has"
    return ValueError(
        f"{source}: num_points={num_points} but {what} {have} points. Lower num_points to <= {have} "
        f"(config: data.kwargs.num_points={have}), or take all stored points with num_points=None "
        f"(data.kwargs.num_points=null) and pad with the 'resample' transform "
        f"({{name: resample, num_points: {num_points}}} in data.train_transforms / data.eval_transforms), "
        f"which repeats random points."
    )


def subsample(points: torch.Tensor, num_points: int | None, method: str, source: str = "stored cloud") -> torch.Tensor:
    """``(P, C) -> (num_points, C)``: ``"first"`` rows, a ``"random"`` subset (torch RNG) or ``"fps"`` (start 0).

    ``source`` (the file the cloud comes from) is named in the error raised when ``P < num_points``.
    """
    P = points.shape[0]
    if num_points is None or num_points == P:
        return points
    if num_points > P:
        raise too_few_points_error(source, P, num_points)
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
    (``(S, P, C)`` array, possibly memory-mapped, or a list of ``(P, C)`` arrays) plus ``_blocks`` (which file
    holds which rows, for error messages) or ``_loader`` + ``_paths`` (read one file per item; ``_paths`` is kept
    when a cache replaces the loader), then call ``_check_clouds()`` once loaded.

    Clouds with NaN/inf coordinates are an error naming the file (or file and sample) unless
    ``drop_nonfinite=True``, which drops them (``dropped_nonfinite`` lists their sources; the count is logged on
    the ``"zoo"`` logger). Stacked arrays are checked at construction, per-file clouds when read (all of them at
    construction with ``drop_nonfinite=True``).

    Frames (``zoo.data.pointcloud.frames``): items are in the standard frame (y up; ``frame == "standard"``).
    Subclasses set ``source_frame`` (the frame of their files: the format's own, or the ``frame=`` the user
    gave); ``__getitem__`` maps xyz and normals from it. ``normalization`` records ``"unit_sphere"`` or ``"none"``.
    The stored ``raw_points`` stay in the files' frame.
    """

    frame = "standard"  # the frame of the items returned (every zoo reader converts to it)

    classes: list[str]
    labels: np.ndarray

    def __init__(
        self,
        num_points: int | None,
        transform: Callable | None,
        use_normals: bool,
        normalize: bool,
        sampling: str,
        drop_nonfinite: bool = False,
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
        self.drop_nonfinite = bool(drop_nonfinite)
        self.dropped_nonfinite: list[str] = []
        self._array: np.ndarray | list | None = None
        self._loader: Callable[[Path], np.ndarray] | None = None
        self._paths: list[Path] = []
        self._blocks: list[tuple[Path, int, int]] = []  # (file, first row, end row) of stacked arrays
        self._rows: np.ndarray | None = None  # storage row of each item once clouds were dropped
        self.source_frame = "standard"  # frame of the stored clouds; subclasses set it (see set_source_frame)
        self._frame_map = parse_frame("standard")

    def set_source_frame(self, frame: str) -> None:
        """Declare the frame of the stored clouds (``"standard"``, ``"off_mesh"`` or an axis map ``"x,z,-y"``)."""
        self._frame_map = parse_frame(frame)
        self.source_frame = canonical_frame(frame)

    @property
    def normalization(self) -> str:
        """``"unit_sphere"`` when items are centred and scaled into the unit sphere, else ``"none"``."""
        return "unit_sphere" if self.normalize else "none"

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.labels)

    def _row(self, index: int) -> int:
        """Storage row (in ``_array`` / ``_paths``) of item ``index``."""
        return int(self._rows[index]) if self._rows is not None else index

    def _source_of_row(self, row: int) -> str:
        if self._paths:
            return str(self._paths[row])
        for path, start, stop in self._blocks:
            if start <= row < stop:
                return f"{path} [sample {row - start}]"
        return f"sample {row}"

    def _stacked_source(self) -> str:
        """The files behind a stacked array, for messages about all of them."""
        if self._blocks:
            return ", ".join(str(p) for p, _, _ in self._blocks)
        if self._paths:
            more = f" and {len(self._paths) - 1} more files" if len(self._paths) > 1 else ""
            return f"{self._paths[0]}{more}"
        return "(in memory)"

    def source(self, index: int) -> str:
        """Where item ``index`` is stored: its file, or ``"<file> [sample i]"`` for clouds stacked in one file."""
        return self._source_of_row(self._row(index))

    def _raw_row(self, row: int) -> np.ndarray:
        if self._array is not None:
            return np.asarray(self._array[row])
        return self._loader(self._paths[row])

    def raw_points(self, index: int) -> np.ndarray:
        """The stored cloud ``(P, C)`` of item ``index`` before normalisation, sampling and transform."""
        return self._raw_row(self._row(index))

    def _check_clouds(self) -> None:
        """Once loaded: fail early on too few points (stacked arrays) and apply the NaN/inf policy."""
        name = f"{type(self).__name__} ({getattr(self, 'split', '?')} split)"
        arr = self._array
        stacked = isinstance(arr, np.ndarray) and arr.ndim == 3
        if stacked and self.num_points is not None and arr.shape[1] < self.num_points:
            raise too_few_points_error(f"{name} {self._stacked_source()}", arr.shape[1], self.num_points, every=True)
        columns = 6 if self.use_normals else 3
        if arr is not None:
            bad = nonfinite_rows(arr, columns)
        elif self.drop_nonfinite:  # per-file clouds: read each once to find the bad ones
            from tqdm.auto import tqdm

            rows = tqdm(range(len(self._paths)), desc=f"{name}: checking for NaN/inf", disable=None, leave=False)
            bad = np.array([r for r in rows if not np.isfinite(self._raw_row(r)[:, :columns]).all()], np.int64)
        else:
            return  # checked when each file is read
        if not len(bad):
            return
        sources = [self._source_of_row(int(r)) for r in bad]
        if not self.drop_nonfinite:
            raise nonfinite_error(name, sources, len(self.labels))
        keep = np.setdiff1d(np.arange(len(self.labels)), bad)
        self._rows, self.labels = keep, np.asarray(self.labels)[keep]
        self.dropped_nonfinite = sources
        _logger.warning(
            "%s: dropped %d of %d clouds with NaN/inf coordinates (drop_nonfinite=True), e.g. %s",
            name, len(bad), len(keep) + len(bad), sources[0],
        )  # fmt: skip

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        pts = np.array(self.raw_points(index), dtype=np.float32)  # a writable copy
        pts = pts[:, :6] if self.use_normals else pts[:, :3]
        if not np.isfinite(pts).all():
            name = f"{type(self).__name__} ({getattr(self, 'split', '?')} split)"
            raise nonfinite_error(name, [self.source(index)])
        pts = self._frame_map.apply(pts)
        if self.normalize:
            pts[:, :3] = normalize_unit_sphere_np(pts[:, :3])
        out = subsample(torch.from_numpy(pts), self.num_points, self.sampling, self.source(index))
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
