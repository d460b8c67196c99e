"""PSNR and SSIM with BasicSR's conventions (``basicsr/metrics/psnr_ssim.py``: ``calculate_psnr`` / ``calculate_ssim``).

Conventions (what makes restoration numbers comparable between papers):

* images in **[0, 255]**, computed in float64; ``crop_border`` pixels dropped on every edge first;
* ``test_y_channel``: the Y channel of YCbCr as BasicSR computes it (ITU-R BT.601, MATLAB's ``rgb2ycbcr``:
  ``Y = 16 + 65.481 R + 128.553 G + 24.966 B`` on [0, 1] values, times 255, not rounded, with BasicSR's float32
  intermediate steps reproduced so the numbers agree to float64 rounding);
* PSNR: one MSE over all pixels and channels, ``10 log10(255² / mse)``, ``inf`` for identical images;
* SSIM: 11 x 11 Gaussian window (σ = 1.5, OpenCV's ``getGaussianKernel``), ``C1 = (0.01·255)²``,
  ``C2 = (0.03·255)²``, "valid" filtering (the 5-pixel border of the SSIM map dropped), SSIM map mean per channel,
  then the mean over channels (matches the MATLAB reference code).

Inputs: numpy ``(H, W, C)`` / ``(H, W)`` **RGB** arrays (uint8 or float, 0-255), or torch float tensors
``(B, C, H, W)`` / ``(C, H, W)`` in **[0, 1]** (multiplied by 255, not rounded; pass ``quantize=True`` to round
to uint8 first, as evaluating saved PNGs does). BasicSR's own functions take **BGR** arrays (OpenCV's order): give
them ``img[..., ::-1]`` to compare. Deviation: NAFNet's fork of BasicSR computes a 3-D Gaussian SSIM for its
SIDD/GoPro tables; this is the standard per-channel SSIM.

For evaluations (:func:`zoo.engine.evaluate.evaluation_loop`): :func:`image_quality` scores each image of a batch
(``{"psnr": (B,), "ssim": (B,)}``, what an ``eval_step`` returns: images of different sizes cannot be gathered
across processes, their scores can), :class:`ImageQualityMetric` averages the gathered scores (BasicSR's dataset
mean: the mean of the per-image values) and counts the images.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from zoo.metrics.base import Metric

__all__ = ["psnr", "ssim", "rgb_to_y", "to_hwc255", "gaussian_window", "image_quality", "ImageQualityMetric"]

_Y_WEIGHTS = np.array([65.481, 128.553, 24.966])  # R, G, B (BasicSR bgr2ycbcr reverses them for BGR)


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """Y channel of an RGB image in [0, 255], ``(H, W, 3) -> (H, W, 1)`` float64, the value BasicSR's
    ``to_y_channel`` gives for the same image in BGR order (its float32 intermediate steps included)."""
    x = img.astype(np.float32) / np.float32(255.0)
    y = (np.dot(x, _Y_WEIGHTS) + 16.0) / 255.0  # float32 @ float64 -> float64, as numpy does in BasicSR
    return (y.astype(np.float32) * np.float32(255.0)).astype(np.float64)[..., None]


def to_hwc255(img: Any, quantize: bool = False) -> list[np.ndarray]:
    """Images as a list of ``(H, W, C)`` arrays in [0, 255]: a numpy ``(H, W[, C])`` array is one image (kept in its
    dtype); a tensor ``(B, C, H, W)`` / ``(C, H, W)`` in [0, 1] gives B float64 images (``x * 255``, rounded and
    clipped to uint8 with ``quantize``)."""
    if isinstance(img, torch.Tensor):
        t = img.detach().to("cpu", torch.float64)
        if t.ndim == 3:
            t = t.unsqueeze(0)
        if t.ndim != 4:
            raise ValueError(f"image tensors must be (B, C, H, W) or (C, H, W) in [0, 1], got shape {tuple(img.shape)}")
        arr = t.permute(0, 2, 3, 1).numpy() * 255.0
        if quantize:
            arr = np.clip(np.round(arr), 0, 255).astype(np.uint8)
        return list(arr)
    arr = np.asarray(img)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise ValueError(f"image arrays must be (H, W, C) or (H, W) in [0, 255], got shape {arr.shape}; "
                         "pass a batch as a (B, C, H, W) tensor in [0, 1]")
    if quantize:
        arr = np.clip(np.round(arr.astype(np.float64)), 0, 255).astype(np.uint8)
    return [arr]


def _prepare(img: np.ndarray, crop_border: int, test_y_channel: bool) -> np.ndarray:
    if crop_border:
        img = img[crop_border:-crop_border, crop_border:-crop_border, ...]
    if test_y_channel and img.shape[2] == 3:
        img = rgb_to_y(img)
    return img.astype(np.float64)


def _pairs(pred: Any, target: Any, quantize: bool, name: str) -> list[tuple[np.ndarray, np.ndarray]]:
    a, b = to_hwc255(pred, quantize), to_hwc255(target, quantize)
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        sa = tuple(pred.shape) if hasattr(pred, "shape") else None
        sb = tuple(target.shape) if hasattr(target, "shape") else None
        raise ValueError(f"{name}: image shapes differ, pred {sa} vs target {sb}")
    return list(zip(a, b))


def _reduce(values: list[float], pred: Any) -> float | torch.Tensor:
    if isinstance(pred, torch.Tensor) and pred.ndim == 4:
        return torch.tensor(values, dtype=torch.float64)
    return values[0]


def psnr(pred: Any, target: Any, crop_border: int = 0, test_y_channel: bool = False,
         quantize: bool = False) -> float | torch.Tensor:
    """PSNR in dB, BasicSR's ``calculate_psnr``: a float for one image, a ``(B,)`` float64 tensor for a batch
    tensor (one value per image; average them for a dataset mean as BasicSR does)."""
    out = []
    for a, b in _pairs(pred, target, quantize, "psnr"):
        a, b = _prepare(a, crop_border, test_y_channel), _prepare(b, crop_border, test_y_channel)
        mse = float(np.mean((a - b) ** 2))
        out.append(float("inf") if mse == 0 else 10.0 * math.log10(255.0 * 255.0 / mse))
    return _reduce(out, pred)


def gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """OpenCV's ``getGaussianKernel(size, sigma)`` as a 1-D float64 array (SSIM's window is its outer product)."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    k = np.exp(-(x ** 2) / (2 * sigma ** 2))
    return k / k.sum()


