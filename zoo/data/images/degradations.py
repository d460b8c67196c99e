"""Synthetic degradations and PROD (CoLoRA's Pre-training with Random Order Degradations).

Every degradation is a function ``fn(img, rng) -> img`` on a float32 RGB image ``(H, W, 3)`` in [0, 1] that keeps
the shape, the dtype and the range, drawing its parameters from its range (:data:`DEGRADATIONS`: name ->
``(fn, ranges)``) with the given ``numpy.random.Generator`` -- the same generator state gives the same output.

The PROD pool (:data:`PROD_POOL`): Gaussian / Poisson / speckle noise, Gaussian (isotropic or anisotropic) /
motion / defocus blur, JPEG, down-up sampling, haze, rain streaks, low light (darkening + gamma), colour shift.
:class:`PROD` applies a random subset of 1..N of them in a **random order** per image (KAIR's
``degradation_bsrgan`` shuffles only blur, downsampling, noise and JPEG; CoLoRA's PROD shuffles its whole pool).
The paper's exact pool and ranges are not public (no code released): the ranges here are our choice, moderate
enough that a 1..N chain stays restorable.

Target degradations *outside* the PROD pool, for adaptation experiments (:data:`TARGETS`):

* ``camera_noise`` -- a camera-pipeline-like corruption: sRGB -> linear, signal-dependent shot + read noise that is
  spatially correlated (3x3 smoothing of the noise, as demosaicing correlates it) and mixed across channels,
  linear -> sRGB, then JPEG at quality 60-80;
* ``salt_pepper_jpeg`` -- impulse noise followed by JPEG.
"""
from __future__ import annotations

import io
import math
from typing import Callable, Mapping, Sequence

import numpy as np
from PIL import Image

__all__ = ["DEGRADATIONS", "PROD_POOL", "TARGETS", "PROD", "SingleDegradation", "degrade", "check_image",
           "gaussian_noise", "poisson_noise", "speckle_noise", "gaussian_blur", "motion_blur", "defocus_blur",
           "jpeg", "downup", "haze", "rain", "low_light", "color_shift", "camera_noise", "salt_pepper_jpeg"]


def check_image(img: np.ndarray, who: str = "degradation") -> np.ndarray:
    """Validate an ``(H, W, 3)`` float32 image in [0, 1] (raises naming the problem and the fix)."""
    if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3:
        got = img.shape if isinstance(img, np.ndarray) else type(img).__name__
        raise ValueError(f"{who} expects an RGB image (H, W, 3), got {got}")
    if img.dtype != np.float32:
        raise TypeError(f"{who} expects float32 in [0, 1], got {img.dtype}; use img.astype(np.float32) / 255")
    return img


def _finish(x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0.0, 1.0).astype(np.float32)


def _uniform(rng: np.random.Generator, lo_hi: Sequence[float]) -> float:
    return float(rng.uniform(lo_hi[0], lo_hi[1]))


