"""SyntheticShapes: determinism, splits, balance, shapes, normalisation, transforms, class subsets."""
import time

import pytest
import torch

from zoo.data.pointcloud.synthetic import SHAPE_CLASSES, SyntheticShapes

SMALL = dict(num_points=64, samples_per_class=3)


def test_shapes_dtypes_and_balance():
    ds = SyntheticShapes(split="train", **SMALL)
    assert len(ds) == len(SHAPE_CLASSES) * 3 and ds.classes == list(SHAPE_CLASSES) and ds.num_classes == 10
    points, label = ds[0]
    assert points.shape == (64, 3) and points.dtype == torch.float32 and isinstance(label, int)
    assert torch.bincount(ds.labels, minlength=10).tolist() == [3] * 10


def test_default_sizes():
    assert len(SyntheticShapes(split="train", num_points=8, classes=["cube"])) == 100
    assert len(SyntheticShapes(split="test", num_points=8, classes=["cube"])) == 30


def test_normalised_to_unit_sphere():
    ds = SyntheticShapes(split="test", **SMALL)
    norms = ds.points.norm(dim=-1)
    assert torch.allclose(norms.amax(dim=1), torch.ones(len(ds)), atol=1e-5)
    assert ds.points.mean(dim=1).abs().max() < 1e-5
    assert torch.isfinite(ds.points).all()


def test_deterministic_and_splits_differ():
    a = SyntheticShapes(split="train", seed=3, **SMALL)
    b = SyntheticShapes(split="train", seed=3, **SMALL)
    assert torch.equal(a.points, b.points) and torch.equal(a.labels, b.labels)
    test = SyntheticShapes(split="test", seed=3, **SMALL)
    other_seed = SyntheticShapes(split="train", seed=4, **SMALL)
    assert not torch.allclose(a.points, test.points)
    assert not torch.allclose(a.points, other_seed.points)


def test_class_subset_relabels_and_keeps_clouds():
    full = SyntheticShapes(split="train", **SMALL)
    sub = SyntheticShapes(split="train", classes=["torus", "cube"], **SMALL)
    assert sub.classes == ["cube", "torus"]  # canonical order
    assert sub.labels.tolist() == [0, 0, 0, 1, 1, 1]
    torus = SHAPE_CLASSES.index("torus")
    assert torch.equal(sub.points[3:], full.points[full.labels == torus])


def test_transform_applied_without_mutating_dataset():
    def flip(p):
        p.mul_(-1)  # in place on purpose: the dataset must hand out a copy
        return p

    ds = SyntheticShapes(split="test", transform=flip, **SMALL)
    before = ds.points[0].clone()
    points, _ = ds[0]
    assert torch.equal(points, -before) and torch.equal(ds.points[0], before)


def test_rotation_modes_and_noise():
    none = SyntheticShapes(split="test", classes=["disc"], rotation="none", noise=0.0, scale_range=(1, 1), **SMALL)
    assert none.points[..., 2].abs().max() < 1e-6  # an unrotated, noiseless disc lies in z = 0
    noisy = SyntheticShapes(split="test", classes=["disc"], rotation="none", noise=0.05, scale_range=(1, 1), **SMALL)
    assert noisy.points[..., 2].std() > 0.01


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(split="validation"), "split"), (dict(classes=["blob"]), "blob"), (dict(classes="cube"), "list"),
     (dict(rotation="xyz"), "rotation"), (dict(num_points=0), "num_points")],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        SyntheticShapes(**kwargs)


def test_registered_and_fast():
    from zoo.data.registry import build_dataset

    start = time.perf_counter()
    ds = build_dataset("synthetic_shapes", split="test", num_points=1024)
    assert time.perf_counter() - start < 5.0  # ~0.2 s unloaded
    assert isinstance(ds, SyntheticShapes) and len(ds) == 300
