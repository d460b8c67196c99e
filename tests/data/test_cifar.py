"""CIFAR-10 / CIFAR-100 python-pickle reader on tiny files written in the released format."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from zoo.data import build_dataset


def _batch(n: int, seed: int, label_keys: dict) -> tuple[dict, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    data = images.transpose(0, 3, 1, 2).reshape(n, 3072)  # 1024 R, then 1024 G, then 1024 B, row-major
    return {b"data": data, **{k: v(rng, n) for k, v in label_keys.items()}}, images


def _write(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f)


@pytest.fixture
def cifar10_root(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    keys = {b"labels": lambda rng, n: rng.integers(0, 10, n).tolist()}
    images, labels = [], []
    for i in range(1, 6):
        batch, imgs = _batch(3, i, keys)
        _write(folder / f"data_batch_{i}", batch)
        images.append(imgs)
        labels += batch[b"labels"]
    test, test_imgs = _batch(4, 9, keys)
    _write(folder / "test_batch", test)
    _write(folder / "batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)]})
    return tmp_path, np.concatenate(images), labels, test_imgs


def test_cifar10_reads_images_labels_and_class_names(cifar10_root):
    root, images, labels, test_imgs = cifar10_root
    train = build_dataset("cifar10", root=str(root), split="train")
    assert len(train) == 15 and train.classes == [f"c{i}" for i in range(10)]
    x, y = train[7]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == labels[7]
    # channel planes land where they belong: pixel (r, c) of channel k is data[k*1024 + r*32 + c]
    assert torch.equal((x * 255).round().to(torch.uint8), torch.from_numpy(images[7]).permute(2, 0, 1))
    test = build_dataset("cifar10", root=str(root / "cifar-10-batches-py"), split="test")  # the folder itself works
    assert len(test) == 4 and torch.equal((test[3][0] * 255).round().to(torch.uint8),
                                          torch.from_numpy(test_imgs[3]).permute(2, 0, 1))


def test_cifar100_fine_and_coarse_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    keys = {b"fine_labels": lambda rng, n: rng.integers(0, 100, n).tolist(),
            b"coarse_labels": lambda rng, n: rng.integers(0, 20, n).tolist()}
    train, _ = _batch(6, 1, keys)
    _write(folder / "train", train)
    _write(folder / "test", _batch(2, 2, keys)[0])
    _write(folder / "meta", {b"fine_label_names": [f"f{i}".encode() for i in range(100)],
                             b"coarse_label_names": [f"s{i}".encode() for i in range(20)]})
    fine = build_dataset("cifar100", root=str(tmp_path), split="train")
    coarse = build_dataset("cifar100", root=str(tmp_path), split="train", coarse=True)
    assert [fine[i][1] for i in range(6)] == train[b"fine_labels"]
    assert [coarse[i][1] for i in range(6)] == train[b"coarse_labels"]
    assert len(fine.classes) == 100 and coarse.classes[3] == "s3"


def test_missing_and_truncated_files_are_named(cifar10_root, tmp_path):
    root = cifar10_root[0]
    with pytest.raises(FileNotFoundError, match="data_batch_1.*data.root="):
        build_dataset("cifar10", root=str(tmp_path / "nowhere"), split="train")
    path = root / "cifar-10-batches-py" / "data_batch_3"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="data_batch_3.*truncated or corrupt"):
        build_dataset("cifar10", root=str(root), split="train")


def test_cifar10_source_config_trains_on_the_pickles(cifar10_root, tmp_path):
    from pathlib import Path

    from zoo.cli import run_training

    config = Path(__file__).resolve().parents[2] / "configs" / "vida" / "cifar10_source.yaml"
    summary = run_training(str(config), [f"data.root={cifar10_root[0]}", "trainer.epochs=1", "data.batch_size=5",
                                         "data.num_workers=0", "model.depth=1", "model.embed_dim=24",
                                         "model.num_heads=2", "trainer.tensorboard=false"], tmp_path / "run")
    assert summary["final"]["num_samples"] == 4 and (tmp_path / "run" / "last.pt").is_file()
    assert not (tmp_path / "run" / "best.pt").exists()   # its evaluation is CIFAR-10's test set: nothing selected on it