def _conv2d(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Correlate each channel of ``(H, W, C)`` with ``kernel (kh, kw)`` (odd sizes), reflect borders."""
    kh, kw = kernel.shape
    p = np.pad(img, ((kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)), mode="reflect")
    h, w = img.shape[:2]
    out = np.zeros(img.shape, np.float64)
    for i in range(kh):
        for j in range(kw):
            if kernel[i, j] != 0:
                out += kernel[i, j] * p[i:i + h, j:j + w]
    return out


# ================================================================================================ noise
def gaussian_noise(img, rng, sigma=(1.0, 30.0)):
    """Additive white Gaussian noise, σ uniform in ``sigma`` (in 0-255 units)."""
    s = _uniform(rng, sigma) / 255.0
    return _finish(img + rng.normal(0.0, s, img.shape))


def poisson_noise(img, rng, peak=(10.0, 300.0)):
    """Shot noise: ``Poisson(img · peak) / peak``, ``log10(peak)`` uniform in ``log10(peak range)``."""
    pk = 10 ** _uniform(rng, (math.log10(peak[0]), math.log10(peak[1])))
    return _finish(rng.poisson(np.clip(img, 0, 1) * pk) / pk)


def speckle_noise(img, rng, sigma=(0.02, 0.2)):
    """Multiplicative noise ``img · (1 + N(0, σ))``."""
    return _finish(img * (1.0 + rng.normal(0.0, _uniform(rng, sigma), img.shape)))


# ================================================================================================ blur
def _gaussian_kernel(sx: float, sy: float, theta: float, size: int) -> np.ndarray:
    r = size // 2
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1].astype(np.float64)
    c, s = math.cos(theta), math.sin(theta)
    u, v = c * xx + s * yy, -s * xx + c * yy
    k = np.exp(-0.5 * ((u / sx) ** 2 + (v / sy) ** 2))
    return k / k.sum()


def gaussian_blur(img, rng, sigma=(0.3, 2.5), anisotropic_p=0.5):
    """Gaussian blur: isotropic, or (with probability ``anisotropic_p``) two σ's and a random angle (BSRGAN's)."""
    sx = _uniform(rng, sigma)
    sy = _uniform(rng, sigma) if rng.random() < anisotropic_p else sx
    size = 2 * int(math.ceil(2.5 * max(sx, sy))) + 1
    return _finish(_conv2d(img, _gaussian_kernel(sx, sy, _uniform(rng, (0, math.pi)), size)))


def motion_blur(img, rng, length=(3, 13)):
    """Linear motion blur: a line of ``length`` pixels (odd) at a random angle, normalised."""
    n = int(rng.integers(length[0], length[1] + 1)) | 1
    angle = _uniform(rng, (0, math.pi))
    k = np.zeros((n, n))
    r = n // 2
    for t in np.linspace(-r, r, 4 * n):
        k[int(round(r + t * math.sin(angle))), int(round(r + t * math.cos(angle)))] = 1.0
    return _finish(_conv2d(img, k / k.sum()))


def defocus_blur(img, rng, radius=(1.0, 4.0)):
    """Defocus (out-of-focus) blur: a uniform disk of the given radius."""
    rad = _uniform(rng, radius)
    r = int(math.ceil(rad))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    k = (xx ** 2 + yy ** 2 <= rad ** 2 + 1e-6).astype(np.float64)
    return _finish(_conv2d(img, k / k.sum()))


# ========================================================================================= compression, resampling
def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(np.uint8(np.clip(np.round(img * 255.0), 0, 255))).save(buf, "JPEG", quality=int(quality))
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"), np.float32) / 255.0


def jpeg(img, rng, quality=(30, 95)):
    """JPEG compression (PIL) at a quality drawn from ``quality``."""
    return _finish(_jpeg(img, int(rng.integers(quality[0], quality[1] + 1))))


def _resize(img: np.ndarray, size: tuple[int, int], method) -> np.ndarray:
    chans = [Image.fromarray(img[..., c].astype(np.float32), mode="F").resize(size, method) for c in range(3)]
    return np.stack([np.asarray(c, np.float32) for c in chans], axis=-1)


def downup(img, rng, scale=(1.5, 4.0)):
    """Down-sample by a factor from ``scale`` (bicubic, bilinear or box, chosen at random) and up-sample back."""
    h, w = img.shape[:2]
    f = _uniform(rng, scale)
    methods = (Image.BICUBIC, Image.BILINEAR, Image.BOX)
    small = _resize(img, (max(1, int(round(w / f))), max(1, int(round(h / f)))), methods[int(rng.integers(3))])
    return _finish(_resize(small, (w, h), methods[int(rng.integers(2))]))


# ========================================================================================= weather, light, colour
def _smooth_field(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth random field in [0, 1] ``(H, W)``: a random linear ramp plus low-frequency noise."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    a = rng.uniform(-1, 1, 2)
    ramp = a[0] * yy + a[1] * xx
    coarse = rng.random((4, 4)).astype(np.float32)
    low = np.asarray(Image.fromarray(coarse, mode="F").resize((w, h), Image.BICUBIC), np.float64)
    f = ramp + 0.5 * low
    return (f - f.min()) / (np.ptp(f) + 1e-8)


def haze(img, rng, beta=(0.3, 1.5), airlight=(0.7, 1.0)):
    """Atmospheric scattering ``I = J t + A (1 - t)``, ``t = exp(-β d)`` with a smooth random depth ``d``."""
    h, w = img.shape[:2]
    t = np.exp(-_uniform(rng, beta) * (0.3 + _smooth_field(rng, h, w)))[..., None]
    a = _uniform(rng, airlight)
    return _finish(img * t + a * (1 - t))


def rain(img, rng, density=(0.002, 0.01), length=(5, 15), strength=(0.3, 0.8)):
    """Rain streaks: sparse random drops smeared by a motion kernel (near-vertical angle), added in white."""
    h, w = img.shape[:2]
    drops = (rng.random((h, w)) < _uniform(rng, density)).astype(np.float64)
    n = int(rng.integers(length[0], length[1] + 1)) | 1
    angle = math.pi / 2 + _uniform(rng, (-0.4, 0.4))
    k = np.zeros((n, n))
    r = n // 2
    for t in np.linspace(-r, r, 4 * n):
        k[int(round(r + t * math.sin(angle))), int(round(r + t * math.cos(angle)))] = 1.0
    streaks = _conv2d(drops[..., None], k)[..., 0]
    streaks = np.clip(streaks / (streaks.max() + 1e-8), 0, 1) * _uniform(rng, strength)
    return _finish(img + streaks[..., None])


def low_light(img, rng, scale=(0.25, 0.8), gamma=(1.2, 2.5)):
    """Low light: ``(scale · img) ** gamma``."""
    return _finish((np.clip(img, 0, 1) * _uniform(rng, scale)) ** _uniform(rng, gamma))


def color_shift(img, rng, gain=(0.8, 1.2), offset=(-0.05, 0.05)):
    """Colour cast: per-channel gain and offset."""
    g = rng.uniform(gain[0], gain[1], 3)
    o = rng.uniform(offset[0], offset[1], 3)
    return _finish(img * g + o)


# ================================================================================================ targets (not in PROD)
def _srgb_to_linear(x):
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def _linear_to_srgb(x):
    x = np.clip(x, 0, 1)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * x ** (1 / 2.4) - 0.055)


def camera_noise(img, rng, shot=(0.005, 0.02), read=(0.002, 0.01), quality=(60, 80)):
    """Camera-pipeline-like noise + JPEG (not in the PROD pool): in linear light, Gaussian noise of variance
    ``shot · x + read²`` smoothed by a 3x3 box (demosaicing-like spatial correlation) and mixed across channels,
    back to sRGB, then JPEG."""
    lin = _srgb_to_linear(np.clip(img.astype(np.float64), 0, 1))
    std = np.sqrt(_uniform(rng, shot) * lin + _uniform(rng, read) ** 2)
    n = rng.normal(0.0, 1.0, img.shape)
    n = _conv2d(n, np.full((3, 3), 1 / 3.0))  # box of weights 1/3: keeps the noise power roughly
    mix = np.array([[0.7, 0.2, 0.1], [0.15, 0.7, 0.15], [0.1, 0.2, 0.7]])
    n = n @ mix.T
    out = _linear_to_srgb(lin + std * n).astype(np.float32)
    return _finish(_jpeg(out, int(rng.integers(quality[0], quality[1] + 1))))


def salt_pepper_jpeg(img, rng, amount=(0.01, 0.05), quality=(50, 80)):
    """Impulse (salt-and-pepper) noise then JPEG (not in the PROD pool)."""
    out = img.copy()
    m = rng.random(img.shape[:2])
    a = _uniform(rng, amount)
    out[m < a / 2] = 0.0
    out[m > 1 - a / 2] = 1.0
    return _finish(_jpeg(out, int(rng.integers(quality[0], quality[1] + 1))))


#: name -> degradation function of the PROD pool
PROD_POOL: dict[str, Callable] = {
    "gaussian_noise": gaussian_noise, "poisson_noise": poisson_noise, "speckle_noise": speckle_noise,
    "gaussian_blur": gaussian_blur, "motion_blur": motion_blur, "defocus_blur": defocus_blur,
    "jpeg": jpeg, "downup": downup, "haze": haze, "rain": rain, "low_light": low_light, "color_shift": color_shift,
}
#: name -> degradation used as an adaptation target (not in the PROD pool)
TARGETS: dict[str, Callable] = {"camera_noise": camera_noise, "salt_pepper_jpeg": salt_pepper_jpeg}
DEGRADATIONS: dict[str, Callable] = {**PROD_POOL, **TARGETS}


def degrade(img: np.ndarray, name: str, rng: np.random.Generator | int | None = None) -> np.ndarray:
    """Apply degradation ``name`` (see :data:`DEGRADATIONS`) to ``img (H, W, 3)`` float32 in [0, 1]."""
    if name not in DEGRADATIONS:
        raise KeyError(f"unknown degradation '{name}'; choose one of {', '.join(DEGRADATIONS)}")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    return DEGRADATIONS[name](check_image(img, name), rng)


class PROD:
    """Random-order degradation chain: ``PROD(max_degradations=N)(img, rng) -> (lq, names)``.

    For each call: ``k ~ U{min_degradations..N}`` distinct degradations drawn from ``pool`` (default the whole PROD
    pool), applied in a random order; ``names`` lists them in the order applied. ``img``: ``(H, W, 3)`` float32 in
    [0, 1]; ``lq`` the same shape / dtype / range. Deterministic given the generator (or an int seed).

    Args:
        max_degradations: N (default 3).
        pool: names from :data:`DEGRADATIONS`, or a ``{name: fn}`` mapping.
        min_degradations: smallest chain length (default 1).
        weights: optional sampling weights per pool entry.
    """

    def __init__(self, max_degradations: int = 3, pool: Sequence[str] | Mapping[str, Callable] | None = None,
                 min_degradations: int = 1, weights: Sequence[float] | None = None):
        if isinstance(pool, Mapping):
            self.pool = dict(pool)
        else:
            names = list(pool) if pool is not None else list(PROD_POOL)
            unknown = [n for n in names if n not in DEGRADATIONS]
            if unknown:
                raise KeyError(f"PROD: unknown degradation(s) {unknown}; choose from {', '.join(DEGRADATIONS)}")
            self.pool = {n: DEGRADATIONS[n] for n in names}
        if not 1 <= min_degradations <= max_degradations <= len(self.pool):
            raise ValueError(f"PROD needs 1 <= min_degradations <= max_degradations <= pool size ({len(self.pool)}), "
                             f"got {min_degradations} and {max_degradations}")
        self.min_degradations, self.max_degradations = int(min_degradations), int(max_degradations)
        w = np.ones(len(self.pool)) if weights is None else np.asarray(weights, np.float64)
        if w.shape != (len(self.pool),) or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"PROD weights must be {len(self.pool)} non-negative numbers, got {weights}")
        self.weights = w / w.sum()

    def __call__(self, img: np.ndarray, rng: np.random.Generator | int | None = None) -> tuple[np.ndarray, list[str]]:
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        check_image(img, "PROD")
        k = int(rng.integers(self.min_degradations, self.max_degradations + 1))
        names = list(self.pool)
        chosen = rng.choice(len(names), size=k, replace=False, p=self.weights)  # a random subset in random order
        order = [names[i] for i in chosen]
        out = img
        for n in order:
            out = self.pool[n](out, rng)
        return out, order

    def __repr__(self) -> str:
        return f"PROD(k={self.min_degradations}..{self.max_degradations}, pool={list(self.pool)})"


class SingleDegradation:
    """One fixed degradation as a PROD-like callable: ``(img, rng) -> (lq, [name])`` (the single-degradation
    pre-training of the PROD ablation, and the adaptation targets)."""

    def __init__(self, name: str):
        if name not in DEGRADATIONS:
            raise KeyError(f"unknown degradation '{name}'; choose one of {', '.join(DEGRADATIONS)}")
        self.name = name

    def __call__(self, img: np.ndarray, rng: np.random.Generator | int | None = None) -> tuple[np.ndarray, list[str]]:
        return degrade(img, self.name, rng), [self.name]

    def __repr__(self) -> str:
        return f"SingleDegradation({self.name!r})"
