"""ModelNet40 / ModelNet10 classification in every on-disk format people have.

Formats (``format="auto"`` takes the first one found, in this order):

* ``dat``: Point-BERT / PointMamba processed pickles ``modelnet40_{train,test}_8192pts_fps.dat`` holding
  ``[list of (8192, 6) float32 xyz+normal arrays, list of (1,) int32 labels]`` (9843 / 2468 shapes); the points
  are stored in furthest-point order, so ``sampling="first"`` with ``num_points=1024`` is exactly the FPS subset
  PointMamba's evaluation uses.
* ``h5``: ``modelnet40_ply_hdf5_2048/ply_data_{train,test}{0..4}.h5`` listed in ``{train,test}_files.txt``
  (keys ``data`` (n, 2048, 3), ``label`` (n, 1), ``normal``; 9840 / 2468 shapes). ModelNet10 reads the shapes of
  its 10 classes from these files (relabelled by name; ModelNet40's split of those classes is ModelNet10's).
* ``txt``: ``modelnet40_normal_resampled``: ``modelnet{40,10}_{train,test}.txt`` split files and
  ``<class>/<class>_0001.txt`` (10000 lines ``x,y,z,nx,ny,nz``).
* ``pcd``: ``<class>/{train,test}/<class>_0001.pcd`` (e.g. ``shared/data/modelnet10``: binary PCD, 1024 points).
* ``off``: the raw Princeton meshes ``<class>/{train,test}/<class>_0001.off``, surface-sampled once
  (``off_points`` area-weighted samples with normals, open3d when installed else numpy) into a cache.

Frames (``zoo.data.pointcloud.frames``): items are always in the standard frame (y up), the frame of the dat, h5
and txt files. OFF meshes are in their own frame (z up; standard = ``(x, z, y)`` of it) and are converted. A PCD
tree is in the frame its ``.prepare_data.json`` records (``tools/prepare_data.py`` writes ``"frame": "standard"``);
without that record, or with a record from before the tool converted, it is taken as sampled from the OFF meshes
(``"off_mesh"``), as ``shared/data/modelnet10``. ``frame=`` overrides the format's frame for files in another one
(``"standard"``, ``"off_mesh"`` or an axis map such as ``"x,z,-y"``).

Tree formats (txt, pcd, off) are read file by file, or with ``cache=True`` stacked once into a memory-mapped
``.npy`` cache whose name hashes the parameters and the source files (see ``ArrayCache``).

Items: ``(points (num_points, 3 or 6) float32 tensor, label int)``; points are centred and scaled into the unit
sphere over all stored points (``normalize=True``, as PointMamba's ``pc_normalize``) before sub-sampling.
"""

from __future__ import annotations

import functools
import glob
import json
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import numpy as np

from zoo.data.pointcloud._common import (
    ArrayCache,
    PointCloudClassification,
    candidate_dirs,
    check_split,
    dataset_not_found,
    file_signature,
    natural_sorted,
    read_h5_arrays,
)
from zoo.data.pointcloud.frames import OFF_MESH, STANDARD, parse_frame
from zoo.data.pointcloud.io import read_pcd, read_pcd_fields, read_txt
from zoo.data.pointcloud.mesh import resolve_backend, sample_off
from zoo.data.registry import register_dataset

__all__ = ["MODELNET10_CLASSES", "MODELNET40_CLASSES", "ModelNet10", "ModelNet40", "format_frame", "load_dat"]

MODELNET40_CLASSES = [
    "airplane", "bathtub", "bed", "bench", "bookshelf", "bottle", "bowl", "car", "chair", "cone",
    "cup", "curtain", "desk", "door", "dresser", "flower_pot", "glass_box", "guitar", "keyboard", "lamp",
    "laptop", "mantel", "monitor", "night_stand", "person", "piano", "plant", "radio", "range_hood", "sink",
    "sofa", "stairs", "stool", "table", "tent", "toilet", "tv_stand", "vase", "wardrobe", "xbox",
]  # fmt: skip
MODELNET10_CLASSES = [
    "bathtub", "bed", "chair", "desk", "dresser", "monitor", "night_stand", "sofa", "table", "toilet",
]  # fmt: skip

