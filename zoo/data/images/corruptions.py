"""The 15 common corruptions of Hendrycks & Dietterich (ICLR 2019) with the CIFAR-10-C parameters, in numpy + PIL.

Reference: hendrycks/robustness ``ImageNet-C/create_c/make_cifar_c.py`` (the script that made CIFAR-10-C). Each
function here uses the same constants per severity and the same operations, re-implemented without scikit-image,
scipy, OpenCV or ImageMagick (none is a dependency of the zoo):

* ``skimage.filters.gaussian`` (= ``scipy.ndimage.gaussian_filter``, truncate 4, per channel) -> :func:`_gaussian`
  (separable, the same kernel radius ``int(truncate·σ + 0.5)`` and border modes);
* ``cv2.GaussianBlur`` / ``cv2.filter2D`` (correlation, ``BORDER_REFLECT_101``) -> :func:`_filter2d`;
* ``scipy.ndimage.zoom(order=1)`` -> :func:`_zoom_linear` (same coordinate mapping ``in = out·(n_in−1)/(n_out−1)``);
* ``skimage.color.rgb2hsv`` / ``hsv2rgb`` -> :func:`_rgb2hsv` / :func:`_hsv2rgb` (same formulas);
* ``cv2.warpAffine`` (bilinear, ``BORDER_REFLECT_101``) and ``scipy.ndimage.map_coordinates(order=1,
  mode='reflect')`` -> :func:`_bilinear` (float bilinear; OpenCV's 1/32-pixel fixed point is not reproduced);
* ImageMagick's ``MagickMotionBlurImage`` (used through Wand for motion blur and snow) -> :func:`_motion_blur`:
  ImageMagick's algorithm (a one-sided Gaussian of width ``2·ceil(radius)+1`` along the angle, edge pixels
  repeated), as bethgelab/imagecorruptions does it since 1.0;
* frost: the reference blends crops of six frost photographs (``frost1.png`` … ``frost6.jpg``, not
  redistributable here); we blend crops of **procedurally generated frost textures** (:func:`frost_texture`:
  seeded ice needles and fractal haze, bluish white), with the same blend weights. Frost is therefore *not*
  the reference's frost, only its kind.

Output is stored as the reference stores it: ``np.uint8(float_image)`` — truncation, not rounding.

Determinism: corruptions that draw no random numbers (defocus_blur, zoom_blur, brightness, contrast, pixelate,
jpeg_compression) match the reference's definition; random ones take ``rng`` (a ``numpy.random.Generator`` or an
int seed) and are reproducible for one seed, but cannot reproduce the reference's global ``np.random`` draws.

Sizes: the CIFAR constants are for 32×32 images (several operations of the reference hard-code 32). Other sizes
are resized to 32×32 (bilinear, PIL), corrupted, and resized back; stated in :func:`corrupt`. (ImageNet-C's
constants, ``make_imagenet_c.py``, are not implemented.)
"""
from __future__ import annotations

import io
import math
from typing import Callable

import numpy as np
from PIL import Image

__all__ = ["CORRUPTIONS", "CORRUPTION_FAMILIES", "corrupt", "frost_texture", "plasma_fractal"]

CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)
#: the four corruption categories of Hendrycks & Dietterich (ICLR 2019); a stream reports each category's mean error
#: (``family/<name>``) when it holds all of its corruptions
CORRUPTION_FAMILIES = {
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise"),
    "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur"),
    "weather": ("snow", "frost", "fog", "brightness"),
    "digital": ("contrast", "elastic_transform", "pixelate", "jpeg_compression"),
}
SIZE = 32  # the CIFAR-10-C constants are for 32×32 images


# ============================================================================================ helpers
def _pad(x: np.ndarray, r: int, mode: str, axes=(0, 1)) -> np.ndarray:
    width = [(r, r) if a in axes else (0, 0) for a in range(x.ndim)]
    return np.pad(x, width, mode=mode)


def _gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """scipy.ndimage's Gaussian kernel: radius ``int(truncate·σ + 0.5)``, normalised."""
    r = int(truncate * float(sigma) + 0.5)
    x = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


# scipy.ndimage border modes -> numpy.pad modes
_SCIPY_MODES = {"nearest": "edge", "reflect": "symmetric", "mirror": "reflect", "wrap": "wrap", "constant": "constant"}


