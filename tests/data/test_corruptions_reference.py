"""The deterministic CIFAR-10-C corruptions against the reference script itself.

Reference: hendrycks/robustness ``ImageNet-C/create_c/make_cifar_c.py`` (the script that made CIFAR-10-C; not
vendored here). Point ``ZOO_REF_MAKE_CIFAR_C`` at a copy of it to run this test, e.g.::

    git -C <robustness clone> show HEAD:ImageNet-C/create_c/make_cifar_c.py > /tmp/ref/make_cifar_c.py
    ZOO_REF_MAKE_CIFAR_C=/tmp/ref/make_cifar_c.py pytest tests/data/test_corruptions_reference.py

Without it, or without scipy / scikit-image / OpenCV (the reference's dependencies), the test is skipped. The
script is loaded unmodified from disk: only its distortion part (everything before ``End Distortions``) is
executed, without its ``torch`` / ``wand`` imports (ImageMagick is used only by motion blur and snow, which are
random and not compared here); the Wand names used at module level are given dummies.

Both sides are stored as the reference stores them, ``np.uint8(float_image)``. Measured: zoom_blur, brightness,
contrast, pixelate and jpeg_compression are identical; defocus_blur differs by at most 1 grey level (float outputs
agree to ~1e-5 grey levels; the reference's float32 OpenCV kernel flips some truncations).
"""
from __future__ import annotations

import os
import types

import numpy as np
import pytest
from PIL import Image

from zoo.data.images.corruptions import corrupt

pytest.importorskip("scipy")
pytest.importorskip("skimage")
pytest.importorskip("cv2")

DETERMINISTIC = ("defocus_blur", "zoom_blur", "brightness", "contrast", "pixelate", "jpeg_compression")
MARKER = "# /////////////// End Distortions ///////////////"


@pytest.fixture(scope="module")
def ref():
    path = os.environ.get("ZOO_REF_MAKE_CIFAR_C", "")
    if not path or not os.path.isfile(path):
        pytest.skip("set ZOO_REF_MAKE_CIFAR_C to hendrycks/robustness ImageNet-C/create_c/make_cifar_c.py")
    with open(path, encoding="utf-8") as f:
        src = f.read()
    assert MARKER in src, f"{path} does not look like make_cifar_c.py (no '{MARKER}')"
    lines = ["" if ln.startswith(("import torch", "from wand", "import wand")) else ln  # keep line numbers
             for ln in src.split(MARKER)[0].splitlines()]
    ns = {"__name__": "make_cifar_c_reference", "WandImage": object, "WandColor": None,
          "wandlibrary": types.SimpleNamespace(MagickMotionBlurImage=types.SimpleNamespace())}
    exec(compile("\n".join(lines), path, "exec"), ns)  # noqa: S102 - the reference file named by the user
    return ns


@pytest.fixture(scope="module")
def images():
    """Real photographs (scikit-image's bundled samples, resized and centre-cropped to 32×32) and random images."""
    out = []
    import skimage.data

    for name in ("astronaut", "coffee", "chelsea", "camera"):
        try:
            a = getattr(skimage.data, name)()
        except Exception:  # a sample that would need downloading
            continue
        if a.ndim == 2:
            a = np.stack([a] * 3, -1)
        h, w = a.shape[:2]
        s = min(h, w)
        a = np.ascontiguousarray(a[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s, :3])
        out.append(np.asarray(Image.fromarray(a).resize((32, 32), Image.BOX)))
        out.append(np.ascontiguousarray(a[s // 2 - 16:s // 2 + 16, s // 2 - 16:s // 2 + 16]))
    rng = np.random.default_rng(0)
    out += [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(2)]
    small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    out.append(np.asarray(Image.fromarray(small).resize((32, 32), Image.BILINEAR)))
    return out


@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("name", DETERMINISTIC)
def test_matches_reference_within_one_grey_level(ref, images, name, severity):
    for img in images:
        want = np.uint8(ref[name](Image.fromarray(img), severity)).astype(np.int16)
        got = corrupt(img, name, severity)
        assert got.shape == want.shape == img.shape
        diff = np.abs(got.astype(np.int16) - want)
        assert diff.max() <= 1, f"{name} severity {severity}: max |diff| {diff.max()}"
