"""The test-time augmentation of CoTTA and ViDA (their ``get_tta_transforms``), on a batch of images in [0, 1].

Reference: qinenergy/cotta ``cifar/my_transforms.py`` / ``cifar/cotta.py::get_tta_transforms`` (the same code in
Yangsenqiao/vida); the colour jitter with gamma is KATANA's ``ColorJitterPro``; the blur is torchvision's
``gaussian_blur``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["tta_augment", "gaussian_blur"]


def gaussian_blur(x: torch.Tensor, sigma: float, kernel_size: int = 5) -> torch.Tensor:
    """torchvision's ``gaussian_blur`` of ``x`` ``(..., H, W)``: kernel ``exp(-t²/2σ²)`` on
    ``linspace(-(k-1)/2, (k-1)/2, k)``, normalised, reflect padding; separable, computed as weighted sums of
    shifted slices (depthwise convolutions are slow on the CPU). Returns the same shape."""
    half = (kernel_size - 1) * 0.5
    k = torch.linspace(-half, half, kernel_size, dtype=torch.float64)
    k = torch.exp(-0.5 * (k / sigma) ** 2)
    k = (k / k.sum()).tolist()
    p = kernel_size // 2
    h, w = x.shape[-2:]
    x = F.pad(x, (p, p, p, p), mode="reflect")
    x = sum(k[i] * x[..., :, i:i + w] for i in range(kernel_size))
    return sum(k[i] * x[..., i:i + h, :] for i in range(kernel_size))


def tta_augment(x: torch.Tensor, noise_std: float = 0.005, soft: bool = False, flip: bool = True) -> torch.Tensor:
    """The official CoTTA / ViDA test-time augmentation of a batch ``(B, C, H, W)`` in [0, 1] -> ``(B, C, H, W)``.

    As there, one random draw for the whole batch (torchvision transforms applied to a 4-D tensor): clip -> colour
    jitter (brightness [0.6, 1.4], contrast [0.7, 1.3], saturation [0.5, 1.5], hue ±0.06, gamma [0.7, 1.3], in random
    order) -> edge pad H/2 -> random affine (±15°, translate 1/16, scale 0.9-1.1, bilinear, zero fill) -> Gaussian
    blur (5, σ in [0.001, 0.5]) -> centre crop H -> horizontal flip (p 0.5; ``flip=False`` drops it, a deviation for
    images that are not mirror-symmetric in meaning, e.g. digits) -> Gaussian noise (σ ``noise_std``) -> clip.
    ``soft``: the official soft ranges (brightness [0.8, 1.2], contrast [0.85, 1.15], saturation [0.75, 1.25], hue
    ±0.03, gamma [0.85, 1.15], ±8°, scale 0.95-1.05, σ up to 0.25). Uses the global torch RNG, drawing the same
    numbers in the same order whatever the shortcuts below take.

    Two shortcuts give the same numbers faster: the blur is computed only on the centre crop plus the kernel's
    radius (the crop's pixels depend on nothing else), and a grey batch (one channel, or three equal ones) is
    transformed as one channel and replicated before the noise (every step but saturation / hue, the identity on
    grey images and skipped, acts on each channel alike; the noise stays per channel).
    """
    import torchvision.transforms as T
    import torchvision.transforms.functional as TF

    def u(lo: float, hi: float) -> float:
        return float(torch.empty(1).uniform_(lo, hi))

    n = x.shape[-1]
    channels = x.shape[-3]
    x = x.clamp(0, 1)
    ranges = ([0.8, 1.2], [0.85, 1.15], [0.75, 1.25], [-0.03, 0.03], [0.85, 1.15]) if soft else \
        ([0.6, 1.4], [0.7, 1.3], [0.5, 1.5], [-0.06, 0.06], [0.7, 1.3])
    rgb = channels == 3
    grey = not rgb or bool((x[:, 0] == x[:, 1]).all() and (x[:, 1] == x[:, 2]).all())
    if grey and rgb:
        x = x[:, :1]  # replicated before the noise
    ops = [TF.adjust_brightness,
           TF.adjust_contrast,  # on one grey channel: the blend with its mean (RGB: with its luma's mean)
           (lambda t, f: t) if grey else TF.adjust_saturation,
           (lambda t, f: t) if grey else TF.adjust_hue,
           lambda t, f: TF.adjust_gamma(t.clamp(0, 1), f)]
    for i in torch.randperm(5).tolist():
        x = ops[i](x, u(*ranges[i])).clamp(0, 1)
    x = TF.pad(x, [n // 2], padding_mode="edge")
    x = T.RandomAffine(degrees=8 if soft else 15, translate=(1 / 16, 1 / 16),
                       scale=(0.95, 1.05) if soft else (0.9, 1.1), interpolation=T.InterpolationMode.BILINEAR)(x)
    sigma = u(0.001, 0.25 if soft else 0.5)
    x = _blur_centre_crop(x, sigma, [n, n])
    if torch.rand(1).item() < 0.5 and flip:
        x = x.flip(-1)
    if x.shape[-3] != channels:
        x = x.expand(-1, channels, -1, -1)
    return (x + torch.randn_like(x) * noise_std).clamp(0, 1)


def _blur_centre_crop(x: torch.Tensor, sigma: float, size: list[int], kernel_size: int = 5) -> torch.Tensor:
    """``center_crop(gaussian_blur(x, sigma), size)`` of ``x`` ``(..., H, W)``, blurring only the crop and the
    kernel's radius around it (a crop pixel reads ``kernel_size // 2`` pixels on each side; reflect padding happens
    only where the region touches the border of ``x``). Returns ``(..., size[0], size[1])``."""
    h, w = x.shape[-2:]
    top, left = int(round((h - size[0]) / 2.0)), int(round((w - size[1]) / 2.0))  # torchvision's center_crop
    r = kernel_size // 2
    if top < r or left < r or top + size[0] + r > h or left + size[1] + r > w:
        import torchvision.transforms.functional as TF

        return TF.center_crop(gaussian_blur(x, sigma, kernel_size), size)
    region = x[..., top - r:top + size[0] + r, left - r:left + size[1] + r]
    return gaussian_blur(region, sigma, kernel_size)[..., r:r + size[0], r:r + size[1]]