def _filter_valid(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Valid 2-D correlation of ``(H, W)`` with the separable window ``outer(k, k)``: ``(H-10, W-10)`` for 11 taps."""
    n = len(k)
    rows = sum(k[i] * x[i:x.shape[0] - n + 1 + i] for i in range(n))
    return sum(k[j] * rows[:, j:x.shape[1] - n + 1 + j] for j in range(n))


def _ssim_channel(a: np.ndarray, b: np.ndarray) -> float:
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    k = gaussian_window()
    mu1, mu2 = _filter_valid(a, k), _filter_valid(b, k)
    s11 = _filter_valid(a * a, k) - mu1 ** 2
    s22 = _filter_valid(b * b, k) - mu2 ** 2
    s12 = _filter_valid(a * b, k) - mu1 * mu2
    m = ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1 ** 2 + mu2 ** 2 + c1) * (s11 + s22 + c2))
    return float(m.mean())


def ssim(pred: Any, target: Any, crop_border: int = 0, test_y_channel: bool = False,
         quantize: bool = False) -> float | torch.Tensor:
    """SSIM, BasicSR's ``calculate_ssim`` (per-channel Gaussian SSIM, channel mean): a float for one image, a
    ``(B,)`` float64 tensor for a batch tensor. Images must be at least 11 x 11 after ``crop_border``."""
    out = []
    for a, b in _pairs(pred, target, quantize, "ssim"):
        a, b = _prepare(a, crop_border, test_y_channel), _prepare(b, crop_border, test_y_channel)
        if a.shape[0] < 11 or a.shape[1] < 11:
            raise ValueError(f"ssim needs images of at least 11 x 11 pixels after crop_border={crop_border}, "
                             f"got {a.shape[0]} x {a.shape[1]}")
        out.append(float(np.mean([_ssim_channel(a[..., c], b[..., c]) for c in range(a.shape[2])])))
    return _reduce(out, pred)


def image_quality(pred: torch.Tensor, target: torch.Tensor, prefix: str = "", **kwargs: Any) -> dict[str, torch.Tensor]:
    """Per-image ``{prefix}psnr`` and ``{prefix}ssim`` of ``(B, C, H, W)`` tensors in [0, 1]: two ``(B,)`` float64
    tensors on ``pred``'s device (so they can be gathered across processes). ``kwargs``: :func:`psnr` / :func:`ssim`'s
    ``crop_border``, ``test_y_channel``, ``quantize``."""
    if not isinstance(pred, torch.Tensor) or pred.ndim != 4:
        raise ValueError(f"image_quality takes (B, C, H, W) tensors, got {tuple(getattr(pred, 'shape', ()))}")
    scores = {"psnr": psnr(pred, target, **kwargs), "ssim": ssim(pred, target, **kwargs)}
    return {f"{prefix}{k}": v.to(pred.device) for k, v in scores.items()}


class ImageQualityMetric(Metric):
    """Dataset means of per-image quality scores (``(N,)`` outputs such as :func:`image_quality`'s) and the number
    of images: ``{name: mean, ..., count: N}``.

    Args:
        names: the per-image outputs to average (default PSNR and SSIM of the output and of the degraded input).
        count: the name of the image count (None: not reported).
    """

    def __init__(self, names: tuple[str, ...] = ("psnr", "ssim", "input_psnr", "input_ssim"),
                 count: str | None = "images"):
        self.keys = tuple(names)
        self.count = count
        super().__init__()

    def compute_from(self, **scores: torch.Tensor) -> dict[str, Any]:
        # image by image in float64, in dataset order (the running sum BasicSR's test loop keeps)
        out: dict[str, Any] = {k: sum(scores[k].double().tolist()) / scores[k].shape[0] for k in self.keys}
        if self.count:
            out[self.count] = int(scores[self.keys[0]].shape[0])
        return out
