"""PSNR / SSIM with BasicSR's conventions: hand-computed tiny cases, scikit-image where conventions coincide, and
BasicSR's own ``psnr_ssim.py`` run on the same images when it is available offline (``$BASICSR_DIR`` = a
XPixelGroup/BasicSR checkout, or the fetched mirror; it needs OpenCV); the per-image scores of an evaluation step
and the metric object averaging them."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from official_code import imported_official, official_sources
from zoo.metrics.base import MetricSet
from zoo.metrics.image import ImageQualityMetric, gaussian_window, image_quality, psnr, rgb_to_y, ssim

_FILES = ("basicsr/metrics/psnr_ssim.py", "basicsr/metrics/metric_util.py", "basicsr/utils/color_util.py")


def _images(seed=0, shape=(24, 20, 3)):
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, 256, shape).astype(np.uint8)
    noisy = np.clip(gt.astype(np.int64) + rng.integers(-20, 21, shape), 0, 255).astype(np.uint8)
    return noisy, gt


def test_psnr_hand_computed():
    a = np.zeros((4, 4, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0] = 12  # mse = 144 / 48 = 3
    assert psnr(a, b) == pytest.approx(10 * math.log10(255 ** 2 / 3))
    assert psnr(a, a) == float("inf")
    # crop_border removes the only different pixel
    assert psnr(a, b, crop_border=1) == float("inf")
    # Y channel: a pure-red difference of 12 moves Y by 12 * 65.481 / 255
    dy = 12 * 65.481 / 255
    assert psnr(a, b, test_y_channel=True) == pytest.approx(10 * math.log10(255 ** 2 / (dy ** 2 / 16)), rel=1e-6)


def test_rgb_to_y_is_bt601():
    img = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [0, 0, 0]]], np.uint8)
    np.testing.assert_allclose(rgb_to_y(img)[0, :, 0], [16 + 65.481, 16 + 128.553, 16 + 24.966, 235, 16], atol=1e-4)


def test_ssim_hand_computed():
    a = np.full((11, 11), 100.0)
    b = np.full((11, 11), 120.0)
    c1 = (0.01 * 255) ** 2
    # constant images: no variance, SSIM = luminance term (2 mu1 mu2 + C1) / (mu1^2 + mu2^2 + C1)
    assert ssim(a, b) == pytest.approx((2 * 100 * 120 + c1) / (100 ** 2 + 120 ** 2 + c1))
    assert ssim(a, a) == pytest.approx(1.0)
    noisy, gt = _images()
    assert 0 < ssim(noisy, gt) < 1
    np.testing.assert_allclose(gaussian_window().sum(), 1.0)
    with pytest.raises(ValueError, match="at least 11 x 11"):
        ssim(np.zeros((12, 12)), np.zeros((12, 12)), crop_border=1)
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(np.zeros((4, 4, 3)), np.zeros((4, 5, 3)))


def test_tensor_batch_equals_per_image_arrays():
    noisy, gt = _images()
    t_noisy = torch.from_numpy(noisy).permute(2, 0, 1).float().div(255).unsqueeze(0).repeat(2, 1, 1, 1)
    t_gt = torch.from_numpy(gt).permute(2, 0, 1).float().div(255).unsqueeze(0).repeat(2, 1, 1, 1)
    p = psnr(t_noisy, t_gt, quantize=True)
    assert isinstance(p, torch.Tensor) and p.shape == (2,)
    assert p[0].item() == pytest.approx(psnr(noisy, gt))
    assert ssim(t_noisy, t_gt, quantize=True, test_y_channel=True)[1].item() == pytest.approx(
        ssim(noisy, gt, test_y_channel=True))
    assert psnr(t_noisy[0], t_gt[0]) == pytest.approx(psnr(noisy, gt), rel=1e-5)  # float path, tiny rounding


def test_psnr_matches_skimage():
    metrics = pytest.importorskip("skimage.metrics")
    noisy, gt = _images(1)
    assert psnr(noisy, gt) == pytest.approx(metrics.peak_signal_noise_ratio(gt, noisy, data_range=255), rel=1e-12)
    g1 = gt[..., 0]
    n1 = noisy[..., 0]
    # skimage with BasicSR's settings (Gaussian window, sigma 1.5, no sample-covariance correction) on one channel;
    # skimage crops (win - 1) // 2 = 5 pixels of the map too, but uses reflect padding: compare the same region
    ref = metrics.structural_similarity(g1.astype(np.float64), n1.astype(np.float64), data_range=255,
                                        gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    assert ssim(n1, g1) == pytest.approx(ref, abs=2e-3)


def test_image_quality_scores_each_image():
    g = torch.Generator().manual_seed(0)
    gt = torch.rand(3, 3, 16, 16, generator=g)
    pred = (gt + 0.05 * torch.randn(3, 3, 16, 16, generator=g)).clamp(0, 1)
    scores = image_quality(pred, gt, prefix="out_", quantize=True, crop_border=2)
    assert set(scores) == {"out_psnr", "out_ssim"}
    assert scores["out_psnr"].shape == (3,) and scores["out_psnr"].dtype == torch.float64
    for i in range(3):
        assert scores["out_psnr"][i].item() == psnr(pred[i:i + 1], gt[i:i + 1], quantize=True, crop_border=2).item()
        assert scores["out_ssim"][i].item() == ssim(pred[i:i + 1], gt[i:i + 1], quantize=True, crop_border=2).item()
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        image_quality(pred[0], gt[0])


def test_image_quality_metric_is_the_mean_over_batches_and_counts_images():
    metric = ImageQualityMetric(("psnr", "ssim"), count="images")
    metrics = MetricSet([metric])
    batches = [{"psnr": torch.tensor([30.0, 20.0], dtype=torch.float64), "ssim": torch.tensor([0.5, 0.7]),
                "ignored": torch.zeros(2)},
               {"psnr": torch.tensor([40.0], dtype=torch.float64), "ssim": torch.tensor([0.9])}]
    for b in batches:
        metrics.update(b)
    out = metrics.compute()
    assert out == {"psnr": pytest.approx(30.0), "ssim": pytest.approx(0.7), "images": 3}
    assert ImageQualityMetric(("psnr",), count=None).compute_from(psnr=torch.tensor([1.0, 2.0])) == {"psnr": 1.5}
    metric.reset()
    with pytest.raises(RuntimeError, match="no examples"):
        metric.compute()


# ------------------------------------------------------------------------------------------ BasicSR itself
@pytest.fixture()
def basicsr(tmp_path):
    pytest.importorskip("cv2")
    sources = official_sources(_FILES, "BASICSR_DIR", "XPixelGroup/BasicSR")
    if sources is None:
        pytest.skip("BasicSR's psnr_ssim.py not available offline (set BASICSR_DIR to a checkout)")
    files = {"basicsr/utils/__init__.py": "from .color_util import bgr2ycbcr, rgb2ycbcr_pt\n",
             "basicsr/utils/registry.py": "class _R:\n    def register(self):\n        return lambda f: f\n"
                                          "METRIC_REGISTRY = _R()\n"}
    with imported_official(tmp_path, sources, "basicsr.metrics.psnr_ssim", packages=("basicsr", "basicsr/metrics"),
                           files=files) as module:
        yield module


@pytest.mark.parametrize("crop_border", [0, 3])
@pytest.mark.parametrize("test_y_channel", [False, True])
@pytest.mark.parametrize("dtype", ["uint8", "float"])
def test_same_numbers_as_basicsr(basicsr, crop_border, test_y_channel, dtype):
    noisy, gt = _images(2, (40, 33, 3))
    if dtype == "float":
        noisy = noisy.astype(np.float64) + np.random.default_rng(3).uniform(-0.5, 0.5, noisy.shape)
        gt = gt.astype(np.float64)
        # BasicSR's Y conversion accepts only uint8 / float32 arrays
        noisy, gt = noisy.astype(np.float32), gt.astype(np.float32)
    bgr = lambda x: np.ascontiguousarray(x[..., ::-1])  # noqa: E731  BasicSR reads BGR
    kw = dict(crop_border=crop_border, test_y_channel=test_y_channel)
    want_p = basicsr.calculate_psnr(bgr(noisy), bgr(gt), **kw)
    want_s = basicsr.calculate_ssim(bgr(noisy), bgr(gt), **kw)
    assert psnr(noisy, gt, **kw) == pytest.approx(want_p, rel=1e-12, abs=1e-10)
    assert ssim(noisy, gt, **kw) == pytest.approx(want_s, rel=1e-9, abs=1e-9)
