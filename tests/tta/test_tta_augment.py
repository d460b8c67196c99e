"""The CoTTA / ViDA test-time augmentation: shape and range, one draw per batch, the flip switch, and the blur
against torchvision's."""
from __future__ import annotations

import pytest
import torch

from zoo.tta.augment import gaussian_blur, tta_augment


def test_shape_range_and_one_draw_for_the_whole_batch():
    torch.manual_seed(0)
    image = torch.rand(1, 3, 32, 32)
    out = tta_augment(image.repeat(4, 1, 1, 1), noise_std=0.0)
    assert out.shape == (4, 3, 32, 32) and out.min() >= 0 and out.max() <= 1
    assert torch.allclose(out, out[:1].expand_as(out))  # the same transform for every sample (noise off)
    assert not torch.allclose(out[0], image[0], atol=1e-2)  # and it is not the identity
    noisy = tta_augment(image.repeat(2, 1, 1, 1), noise_std=0.05)
    assert not torch.allclose(noisy[0], noisy[1])  # the noise is per pixel


def test_flip_off_never_mirrors():
    # a left-right ramp: mirrored views have their bright side on the left
    ramp = torch.linspace(0, 1, 32).view(1, 1, 1, 32).expand(1, 3, 32, 32).contiguous()
    sides = []
    for seed in range(12):
        torch.manual_seed(seed)
        view = tta_augment(ramp, noise_std=0.0, flip=False)
        sides.append(float(view[..., 24:].mean() - view[..., :8].mean()))
    assert all(s > 0 for s in sides)
    flipped = []
    for seed in range(12):
        torch.manual_seed(seed)
        view = tta_augment(ramp, noise_std=0.0, flip=True)
        flipped.append(float(view[..., 24:].mean() - view[..., :8].mean()) < 0)
    assert any(flipped)


@pytest.mark.parametrize("sigma", [0.3, 1.2])
def test_blur_equals_torchvision(sigma):
    import torchvision.transforms.functional as TF

    x = torch.rand(2, 3, 17, 13)
    assert torch.allclose(gaussian_blur(x, sigma), TF.gaussian_blur(x, [5, 5], [sigma, sigma]), atol=1e-5)