FORMATS = ("dat", "h5", "txt", "pcd", "off")
_TREE_EXT = {"pcd": ".pcd", "off": ".off"}
_CACHE_VERSION = 1

_SUBDIRS = {
    40: ["modelnet40_normal_resampled", "ModelNet/modelnet40_normal_resampled", "modelnet40_ply_hdf5_2048",
         "ModelNet40", "modelnet40", "ModelNet"],
    10: ["modelnet10", "ModelNet10", "modelnet40_normal_resampled", "ModelNet/modelnet40_normal_resampled",
         "ModelNet", "modelnet40_ply_hdf5_2048"],
}  # fmt: skip


def _sources(nc: int, split: str) -> tuple[list[str], str]:
    tag = f"modelnet{nc}"
    expected = [
        f"dat: {tag}_{split}_8192pts_fps.dat (+ {tag}_shape_names.txt) - Point-BERT/PointMamba processed pickles",
        f"txt: {tag}_{split}.txt + {tag}_shape_names.txt + <class>/<class>_0001.txt (modelnet40_normal_resampled)",
        f"pcd: <class>/{split}/<class>_0001.pcd",
        f"off: <class>/{split}/<class>_0001.off (raw Princeton ModelNet{nc} meshes)",
    ]
    where = [
        "  - .dat: https://github.com/lulutang0608/Point-BERT/blob/master/DATASET.md (PointMamba docs/DATASET.md)",
        (
            "  - txt (modelnet40_normal_resampled, also has the modelnet10_* split files): "
            "https://shapenet.cs.stanford.edu/media/modelnet40_normal_resampled.zip"
        ),
    ]
    h5_note = "" if nc == 40 else ", ModelNet10's classes are taken from it"
    expected.insert(1, f"h5: ply_data_{split}0.h5 ... + {split}_files.txt (modelnet40_ply_hdf5_2048{h5_note})")
    where.append("  - h5: https://shapenet.cs.stanford.edu/media/modelnet40_ply_hdf5_2048.zip")
    if nc == 40:
        where.append("  - off: http://modelnet.cs.princeton.edu/ModelNet40.zip (https://modelnet.cs.princeton.edu/)")
    else:
        where.append("  - off: http://3dvision.princeton.edu/projects/2014/3DShapeNets/ModelNet10.zip")
    return expected, "\n".join(where)


