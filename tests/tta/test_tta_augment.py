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


@pytest.mark.parametrize("soft", [False, True])
def test_a_grey_batch_takes_the_one_channel_path_with_the_same_draws(soft):
    """A grey RGB batch is transformed as one channel; an almost grey batch (one pixel off by 1e-7) goes the full
    three-channel path with the same random draws: the views agree (up to the luma weights of torchvision's
    contrast and the HSV round trip of saturation / hue, ~1e-5), and both leave the global RNG at the same place."""
    grey = torch.rand(6, 1, 32, 32).expand(-1, 3, -1, -1).contiguous()
    almost = grey.clone()
    almost[:, 1, 0, 0] += 1e-7
    for seed in range(4):
        torch.manual_seed(seed)
        a = tta_augment(grey, soft=soft, flip=True)
        after_a = torch.rand(1)
        torch.manual_seed(seed)
        b = tta_augment(almost, soft=soft, flip=True)
        after_b = torch.rand(1)
        assert a.shape == b.shape == (6, 3, 32, 32)
        assert torch.allclose(a, b, atol=1e-4), float((a - b).abs().max())
        assert torch.equal(after_a, after_b)
        assert not torch.equal(a[:, 0], a[:, 1])  # the noise is drawn per channel, after replication


def test_blur_of_the_centre_crop_is_the_crop_of_the_blur():
    import torchvision.transforms.functional as TF

    from zoo.tta.augment import _blur_centre_crop

    x = torch.rand(3, 2, 64, 64)
    for sigma in (0.01, 0.3, 0.5):
        assert torch.equal(_blur_centre_crop(x, sigma, [32, 32]), TF.center_crop(gaussian_blur(x, sigma), [32, 32]))
    odd = torch.rand(1, 1, 35, 33)  # rounding of the crop offset, and a crop too close to the border
    assert torch.equal(_blur_centre_crop(odd, 0.4, [30, 30]), TF.center_crop(gaussian_blur(odd, 0.4), [30, 30]))


def test_soft_ranges_change_the_image_less():
    image = torch.rand(1, 1, 32, 32).expand(4, 3, -1, -1)
    hard, soft = [], []
    for seed in range(8):
        torch.manual_seed(seed)
        hard.append(float((tta_augment(image, noise_std=0.0, flip=False) - image).abs().mean()))
        torch.manual_seed(seed)
        soft.append(float((tta_augment(image, noise_std=0.0, soft=True, flip=False) - image).abs().mean()))
    assert sum(soft) < sum(hard)
