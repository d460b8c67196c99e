"""Clouds with NaN/inf coordinates: an error naming the file/sample by default, dropped (and logged) on request."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from zoo.data import build_dataset
from zoo.data.pointcloud import io
from zoo.data.pointcloud.modelnet import MODELNET10_CLASSES, ModelNet10, ModelNet40
from zoo.data.pointcloud.scanobjectnn import ScanObjectNN
from zoo.data.pointcloud.synthetic import SyntheticShapes

RNG = np.random.default_rng(0)


def pcd_tree(root: Path, bad: dict[str, float]) -> None:
    """modelnet10/<class>/train/<class>_000{1,2}.pcd, 64 points; ``bad`` = {relative path: value put at point 5}."""
    for c in MODELNET10_CLASSES:
        (root / c / "train").mkdir(parents=True, exist_ok=True)
        for j in (1, 2):
            rel = f"{c}/train/{c}_{j:04d}.pcd"
            pts = RNG.normal(size=(64, 3)).astype(np.float32)
            if rel in bad:
                pts[5, 1] = bad[rel]
            io.write_pcd(root / rel, pts)


BAD = {"chair/train/chair_0002.pcd": np.nan, "sofa/train/sofa_0001.pcd": np.inf}


@pytest.mark.parametrize("cache", [True, False])
def test_nonfinite_cloud_is_an_error_naming_the_file(tmp_path, cache):
    root = tmp_path / "modelnet10"
    pcd_tree(root, BAD)
    if cache:  # stacked once: checked at construction, every bad file listed
        with pytest.raises(ValueError) as err:
            ModelNet10(tmp_path, num_points=32, cache_dir=tmp_path / "c")
        msg = str(err.value)
        assert "2 of 20 clouds have NaN/inf coordinates" in msg
    else:  # read per item: checked when read
        ds = ModelNet10(tmp_path, num_points=32, cache=False)
        ds[0]
        with pytest.raises(ValueError) as err:
            ds[2 * MODELNET10_CLASSES.index("chair") + 1]
        msg = str(err.value)
        assert "this cloud has NaN/inf coordinates" in msg
    assert str(root / "chair" / "train" / "chair_0002.pcd") in msg
    assert "data.kwargs.drop_nonfinite=true" in msg


@pytest.mark.parametrize("cache", [True, False])
def test_drop_nonfinite_drops_and_logs(tmp_path, cache, caplog):
    root = tmp_path / "modelnet10"
    pcd_tree(root, BAD)
    with caplog.at_level(logging.WARNING, logger="zoo"):
        ds = ModelNet10(tmp_path, num_points=32, cache=cache, cache_dir=tmp_path / "c", drop_nonfinite=True)
    assert len(ds) == 18 and sorted(ds.dropped_nonfinite) == sorted(str(root / r) for r in BAD)
    assert any("dropped 2 of 20 clouds with NaN/inf" in r.getMessage() and r.name == "zoo" for r in caplog.records)
    labels = [MODELNET10_CLASSES[y] for y in ds.labels]
    assert labels.count("chair") == labels.count("sofa") == 1 and labels.count("bed") == 2
    for i in range(len(ds)):  # every remaining item is finite, its label matches its file
        x, y = ds[i]
        assert torch.isfinite(x).all() and ds.source(i).split("/")[-3] == MODELNET10_CLASSES[y]
    chair = labels.index("chair")
    assert ds.source(chair).endswith("chair_0001.pcd")
    np.testing.assert_array_equal(ds.raw_points(chair), io.read_pcd(root / "chair/train/chair_0001.pcd"))
    copy = pickle.loads(pickle.dumps(ds))  # spawned DataLoader workers see the same items
    np.testing.assert_array_equal(copy[chair][0].numpy(), ds[chair][0].numpy())


def test_scanobjectnn_names_file_and_sample_and_keeps_masks_aligned(tmp_path):
    f = tmp_path / "main_split" / "test_objectdataset.h5"
    f.parent.mkdir(parents=True)
    data = RNG.normal(size=(5, 2048, 3)).astype(np.float32)
    data[3, 100, 0] = np.nan
    mask = np.arange(5)[:, None].repeat(2048, 1)
    with h5py.File(f, "w") as h:
        h["data"], h["label"], h["mask"] = data, np.arange(5), mask
    with pytest.raises(ValueError, match=rf"{f} \[sample 3\]"):
        ScanObjectNN(tmp_path, split="test")
    ds = ScanObjectNN(tmp_path, split="test", drop_nonfinite=True, return_mask=True)
    assert len(ds) == 4 and ds.labels.tolist() == [0, 1, 2, 4] and ds.dropped_nonfinite == [f"{f} [sample 3]"]
    x, y, m = ds[3]
    np.testing.assert_array_equal(x.numpy(), data[4])
    np.testing.assert_array_equal(m.numpy(), mask[4])
    assert y == 4


def test_modelnet40_h5_names_the_right_file_of_several(tmp_path):
    folder = tmp_path / "modelnet40_ply_hdf5_2048"
    folder.mkdir()
    for i in range(2):
        d = RNG.normal(size=(3, 2048, 3)).astype(np.float32)
        if i == 1:
            d[2, 0, 2] = -np.inf
        with h5py.File(folder / f"ply_data_test{i}.h5", "w") as h:
            h["data"], h["label"] = d, np.zeros((3, 1), np.uint8)
    with pytest.raises(ValueError, match=r"ply_data_test1.h5 \[sample 2\]"):
        ModelNet40(tmp_path, split="test")
    assert len(ModelNet40(tmp_path, split="test", drop_nonfinite=True)) == 5


def test_drop_nonfinite_through_config_kwargs(tmp_path, caplog):
    """``data.kwargs.drop_nonfinite=true`` on the command line reaches the dataset of a shipped config."""
    from zoo.cli import build_recipe

    root = tmp_path / "modelnet10"
    pcd_tree(root, BAD)
    config = str(Path(__file__).resolve().parents[2] / "configs" / "pointramba" / "modelnet10_small.yaml")
    base = [f"data.root={tmp_path}", "data.kwargs.num_points=32", f"data.kwargs.cache_dir={tmp_path / 'c'}"]
    recipe, _, _ = build_recipe(config, base)
    with pytest.raises(ValueError, match="data.kwargs.drop_nonfinite=true"):
        recipe.train_dataset
    recipe, _, _ = build_recipe(config, [*base, "data.kwargs.drop_nonfinite=true"])
    with caplog.at_level(logging.WARNING, logger="zoo"):
        assert len(recipe.train_dataset) == 18
    assert any("dropped 2 of 20" in r.getMessage() for r in caplog.records)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy on the inf noise
def test_synthetic_accepts_the_option():
    ds = SyntheticShapes(split="test", samples_per_class=2, num_points=64, drop_nonfinite=True)
    assert len(ds) == 20
    with pytest.raises(ValueError, match="NaN/inf"):
        SyntheticShapes(split="test", samples_per_class=2, num_points=64, noise=float("inf"))
    assert len(build_dataset("synthetic_shapes", split="test", samples_per_class=1, num_points=8,
                             noise=float("inf"), drop_nonfinite=True)) == 0  # fmt: skip
