"""zoo prepare-data modelnet10-layouts: real-format txt files in, PointNet++'s txt layout and PointNet's h5 layout
out, both read back by the zoo's ModelNet10 reader with the same shapes and labels."""
from __future__ import annotations

import numpy as np
import pytest

from zoo.cli.prepare_data import main as prepare_main
from zoo.data import build_dataset

SHAPES = {"chair": 3, "toilet": 2, "sofa": 1}


@pytest.fixture
def resampled(tmp_path):
    """A modelnet40_normal_resampled folder in the real format (``x,y,z,nx,ny,nz`` lines) with a ModelNet40-only
    class beside the ModelNet10 ones."""
    rng = np.random.default_rng(0)
    src = tmp_path / "modelnet40_normal_resampled"
    for cls, n in {**SHAPES, "airplane": 2}.items():
        (src / cls).mkdir(parents=True)
        for k in range(1, n + 1):
            rows = np.hstack([rng.normal(size=(300, 3)), rng.normal(size=(300, 3))])
            np.savetxt(src / cls / f"{cls}_{k:04d}.txt", rows, fmt="%.6f", delimiter=",")
    return src


def test_both_layouts_hold_every_modelnet10_shape_and_read_back(resampled, tmp_path, capsys):
    out = tmp_path / "layouts"
    assert prepare_main(["modelnet10-layouts", "--src", str(resampled.parent), "--out", str(out)]) == 0
    assert "6 shapes" in capsys.readouterr().out
    listing = (out / "txt" / "modelnet40_normal_resampled" / "modelnet10_test.txt").read_text().split()
    assert sorted(listing) == sorted(f"{c}_{k:04d}" for c, n in SHAPES.items() for k in range(1, n + 1))
    txt = build_dataset("modelnet10", root=str(out / "txt"), split="test", num_points=256)
    h5 = build_dataset("modelnet10", root=str(out / "h5"), split="test", num_points=256)
    assert len(txt) == len(h5) == 6
    labels = lambda ds: sorted(int(ds[i][1]) for i in range(len(ds)))  # noqa: E731
    assert labels(txt) == labels(h5)
    import h5py

    with h5py.File(out / "h5" / "modelnet40_ply_hdf5_2048" / "ply_data_test0.h5") as f:
        assert f["data"].shape == (6, 300, 3) and f["label"].shape == (6, 1)  # fewer than 2048 points: all, shuffled
        first = np.loadtxt(resampled / "chair" / "chair_0001.txt", delimiter=",")[:, :3]
        assert np.allclose(np.sort(f["data"][0], axis=0), np.sort(first, axis=0), atol=1e-6)


def test_refusals_name_the_folder(resampled, tmp_path, capsys):
    out = tmp_path / "layouts"
    out.mkdir()
    assert prepare_main(["modelnet10-layouts", "--src", str(resampled), "--out", str(out)]) == 2
    assert f"{out} exists" in capsys.readouterr().err
    assert prepare_main(["modelnet10-layouts", "--src", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "no ModelNet10-class shapes" in capsys.readouterr().err
