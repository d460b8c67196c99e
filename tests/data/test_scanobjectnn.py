"""ScanObjectNN from tiny h5 files in the official layout (main_split/, main_split_nobg/)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from zoo.data import build_dataset, list_datasets
from zoo.data.pointcloud.scanobjectnn import SCANOBJECTNN_CLASSES, ScanObjectNN, scanobjectnn_file

FILES = {
    ("obj_bg", "train"): "main_split/training_objectdataset.h5",
    ("obj_bg", "test"): "main_split/test_objectdataset.h5",
    ("obj_only", "train"): "main_split_nobg/training_objectdataset.h5",
    ("obj_only", "test"): "main_split_nobg/test_objectdataset.h5",
    ("pb_t50_rs", "train"): "main_split/training_objectdataset_augmentedrot_scale75.h5",
    ("pb_t50_rs", "test"): "main_split/test_objectdataset_augmentedrot_scale75.h5",
}


@pytest.fixture
def h5_root(tmp_path) -> tuple[Path, dict]:
    """h5_files/ with all six files; each holds n clouds (data (n, 2048, 3), label (n,), mask (n, 2048))."""
    rng = np.random.default_rng(0)
    root, truth = tmp_path / "h5_files", {}
    for i, (key, rel) in enumerate(FILES.items()):
        n = 3 + i
        data = rng.normal(size=(n, 2048, 3)).astype(np.float32)
        label = rng.integers(0, 15, size=n).astype(np.int64)
        mask = rng.integers(-1, 15, size=(n, 2048)).astype(np.int64)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(root / rel, "w") as h:
            h["data"], h["label"], h["mask"] = data, label, mask
        truth[key] = (data, label, mask)
    return root, truth


def test_official_file_names():
    for (variant, split), rel in FILES.items():
        assert scanobjectnn_file(variant, split) == rel
    assert scanobjectnn_file("hardest", "test") == FILES[("pb_t50_rs", "test")]
    assert scanobjectnn_file("OBJ_ONLY", "train") == FILES[("obj_only", "train")]


def test_class_names_follow_shape_names_ext():
    assert SCANOBJECTNN_CLASSES == ["bag", "bin", "box", "cabinet", "chair", "desk", "display", "door", "shelf",
                                    "table", "bed", "pillow", "sink", "sofa", "toilet"]  # fmt: skip


@pytest.mark.parametrize("variant", ["obj_bg", "obj_only", "pb_t50_rs"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_variants_read_back_exactly(h5_root, variant, split):
    root, truth = h5_root
    data, label, _ = truth[(variant, split)]
    for r in (root, root.parent):  # the h5_files folder or its parent
        ds = ScanObjectNN(r, split=split, variant=variant)
        assert len(ds) == len(label) and ds.classes == SCANOBJECTNN_CLASSES and ds.num_classes == 15
        for i in range(len(ds)):
            x, y = ds[i]
            assert x.dtype == torch.float32 and x.shape == (2048, 3) and y == label[i]
            np.testing.assert_array_equal(x.numpy(), data[i])


def test_num_points_mask_and_registered_names(h5_root):
    root, truth = h5_root
    data, _, mask = truth[("obj_only", "test")]
    ds = build_dataset("scanobjectnn_obj_only", root=root, split="test", num_points=1024, return_mask=True)
    x, _, m = ds[1]
    np.testing.assert_array_equal(x.numpy(), data[1][:1024])
    np.testing.assert_array_equal(m.numpy(), mask[1][:1024])
    hard = build_dataset("scanobjectnn", root=root, split="train", variant="hardest", num_points=512, sampling="fps")
    assert hard.variant == "pb_t50_rs" and hard[0][0].shape == (512, 3)
    assert {"scanobjectnn", "scanobjectnn_obj_bg", "scanobjectnn_obj_only", "scanobjectnn_pb_t50_rs"} <= set(
        list_datasets("scanobjectnn*")
    )
    normed = ScanObjectNN(root, split="test", variant="obj_bg", normalize=True)[0][0]
    np.testing.assert_allclose(normed.norm(dim=1).max().item(), 1.0, rtol=1e-5)


def test_bad_variant_and_bad_root(tmp_path):
    with pytest.raises(ValueError, match="variant must be one of"):
        ScanObjectNN(tmp_path, variant="pb_t25")
    with pytest.raises(FileNotFoundError) as err:
        ScanObjectNN(tmp_path / "nowhere", split="test", variant="pb_t50_rs")
    msg = str(err.value)
    assert "ScanObjectNN pb_t50_rs (test split) not found" in msg
    assert str(tmp_path / "nowhere" / "h5_files") in msg
    assert (
        "main_split/test_objectdataset_augmentedrot_scale75.h5" in msg
        and "main_split_nobg/test_objectdataset.h5" in msg
    )
    assert "https://hkust-vgd.github.io/scanobjectnn/" in msg


def test_out_of_range_labels_are_rejected(tmp_path):
    (tmp_path / "main_split").mkdir()
    with h5py.File(tmp_path / "main_split" / "test_objectdataset.h5", "w") as h:
        h["data"], h["label"], h["mask"] = np.zeros((2, 2048, 3), np.float32), np.array([0, 15]), np.zeros((2, 2048))
    with pytest.raises(ValueError, match=r"labels outside \[0, 15\)"):
        ScanObjectNN(tmp_path, split="test")


def test_files_are_in_the_standard_frame_and_frame_converts(h5_root):
    """The official h5 files are y up (the standard frame): read as stored; ``frame=`` converts other exports."""
    root, truth = h5_root
    data = truth[("obj_bg", "test")][0]
    ds = ScanObjectNN(root, split="test")
    assert ds.source_frame == ds.frame == "standard" and ds.normalization == "none"
    np.testing.assert_array_equal(ds[0][0].numpy(), data[0])
    z_up = ScanObjectNN(root, split="test", frame="off_mesh")  # a z-up export: (x, y, z) -> (x, z, y)
    np.testing.assert_array_equal(z_up[0][0].numpy(), data[0][:, [0, 2, 1]])
    assert ScanObjectNN(root, split="test", normalize=True).normalization == "unit_sphere"
    with pytest.raises(ValueError, match="unknown point-cloud frame"):
        ScanObjectNN(root, split="test", frame="z-up")
