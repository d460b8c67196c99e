"""Distillation views: crop boxes are a pure function of (seed, epoch, sample), stay inside the image, and the
crop-and-resize does what the boxes say."""
from __future__ import annotations

import torch

from zoo.distill.views import apply_views, random_views, view_params


def test_views_are_a_pure_function_of_seed_epoch_and_stay_inside_the_image():
    a, b = view_params(50, 3, 7), view_params(50, 3, 7)
    assert torch.equal(a, b) and not torch.equal(a, view_params(50, 4, 7)) and not torch.equal(a, view_params(50, 3, 8))
    w, h, cx, cy = a.unbind(1)
    assert ((w > 0) & (w <= 1) & (h > 0) & (h <= 1)).all()
    assert ((cx.abs() + w) <= 1 + 1e-6).all() and ((cy.abs() + h) <= 1 + 1e-6).all()
    area = w * h
    assert area.min() >= 0.5 - 1e-4 and area.max() <= 1 + 1e-6
    assert torch.equal(a, a.half().float())  # fp16-exact: stored (fp16) views replay bit for bit
    x = torch.rand(4, 1, 12, 12)
    identity = torch.tensor([[1.0, 1.0, 0.0, 0.0]]).repeat(4, 1)
    torch.testing.assert_close(apply_views(x, identity), x, rtol=0, atol=1e-5)
    # the left half of the image, scaled up: the output's left column is the input's left column
    half = torch.tensor([[0.5, 1.0, -0.5, 0.0]]).repeat(4, 1)
    out = apply_views(x, half)
    assert not torch.allclose(out, x)
    torch.testing.assert_close(out[..., ::2].mean(), x[..., :6].mean(), rtol=0.05, atol=0.02)


def test_random_views_follow_the_generator():
    x = torch.rand(3, 1, 8, 8)
    a = random_views(x, (0.5, 1.0), torch.Generator().manual_seed(1))
    assert a.shape == x.shape
    assert torch.equal(a, random_views(x, (0.5, 1.0), torch.Generator().manual_seed(1)))
    assert not torch.equal(a, random_views(x, (0.5, 1.0), torch.Generator().manual_seed(2)))
