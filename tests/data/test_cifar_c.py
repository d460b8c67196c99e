"""The CIFAR-10-C ``.npy`` reader on tiny files in the released layout, the writer and the RGB conversion."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from zoo.data import build_dataset
from zoo.data.images.cifar_c import ArrayImageDataset, images_as_uint8_rgb, load_corruption, write_corrupted

N = 6  # images per severity


@pytest.fixture()
def c_dir(tmp_path):
    """``fog.npy`` (5·N, 32, 32, 3) whose pixel values encode (severity, index); ``labels.npy`` repeated 5×."""
    images = np.zeros((5 * N, 32, 32, 3), np.uint8)
    for s in range(5):
        for i in range(N):
            images[s * N + i, ..., 0] = s + 1
            images[s * N + i, ..., 1] = i
    np.save(tmp_path / "fog.npy", images)
    np.save(tmp_path / "labels.npy", np.tile(np.arange(N) % 3, 5).astype(np.uint8))
    return tmp_path


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_reader_selects_the_severity_block_and_first_examples(c_dir, severity):
    data = build_dataset("cifar10_c", root=str(c_dir), split="fog", severity=severity, num_examples=4)
    assert len(data) == 4
    x, y = data[2]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert x[0, 0, 0].item() == pytest.approx(severity / 255) and x[1, 0, 0].item() == pytest.approx(2 / 255)
    assert y == 2
    assert len(build_dataset("cifar10_c", root=str(c_dir), split="fog", severity=severity)) == N


def test_reader_errors_name_the_file_and_the_fix(c_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="snow.npy.*make_corrupted"):
        load_corruption(c_dir, "snow")
    with pytest.raises(ValueError, match="severity"):
        load_corruption(c_dir, "fog", severity=6)
    np.save(c_dir / "labels.npy", np.zeros(7, np.uint8))
    with pytest.raises(ValueError, match="5 severities"):
        load_corruption(c_dir, "fog")


def test_images_as_uint8_rgb_pads_grey_digits_centrally():
    class Grey(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return torch.full((1, 28, 28), 0.5 * (i + 1)), i

    images, labels = images_as_uint8_rgb(Grey(), 32)
    assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8 and list(labels) == [0, 1]
    assert images[0, 2, 2].tolist() == [128, 128, 128] and images[0, 1, 1].tolist() == [0, 0, 0]
    assert images[1, 29, 29, 0] == 255 and images[1, 30, 30, 0] == 0
    with pytest.raises(ValueError, match="larger"):
        images_as_uint8_rgb(Grey(), 16)


def test_write_corrupted_writes_the_released_layout_reproducibly(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    labels = np.array([1, 0, 2])
    write_corrupted(images, labels, tmp_path / "a", ["gaussian_noise", "contrast"], severities=[5], seed=1)
    write_corrupted(images, labels, tmp_path / "b", ["gaussian_noise"], severities=[5], seed=1)
    a = np.load(tmp_path / "a" / "gaussian_noise.npy")
    assert a.shape == (15, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a[:12], np.tile(images, (4, 1, 1, 1)))  # severities not asked for hold the clean images
    assert not np.array_equal(a[12:], images)
    assert np.array_equal(a, np.load(tmp_path / "b" / "gaussian_noise.npy"))  # independent of the other files
    assert np.load(tmp_path / "a" / "labels.npy").tolist() == [1, 0, 2] * 5
    x, y = load_corruption(tmp_path / "a", "contrast", 5)
    assert x.shape == (3, 32, 32, 3) and y.tolist() == [1, 0, 2]


def test_make_corrupted_command(tmp_path):
    from zoo.data.images.mnist import write_idx

    raw = tmp_path / "mnist"
    raw.mkdir()
    write_idx(raw / "t10k-images-idx3-ubyte", np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8))
    write_idx(raw / "t10k-labels-idx1-ubyte", np.arange(5, dtype=np.uint8))
    tool = Path(__file__).resolve().parents[2] / "tools" / "make_corrupted.py"
    out = subprocess.run([sys.executable, str(tool), "--dataset", "mnist", "--root", str(raw), "--split", "test[2:]",
                          "--corruptions", "fog,pixelate", "--severities", "5", "--out", str(tmp_path / "c")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    data = build_dataset("cifar10_c", root=str(tmp_path / "c"), split="pixelate", severity=5)
    assert len(data) == 3 and [data[i][1] for i in range(3)] == [2, 3, 4]
    assert isinstance(data, ArrayImageDataset) and data[0][0].shape == (3, 32, 32)
