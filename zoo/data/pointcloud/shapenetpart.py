"""ShapeNetPart (16 object categories, 50 part labels) in the standard ``..._v0_normal`` layout.

The layout of ``shapenetcore_partanno_segmentation_benchmark_v0_normal`` (what PointNet++, Point-BERT, Point-MAE,
PointMamba and PoinTramba read)::

    <root>/synsetoffset2category.txt                   "Airplane\t02691156" per line
    <root>/train_test_split/shuffled_{train,val,test}_file_list.json
                                                       ["shape_data/02691156/<token>", ...]
    <root>/<synset>/<token>.txt                        one point per line: x y z nx ny nz part_label

Part labels are global (0..49); each category owns a contiguous range (:data:`SEG_CLASSES`, the official mapping).
Items are ``(points (num_points, 3 or 6) float32, category int, part labels (num_points,) int64)``, as the official
``PartNormalDataset``: xyz centred and scaled into the unit sphere over the whole stored shape (``pc_normalize``),
then ``num_points`` points drawn *with replacement* (``np.random.choice(..., replace=True)``) -- every access draws
afresh with the torch RNG, unless ``seed`` is given, which makes item i's draw a function of ``(seed, i)`` (use it for
evaluation so that val / test numbers are reproducible; the official test loader draws at random). Normals are
returned only with ``use_normals=True`` (the official run does not use them). Category indices are the position of
the category in :data:`CATEGORIES` (the alphabetical order of the official ``synsetoffset2category.txt``).

Frame: the ``..._v0_normal`` files are in the standard frame (y up, ShapeNet's alignment; see
``zoo.data.pointcloud.frames``), as are the procedural shapes of ``synthetic_parts``. ``frame=`` declares another
frame for files exported differently; items (xyz and normals) are converted to the standard one.

The official training augmentation (``provider.random_scale_point_cloud`` (0.8..1.2) then ``shift_point_cloud``
(+-0.1), per cloud, on xyz) is :func:`scale_shift`, applied per batch by the segmentation recipe.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from zoo.data.pointcloud._common import candidate_dirs, dataset_not_found, normalize_unit_sphere_np
from zoo.data.pointcloud.frames import canonical_frame, parse_frame
from zoo.data.registry import register_dataset

__all__ = [
    "CATEGORIES",
    "NUM_CATEGORIES",
    "NUM_PARTS",
    "SEG_CLASSES",
    "SPLITS",
    "ShapeNetPart",
    "category_of_part",
    "seg_classes_of",
    "shape_part_labels",
    "read_shape_txt",
    "scale_shift",
]

CATEGORIES = [
    "Airplane", "Bag", "Cap", "Car", "Chair", "Earphone", "Guitar", "Knife",
    "Lamp", "Laptop", "Motorbike", "Mug", "Pistol", "Rocket", "Skateboard", "Table",
]  # fmt: skip
SYNSETS = {
    "Airplane": "02691156", "Bag": "02773838", "Cap": "02954340", "Car": "02958343", "Chair": "03001627",
    "Earphone": "03261776", "Guitar": "03467517", "Knife": "03624134", "Lamp": "03636649", "Laptop": "03642806",
    "Motorbike": "03790512", "Mug": "03797390", "Pistol": "03948459", "Rocket": "04099429",
    "Skateboard": "04225987", "Table": "04379243",
}  # fmt: skip
# official mapping (main.py / dataset.py ``seg_classes``): category -> its global part labels
SEG_CLASSES = {
    "Airplane": [0, 1, 2, 3], "Bag": [4, 5], "Cap": [6, 7], "Car": [8, 9, 10, 11], "Chair": [12, 13, 14, 15],
    "Earphone": [16, 17, 18], "Guitar": [19, 20, 21], "Knife": [22, 23], "Lamp": [24, 25, 26, 27],
    "Laptop": [28, 29], "Motorbike": [30, 31, 32, 33, 34, 35], "Mug": [36, 37], "Pistol": [38, 39, 40],
    "Rocket": [41, 42, 43], "Skateboard": [44, 45, 46], "Table": [47, 48, 49],
}  # fmt: skip
NUM_CATEGORIES = len(CATEGORIES)
NUM_PARTS = sum(len(v) for v in SEG_CLASSES.values())
SPLITS = ("train", "val", "trainval", "test")
DIRNAME = "shapenetcore_partanno_segmentation_benchmark_v0_normal"
_WHERE = (
    "  - https://shapenet.cs.stanford.edu/media/shapenetcore_partanno_segmentation_benchmark_v0_normal.zip "
    "(the PointNet++ release; mirrors are listed in the Point-BERT / PointMamba READMEs)\n"
    "  - or write a synthetic set in the same layout: python tools/prepare_data.py shapenetpart-synthetic --out DIR"
)


def category_of_part(num_parts: int = NUM_PARTS) -> np.ndarray:
    """``(num_parts,)`` int64: the category index of every global part label."""
    out = np.full(num_parts, -1, dtype=np.int64)
    for c, name in enumerate(CATEGORIES):
        out[SEG_CLASSES[name]] = c
    return out


def seg_classes_of(dataset: Any) -> dict[str, list[int]]:
    """``{category: its global part labels}`` in category-index order, from ``dataset`` (``all_categories`` /
    ``seg_classes``) or ShapeNetPart's official table."""
    names = getattr(dataset, "all_categories", CATEGORIES)
    table = getattr(dataset, "seg_classes", SEG_CLASSES)
    return {n: list(table[n]) for n in names}


