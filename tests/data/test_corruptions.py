"""The 15 Hendrycks corruptions (CIFAR-10-C parameters): shapes, types, reproducibility, and the deterministic
ones against their reference definitions written out in the test."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from zoo.data.images import corruptions as C
from zoo.data.images.corruptions import CORRUPTIONS, corrupt, frost_texture

DETERMINISTIC = ("defocus_blur", "zoom_blur", "brightness", "contrast", "pixelate", "jpeg_compression")


@pytest.fixture(scope="module")
def image():
    """A 32×32 RGB test picture with edges, gradients and colour (a digit-like blob on a ramp)."""
    yy, xx = np.mgrid[0:32, 0:32]
    img = np.stack([xx * 6, yy * 6, (xx + yy) * 3], -1).astype(np.float64)
    img[((yy - 16) ** 2 + (xx - 14) ** 2) < 40] = [250, 240, 30]
    return np.clip(img, 0, 255).astype(np.uint8)


def test_the_standard_order():
    assert CORRUPTIONS == ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur",
                           "motion_blur", "zoom_blur", "snow", "frost", "fog", "brightness", "contrast",
                           "elastic_transform", "pixelate", "jpeg_compression")


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_every_corruption_changes_the_image_and_keeps_shape_and_dtype(name, image):
    changes = []
    for severity in range(1, 6):
        out = corrupt(image, name, severity, rng=0)
        assert out.shape == image.shape and out.dtype == np.uint8
        changes.append(np.abs(out.astype(int) - image).mean())
        assert changes[-1] > 0, f"{name} severity {severity} left the image unchanged"
    if name != "elastic_transform":  # the reference's CIFAR elastic moves less at 5 (affine 0.03·32) than at 1 (0.08·32)
        assert changes[-1] > changes[0] * 0.9, f"{name}: severity 5 should not be milder than severity 1: {changes}"


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_same_seed_same_output(name, image):
    a, b = corrupt(image, name, 5, rng=7), corrupt(image, name, 5, rng=np.random.default_rng(7))
    assert np.array_equal(a, b)
    if name not in DETERMINISTIC:
        assert not np.array_equal(a, corrupt(image, name, 5, rng=8)), f"{name} should depend on the rng"
    else:
        assert np.array_equal(a, corrupt(image, name, 5, rng=8))


def test_contrast_brightness_and_noise_follow_the_reference_formulas(image):
    x = image / 255.0
    means = x.mean(axis=(0, 1), keepdims=True)
    ref = np.uint8(np.clip((x - means) * 0.15 + means, 0, 1) * 255)  # contrast severity 5, uint8 truncation
    assert np.array_equal(corrupt(image, "contrast", 5), ref)
    grey = np.full((32, 32, 3), 100, np.uint8)  # HSV value + 0.3 on a grey image: (100/255 + 0.3) * 255
    assert np.all(corrupt(grey, "brightness", 5) == np.uint8((100 / 255 + 0.3) * 255))
    rng = np.random.default_rng(3)  # Gaussian noise σ = 0.10 at severity 5, drawn as the reference draws it
    ref = np.uint8(np.clip(x + rng.normal(size=x.shape, scale=0.10), 0, 1) * 255)
    assert np.array_equal(corrupt(image, "gaussian_noise", 5, rng=3), ref)


def test_hsv_round_trip_and_known_values():
    rgb = np.random.default_rng(0).random((8, 8, 3))
    assert np.allclose(C._hsv2rgb(C._rgb2hsv(rgb)), rgb, atol=1e-12)
    assert np.allclose(C._rgb2hsv(np.array([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.5, 1.0]]])),
                       [[[0, 1, 1], [1 / 3, 1, 1], [2 / 3, 0.5, 1]]])


def test_pixelate_and_jpeg_are_the_reference_pil_operations(image):
    pil = Image.fromarray(image)
    ref = np.asarray(pil.resize((20, 20), Image.BOX).resize((32, 32), Image.BOX))  # int(32 * 0.65) = 20
    assert np.array_equal(corrupt(image, "pixelate", 5), ref)
    buf = io.BytesIO()
    pil.save(buf, "JPEG", quality=40)
    assert np.array_equal(corrupt(image, "jpeg_compression", 5), np.asarray(Image.open(buf)))


def test_blur_kernels_match_scipy_and_opencv_definitions():
    k = C._gaussian_kernel1d(1.0)  # scipy.ndimage: radius int(4σ + 0.5) = 4
    assert len(k) == 9 and k.sum() == pytest.approx(1)
    assert k[4] / k[5] == pytest.approx(np.exp(0.5))
    disk = C._disk(1.5, 0.1)  # the reference's defocus kernel at severity 5: 17×17, a radius-1.5 disk
    assert disk.shape == (17, 17) and disk.sum() == pytest.approx(1)
    assert (disk > 1e-6).sum() == 9  # X²+Y² <= 2.25: the 3×3 centre; alias blur σ 0.1 barely spreads it
    const = np.full((32, 32, 3), 0.4)
    assert np.allclose(C._zoom_linear(const, 1.25), 0.4) and C._zoom_linear(const, 1.25).shape == (40, 40, 3)
    assert np.allclose(C._motion_blur(const, 9, 2.5, 30.0), 0.4)
    ramp = np.tile(np.arange(32.0), (32, 1))
    assert np.allclose(C._clipped_zoom(ramp[..., None], 1.0)[..., 0], ramp)


def test_motion_blur_smears_along_the_angle():
    dot = np.zeros((32, 32))
    dot[16, 16] = 1.0
    horizontal = C._motion_blur(dot, 6, 2, 0.0)
    assert horizontal[16].sum() == pytest.approx(1.0) and horizontal[:16].sum() + horizontal[17:].sum() == 0
    vertical = C._motion_blur(dot, 6, 2, 90.0)
    assert vertical[:, 16].sum() == pytest.approx(1.0)


def test_other_sizes_grey_inputs_and_bad_arguments(image):
    digit = np.zeros((28, 28), np.uint8)
    digit[8:20, 12:16] = 255
    out = corrupt(digit, "fog", 5, rng=0)
    assert out.shape == (28, 28, 3) and out.dtype == np.uint8
    with pytest.raises(KeyError, match="unknown corruption"):
        corrupt(image, "rain", 5)
    with pytest.raises(ValueError, match="severity"):
        corrupt(image, "fog", 6)
    with pytest.raises(TypeError, match="uint8"):
        corrupt(image.astype(np.float32), "fog", 5)


def test_frost_textures_are_generated_deterministically():
    a, b = frost_texture(2), frost_texture(2)
    assert a is b and a.shape == (160, 160, 3) and 0 <= a.min() and a.max() <= 255
    assert not np.array_equal(frost_texture(0), frost_texture(1))
    assert 20 < a.mean() < 200
