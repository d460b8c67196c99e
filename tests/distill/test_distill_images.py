"""Distilled images: RDED keeps the most confident patches and stitches them, the class-wise RDED / random sets, and
the pixel optimisation lowers its objective (T^2 KL(teacher || projector) + CE, zoo.losses.distillation_kl)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from distill.hello_toys import tiny_projector
from zoo.distill.data import IndexedImages
from zoo.distill.images import (image_objective, optimise_images, random_image_set, rded_image_set, rded_select,
                                stitch_patches)
from zoo.distill.views import apply_views, view_params
from zoo.models.convnet import ConvNet


class BrightnessTeacher(torch.nn.Module):
    """Logit of class 1 = 20 * mean brightness, of class 0 = 0: brighter crops are more confidently class 1."""

    def forward(self, x):
        b = x.mean((1, 2, 3))
        return torch.stack([torch.zeros_like(b), 20 * b], 1)


def _tiny_net(num_classes=10, seed=0):
    torch.manual_seed(seed)
    return ConvNet(num_classes=num_classes, widths=(8, 16), convs_per_stage=1).eval()


def test_rded_select_keeps_the_most_confident_patches_and_stitches_them():
    brightness = torch.linspace(0.05, 0.95, 12)
    images = brightness.view(-1, 1, 1, 1).expand(12, 1, 8, 8).clone()
    out = rded_select(BrightnessTeacher(), images, 1, 3, num_crop=2, factor=1, scale=(1.0, 1.0))
    assert out.shape == (3, 1, 8, 8)
    torch.testing.assert_close(out.mean((1, 2, 3)).sort().values, brightness[-3:], rtol=0, atol=2e-3)
    # class 0 prefers the darkest
    dark = rded_select(BrightnessTeacher(), images, 0, 2, num_crop=2, factor=1, scale=(1.0, 1.0))
    torch.testing.assert_close(dark.mean((1, 2, 3)).sort().values, brightness[:2], rtol=0, atol=2e-3)
    # factor 2: 2 images from the 8 brightest patches, 4 per image in 4x4 cells
    two = rded_select(BrightnessTeacher(), images, 1, 2, num_crop=1, factor=2, scale=(1.0, 1.0))
    assert two.shape == (2, 1, 8, 8)
    cells = two.unfold(2, 4, 4).unfold(3, 4, 4).mean((-1, -2)).flatten()
    torch.testing.assert_close(cells.sort().values, brightness[-8:], rtol=0, atol=2e-3)
    with pytest.raises(ValueError, match="mipc"):
        rded_select(BrightnessTeacher(), images, 1, 4, factor=2)


def test_stitch_patches_tiles_row_major_with_remainders():
    patches = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 1, 3, 3)
    out = stitch_patches(patches, 2, (5, 5))
    assert out.shape == (1, 1, 5, 5)
    assert out[0, 0, 0, 0] == 0 and out[0, 0, 0, 4] == 1 and out[0, 0, 4, 0] == 2 and out[0, 0, 4, 4] == 3
    assert out[0, 0, 2, 2] == 0 and out[0, 0, 2, 3] == 1  # the first row/column of cells takes the remainder


def test_class_wise_sets_have_ipc_images_per_class_from_the_pool():
    brightness = torch.linspace(0.05, 0.95, 20)
    images = brightness.view(-1, 1, 1, 1).expand(20, 1, 8, 8).clone()
    targets = torch.arange(20) % 2
    pool = IndexedImages(images, targets)
    x, y = rded_image_set(pool, targets, BrightnessTeacher(), 2, 3, mipc=10, num_crop=1, scale=(1.0, 1.0), seed=4)
    assert x.shape == (6, 1, 8, 8) and y.tolist() == [0, 0, 0, 1, 1, 1]
    # class 1 (odd indices) keeps its brightest candidates, class 0 its darkest
    torch.testing.assert_close(x[3:].mean((1, 2, 3)).sort().values, brightness[1::2][-3:], rtol=0, atol=2e-3)
    torch.testing.assert_close(x[:3].mean((1, 2, 3)).sort().values, brightness[0::2][:3], rtol=0, atol=2e-3)
    rx, ry = random_image_set(pool, targets, 2, 3, seed=4)
    assert torch.equal(torch.bincount(ry), torch.tensor([3, 3]))
    for img, label in zip(rx, ry):  # real images of their own class
        i = int((brightness - img.mean()).abs().argmin())
        assert targets[i] == label
    assert torch.equal(rx, random_image_set(pool, targets, 2, 3, seed=4)[0])
    assert not torch.equal(rx, random_image_set(pool, targets, 2, 3, seed=5)[0])


def test_image_objective_is_the_temperature_scaled_kl_plus_ce():
    teacher, projector = _tiny_net(seed=1), tiny_projector(seed=2)
    x, labels = torch.rand(6, 1, 16, 16, generator=torch.Generator().manual_seed(0)), torch.arange(6)
    t, p = teacher(x), projector(x)
    want = F.kl_div(F.log_softmax(p / 2, -1), F.softmax(t / 2, -1), reduction="batchmean") * 4 + \
        0.3 * F.cross_entropy(t, labels)
    torch.testing.assert_close(image_objective(teacher, projector, x, labels, temperature=2.0, ce_weight=0.3), want)


def test_image_optimisation_lowers_its_objective():
    teacher, projector = _tiny_net(seed=1), tiny_projector(seed=2)
    g = torch.Generator().manual_seed(0)
    images, labels = torch.rand(12, 1, 16, 16, generator=g), torch.arange(12) % 10
    fixed = view_params(12, 123, 5).clone()

    def objective(x):
        with torch.no_grad():
            return float(image_objective(teacher, projector, apply_views(x, fixed), labels))

    out, history = optimise_images(images, labels, teacher, projector, steps=12, lr=0.1, batch_size=8)
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1
    assert len(history) == 12 and history[-1] < history[0]
    assert objective(out) < 0.95 * objective(images)
    # teacher and projector untouched
    assert all(p.grad is None for p in teacher.parameters())
