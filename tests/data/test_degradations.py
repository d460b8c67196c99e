"""PROD degradations and the paired restoration datasets: shape / dtype / range kept, each degradation really
changes the image, random order varies, seeds make everything reproducible, folders read and fail clearly."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from zoo.data import build_dataset
from zoo.data.images.degradations import DEGRADATIONS, PROD, PROD_POOL, TARGETS, SingleDegradation, degrade
from zoo.data.images.paired import DegradedImages, DegradedPatches, PairedFolder, select_split

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "images"


def _img(h=40, w=36, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([yy, xx, 0.5 * (yy + xx)], axis=-1)
    return np.clip(base * 0.8 + 0.1 + 0.05 * rng.standard_normal((h, w, 3)), 0, 1).astype(np.float32)


@pytest.mark.parametrize("name", list(DEGRADATIONS))
def test_each_degradation_keeps_shape_dtype_range_and_changes_the_image(name):
    img = _img()
    out = degrade(img, name, 0)
    assert out.shape == img.shape and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1
    assert np.abs(out - img).mean() > 1e-3, f"{name} did not change the image"
    np.testing.assert_array_equal(out, degrade(img, name, 0))  # same seed, same output
    assert not np.array_equal(out, degrade(img, name, 1)), f"{name}: another seed should give another output"
    assert degrade(_img(17, 23), name, 0).shape == (17, 23, 3)  # odd sizes


def test_targets_are_not_in_the_prod_pool():
    assert set(TARGETS).isdisjoint(PROD_POOL) and len(PROD_POOL) >= 12
    out, names = SingleDegradation("camera_noise")(_img(), 3)
    assert names == ["camera_noise"] and np.array_equal(out, degrade(_img(), "camera_noise", 3))


def test_prod_random_subsets_in_random_order():
    prod = PROD(max_degradations=3)
    img = _img()
    chains = [prod(img, np.random.default_rng(s))[1] for s in range(200)]
    assert {len(c) for c in chains} == {1, 2, 3}
    assert all(len(set(c)) == len(c) for c in chains)  # distinct degradations in one chain
    # order varies: the same set of two degradations appears in both orders
    pairs = {tuple(c) for c in chains if len(c) == 2}
    assert any(tuple(reversed(p)) in pairs for p in pairs)
    first = {c[0] for c in chains}
    assert len(first) >= 10  # every pool entry can come first
    out1, n1 = prod(img, 7)
    out2, n2 = prod(img, 7)
    assert n1 == n2 and np.array_equal(out1, out2)
    assert out1.shape == img.shape and out1.dtype == np.float32 and 0 <= out1.min() and out1.max() <= 1
    # order matters: blur-then-noise != noise-then-blur with the same parameters
    from zoo.data.images import degradations as D

    ab = D.gaussian_blur(D.gaussian_noise(img, np.random.default_rng(0)), np.random.default_rng(1))
    ba = D.gaussian_noise(D.gaussian_blur(img, np.random.default_rng(1)), np.random.default_rng(0))
    assert np.abs(ab - ba).mean() > 1e-3


def test_prod_and_degrade_errors():
    with pytest.raises(KeyError, match="unknown degradation 'fog'.*gaussian_noise"):
        degrade(_img(), "fog")
    with pytest.raises(ValueError, match=r"max_degradations <= pool size \(2\)"):
        PROD(max_degradations=3, pool=["jpeg", "haze"])
    with pytest.raises(TypeError, match="float32"):
        degrade(np.zeros((8, 8, 3), np.uint8), "jpeg")
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        degrade(np.zeros((8, 8), np.float32), "jpeg")


def test_degraded_patches_deterministic_and_shapes():
    imgs = [_img(50, 60, 0), (_img(30, 30, 1) * 255).astype(np.uint8)]
    ds = DegradedPatches(imgs, patch_size=32, num_samples=10, seed=3)
    a, b = ds[4], ds[4]
    assert a["lq"].shape == a["gt"].shape == (3, 32, 32) and a["lq"].dtype == torch.float32
    torch.testing.assert_close(a["lq"], b["lq"], rtol=0, atol=0)
    assert not torch.equal(ds[5]["gt"], a["gt"])
    assert not torch.equal(DegradedPatches(imgs, 32, num_samples=10, seed=4)[4]["lq"], a["lq"])
    single = DegradedPatches(imgs, 32, degradation="gaussian_noise", num_samples=3)
    assert single[0]["name"].endswith(":gaussian_noise")
    big = DegradedPatches([_img(20, 20)], patch_size=32, num_samples=1)[0]  # reflect-padded up to the patch
    assert big["gt"].shape == (3, 32, 32)
    with pytest.raises(IndexError):
        ds[10]


def test_degraded_images_fixed_per_image():
    ds = DegradedImages([_img(40, 36, 0), _img(33, 35, 1)], degradation="camera_noise", seed=0, crop_multiple=8)
    assert ds[1]["gt"].shape == (3, 32, 32)
    again = DegradedImages([_img(40, 36, 0), _img(33, 35, 1)], degradation="camera_noise", seed=0, crop_multiple=8)
    torch.testing.assert_close(ds[0]["lq"], again[0]["lq"], rtol=0, atol=0)


def test_paired_folder(tmp_path):
    for sub in ("lq", "gt"):
        (tmp_path / sub).mkdir()
    for i in range(3):
        arr = (np.random.default_rng(i).random((20, 24, 3)) * 255).astype(np.uint8)
        Image.fromarray(arr).save(tmp_path / "gt" / f"{i}.png")
        Image.fromarray(255 - arr).save(tmp_path / "lq" / f"{i}.png")
    ds = PairedFolder(tmp_path)
    item = ds[1]
    assert len(ds) == 3 and item["lq"].shape == (3, 20, 24)
    torch.testing.assert_close(item["lq"], 1 - item["gt"], atol=1e-6, rtol=0)
    patches = build_dataset("paired_folder", root=str(tmp_path), split="[:2]", patch_size=8)
    p = patches[0]
    assert len(patches) == 2 and p["lq"].shape == (3, 8, 8)
    torch.testing.assert_close(p["lq"], 1 - p["gt"], atol=1e-6, rtol=0)  # crops stay aligned
    (tmp_path / "lq" / "2.png").unlink()
    with pytest.raises(FileNotFoundError, match="unmatched.*2.png"):
        PairedFolder(tmp_path)
    with pytest.raises(FileNotFoundError, match="root/lq"):
        PairedFolder(tmp_path / "nope")


def test_root_files_with_per_folder_slices(tmp_path):
    from zoo.data.images.paired import root_files

    for d, n in (("a", 3), ("b", 2)):
        (tmp_path / d).mkdir()
        for i in range(n):
            Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / d / f"{i + 1}.png")
    (tmp_path / "a" / "10.png").write_bytes((tmp_path / "a" / "1.png").read_bytes())  # natural sort: 10 after 3
    files = root_files([f"{tmp_path / 'a'}[1:]", str(tmp_path / "b")])
    assert [f"{p.parent.name}/{p.name}" for p in files] == ["a/2.png", "a/3.png", "a/10.png", "b/1.png", "b/2.png"]
    assert len(root_files(f"{tmp_path / 'a'}[:1],{tmp_path / 'b'}[1:]")) == 2
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        root_files(str(tmp_path / "missing"))


def test_select_split():
    assert select_split(list(range(10)), "all[:3]") == [0, 1, 2]
    assert select_split(list(range(10)), "[8:]") == [8, 9]
    with pytest.raises(ValueError, match="bad split"):
        select_split([1], "first")


@pytest.mark.skipif(not (SHARED / "McMaster").is_dir(), reason="sample images not present")
def test_registered_on_the_sample_images():
    ds = build_dataset("degraded_patches", root=str(SHARED / "McMaster"), split="[:2]", patch_size=48,
                       num_samples=4)
    assert ds[0]["lq"].shape == (3, 48, 48) and len(ds.images) == 2
    ev = build_dataset("degraded_images", root=f"{SHARED / 'Set5'},{SHARED / 'Set12'}", split="[:6]",
                       degradation="camera_noise", max_side=64)
    assert len(ev) == 6 and ev[5]["gt"].shape[1] <= 64