# ----------------------------------------------------------------------------------------------------- .dat
class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles lists of numpy arrays and nothing else (a .dat from the internet cannot run code)."""

    _ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
    }  # fmt: skip

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise _RefusedPickle(f"refusing to unpickle {module}.{name}: a ModelNet .dat holds only numpy arrays")


class _RefusedPickle(pickle.UnpicklingError):
    """A .dat that asks for something other than numpy arrays (never wrapped as 'corrupt')."""


_DAT_WHERE = "https://github.com/lulutang0608/Point-BERT/blob/master/DATASET.md (PointMamba docs/DATASET.md)"


def load_dat(path: str | Path) -> tuple[list[np.ndarray], np.ndarray]:
    """Read a Point-BERT/PointMamba ``.dat``: ``(list of (P, 6) float32 arrays, labels (S,) int64)``.

    A truncated or corrupt file raises a ``ValueError`` naming it (pickle alone says only "pickle data was
    truncated"); a pickle that asks for anything but numpy arrays raises ``pickle.UnpicklingError``.
    """
    try:
        with open(path, "rb") as f:
            obj = _NumpyOnlyUnpickler(f, encoding="latin1").load()
    except _RefusedPickle as e:
        raise _RefusedPickle(f"{path}: {e}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, MemoryError) as e:
        raise ValueError(
            f"{path}: cannot unpickle this .dat; it is truncated or corrupt (an interrupted download?). Delete it "
            f"and download it again from {_DAT_WHERE}\n({type(e).__name__}: {e})"
        ) from e
    if not (isinstance(obj, (list, tuple)) and len(obj) == 2 and len(obj[0]) == len(obj[1])):
        raise ValueError(f"{path}: expected a pickled [list of points, list of labels] of equal length")
    points = [np.asarray(p, dtype=np.float32) for p in obj[0]]
    labels = np.array([int(np.asarray(lbl).reshape(-1)[0]) for lbl in obj[1]], dtype=np.int64)
    return points, labels


def _sample_off(path: Path, num_points: int, seed: int, backend: str) -> np.ndarray:
    return sample_off(path, num_points, seed=seed, backend=backend)  # looked up at call time (tests patch it)


# ----------------------------------------------------------------------------------------------------- frames
_FORMAT_FRAMES = {"dat": STANDARD, "h5": STANDARD, "txt": STANDARD, "off": OFF_MESH}
PREPARE_MANIFEST = ".prepare_data.json"  # written by tools/prepare_data.py into its output folder


def format_frame(fmt: str, folder: Path) -> str:
    """The frame of format ``fmt``'s files in ``folder``: dat / h5 / txt are standard, OFF meshes ``"off_mesh"``;
    a PCD tree is in the frame its ``.prepare_data.json`` records, else (no record, or one written before
    ``tools/prepare_data.py`` converted) ``"off_mesh"``: sampled from the OFF meshes, as ``shared/data/modelnet10``."""
    if fmt != "pcd":
        return _FORMAT_FRAMES[fmt]
    manifest = folder / PREPARE_MANIFEST
    if manifest.is_file():
        try:
            recorded = json.loads(manifest.read_text()).get("frame")
        except (ValueError, AttributeError) as e:
            raise ValueError(f"{manifest}: unreadable ({e}); fix or delete it, or pass frame=... "
                             f"(data.kwargs.frame=standard|off_mesh)") from e
        if recorded is not None:
            return str(recorded)
    return OFF_MESH


# ----------------------------------------------------------------------------------------------------- finders
def _find_dat(d: Path, nc: int, split: str) -> Path | None:
    found = glob.glob(str(d / f"modelnet{nc}_{split}_*pts_fps.dat")) + glob.glob(
        str(d / f"modelnet{nc}_{split}_*pts.dat")
    )
    if not found:
        return None
    # prefer furthest-point-sampled files, then the most points (8192 over 1024)

    def rank(p: str) -> tuple[bool, int]:
        return p.endswith("_fps.dat"), int(re.search(r"_(\d+)pts", Path(p).name).group(1))

    return Path(max(found, key=rank))


def _find_h5(d: Path, nc: int, split: str) -> list[Path] | None:
    """The ``modelnet40_ply_hdf5_2048`` files of ``split`` in ``d`` (ModelNet10 reads its 10 classes from them)."""
    listing = d / f"{split}_files.txt"
    if listing.is_file():
        names = [Path(ln.strip()).name for ln in listing.read_text().splitlines() if ln.strip()]
        files = [d / n for n in names]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"{listing} lists h5 files that are missing: {missing}")
        return files or None
    files = natural_sorted(Path(p) for p in glob.glob(str(d / f"ply_data_{split}*.h5")))
    return files or None


def _find_txt(d: Path, nc: int, split: str) -> Path | None:
    f = d / f"modelnet{nc}_{split}.txt"
    return f if f.is_file() else None


def _find_tree(d: Path, classes: list[str], split: str, ext: str) -> bool:
    return any(next((d / c / split).glob(f"*{ext}"), None) is not None for c in classes if (d / c / split).is_dir())


def _shape_names(d: Path, nc: int, default: list[str], candidates: tuple[str, ...]) -> list[str]:
    for name in candidates:
        f = d / name
        if f.is_file():
            names = [ln.strip() for ln in f.read_text().splitlines() if ln.strip()]
            if len(names) != nc:
                raise ValueError(f"{f} lists {len(names)} classes, expected {nc}")
            return names
    return list(default)


# ----------------------------------------------------------------------------------------------------- dataset
class _ModelNet(PointCloudClassification):
    """ModelNet classification (see the module docstring for the formats).

    Args:
        root: folder with the data (or a parent of the standard folder names); ``None``: ``$ZOO_DATA`` or
            ``../shared/data``.
        split: ``"train"`` or ``"test"``.
        num_points: points per item (``None``: all stored points).
        transform: callable on the ``(num_points, C)`` tensor (e.g. ``build_transforms([...])``).
        use_normals: return xyz + normals ``(num_points, 6)`` (dat, h5 with ``normal``, txt, off; pcd with
            ``normal_x/y/z`` fields).
        format: ``"auto"`` or one of ``dat``, ``h5``, ``txt``, ``pcd``, ``off``.
        normalize: centre and scale each cloud into the unit sphere.
        sampling: how ``num_points`` are taken from the stored ones: ``"first"``, ``"random"`` (torch RNG) or
            ``"fps"`` (furthest point sampling from index 0).
        cache: for tree formats (txt, pcd, off), stack all shapes once into a memory-mapped ``.npy`` cache
            instead of reading (or, for off, sampling) one file per item.
        cache_dir: where the cache goes (default ``$ZOO_CACHE/pointcloud`` or ``~/.cache/zoo/pointcloud``).
        off_points, off_seed, off_backend: OFF surface sampling: points per mesh, seed, ``"auto"`` /
            ``"open3d"`` / ``"numpy"``.
        drop_nonfinite: drop clouds with NaN/inf coordinates (their count is logged on the ``"zoo"`` logger and
            their files listed in ``dropped_nonfinite``) instead of raising an error that names them.
        frame: the frame of the files (``None``: the format's; see the module docstring). Items are converted
            from it to the standard frame; ``source_frame`` records it.

    A cloud with fewer points than ``num_points`` is an error that names its file and the fixes; so is a
    corrupt or truncated file (h5, dat, pcd, txt, off).
    """

    NUM_CLASSES = 40
    CLASSES = MODELNET40_CLASSES

    def __init__(
        self,
        root: str | Path | None = None,
        split: str = "train",
        num_points: int | None = 1024,
        transform: Callable | None = None,
        use_normals: bool = False,
        format: str = "auto",
        normalize: bool = True,
        sampling: str = "first",
        cache: bool = True,
        cache_dir: str | Path | None = None,
        off_points: int = 8192,
        off_seed: int = 0,
        off_backend: str = "auto",
        drop_nonfinite: bool = False,
        frame: str | None = None,
    ):
        super().__init__(num_points, transform, use_normals, normalize, sampling, drop_nonfinite)
        self.split = check_split(split)
        if format != "auto" and format not in FORMATS:
            raise ValueError(f"format must be 'auto' or one of {FORMATS}, got {format!r}")
        if frame is not None:
            parse_frame(frame)  # a bad spelling fails before any file is read
        nc = self.NUM_CLASSES
        formats = FORMATS if format == "auto" else (format,)
        looked = candidate_dirs(root, _SUBDIRS[nc])
        for d in looked:
            if not d.is_dir():
                continue
            for fmt in formats:
                if self._try_format(fmt, d, cache, cache_dir, off_points, off_seed, off_backend):
                    self.format, self.root = fmt, d
                    self.set_source_frame(frame if frame is not None else format_frame(fmt, d))
                    self._check_clouds()
                    return
        expected, where = _sources(nc, split)
        if format != "auto":
            expected = [e for e in expected if e.startswith(format + ":")]
        raise dataset_not_found(f"ModelNet{nc}", split, looked, expected, where)

    def extra_repr(self) -> str:
        return f", format={self.format!r}, frame={self.source_frame!r}->standard, root='{self.root}'"

    # each _try_* returns False when the format is not in folder d, else loads it and returns True
    def _try_format(self, fmt, d, cache, cache_dir, off_points, off_seed, off_backend) -> bool:
        nc, split = self.NUM_CLASSES, self.split
        if fmt == "dat":
            path = _find_dat(d, nc, split)
            return path is not None and self._load_dat(d, path)
        if fmt == "h5":
            files = _find_h5(d, nc, split)
            return files is not None and self._load_h5(d, files)
        if fmt == "txt":
            listing = _find_txt(d, nc, split)
            return listing is not None and self._load_txt(d, listing, cache, cache_dir)
        if not _find_tree(d, self.CLASSES, split, _TREE_EXT[fmt]):
            return False
        if fmt == "pcd":
            return self._load_pcd(d, cache, cache_dir)
        return self._load_off(d, cache_dir, off_points, off_seed, off_backend, cache)

    def _names(self, d: Path, *files: str) -> list[str]:
        return _shape_names(d, self.NUM_CLASSES, self.CLASSES, files)

    def _load_dat(self, d: Path, path: Path) -> bool:
        self.classes = self._names(d, f"modelnet{self.NUM_CLASSES}_shape_names.txt")
        points, self.labels = load_dat(path)
        if self.use_normals and points and points[0].shape[1] < 6:
            raise ValueError(f"{path} stores {points[0].shape[1]} columns; use_normals=True needs 6")
        self._array, self._blocks = points, [(path, 0, len(points))]
        return True

    def _load_h5(self, d: Path, files: list[Path]) -> bool:
        """``modelnet40_ply_hdf5_2048``; ModelNet10 keeps the shapes of its 10 classes (ModelNet40's split of
        those classes is ModelNet10's), relabelled by class name."""
        names40 = _shape_names(d, 40, MODELNET40_CLASSES, ("shape_names.txt", "modelnet40_shape_names.txt"))
        self.classes = names40 if self.NUM_CLASSES == 40 else list(self.CLASSES)
        relabel = np.array([self.classes.index(n) if n in self.classes else -1 for n in names40], dtype=np.int64)
        where = "  - https://shapenet.cs.stanford.edu/media/modelnet40_ply_hdf5_2048.zip"
        data, labels, blocks = [], [], []
        for f in files:
            h = read_h5_arrays(f, ["data", "label"], optional=["normal"], where=where)
            pts = h["data"].astype(np.float32)
            if self.use_normals:
                if "normal" not in h:
                    raise KeyError(f"{f} has no 'normal' dataset; use use_normals=False")
                pts = np.concatenate([pts, h["normal"].astype(np.float32)], axis=-1)
            lab = h["label"].reshape(-1).astype(np.int64)
            if len(lab) and (lab.min() < 0 or lab.max() >= 40):
                raise ValueError(f"{f}: labels outside [0, 40): min {lab.min()} max {lab.max()}")
            lab = relabel[lab]
            keep = lab >= 0
            pts, lab = pts[keep], lab[keep]
            start = blocks[-1][2] if blocks else 0
            blocks.append((f, start, start + len(pts)))
            data.append(pts)
            labels.append(lab)
        self._array, self.labels = np.concatenate(data), np.concatenate(labels)
        self._blocks = blocks
        return True

    def _load_txt(self, d: Path, listing: Path, cache: bool, cache_dir) -> bool:
        nc = self.NUM_CLASSES
        self.classes = self._names(d, f"modelnet{nc}_shape_names.txt")
        index = {c: i for i, c in enumerate(self.classes)}
        ids = [ln.strip() for ln in listing.read_text().splitlines() if ln.strip()]
        paths, labels = [], []
        for shape_id in ids:
            cls = shape_id.rsplit("_", 1)[0]
            if cls not in index:
                raise ValueError(f"{listing}: shape {shape_id!r} has unknown class {cls!r}")
            paths.append(d / cls / f"{shape_id}.txt")
            labels.append(index[cls])
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{listing} lists {len(missing)} files that are missing, e.g. {missing[:3]}")
        self._setup_tree(d, paths, np.array(labels, dtype=np.int64), read_txt, cache, cache_dir, {"format": "txt"})
        return True

    def _tree_files(self, d: Path, ext: str) -> tuple[list[Path], np.ndarray]:
        self.classes = list(self.CLASSES)
        missing = [str(d / c / self.split) for c in self.classes if not (d / c / self.split).is_dir()]
        if missing:
            raise FileNotFoundError(f"ModelNet{self.NUM_CLASSES} {ext} tree in {d} lacks class folders: {missing}")
        paths, labels = [], []
        for i, c in enumerate(self.classes):
            files = natural_sorted((d / c / self.split).glob(f"*{ext}"))
            paths += files
            labels += [i] * len(files)
        return paths, np.array(labels, dtype=np.int64)

    def _load_pcd(self, d: Path, cache: bool, cache_dir) -> bool:
        paths, labels = self._tree_files(d, ".pcd")
        fields = ("x", "y", "z") + (("normal_x", "normal_y", "normal_z") if self.use_normals else ())
        if self.use_normals and "normal_x" not in read_pcd_fields(paths[0]):
            raise KeyError(f"{paths[0]} has no normal_x/normal_y/normal_z fields; use use_normals=False")
        loader = functools.partial(read_pcd, fields=fields)  # picklable: spawned DataLoader workers
        self._setup_tree(d, paths, labels, loader, cache, cache_dir, {"format": "pcd", "fields": fields})
        return True

    def _load_off(self, d: Path, cache_dir, n: int, seed: int, backend: str, cache: bool) -> bool:
        paths, labels = self._tree_files(d, ".off")
        backend = resolve_backend(backend)
        loader = functools.partial(_sample_off, num_points=n, seed=seed, backend=backend)
        params = {"format": "off", "off_points": n, "off_seed": seed, "off_backend": backend}
        self._setup_tree(d, paths, labels, loader, cache, cache_dir, params)
        return True

    def _setup_tree(self, d: Path, paths, labels, loader, cache: bool, cache_dir, params: dict) -> None:
        """Per-file reading, or (``cache=True``) a one-time stacked ``.npy`` cache of all shapes."""
        self.labels = labels
        self._loader, self._paths = loader, list(paths)
        if not cache:
            return
        key = dict(params, version=_CACHE_VERSION, split=self.split, classes=self.classes,
                   files=file_signature(paths, d))  # fmt: skip
        store = ArrayCache(f"modelnet{self.NUM_CLASSES}_{params['format']}_{self.split}", key, cache_dir)
        hit = store.load()
        if hit is None:
            from tqdm.auto import tqdm

            clouds = [loader(p) for p in tqdm(paths, desc=f"caching {store.array_path.name}", disable=None)]
            sizes = {c.shape for c in clouds}
            if len(sizes) != 1:  # ragged clouds cannot be stacked: keep reading files
                return
            store.save(np.stack(clouds), labels)
            hit = store.load()
        self._array, self.labels = hit
        self.cache_path = store.array_path


@register_dataset("modelnet40")
class ModelNet40(_ModelNet):
    __doc__ = "ModelNet40 (40 classes, 9843 train / 2468 test shapes).\n\n" + (_ModelNet.__doc__ or "")
    NUM_CLASSES = 40
    CLASSES = MODELNET40_CLASSES


@register_dataset("modelnet10")
class ModelNet10(_ModelNet):
    __doc__ = "ModelNet10 (10 classes, 3991 train / 908 test shapes).\n\n" + (_ModelNet.__doc__ or "")
    NUM_CLASSES = 10
    CLASSES = MODELNET10_CLASSES