def _gaussian(x: np.ndarray, sigma: float, mode: str = "nearest", truncate: float = 4.0) -> np.ndarray:
    """``skimage.filters.gaussian`` on ``(H, W)`` or ``(H, W, C)`` (channels not blurred), float64."""
    x = np.asarray(x, dtype=np.float64)
    k = _gaussian_kernel1d(sigma, truncate)
    r = len(k) // 2
    for axis in (0, 1):
        p = _pad(x, r, _SCIPY_MODES[mode], axes=(axis,))
        n = x.shape[axis]
        x = sum(k[i] * np.take(p, np.arange(i, i + n), axis=axis) for i in range(len(k)))
    return x


def _filter2d(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """``cv2.filter2D(x, -1, kernel)`` for a 2-D ``x``: correlation, anchor at the centre, BORDER_REFLECT_101."""
    kh, kw = kernel.shape
    p = np.pad(x, ((kh // 2, kh // 2), (kw // 2, kw // 2)), mode="reflect")
    h, w = x.shape
    out = np.zeros((h, w), dtype=np.float64)
    for i in range(kh):
        for j in range(kw):
            out += kernel[i, j] * p[i:i + h, j:j + w]
    return out


def _cv2_gaussian_kernel(ksize: int, sigma: float) -> np.ndarray:
    x = np.arange(ksize) - (ksize - 1) / 2
    k = np.exp(-(x ** 2) / (2 * sigma ** 2))
    return k / k.sum()


def _disk(radius: float, alias_blur: float) -> np.ndarray:
    """The reference's anti-aliased disk: ``X²+Y² <= r²`` on [-8, 8]² (radius <= 8), normalised, then
    ``cv2.GaussianBlur(ksize=(3, 3), sigmaX=alias_blur)``."""
    if radius <= 8:
        coords, ksize = np.arange(-8, 9), 3
    else:
        coords, ksize = np.arange(-math.ceil(radius), math.ceil(radius) + 1), 5
    xx, yy = np.meshgrid(coords, coords)
    d = ((xx ** 2 + yy ** 2) <= radius ** 2).astype(np.float32)
    d /= d.sum()
    g = _cv2_gaussian_kernel(ksize, alias_blur)
    return _filter2d(_filter2d(d, g[None, :]), g[:, None])


def _zoom_linear(x: np.ndarray, factor: float) -> np.ndarray:
    """``scipy.ndimage.zoom(x, (factor, factor, 1), order=1)`` for ``(H, W, C)`` / ``(H, W, 1)``."""
    h, w = x.shape[:2]
    oh, ow = int(round(h * factor)), int(round(w * factor))
    ys = np.arange(oh) * ((h - 1) / (oh - 1)) if oh > 1 else np.zeros(1)
    xs = np.arange(ow) * ((w - 1) / (ow - 1)) if ow > 1 else np.zeros(1)
    return _bilinear(x, ys[:, None] + 0 * xs[None, :], xs[None, :] + 0 * ys[:, None], border="edge")


def _bilinear(x: np.ndarray, yy: np.ndarray, xx: np.ndarray, border: str) -> np.ndarray:
    """Sample ``x (H, W, C)`` at float coordinates ``(yy, xx)`` (same shape) bilinearly; coordinates outside are
    mapped by ``border``: ``edge``, ``reflect101`` (OpenCV BORDER_REFLECT_101) or ``symmetric`` (scipy 'reflect')."""
    h, w = x.shape[:2]

    def fold(i: np.ndarray, n: int) -> np.ndarray:
        if border == "edge" or n == 1:
            return np.clip(i, 0, n - 1)
        if border == "reflect101":
            period = 2 * n - 2
            i = np.mod(i, period)
            return np.where(i >= n, period - i, i)
        period = 2 * n  # symmetric
        i = np.mod(i, period)
        return np.where(i >= n, period - 1 - i, i)

    y0, x0 = np.floor(yy).astype(np.int64), np.floor(xx).astype(np.int64)
    wy, wx = (yy - y0)[..., None], (xx - x0)[..., None]
    ya, yb = fold(y0, h), fold(y0 + 1, h)
    xa, xb = fold(x0, w), fold(x0 + 1, w)
    top = x[ya, xa] * (1 - wx) + x[ya, xb] * wx
    bottom = x[yb, xa] * (1 - wx) + x[yb, xb] * wx
    return top * (1 - wy) + bottom * wy


def _clipped_zoom(img: np.ndarray, factor: float) -> np.ndarray:
    """The reference's ``clipped_zoom``: centre crop ``ceil(h / factor)``, zoom by ``factor``, centre trim to h."""
    h = img.shape[0]
    ch = int(np.ceil(h / factor))
    top = (h - ch) // 2
    z = _zoom_linear(img[top:top + ch, top:top + ch], factor)
    trim = (z.shape[0] - h) // 2
    return z[trim:trim + h, trim:trim + h]


def _motion_blur(x: np.ndarray, radius: float, sigma: float, angle: float) -> np.ndarray:
    """ImageMagick's ``MotionBlurImage`` on ``(H, W)`` or ``(H, W, C)`` floats: a one-sided Gaussian kernel of
    width ``2·ceil(radius)+1`` (``exp(-i²/2σ²)``, normalised) along ``angle`` degrees, samples beyond the border
    repeat the edge pixel (ImageMagick's default virtual-pixel method)."""
    width = 2 * int(math.ceil(radius)) + 1
    i = np.arange(width, dtype=np.float64)
    kernel = np.exp(-(i ** 2) / (2 * sigma ** 2))
    kernel /= kernel.sum()
    px = width * math.sin(math.radians(angle))  # ImageMagick's point.x / point.y (angle 0: along the rows)
    py = width * math.cos(math.radians(angle))
    norm = math.hypot(px, py)
    h, w = x.shape[:2]
    out = np.zeros(x.shape, dtype=np.float64)
    rows, cols = np.arange(h)[:, None], np.arange(w)[None, :]
    for k in range(width):
        dx = int(math.ceil(k * py / norm - 0.5))
        dy = int(math.ceil(k * px / norm - 0.5))
        out += kernel[k] * x[np.clip(rows + dy, 0, h - 1), np.clip(cols + dx, 0, w - 1)]
    return out


def _rgb2hsv(rgb: np.ndarray) -> np.ndarray:
    """``skimage.color.rgb2hsv`` (floats in [0, 1])."""
    v = rgb.max(-1)
    delta = rgb.ptp(-1) if hasattr(rgb, "ptp") else np.ptp(rgb, -1)
    with np.errstate(invalid="ignore", divide="ignore"):
        s = np.where(v == 0, 0.0, delta / np.where(v == 0, 1, v))
        r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
        d = np.where(delta == 0, 1, delta)
        hr = (g - b) / d
        hg = 2.0 + (b - r) / d
        hb = 4.0 + (r - g) / d
    hue = np.where(b == v, hb, 0.0)
    hue = np.where(g == v, hg, hue)
    hue = np.where(r == v, hr, hue)
    hue = np.where(delta == 0, 0.0, hue)
    hue = (hue / 6.0) % 1.0
    return np.stack([hue, s, v], -1)


def _hsv2rgb(hsv: np.ndarray) -> np.ndarray:
    """``skimage.color.hsv2rgb``."""
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    hi = np.floor(h * 6)
    f = h * 6 - hi
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    hi = np.stack([hi, hi, hi], -1).astype(np.uint8) % 6
    choices = [np.stack(c, -1) for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))]
    out = np.zeros_like(hsv)
    for i, c in enumerate(choices):
        out = np.where(hi == i, c, out)
    return out


def _gray(x: np.ndarray) -> np.ndarray:
    """``cv2.cvtColor(x, COLOR_RGB2GRAY)`` for floats: 0.299 R + 0.587 G + 0.114 B, ``(H, W)``."""
    return x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114


def plasma_fractal(mapsize: int = 32, wibbledecay: float = 3, rng: np.random.Generator | None = None) -> np.ndarray:
    """The reference's diamond-square height map ``(mapsize, mapsize)`` in [0, 1] (``mapsize`` a power of two)."""
    rng = rng if rng is not None else np.random.default_rng()
    if mapsize & (mapsize - 1):
        raise ValueError(f"plasma_fractal: mapsize must be a power of two, got {mapsize}")
    m = np.zeros((mapsize, mapsize), dtype=np.float64)
    step, wibble = mapsize, 100.0

    def wibbled(a: np.ndarray) -> np.ndarray:
        return a / 4 + wibble * rng.uniform(-wibble, wibble, a.shape)

    while step >= 2:
        corner = m[0:mapsize:step, 0:mapsize:step]
        sq = corner + np.roll(corner, -1, axis=0)
        sq = sq + np.roll(sq, -1, axis=1)
        m[step // 2:mapsize:step, step // 2:mapsize:step] = wibbled(sq)
        dr = m[step // 2:mapsize:step, step // 2:mapsize:step]
        ul = m[0:mapsize:step, 0:mapsize:step]
        m[0:mapsize:step, step // 2:mapsize:step] = wibbled(dr + np.roll(dr, 1, axis=0) + ul + np.roll(ul, -1, axis=1))
        m[step // 2:mapsize:step, 0:mapsize:step] = wibbled(dr + np.roll(dr, 1, axis=1) + ul + np.roll(ul, -1, axis=0))
        step //= 2
        wibble /= wibbledecay
    m -= m.min()
    return m / m.max()


_FROST_CACHE: dict[int, np.ndarray] = {}


def frost_texture(index: int, size: int = 160) -> np.ndarray:
    """A generated frost texture ``(size, size, 3)`` float in [0, 255] (RGB), deterministic per ``index`` (0-5).

    Stand-in for the reference's frost photographs (resized by 0.2 there, i.e. a few hundred pixels): a haze of
    plasma fractal noise plus a few hundred thin bright ice needles in random directions with short branches,
    tinted bluish white. Brightness statistics are close to the photographs' (mean ~100, bright crystal lines).
    """
    if index in _FROST_CACHE:
        return _FROST_CACHE[index]
    rng = np.random.default_rng(1000 + index)
    haze = plasma_fractal(256, 2.0, rng)[:size, :size]
    img = 0.35 * haze
    n = 250 + 50 * index
    for _ in range(n):
        y, x = rng.uniform(0, size, 2)
        angle = rng.uniform(0, 2 * math.pi)
        length = rng.uniform(4, 24)
        value = rng.uniform(0.4, 1.0)
        for t in np.linspace(0, length, int(length * 2) + 1):
            yy, xx = int(y + t * math.sin(angle)) % size, int(x + t * math.cos(angle)) % size
            img[yy, xx] = max(img[yy, xx], value * (1 - 0.5 * t / length))
    img = np.clip(_gaussian(img, 0.6), 0, 1)
    rgb = np.stack([img * 0.85, img * 0.93, img], -1) * 255.0
    _FROST_CACHE[index] = rgb
    return rgb


# ============================================================================================ corruptions
# each takes x: float64 (32, 32, 3) in [0, 255], severity 1-5, rng; returns float in [0, 255] (before uint8)
def gaussian_noise(x, severity, rng):
    c = [0.04, 0.06, .08, .09, .10][severity - 1]
    x = x / 255.
    return np.clip(x + rng.normal(size=x.shape, scale=c), 0, 1) * 255


def shot_noise(x, severity, rng):
    c = [500, 250, 100, 75, 50][severity - 1]
    x = x / 255.
    return np.clip(rng.poisson(x * c) / c, 0, 1) * 255


def impulse_noise(x, severity, rng):
    """``skimage.util.random_noise(mode='s&p', amount=c)``: each value flipped with probability ``c``, to 1 or 0
    with equal probability."""
    c = [.01, .02, .03, .05, .07][severity - 1]
    x = x / 255.
    flipped = rng.random(x.shape) <= c
    salted = rng.random(x.shape) <= 0.5
    x = x.copy()
    x[flipped & salted] = 1.0
    x[flipped & ~salted] = 0.0
    return np.clip(x, 0, 1) * 255


def defocus_blur(x, severity, rng):
    c = [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)][severity - 1]
    x = x / 255.
    kernel = _disk(c[0], c[1])
    out = np.stack([_filter2d(x[:, :, d], kernel) for d in range(3)], -1)
    return np.clip(out, 0, 1) * 255


def glass_blur(x, severity, rng):
    c = [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)][severity - 1]
    x = np.uint8(_gaussian(x / 255., c[0]) * 255)
    n = x.shape[0]
    for _ in range(c[2]):  # locally shuffle pixels, the reference's loop order
        for h in range(n - c[1], c[1], -1):
            for w in range(n - c[1], c[1], -1):
                dx, dy = rng.integers(-c[1], c[1], size=(2,))
                hp, wp = h + dy, w + dx
                x[h, w], x[hp, wp] = x[hp, wp].copy(), x[h, w].copy()
    return np.clip(_gaussian(x / 255., c[0]), 0, 1) * 255


def motion_blur(x, severity, rng):
    """ImageMagick motion blur (radius, sigma) at an angle U(-45, 45), on the uint8 image (the reference blurs the
    PNG-decoded uint8 image and returns ImageMagick's uint8 result)."""
    c = [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)][severity - 1]
    out = _motion_blur(np.uint8(x).astype(np.float64), c[0], c[1], rng.uniform(-45, 45))
    return np.clip(np.round(out), 0, 255)


def zoom_blur(x, severity, rng):
    c = [np.arange(1, 1.06, 0.01), np.arange(1, 1.11, 0.01), np.arange(1, 1.16, 0.01),
         np.arange(1, 1.21, 0.01), np.arange(1, 1.26, 0.01)][severity - 1]
    x = (x / 255.).astype(np.float32)
    out = np.zeros_like(x)
    for z in c:
        out += _clipped_zoom(x, z).astype(np.float32)
    x = (x + out) / (len(c) + 1)
    return np.clip(x, 0, 1) * 255


def snow(x, severity, rng):
    c = [(0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
         (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)][severity - 1]
    x = (x / 255.).astype(np.float32)
    layer = rng.normal(size=x.shape[:2], loc=c[0], scale=c[1])
    layer = _clipped_zoom(layer[..., None], c[2])
    layer[layer < c[3]] = 0
    layer = (np.clip(layer.squeeze(), 0, 1) * 255).astype(np.uint8)  # the reference's PNG round trip
    layer = np.round(_motion_blur(layer.astype(np.float64), c[4], c[5], rng.uniform(-135, -45))) / 255.
    layer = layer[..., None]
    n = x.shape[0]
    x = c[6] * x + (1 - c[6]) * np.maximum(x, _gray(x).reshape(n, n, 1) * 1.5 + 0.5)
    return np.clip(x + layer + np.rot90(layer, k=2), 0, 1) * 255


def frost(x, severity, rng):
    """Blend with a random 32×32 crop of one of the generated textures (the reference: of 5 photographs, index
    ``randint(5)``; we draw from 6 generated ones the same way, 0-4)."""
    c = [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)][severity - 1]
    tex = frost_texture(int(rng.integers(5)))
    n = x.shape[0]
    ys, xs = rng.integers(0, tex.shape[0] - n), rng.integers(0, tex.shape[1] - n)
    return np.clip(c[0] * x + c[1] * tex[ys:ys + n, xs:xs + n], 0, 255)


def fog(x, severity, rng):
    c = [(.2, 3), (.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)][severity - 1]
    x = x / 255.
    max_val = x.max()
    n = x.shape[0]
    x = x + c[0] * plasma_fractal(32, c[1], rng)[:n, :n][..., None]
    return np.clip(x * max_val / (max_val + c[0]), 0, 1) * 255


def brightness(x, severity, rng):
    c = [.05, .1, .15, .2, .3][severity - 1]
    x = _rgb2hsv(x / 255.)
    x[:, :, 2] = np.clip(x[:, :, 2] + c, 0, 1)
    return np.clip(_hsv2rgb(x), 0, 1) * 255


def contrast(x, severity, rng):
    c = [.75, .5, .4, .3, 0.15][severity - 1]
    x = x / 255.
    means = np.mean(x, axis=(0, 1), keepdims=True)
    return np.clip((x - means) * c + means, 0, 1) * 255


def elastic_transform(x, severity, rng):
    """The reference's random affine (3 points moved by U(±c2)) then a smooth random displacement field
    (Gaussian-filtered U(-1, 1) noise, σ = c1, ×c0), bilinear sampling with reflecting borders."""
    n = x.shape[0]
    c = [(n * 0, n * 0, n * 0.08), (n * 0.05, n * 0.2, n * 0.07), (n * 0.08, n * 0.06, n * 0.06),
         (n * 0.1, n * 0.04, n * 0.05), (n * 0.1, n * 0.03, n * 0.03)][severity - 1]
    image = (x / 255.).astype(np.float32)
    shape = image.shape
    center = np.float32(shape[:2]) // 2
    sq = min(shape[:2]) // 3
    pts1 = np.float32([center + sq, [center[0] + sq, center[1] - sq], center - sq])
    pts2 = pts1 + rng.uniform(-c[2], c[2], size=pts1.shape).astype(np.float32)
    # cv2.getAffineTransform(pts1, pts2): M maps (x, y) of pts1 to pts2; warpAffine samples src at M^-1 · dst
    a = np.concatenate([pts1, np.ones((3, 1), np.float32)], 1).astype(np.float64)
    m = np.linalg.solve(a, pts2.astype(np.float64)).T  # (2, 3)
    inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2]
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
    sx = inv[0, 0] * xx + inv[0, 1] * yy + inv[0, 2]
    sy = inv[1, 0] * xx + inv[1, 1] * yy + inv[1, 2]
    image = _bilinear(image.astype(np.float64), sy, sx, border="reflect101").astype(np.float32)
    if c[1] > 0:
        dx = (_gaussian(rng.uniform(-1, 1, size=shape[:2]), c[1], mode="reflect", truncate=3) * c[0]).astype(np.float32)
        dy = (_gaussian(rng.uniform(-1, 1, size=shape[:2]), c[1], mode="reflect", truncate=3) * c[0]).astype(np.float32)
    else:  # severity 1: sigma 0 (scipy returns the input, times 0)
        rng.uniform(-1, 1, size=shape[:2]), rng.uniform(-1, 1, size=shape[:2])
        dx = dy = np.zeros(shape[:2], np.float32)
    out = _bilinear(image.astype(np.float64), yy + dy, xx + dx, border="symmetric")
    return np.clip(out, 0, 1) * 255


def pixelate(x, severity, rng):
    c = [0.95, 0.9, 0.85, 0.75, 0.65][severity - 1]
    n = x.shape[0]
    img = Image.fromarray(np.uint8(x))
    img = img.resize((int(n * c), int(n * c)), Image.BOX).resize((n, n), Image.BOX)
    return np.asarray(img, dtype=np.float64)


def jpeg_compression(x, severity, rng):
    c = [80, 65, 58, 50, 40][severity - 1]
    buf = io.BytesIO()
    Image.fromarray(np.uint8(x)).save(buf, "JPEG", quality=c)
    return np.asarray(Image.open(buf).convert("RGB"), dtype=np.float64)


_FUNCS: dict[str, Callable] = {name: globals()[name] for name in CORRUPTIONS}


def corrupt(image: np.ndarray, name: str, severity: int, rng: np.random.Generator | int | None = None) -> np.ndarray:
    """Corrupt one ``uint8`` RGB image ``(H, W, 3)`` with corruption ``name`` at ``severity`` (1-5).

    Returns a ``uint8`` ``(H, W, 3)`` array, stored as the reference stores it (``np.uint8`` truncation). Grey
    images ``(H, W)`` / ``(H, W, 1)`` are replicated to RGB first. Images that are not 32×32 are resized to 32×32
    (PIL bilinear), corrupted with the CIFAR-10-C constants and resized back (an approximation: the constants
    are those of 32-pixel images). ``rng``: a ``numpy.random.Generator`` or an int seed (same seed, same output).
    """
    if name not in _FUNCS:
        raise KeyError(f"unknown corruption '{name}'; choose one of {', '.join(CORRUPTIONS)}")
    if not isinstance(severity, (int, np.integer)) or not 1 <= severity <= 5:
        raise ValueError(f"severity must be an integer in 1..5, got {severity!r}")
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise TypeError(f"corrupt expects a uint8 image (H, W, 3), got dtype {image.dtype}")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 3):
        raise ValueError(f"corrupt expects an image (H, W, 3) or (H, W), got shape {image.shape}")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    h, w = image.shape[:2]
    x = image
    if (h, w) != (SIZE, SIZE):
        x = np.asarray(Image.fromarray(image).resize((SIZE, SIZE), Image.BILINEAR))
    out = np.uint8(np.clip(_FUNCS[name](x.astype(np.float64), int(severity), rng), 0, 255))
    if (h, w) != (SIZE, SIZE):
        out = np.asarray(Image.fromarray(out).resize((w, h), Image.BILINEAR))
    return out
