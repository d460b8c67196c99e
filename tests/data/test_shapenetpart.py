"""ShapeNetPart loader on tiny files in the real layout, the category -> part mapping, the official augmentation, the
synthetic part-labelled set; the real data (``$ZOO_DATA/shapenetpart``) when present."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from zoo.data import build_dataset
from zoo.data.pointcloud.shapenetpart import (
    CATEGORIES,
    NUM_CATEGORIES,
    NUM_PARTS,
    SEG_CLASSES,
    SYNSETS,
    ShapeNetPart,
    category_of_part,
    scale_shift,
)
from zoo.data.pointcloud.synthetic_parts import SYNTHETIC_CATEGORIES, make_shape, write_synthetic_shapenetpart


def test_category_to_part_mapping_is_complete():
    assert NUM_CATEGORIES == 16 and NUM_PARTS == 50 and CATEGORIES == sorted(CATEGORIES)
    flat = [p for c in CATEGORIES for p in SEG_CLASSES[c]]
    assert flat == list(range(50))  # contiguous ranges in category order, every label once
    owner = category_of_part()
    assert owner.shape == (50,) and (owner >= 0).all()
    assert owner[0] == CATEGORIES.index("Airplane") and owner[49] == CATEGORIES.index("Table")
    assert {c: len(SEG_CLASSES[c]) for c in ("Motorbike", "Mug", "Lamp", "Chair")} == {
        "Motorbike": 6, "Mug": 2, "Lamp": 4, "Chair": 4}
    assert SYNSETS["Airplane"] == "02691156" and len(set(SYNSETS.values())) == 16


def _shape_rows(category: str, n: int, seed: int) -> np.ndarray:
    """Rows x y z nx ny nz label; the label is a function of x (so it can be checked after resampling)."""
    rng = np.random.default_rng(seed)
    xyz = rng.normal(size=(n, 3)).astype(np.float32) + 3.0  # off-centre: normalisation must move it
    parts = SEG_CLASSES[category]
    label = np.where(xyz[:, 0] > 3.0, parts[-1], parts[0])
    nrm = np.tile(np.array([0.0, 1.0, 0.0], np.float32), (n, 1))
    return np.concatenate([xyz, nrm, label[:, None]], 1)


def _write_layout(root: Path, shapes: dict[str, list[tuple[str, str, int]]]) -> Path:
    """shapes: {split: [(category, token, n_points)]}; writes the real layout (all 16 categories listed)."""
    (root / "train_test_split").mkdir(parents=True)
    (root / "synsetoffset2category.txt").write_text("".join(f"{c}\t{SYNSETS[c]}\n" for c in CATEGORIES))
    for c in CATEGORIES:
        (root / SYNSETS[c]).mkdir()
    for split in ("train", "val", "test"):
        entries = []
        for i, (cat, token, n) in enumerate(shapes.get(split, [])):
            np.savetxt(root / SYNSETS[cat] / f"{token}.txt", _shape_rows(cat, n, seed=hash(token) % 1000),
                       fmt="%.6f %.6f %.6f %.6f %.6f %.6f %d")
            entries.append(f"shape_data/{SYNSETS[cat]}/{token}")
        (root / "train_test_split" / f"shuffled_{split}_file_list.json").write_text(json.dumps(entries))
    return root


@pytest.fixture
def tiny_root(tmp_path):
    return _write_layout(tmp_path / "shapenetcore_partanno_segmentation_benchmark_v0_normal", {
        "train": [("Airplane", "a1", 300), ("Mug", "m1", 250), ("Table", "t1", 280)],
        "val": [("Airplane", "a2", 200)],
        "test": [("Mug", "m2", 220), ("Table", "t2", 260)],
    })


def test_splits_categories_and_items(tiny_root):
    train = ShapeNetPart(tiny_root, split="train", num_points=2048)
    assert len(train) == 3 and train.categories == ["Airplane", "Mug", "Table"] and train.num_classes == 50
    assert len(ShapeNetPart(tiny_root, split="val")) == 1 and len(ShapeNetPart(tiny_root, split="test")) == 2
    assert len(ShapeNetPart(tiny_root, split="trainval")) == 4
    pts, cat, seg = train[1]
    assert pts.shape == (2048, 3) and pts.dtype == torch.float32 and seg.shape == (2048,) and seg.dtype == torch.long
    assert cat == CATEGORIES.index("Mug") and set(seg.tolist()) <= set(SEG_CLASSES["Mug"])
    # the parent folder and build_dataset find it too; normals on request
    ds = build_dataset("shapenetpart", root=str(tiny_root.parent), split="test", num_points=100, use_normals=True)
    pts, cat, seg = ds[0]
    assert pts.shape == (100, 6) and torch.allclose(pts[:, 3:], torch.tensor([0.0, 1.0, 0.0]).expand(100, 3))
    only = ShapeNetPart(tiny_root, split="trainval", categories=["Table"])
    assert len(only) == 1 and only[0][1] == CATEGORIES.index("Table")


def test_normalised_resampled_points_keep_their_labels(tiny_root):
    ds = ShapeNetPart(tiny_root, split="train", num_points=2048, seed=0)
    raw = ds.raw(0)
    assert raw.shape == (300, 7)
    pts, _, seg = ds[0]
    # unit sphere around the centroid of the stored shape (official pc_normalize), then a draw with replacement
    xyz = raw[:, :3] - raw[:, :3].mean(0)
    xyz /= np.linalg.norm(xyz, axis=1).max()
    rows = {tuple(np.round(r, 5)): int(lab) for r, lab in zip(xyz, raw[:, 6])}
    for p, s in zip(pts.numpy()[:200], seg.numpy()[:200]):
        assert rows[tuple(np.round(p, 5))] == s  # every drawn point is a stored point with its own label
    assert pts.norm(dim=1).max() <= 1.0 + 1e-5 and len(np.unique(pts.numpy(), axis=0)) < 2048  # replacement
    # seeded draws repeat; unseeded draws do not
    assert torch.equal(ShapeNetPart(tiny_root, split="train", seed=0)[0][0], pts)
    free = ShapeNetPart(tiny_root, split="train")
    assert not torch.equal(free[0][0], free[0][0])
    full = ShapeNetPart(tiny_root, split="train", num_points=None, normalize=False)[0]
    np.testing.assert_allclose(full[0].numpy(), raw[:, :3])


def test_scale_shift_is_the_official_augmentation():
    pts = torch.randn(4, 50, 6)
    g = torch.Generator().manual_seed(0)
    out = scale_shift(pts, generator=g)
    g = torch.Generator().manual_seed(0)
    scale = torch.rand(4, 1, 1, generator=g) * 0.4 + 0.8
    shift = (torch.rand(4, 1, 3, generator=g) * 2 - 1) * 0.1
    torch.testing.assert_close(out[..., :3], pts[..., :3] * scale + shift)
    assert torch.equal(out[..., 3:], pts[..., 3:])  # normals untouched, as upstream
    assert ((scale >= 0.8) & (scale <= 1.2)).all() and shift.abs().max() <= 0.1


def test_bad_layouts_name_the_file_and_the_fix(tmp_path, tiny_root):
    with pytest.raises(FileNotFoundError, match=r"(?s)ShapeNetPart \(train split\) not found.*synsetoffset2category"):
        ShapeNetPart(tmp_path / "nowhere", split="train")
    with pytest.raises(ValueError, match="split must be one of"):
        ShapeNetPart(tiny_root, split="training")
    with pytest.raises(ValueError, match=r"categories \['Plane'\] are not in"):
        ShapeNetPart(tiny_root, categories=["Plane"])
    bad = tiny_root / SYNSETS["Mug"] / "m1.txt"
    rows = np.loadtxt(bad)
    rows[3, 6] = 47  # a Table label in a Mug
    np.savetxt(bad, rows, fmt="%.6f %.6f %.6f %.6f %.6f %.6f %d")
    with pytest.raises(ValueError, match=r"m1.txt \(Mug\): part labels \[47\] are not among the category's parts"):
        ShapeNetPart(tiny_root, split="train")[1]
    bad.write_text("1 2 3\n")
    with pytest.raises(ValueError, match=r"m1.txt: expected rows of 7 numbers"):
        ShapeNetPart(tiny_root, split="train")[1]
    (tiny_root / "train_test_split" / "shuffled_val_file_list.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"shuffled_val_file_list.json does not exist"):
        ShapeNetPart(tiny_root, split="trainval")


@pytest.mark.parametrize("category", SYNTHETIC_CATEGORIES)
def test_synthetic_shapes_have_their_categorys_parts(category):
    rows = make_shape(category, np.random.default_rng(0), num_points=1500)
    assert rows.shape == (1500, 7) and np.isfinite(rows).all()
    labels = set(rows[:, 6].astype(int).tolist())
    assert labels <= set(SEG_CLASSES[category]) and len(labels) >= 2
    np.testing.assert_allclose(np.linalg.norm(rows[:, 3:6], axis=1), 1.0, atol=1e-4)  # unit normals


def test_synthetic_set_is_read_by_the_loader(tmp_path):
    root = write_synthetic_shapenetpart(tmp_path / "syn", {"train": 2, "val": 1, "test": 1}, num_points=400, seed=3)
    ds = ShapeNetPart(root, split="train", num_points=256, seed=0)
    assert len(ds) == 2 * len(SYNTHETIC_CATEGORIES) and ds.categories == sorted(SYNTHETIC_CATEGORIES)
    for i in range(len(ds)):
        pts, cat, seg = ds[i]
        assert set(seg.tolist()) <= set(SEG_CLASSES[CATEGORIES[cat]])
    again = write_synthetic_shapenetpart(tmp_path / "syn2", {"train": 2, "val": 1, "test": 1}, num_points=400, seed=3)
    assert torch.equal(ShapeNetPart(again, split="test", seed=0)[0][0], ShapeNetPart(root, split="test", seed=0)[0][0])


@pytest.mark.data
def test_real_shapenetpart_when_present():
    from zoo.data.paths import data_root

    base = data_root()
    folder = None if base is None else next((p for p in (base / "shapenetpart",
                                            base / "shapenetcore_partanno_segmentation_benchmark_v0_normal")
                                            if p.is_dir()), None)
    if folder is None:
        pytest.skip("no ShapeNetPart under the data root ($ZOO_DATA / shared/data)")
    ds = ShapeNetPart(folder, split="test", num_points=2048, seed=0)
    assert len(ds) == 2874 and ds.categories == CATEGORIES
    pts, cat, seg = ds[0]
    assert pts.shape == (2048, 3) and set(seg.tolist()) <= set(SEG_CLASSES[CATEGORIES[cat]])


def test_prepare_data_writes_the_synthetic_set_and_refuses_a_non_empty_folder(tmp_path):
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, "tools/prepare_data.py", "shapenetpart-synthetic", "--out", str(tmp_path / "syn"),
           "--train", "1", "--val", "1", "--test", "1", "--num-points", "200"]
    run = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert len(ShapeNetPart(tmp_path / "syn", split="trainval")) == 2 * len(SYNTHETIC_CATEGORIES)
    again = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "is not empty; pass --overwrite" in again.stderr


def test_files_are_in_the_standard_frame_and_frame_converts(tiny_root):
    ds = ShapeNetPart(tiny_root, split="test", num_points=None, normalize=False, use_normals=True)
    assert ds.source_frame == ds.frame == "standard" and ds.normalization == "none"
    raw = ds.raw(0)
    np.testing.assert_array_equal(ds[0][0].numpy(), raw[:, :6])
    z_up = ShapeNetPart(tiny_root, split="test", num_points=None, normalize=False, use_normals=True, frame="x,z,y")
    pts = z_up[0][0].numpy()  # points and normals both turn: (x, y, z) -> (x, z, y)
    np.testing.assert_array_equal(pts, raw[:, [0, 2, 1, 3, 5, 4]])
    assert ShapeNetPart(tiny_root, split="test").normalization == "unit_sphere"


def test_synthetic_chairs_stand_on_the_y_axis(tmp_path):
    """The procedural shapes are in the standard frame (y up), as ShapeNet: legs below the seat below the back."""
    root = write_synthetic_shapenetpart(tmp_path / "syn", {"train": 3, "val": 0, "test": 0}, num_points=600, seed=1)
    ds = ShapeNetPart(root, split="train", num_points=None, normalize=False, categories=["Chair"])
    for i in range(len(ds)):
        pts, _, seg = ds[i]
        height = {part: pts[seg == part, 1].mean().item() for part in (12, 13, 14)}  # back, seat, legs
        assert height[14] < height[13] < height[12], height