def shape_part_labels(dataset: Any) -> Iterator[tuple[int, np.ndarray]]:
    """``(category, part labels (P,))`` of every shape of ``dataset``: for :class:`ShapeNetPart` every stored point
    (no resampling), for any other part dataset the points of its items ``(points, category, parts)``."""
    if hasattr(dataset, "raw") and hasattr(dataset, "items"):
        return ((dataset.items[i][0], dataset.raw(i)[:, 6].astype("int64")) for i in range(len(dataset)))
    return ((dataset[i][1], dataset[i][2].numpy()) for i in range(len(dataset)))


def read_shape_txt(path: str | os.PathLike) -> np.ndarray:
    """One shape file ``x y z nx ny nz part_label`` per line -> ``(P, 7)`` float32. Raises naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ShapeNetPart shape file {path} does not exist (listed in the split files).")
    try:
        data = np.loadtxt(path, dtype=np.float32, ndmin=2)
    except ValueError as exc:
        raise ValueError(f"ShapeNetPart shape file {path} is not 'x y z nx ny nz part_label' per line: {exc}") from exc
    if data.shape[1] != 7 or data.shape[0] == 0:
        raise ValueError(f"ShapeNetPart shape file {path}: expected rows of 7 numbers (x y z nx ny nz part_label), "
                         f"got an array of shape {data.shape}.")
    return data


def scale_shift(points: torch.Tensor, scale_low: float = 0.8, scale_high: float = 1.2, shift_range: float = 0.1,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """The official training augmentation on ``points (B, N, C)`` (xyz = the first 3 channels): every cloud is
    scaled by ``U(scale_low, scale_high)`` then shifted by ``U(-shift_range, shift_range)^3``. Returns a new
    tensor; normals (channels 3..5) are left as they are, as in the official code."""
    B = points.shape[0]
    kw = dict(device=points.device, dtype=points.dtype)
    scale = torch.rand(B, 1, 1, generator=generator, **kw) * (scale_high - scale_low) + scale_low
    shift = (torch.rand(B, 1, 3, generator=generator, **kw) * 2 - 1) * shift_range
    out = points.clone()
    out[..., :3] = points[..., :3] * scale + shift
    return out


def _read_category_file(path: Path) -> dict[str, str]:
    """``synsetoffset2category.txt`` -> {category name: synset folder}, checking names against :data:`CATEGORIES`."""
    cats = {}
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise ValueError(f"{path} line {line_no}: expected '<Category> <synset>', got {line!r}.")
        if parts[0] not in SEG_CLASSES:
            raise ValueError(f"{path} line {line_no}: unknown category {parts[0]!r}; ShapeNetPart has "
                             f"{', '.join(CATEGORIES)}.")
        cats[parts[0]] = parts[1]
    return cats


def _read_split_ids(root: Path, split: str) -> set[str]:
    names = {"train": ["train"], "val": ["val"], "trainval": ["train", "val"], "test": ["test"]}[split]
    ids: set[str] = set()
    for name in names:
        path = root / "train_test_split" / f"shuffled_{name}_file_list.json"
        if not path.is_file():
            raise FileNotFoundError(f"ShapeNetPart split file {path} does not exist; the dataset root {root} must "
                                    "hold train_test_split/shuffled_{train,val,test}_file_list.json.")
        entries = json.loads(path.read_text())
        ids.update(str(e).split("/")[-1] for e in entries)
    return ids


def _find_root(root: str | os.PathLike | None, split: str) -> Path:
    looked = candidate_dirs(root, [DIRNAME, "shapenetpart", f"shapenetpart/{DIRNAME}"])
    for d in looked:
        if (d / "synsetoffset2category.txt").is_file():
            return d
    raise dataset_not_found(
        "ShapeNetPart", split, looked,
        [f"<root>/synsetoffset2category.txt, <root>/train_test_split/shuffled_{{train,val,test}}_file_list.json, "
         f"<root>/<synset>/<token>.txt (root may also be the folder holding {DIRNAME}/)"],
        _WHERE,
    )


@register_dataset("shapenetpart")
class ShapeNetPart(Dataset):
    """ShapeNetPart part segmentation from the standard layout (see the module docstring).

    Args:
        root: the ``..._v0_normal`` folder, or a folder holding it (default: ``$ZOO_DATA``).
        split: ``"train"``, ``"val"``, ``"trainval"`` (the official training set) or ``"test"``.
        num_points: points per item, drawn with replacement (official 2048); ``None`` returns every stored point
            in file order.
        use_normals: return ``(num_points, 6)`` xyz + normals instead of ``(num_points, 3)``.
        categories: only these category names (the official ``class_choice``); indices stay the global ones.
        seed: make the point draw of item i deterministic (``seed`` and i); ``None``: fresh draws (training).
        normalize: centre + unit-sphere scaling of xyz (official: always).
        transform: applied to the ``(num_points, C)`` points tensor.
        cache: keep parsed files in memory (the official loader caches up to 20000 shapes).
        frame: the frame of the files (``None``: ``"standard"``); items are converted from it to the standard one.
    """

    frame = "standard"  # the frame of the items returned

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        split: str = "trainval",
        num_points: int | None = 2048,
        use_normals: bool = False,
        categories: Sequence[str] | None = None,
        seed: int | None = None,
        normalize: bool = True,
        transform: Callable | None = None,
        cache: bool = True,
        frame: str | None = None,
    ):
        self._frame_map = parse_frame(frame if frame is not None else "standard")
        self.source_frame = canonical_frame(frame if frame is not None else "standard")
        if split not in SPLITS:
            raise ValueError(f"ShapeNetPart: split must be one of {SPLITS}, got {split!r}.")
        if num_points is not None and num_points < 1:
            raise ValueError(f"ShapeNetPart: num_points must be >= 1 or None, got {num_points}.")
        self.root = _find_root(root, split)
        self.split = split
        self.num_points = num_points
        self.use_normals = use_normals
        self.seed = seed
        self.normalize = normalize
        self.transform = transform
        self.cache = cache
        self._cache: dict[int, np.ndarray] = {}
        cats = _read_category_file(self.root / "synsetoffset2category.txt")
        if categories is not None:
            unknown = sorted(set(categories) - set(cats))
            if unknown:
                raise ValueError(f"ShapeNetPart: categories {unknown} are not in {self.root}/synsetoffset2category.txt "
                                 f"(it lists {', '.join(cats)}).")
            cats = {k: v for k, v in cats.items() if k in set(categories)}
        ids = _read_split_ids(self.root, split)
        self.items: list[tuple[int, Path]] = []
        for name, synset in cats.items():
            folder = self.root / synset
            if not folder.is_dir():
                raise FileNotFoundError(f"ShapeNetPart: category folder {folder} ({name}) does not exist.")
            for fn in sorted(os.listdir(folder)):
                if fn.endswith(".txt") and fn[:-4] in ids:
                    self.items.append((CATEGORIES.index(name), folder / fn))
        self.categories = [CATEGORIES[c] for c in sorted({c for c, _ in self.items})]

    @property
    def num_classes(self) -> int:
        """Part labels over all categories (50)."""
        return NUM_PARTS

    @property
    def normalization(self) -> str:
        """``"unit_sphere"`` when items are centred and scaled into the unit sphere, else ``"none"``."""
        return "unit_sphere" if self.normalize else "none"

    def __len__(self) -> int:
        return len(self.items)

    def source(self, index: int) -> str:
        return str(self.items[index][1])

    def raw(self, index: int) -> np.ndarray:
        """The stored ``(P, 7)`` rows of item ``index`` (checked: finite, part labels of its own category)."""
        if index in self._cache:
            return self._cache[index]
        cat, path = self.items[index]
        data = read_shape_txt(path)
        if not np.isfinite(data).all():
            raise ValueError(f"ShapeNetPart shape file {path} holds NaN/inf values; clean or remove it.")
        labels = data[:, 6].astype(np.int64)
        own = SEG_CLASSES[CATEGORIES[cat]]
        bad = ~np.isin(labels, own)
        if bad.any():
            raise ValueError(f"ShapeNetPart shape file {path} ({CATEGORIES[cat]}): part labels "
                             f"{sorted(set(labels[bad].tolist()))[:10]} are not among the category's parts {own}.")
        if self.cache:
            self._cache[index] = data
        return data

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, torch.Tensor]:
        data = self.raw(index)
        pts = np.array(data[:, :6] if self.use_normals else data[:, :3], dtype=np.float32)
        seg = data[:, 6].astype(np.int64)
        pts = self._frame_map.apply(pts)
        if self.normalize:
            pts[:, :3] = normalize_unit_sphere_np(pts[:, :3])
        if self.num_points is not None:
            g = None if self.seed is None else torch.Generator().manual_seed(int(self.seed) * 1_000_003 + index)
            choice = torch.randint(len(seg), (self.num_points,), generator=g).numpy()
            pts, seg = pts[choice], seg[choice]
        out = torch.from_numpy(np.ascontiguousarray(pts))
        if self.transform is not None:
            out = self.transform(out)
        return out, self.items[index][0], torch.from_numpy(np.ascontiguousarray(seg))

    def __repr__(self) -> str:
        return (f"ShapeNetPart(split={self.split!r}, size={len(self)}, categories={len(self.categories)}, "
                f"num_points={self.num_points}, use_normals={self.use_normals})")
