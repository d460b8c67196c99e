"""MNIST IDX reader: round trips of tiny gz/raw files, layouts, slicing, errors, and the real t10k sample."""
import gzip
import hashlib

import numpy as np
import pytest
import torch

from zoo.data.images.mnist import MNIST, parse_split, read_idx, write_idx
from zoo.data.paths import data_dir

# md5 of the real files, from ../shared/data/README.md
T10K_MD5 = {"t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"}


def _fake(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8)


def _write(folder, prefix, images, labels, gz):
    folder.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", images)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", labels)


@pytest.mark.parametrize("gz", [False, True])
def test_round_trip(tmp_path, gz):
    images, labels = _fake(7)
    _write(tmp_path, "train", images, labels, gz)
    ds = MNIST(tmp_path, split="train")
    assert len(ds) == 7 and ds.classes == [str(i) for i in range(10)]
    assert torch.equal(ds.data, torch.from_numpy(images)) and ds.targets.tolist() == labels.tolist()
    img, label = ds[3]
    assert img.shape == (1, 28, 28) and img.dtype == torch.float32 and isinstance(label, int)
    assert torch.equal(img, torch.from_numpy(images[3]).float().unsqueeze(0) / 255) and label == labels[3]


def test_idx_header_is_the_standard_one(tmp_path):
    images, labels = _fake(2)
    write_idx(tmp_path / "x", images)
    write_idx(tmp_path / "y.gz", labels)
    assert (tmp_path / "x").read_bytes()[:16] == bytes.fromhex("00000803 00000002 0000001c 0000001c".replace(" ", ""))
    assert gzip.decompress((tmp_path / "y.gz").read_bytes())[:8] == bytes.fromhex("0000080100000002")
    assert np.array_equal(read_idx(tmp_path / "x"), images)
    floats = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    assert np.array_equal(read_idx(write_idx(tmp_path / "f", floats)), floats)


def test_torchvision_layout_and_test_alias(tmp_path):
    images, labels = _fake(5)
    _write(tmp_path / "MNIST" / "raw", "t10k", images, labels, gz=True)
    for split in ("test", "t10k"):
        assert torch.equal(MNIST(tmp_path, split=split).data, torch.from_numpy(images))


def test_slicing_split_and_subset(tmp_path):
    images, labels = _fake(10)
    _write(tmp_path, "t10k", images, labels, gz=False)
    first, rest = MNIST(tmp_path, split="test[:4]"), MNIST(tmp_path, split="test[4:]")
    assert len(first) == 4 and len(rest) == 6
    assert torch.equal(torch.cat([first.data, rest.data]), torch.from_numpy(images))
    assert torch.equal(MNIST(tmp_path, split="test", subset=(4, None)).data, rest.data)
    assert rest.indices.tolist() == list(range(4, 10))
    assert parse_split("train[-100:]") == ("train", slice(-100, None))
    with pytest.raises(ValueError, match="not both"):
        MNIST(tmp_path, split="test[:4]", subset=(0, 2))
    with pytest.raises(ValueError, match="selects no samples"):
        MNIST(tmp_path, split="test[20:]")
    with pytest.raises(ValueError, match="Bad MNIST split"):
        MNIST(tmp_path, split="val")


def test_transforms(tmp_path):
    images, labels = _fake(3)
    _write(tmp_path, "train", images, labels, gz=True)
    ds = MNIST(tmp_path, transform=lambda x: x * 2, target_transform=lambda y: y + 100)
    img, label = ds[1]
    expected = torch.from_numpy(images[1]).float().unsqueeze(0) / 255 * 2
    assert torch.equal(img, expected) and label == labels[1] + 100
    pil_img, _ = MNIST(tmp_path, pil=True)[1]
    assert pil_img.mode == "L" and np.array_equal(np.asarray(pil_img), images[1])


def test_missing_files_names_what_and_where(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        MNIST(tmp_path / "nowhere", split="train")
    msg = str(err.value)
    assert "train-images-idx3-ubyte[.gz]" in msg and "train-labels-idx1-ubyte[.gz]" in msg
    assert str(tmp_path / "nowhere" / "MNIST" / "raw") in msg


def test_bad_magic_truncation_and_mismatch(tmp_path):
    images, labels = _fake(4)
    _write(tmp_path, "train", images, labels, gz=False)
    bad = tmp_path / "train-images-idx3-ubyte"
    raw = bad.read_bytes()
    bad.write_bytes(b"<htm" + raw[4:])
    with pytest.raises(ValueError, match="bad IDX magic"):
        MNIST(tmp_path)
    bad.write_bytes(raw[:-5])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        MNIST(tmp_path)
    write_idx(bad, images[:3])
    with pytest.raises(ValueError, match="3 images but .* 4 labels"):
        MNIST(tmp_path)
    write_idx(bad, images.reshape(4, -1))
    with pytest.raises(ValueError, match="expected uint8 images"):
        MNIST(tmp_path)


REAL = data_dir("mnist")


@pytest.mark.data
@pytest.mark.skipif(not (REAL / "t10k-images-idx3-ubyte.gz").is_file(), reason=f"no MNIST sample data at {REAL}")
def test_real_t10k():
    for name, md5 in T10K_MD5.items():
        assert hashlib.md5((REAL / name).read_bytes()).hexdigest() == md5, name
    ds = MNIST(split="test")  # root=None finds the sample-data folder
    assert len(ds) == 10_000 and ds.data.shape == (10_000, 28, 28)
    counts = torch.bincount(ds.targets, minlength=10)
    assert counts.tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]  # the known t10k histogram
    img, label = ds[0]
    assert label == 7 and img.min() == 0 and img.max() == 1
    first, rest = MNIST(split="test[:5000]"), MNIST(split="test[5000:]")
    assert len(first) == len(rest) == 5000
    assert (torch.bincount(first.targets, minlength=10) > 400).all()  # both halves hold every digit
    assert (torch.bincount(rest.targets, minlength=10) > 400).all()
