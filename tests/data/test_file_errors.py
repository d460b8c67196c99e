"""Corrupt, truncated and too-small files: every error names the file (real files of each format, then cut)."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest

from zoo.data.images.mnist import MNIST, read_idx, write_idx
from zoo.data.pointcloud import io
from zoo.data.pointcloud.modelnet import MODELNET10_CLASSES, ModelNet10, ModelNet40, load_dat
from zoo.data.pointcloud.scanobjectnn import ScanObjectNN

RNG = np.random.default_rng(0)


def cut(path: Path, keep: float | int) -> Path:
    """Truncate ``path`` to ``keep`` bytes (int) or that fraction of its size (float), as a broken download does."""
    raw = path.read_bytes()
    path.write_bytes(raw[: keep if isinstance(keep, int) else int(len(raw) * keep)])
    return path


def h5_file(path: Path, n: int = 4, points: int = 2048) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as h:
        h["data"] = RNG.normal(size=(n, points, 3)).astype(np.float32)
        h["label"] = RNG.integers(0, 15, size=n).astype(np.int64)
        h["mask"] = np.zeros((n, points), np.int64)
    return path


# ----------------------------------------------------------------------------------------------------- h5
@pytest.mark.parametrize("keep", [0.5, 0.98, 100, 0])
def test_truncated_scanobjectnn_h5_names_the_file(tmp_path, keep):
    f = cut(h5_file(tmp_path / "main_split" / "test_objectdataset.h5"), keep)
    with pytest.raises(OSError) as err:
        ScanObjectNN(tmp_path, split="test")
    msg = str(err.value)
    assert str(f) in msg and "corrupt or truncated" in msg and "download it again" in msg
    assert "hkust-vgd.github.io/scanobjectnn" in msg  # where to get it


def test_garbage_modelnet40_h5_names_the_file(tmp_path):
    folder = tmp_path / "modelnet40_ply_hdf5_2048"
    good = h5_file(folder / "ply_data_train0.h5", n=2)
    bad = folder / "ply_data_train1.h5"
    bad.write_bytes(b"<html>404 Not Found</html>")  # what a failed download saves
    (folder / "train_files.txt").write_text(f"{good.name}\n{bad.name}\n")
    with pytest.raises(OSError, match=rf"{bad}: cannot read this HDF5 file; it is corrupt or truncated") as err:
        ModelNet40(tmp_path)
    assert "modelnet40_ply_hdf5_2048.zip" in str(err.value)


def test_h5_missing_dataset_names_the_file_and_its_keys(tmp_path):
    f = tmp_path / "main_split" / "training_objectdataset.h5"
    f.parent.mkdir(parents=True)
    with h5py.File(f, "w") as h:
        h["points"] = np.zeros((1, 8, 3), np.float32)
    with pytest.raises(KeyError, match=r"training_objectdataset.h5 has no dataset\(s\) \['data', 'label'\]"):
        ScanObjectNN(tmp_path)


# ----------------------------------------------------------------------------------------------------- .dat
def test_truncated_dat_names_the_file(tmp_path):
    f = tmp_path / "modelnet40_test_8192pts_fps.dat"
    pts = [RNG.normal(size=(64, 6)).astype(np.float32) for _ in range(3)]
    f.write_bytes(pickle.dumps([pts, [np.array([i], np.int32) for i in range(3)]]))
    cut(f, 0.6)
    with pytest.raises(ValueError, match=rf"{f}: cannot unpickle this .dat; it is truncated or corrupt"):
        load_dat(f)
    with pytest.raises(ValueError, match="Point-BERT"):
        ModelNet40(tmp_path, split="test")


# ----------------------------------------------------------------------------------------------------- readers
@pytest.mark.parametrize("data", ["binary", "binary_compressed", "ascii"])
def test_truncated_pcd_names_the_file(tmp_path, data):
    f = tmp_path / f"cloud_{data}.pcd"
    io.write_pcd(f, RNG.normal(size=(200, 3)), data=data)
    cut(f, 0.7)
    with pytest.raises(ValueError, match=rf"^{f}: .*truncated"):
        io.read_pcd(f)


def test_pcd_header_cut_or_garbled_names_the_file(tmp_path):
    f = tmp_path / "a.pcd"
    io.write_pcd(f, RNG.normal(size=(10, 3)))
    cut(f, 60)  # inside the header
    with pytest.raises(ValueError, match=rf"^{f}: not a PCD file"):
        io.read_pcd(f)
    f.write_bytes(b"VERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\nPOINTS ten\nDATA ascii\n")
    with pytest.raises(ValueError, match=rf"^{f}: corrupt or truncated PCD file"):
        io.read_pcd(f)


@pytest.mark.parametrize("binary", [False, True])
def test_truncated_ply_names_the_file(tmp_path, binary):
    f = tmp_path / "m.ply"
    io.write_ply(f, RNG.normal(size=(50, 3)), faces=np.array([[0, 1, 2]] * 20), binary=binary)
    cut(f, 0.4)
    with pytest.raises(ValueError, match=rf"^{f}: PLY (ascii|binary) data is truncated"):
        io.read_ply(f)


def test_truncated_or_garbled_off_names_the_file(tmp_path):
    f = tmp_path / "bed_0001.off"
    io.write_off(f, RNG.normal(size=(30, 3)), np.array([[0, 1, 2]] * 40))
    cut(f, 0.5)
    with pytest.raises(ValueError, match=rf"^{f}: OFF header announces 30 vertices and 40 faces"):
        io.read_off(f)
    f.write_text("OFF\n3\n")
    with pytest.raises(ValueError, match=rf"^{f}: OFF counts line must be"):
        io.read_off(f)
    f.write_text("OFF 3 1 0\n0 0 0\n1 x 0\n0 1 0\n3 0 1 2\n")
    with pytest.raises(ValueError, match=rf"^{f}: corrupt or truncated OFF file"):
        io.read_off(f)


def test_bad_txt_and_npy_name_the_file(tmp_path):
    f = tmp_path / "chair_0001.txt"
    f.write_text("0,0,0,0,0,1\n1,0,0,0,0,1\n0,1,0,0")  # last line cut
    with pytest.raises(ValueError, match=rf"^{f}: rows do not all have 6 values"):
        io.read_txt(f)
    f.write_text("0,0,0\n1,nan?,0\n")
    with pytest.raises(ValueError, match=rf"^{f}: not a text point file"):
        io.read_txt(f)
    n = tmp_path / "c.npy"
    np.save(n, RNG.normal(size=(100, 3)).astype(np.float32))
    cut(n, 0.5)
    with pytest.raises(ValueError, match=rf"^{n}: corrupt or truncated .npy file"):
        io.read_points(n)


# ----------------------------------------------------------------------------------------------------- too few points
def write_pcd_tree(root: Path, points: int = 32, small: dict[str, int] | None = None) -> None:
    """<class>/{train,test}/<class>_0001.pcd with ``points`` points; ``small`` = {relative path: fewer points}."""
    for c in MODELNET10_CLASSES:
        for split in ("train", "test"):
            rel = f"{c}/{split}/{c}_0001.pcd"
            (root / c / split).mkdir(parents=True, exist_ok=True)
            io.write_pcd(root / rel, RNG.normal(size=((small or {}).get(rel, points), 3)))


@pytest.mark.parametrize("cache", [False, True])
def test_cloud_with_too_few_points_names_the_file_and_the_fixes(tmp_path, cache):
    root = tmp_path / "modelnet10"
    write_pcd_tree(root, points=32, small={"sofa/train/sofa_0001.pcd": 10})
    ds = ModelNet10(tmp_path, num_points=16, cache=cache, cache_dir=tmp_path / "c")
    assert ds[0][0].shape == (16, 3)
    sofa = MODELNET10_CLASSES.index("sofa")
    with pytest.raises(ValueError) as err:
        ds[sofa]
    msg = str(err.value)
    assert msg.startswith(str(root / "sofa" / "train" / "sofa_0001.pcd"))
    assert "num_points=16 but this cloud has 10 points" in msg
    assert "data.kwargs.num_points=10" in msg and "resample" in msg  # both fixes


def test_txt_clouds_all_too_small_fail_at_construction_naming_a_file(tmp_path):
    from test_modelnet import write_txt_tree

    write_txt_tree(tmp_path / "modelnet40_normal_resampled", nc=10, points=50)
    with pytest.raises(ValueError, match=r"bathtub_0001.txt and 5 more files: num_points=1024 but every stored cloud"):
        ModelNet10(tmp_path, cache=True, cache_dir=tmp_path / "c")  # default num_points=1024, 50 stored
    with pytest.raises(ValueError, match=r"bathtub_0001.txt: num_points=1024 but this cloud has 50 points"):
        ModelNet10(tmp_path, cache=False)[0]


# ----------------------------------------------------------------------------------------------------- MNIST
@pytest.mark.parametrize("keep", [0.5, 0.9, 12])
def test_truncated_mnist_gz_names_the_file(tmp_path, keep):
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", RNG.integers(0, 10, 500).astype(np.uint8))
    images = write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", RNG.integers(0, 255, (500, 28, 28)).astype(np.uint8))
    cut(images, keep)
    with pytest.raises(ValueError, match=rf"^{images}: cannot decompress this gzip file; it is truncated or corrupt"):
        read_idx(images)
    with pytest.raises(ValueError, match="download it again"):
        MNIST(tmp_path, split="test")


def test_corrupt_mnist_gz_crc_names_the_file(tmp_path):
    f = tmp_path / "x-idx1-ubyte.gz"
    raw = bytearray(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x02\x01\x02"))
    raw[-8] ^= 0xFF  # break the CRC
    f.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=rf"^{f}: cannot decompress"):
        read_idx(f)
    with pytest.raises(FileNotFoundError, match="nope.gz"):
        read_idx(tmp_path / "nope.gz")


def test_cut_dataset_cache_is_rebuilt_with_a_warning(tmp_path, caplog):
    root = tmp_path / "modelnet10"
    write_pcd_tree(root)
    first = ModelNet10(tmp_path, num_points=None, normalize=False, cache_dir=tmp_path / "c")
    expected = np.asarray(first._array).copy()
    cut(first.cache_path, 0.5)
    with caplog.at_level("WARNING", logger="zoo"):
        again = ModelNet10(tmp_path, num_points=None, normalize=False, cache_dir=tmp_path / "c")
    assert any(str(first.cache_path) in r.getMessage() and "rebuilding" in r.getMessage() for r in caplog.records)
    np.testing.assert_array_equal(np.asarray(again._array), expected)
